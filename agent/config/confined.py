"""The config validated and resolved by a process of its own: pydantic stays out of the agent.

Checking a config file takes pydantic and pydantic-settings: about 15 MB resident once
they are imported and their models built, and several more while a large file is
validated, memory a Python process rarely gives back. Running on the result takes
neither. So the agent asks a child, `python -m agent.config.confined PATH`, to do what
agent.config.load does; the child writes the resolved `Config` (plain objects only:
agent.config.model and agent.config.sections) to its stdout as a pickle and exits,
and the memory goes with it.

The child inherits the environment, so it sees the same ORIO_AGENT_* overrides and the
same systemd credentials. A ConfigError in the child is raised here as the same
ConfigError (same problems, same lines). Anything else that stops the child is a
ConfinedLoadFailed, with the child's traceback on its stderr (the agent's journal).

The pickle is trusted: it comes from our own child, over a pipe, never from a file or
the network.

    pending = start(path)   # at start-up: the child validates while the agent imports
    config = pending.result()
    config = await load_async(path)   # SIGHUP: the event loop goes on meanwhile
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from pathlib import Path

from agent.config.model import Config
from agent.errors import ConfigError

CHILD = [sys.executable, "-m", "agent.config.confined"]


class ConfinedLoadFailed(RuntimeError):
    """The validating process failed otherwise than with a ConfigError (its stderr says
    how)."""


class Pending:
    """A child validating `path`; `result()` waits for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._child = subprocess.Popen([*CHILD, str(path)], stdout=subprocess.PIPE)

    def result(self) -> Config:
        """The resolved config; ConfigError for a bad file, ConfinedLoadFailed else."""
        output, _ = self._child.communicate()
        return received(self.path, self._child.returncode, output)


def start(path: str | Path) -> Pending:
    return Pending(Path(path))


async def load_async(path: str | Path) -> Config:
    child = await asyncio.create_subprocess_exec(*CHILD, str(path), stdout=subprocess.PIPE)
    output, _ = await child.communicate()
    assert child.returncode is not None, "communicate() waits for the exit"
    return received(Path(path), child.returncode, output)


def received(path: Path, returncode: int, output: bytes) -> Config:
    """What the child wrote: the config, or the ConfigError it met, raised here."""
    if returncode != 0 or not output:
        raise ConfinedLoadFailed(f"validating {path} failed: the process exited {returncode}")
    outcome = pickle.loads(output)
    if isinstance(outcome, Config):
        return outcome
    shown, problems = outcome
    raise ConfigError(shown, problems)


def main(argv: list[str]) -> int:
    """The child: load `argv[1]`, write the outcome to stdout."""
    from agent.config.load import load_config  # here only: pydantic is imported by the child

    path = argv[1]
    try:
        outcome: object = load_config(path)
    except ConfigError as exc:
        outcome = (exc.path, exc.problems)
    sys.stdout.buffer.write(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
