"""`orio-agent run` once its config is in hand: the agent in an event loop, the signals
it answers, and the exit status of an unexpected failure."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from agent.config import Config
from agent.service.agent import Agent
from agent.service.supervise import describe_error, primary

log = structlog.get_logger("agent.cli")

EXIT_OK = 0
EXIT_SOFTWARE = 70  # EX_SOFTWARE: stopped by an unexpected error
# Test-only: `run` fails with an unexpected error after this many seconds (the exit
# status test, tests/test_cli.py). Not ORIO_AGENT_*: those are config overrides.
CRASH_AFTER = "ORIO_TEST_CRASH_AFTER"


def main(config: Config, path: Path, control: Path | None) -> int:
    """The agent until it stops: the exit status."""
    return asyncio.run(run(config, path, control))


async def run(config: Config, path: Path, control: Path | None) -> int:
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    during = "start"
    try:
        agent = Agent(config, config_path=path, control_path=control)
        during = "run"
        async with asyncio.TaskGroup() as group:
            group.create_task(agent.run(stop, reload), name="agent")
            crash_after = os.environ.get(CRASH_AFTER)
            if crash_after:
                group.create_task(_crash_after(float(crash_after), stop), name="test-crash")
    except Exception as exc:  # whatever stopped the agent: said once, and a failed exit
        log.error(
            "agent_failed",
            during=during,
            error_type=type(primary(exc)).__name__,
            error=describe_error(exc),
            exit_status=EXIT_SOFTWARE,
            exc_info=primary(exc),
        )
        return EXIT_SOFTWARE
    return EXIT_OK


async def _crash_after(seconds: float, stop: asyncio.Event) -> None:
    """The test-only failure of CRASH_AFTER, unless the agent is stopped first."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        raise RuntimeError(f"{CRASH_AFTER}={seconds:g}: an injected failure") from None
