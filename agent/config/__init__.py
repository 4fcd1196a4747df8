"""The config file: its schema, where settings come from, the checks, and the resolved
config the agent runs on.

    schema.py    what the file may say (pydantic models; the root is a pydantic-settings
                 BaseSettings)
    sources.py   the environment, the TOML file and the secret, as settings sources
    checks.py    the rules that span keys (registers.py: those of one register reference)
    problems.py  errors reworded, with key and line (tomlpos.py finds the line)
    resolve.py   defaults, inheritance and targets resolved, once
    model.py     the frozen objects the rest of the agent receives (sections.py: the
                 sections that need no resolving, as plain copies)
    load.py      load_config: all of the above, every problem reported in one run
    confined.py  load_config in a process of its own, for the agent: it never imports
                 pydantic

Importing this package imports no pydantic: `load_config`, `load_settings` and `masked`
are imported from agent.config.load when first asked for. (The model is imported at once:
the agent needs it, and the config's child, forked after it, then need not.)
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

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

DEFAULT_PATH = Path("/etc/orio-agent/config.toml")

if TYPE_CHECKING:
    from agent.config.load import load_config, load_settings, masked

_FROM_LOAD = ("load_config", "load_settings", "masked")


def __getattr__(name: str) -> Any:
    if name not in _FROM_LOAD:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from agent.config import load  # pydantic with it: only for those who call these

    return getattr(load, name)


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
