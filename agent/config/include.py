"""`include = [...]`: template libraries kept in files of their own.

Each entry is a path or a glob (`/etc/orio-agent/templates/*.toml`), relative to the
config file's directory. A path without a wildcard must exist; a glob may match
nothing (a site with no library yet). The files are read in sorted order and may hold
only `[templates.<name>]` tables; their templates join the config file's, and a name
declared twice is a problem naming both places.

Problems in an included template keep their file and line: `Included.relocate` moves
a problem whose key lies under such a template to the file it was written in.
"""

from __future__ import annotations

import glob
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import tomlpos
from agent.config.problems import split_key, syntax_problem
from agent.errors import ConfigProblem


@dataclass(frozen=True)
class _Source:
    path: str
    text: str


@dataclass
class Included:
    """What the `include` entries added, and where each template came from."""

    main: _Source
    problems: list[ConfigProblem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    _origins: dict[str, _Source] = field(default_factory=dict)  # template name → its file

    def relocate(self, problem: ConfigProblem) -> ConfigProblem:
        """`problem` with the file and line of the included template its key lies under."""
        key = split_key(problem.key) if problem.key else ()
        if len(key) < 2 or key[0] != "templates" or not isinstance(key[1], str):
            return problem
        source = self._origins.get(key[1])
        if source is None:
            return problem
        return replace(problem, file=source.path, line=tomlpos.locate(source.text, key))


def include(config_path: Path, text: str, data: dict[str, Any]) -> Included:
    """Merge the templates of the files `data["include"]` names into `data["templates"]`
    (`text`: the config file's, that `data` was parsed from)."""
    found = Included(_Source(str(config_path), text))
    patterns = data.get("include")
    if not isinstance(patterns, list):
        return found  # absent, or the wrong type: validation says so
    templates = data.setdefault("templates", {})
    if not isinstance(templates, dict):
        return found
    for index, pattern in enumerate(patterns):
        if isinstance(pattern, str):
            for path in _paths(config_path.parent, pattern, index, found):
                _add(path, templates, found)
    return found


def _paths(base: Path, pattern: str, index: int, found: Included) -> list[Path]:
    """The files an entry names; a path that does not exist is a problem at its key."""
    full = Path(pattern) if Path(pattern).is_absolute() else base / pattern
    if glob.has_magic(str(full)):
        return sorted(Path(name) for name in glob.glob(str(full)))
    if not full.exists():
        line = tomlpos.locate(found.main.text, ("include", index))
        found.problems.append(ConfigProblem(f"include[{index}]", f"no such file: {full}", line))
        return []
    return [full]


def _add(path: Path, templates: dict[str, Any], found: Included) -> None:
    shown = str(path)
    found.files.append(shown)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        found.problems.append(ConfigProblem("", f"cannot read: {exc.strerror}", file=shown))
        return
    except UnicodeDecodeError:
        found.problems.append(ConfigProblem("", "not UTF-8 text", file=shown))
        return
    except tomllib.TOMLDecodeError as exc:
        found.problems.append(replace(syntax_problem(exc), file=shown))
        return
    source = _Source(shown, text)
    for key in data:
        if key != "templates":
            found.problems.append(
                ConfigProblem(
                    key,
                    "an included file holds only [templates.<name>] tables",
                    tomlpos.locate(text, (key,)),
                    shown,
                )
            )
    added = data.get("templates", {})
    if not isinstance(added, dict):
        return  # `templates = 3`: reported by validation, at the config's own key
    for name, template in added.items():
        if name in templates:
            found.problems.append(_twice(name, source, found))
            continue
        templates[name] = template
        found._origins[name] = source


def _twice(name: str, source: _Source, found: Included) -> ConfigProblem:
    first = found._origins.get(name, found.main)
    where = f"{first.path}:{tomlpos.locate(first.text, ('templates', name))}"
    return ConfigProblem(
        f"templates.{name}",
        f"template {name!r} is already declared in {where}",
        tomlpos.locate(source.text, ("templates", name)),
        source.path,
    )
