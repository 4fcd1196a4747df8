"""pydantic's plugin loader, left out: it costs 1.6 MB of resident memory for nothing here.

The first model pydantic builds imports `pydantic.plugin._loader`, which imports
`importlib.metadata` to look for plugins in the entry points of every installed
distribution, and with it email, zipfile, csv, tempfile and more: 33 modules, 1.6 MB
measured in the running agent (bench/README.md, "Memory"). The agent uses no pydantic
plugin and the .deb's venv holds nothing but requirements.lock, so the loader is
replaced, before pydantic first looks for it, by one that finds none. Imported first
by `agent.config`, before any model is built.

If pydantic moves the loader, this does nothing and the memory is spent again:
tests/test_config.py checks that importlib.metadata stays out of the agent.
"""

import sys
import types

_LOADER = "pydantic.plugin._loader"

if _LOADER not in sys.modules:
    _none = types.ModuleType(_LOADER, "No pydantic plugins (see agent.config.no_plugins).")
    _none.get_plugins = lambda: ()  # type: ignore[attr-defined]
    sys.modules[_LOADER] = _none
