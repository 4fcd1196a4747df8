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

    pending = start(path)   # at start-up: a forked child validates while the agent imports
    config = pending.result()
    config = await load_async(path)   # SIGHUP: the event loop goes on meanwhile
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:  # imported when a config comes back: the fork comes first
    from agent.config.model import Config

CHILD = [sys.executable, "-m", "agent.config.confined"]


class ConfinedLoadFailed(RuntimeError):
    """The validating process failed otherwise than with a ConfigError (its stderr says
    how)."""


class Pending:
    """A child validating `path`; `result()` waits for it.

    Forked at start-up (the process has no thread yet, and the child then needs no
    interpreter start-up of its own, nor the modules the agent imported already:
    READY=1 comes sooner); a fresh interpreter otherwise (`spawn`)."""

    def __init__(self, path: Path, *, fork: bool) -> None:
        self.path = path
        self._child: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._output = -1
        try:
            if fork:
                self._fork()
            else:
                self._child = subprocess.Popen([*CHILD, str(path)], stdout=subprocess.PIPE)
        except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): said, not a traceback
            raise ConfinedLoadFailed(f"validating {path} failed: {exc}") from exc

    def _fork(self) -> None:
        readable, writable = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(readable)
            os.close(writable)
            raise
        if pid == 0:  # the child: never returns
            os.close(readable)
            status = 1
            try:
                with os.fdopen(writable, "wb") as out:
                    out.write(outcome_of(self.path))
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(writable)
        self._pid, self._output = pid, readable

    def result(self) -> Config:
        """The resolved config; ConfigError for a bad file, ConfinedLoadFailed else."""
        if self._child is not None:
            output, _ = self._child.communicate()
            return received(self.path, self._child.returncode, output)
        with os.fdopen(self._output, "rb") as pipe:
            output = pipe.read()
        _, status = os.waitpid(self._pid, 0)
        return received(self.path, os.waitstatus_to_exitcode(status), output)


def start(path: str | Path) -> Pending:
    """A child validating `path`: forked if this process has no other thread yet."""
    return Pending(Path(path), fork=threading.active_count() == 1)


async def load_async(path: str | Path) -> Config:
    import asyncio

    try:
        child = await asyncio.create_subprocess_exec(*CHILD, str(path), stdout=subprocess.PIPE)
    except OSError as exc:
        raise ConfinedLoadFailed(f"validating {path} failed: {exc}") from exc
    output, _ = await child.communicate()
    assert child.returncode is not None, "communicate() waits for the exit"
    return received(Path(path), child.returncode, output)


def received(path: Path, returncode: int, output: bytes) -> Config:
    """What the child wrote: the config, or the ConfigError it met, raised here."""
    from agent.config.model import Config

    if returncode != 0 or not output:
        raise ConfinedLoadFailed(f"validating {path} failed: the process exited {returncode}")
    try:
        outcome = pickle.loads(output)
    except Exception as exc:  # what a child that wrote something else left: anything
        raise ConfinedLoadFailed(f"validating {path} failed: an unreadable answer") from exc
    if isinstance(outcome, Config):
        return outcome
    if isinstance(outcome, tuple) and len(outcome) == 2:
        shown, problems = outcome
        raise ConfigError(shown, problems)
    raise ConfinedLoadFailed(f"validating {path} failed: an answer of {type(outcome).__name__}")


def outcome_of(path: str | Path) -> bytes:
    """What the child writes: the pickled config, or the ConfigError's file and problems."""
    from agent.config.load import load_config  # here only: pydantic is imported by the child

    try:
        outcome: object = load_config(path)
    except ConfigError as exc:
        outcome = (exc.path, exc.problems)
    return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


def main(argv: list[str]) -> int:
    """The spawned child: load `argv[1]`, write the outcome to stdout."""
    sys.stdout.buffer.write(outcome_of(argv[1]))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
