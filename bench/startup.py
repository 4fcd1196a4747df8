"""Start-up: seconds from exec of `orio-agent run` to READY=1 on a NOTIFY_SOCKET.

`.venv/bin/python -m bench.startup [RUNS] [AGENT]` (default 5 runs of `.venv/bin/orio-agent`;
`/usr/bin/orio-agent` measures the installed .deb), from the repo root. The agent runs
with config.example.toml, its state directory moved to a temporary one; READY=1 comes once
the config is loaded and the queue is open, without waiting for the network.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT = 10.0


def time_to_ready(config: Path, sock_path: Path, agent_path: str = ".venv/bin/orio-agent") -> float:
    sock_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(READY_TIMEOUT)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
        started = time.monotonic()
        agent = subprocess.Popen(
            [agent_path, "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while "READY=1" not in sock.recv(4096).decode():
                pass
            return time.monotonic() - started
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    agent_path = sys.argv[2] if len(sys.argv) > 2 else ".venv/bin/orio-agent"
    state = Path(tempfile.mkdtemp())
    config = state / "agent.toml"
    config.write_text(
        Path("config.example.toml").read_text().replace("/var/lib/orio-agent", str(state))
    )
    times = [time_to_ready(config, state / "notify.sock", agent_path) for _ in range(runs)]
    print(
        f"READY=1 after exec: median {statistics.median(times):.3f} s, "
        f"max {max(times):.3f} s over {runs} runs of {agent_path}"
    )


if __name__ == "__main__":
    main()
