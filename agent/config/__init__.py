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

Importing this package imports nothing: each name below is imported from its module when
first asked for (`load_config` and pydantic with it only by those who call it).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

DEFAULT_PATH = Path("/etc/orio-agent/config.toml")

if TYPE_CHECKING:
    from agent.config.load import load_config, load_settings, masked
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

# name -> the module it is imported from when first asked for: `agent.config.confined`,
# imported first thing by `orio-agent run`, needs none of them.
_LAZY = {
    **dict.fromkeys(("load_config", "load_settings", "masked"), "agent.config.load"),
    **dict.fromkeys(
        (
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
        ),
        "agent.config.model",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
