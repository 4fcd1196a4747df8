"""The config file: its schema, where settings come from, the checks, and the resolved
config the agent runs on.

    schema.py    what the file may say (pydantic models; the root is a pydantic-settings
                 BaseSettings)
    sources.py   the environment, the TOML file and the secret, as settings sources
    checks.py    the rules that span keys (registers.py: those of one register reference)
    problems.py  errors reworded, with key and line (tomlpos.py finds the line)
    resolve.py   defaults, inheritance and targets resolved, once
    model.py     the frozen objects the rest of the agent receives
    load.py      load_config: all of the above, every problem reported in one run
"""

import agent.config.no_plugins  # noqa: F401  (first: before pydantic builds a model)
from agent.config.load import DEFAULT_PATH, load_config, load_settings, masked
from agent.config.model import (
    MASK,
    AgentTarget,
    Config,
    Connection,
    Device,
    Instrument,
    InstrumentPoint,
    Point,
    RegisterTarget,
    SerialSettings,
    Setting,
    TcpEndpoint,
)

__all__ = [
    "DEFAULT_PATH",
    "MASK",
    "AgentTarget",
    "Config",
    "Connection",
    "Device",
    "Instrument",
    "InstrumentPoint",
    "Point",
    "RegisterTarget",
    "SerialSettings",
    "Setting",
    "TcpEndpoint",
    "load_config",
    "load_settings",
    "masked",
]
