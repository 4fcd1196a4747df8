"""`orio-agent cloud plan | apply | verify | config`: the thing's cloud side, from the
gateway's config, through the ORing PaaS REST API (agent.cloud.rest).

- plan: the buckets and shapes the config publishes into, against the thing's
  (agent.cloud.provision). Exit 0 in sync, 2 changes pending, 1 an error.
- apply [--prune] [--force]: makes them so. Idempotent: a 409 on a create is "already
  there", checked again. Never deletes without --prune, never re-creates a shape of
  another type (losing its history) without --force. Exit 0 done, 2 something was left
  for --prune or --force, 1 an error.
- verify [--since S]: each point's last telemetry in the cloud, against the last reading
  the running agent sent (through its control socket): points the cloud never saw, or
  holds older than S seconds, or holds older than what the agent sent. Exit 0 / 2 / 1.
- config [GROUP]: each setting's expectedValue and reportedValue in the cloud beside
  what the agent last reported and refused locally.

The credentials are read here (`[paas]`, agent.config.schema.PaasConfig); they are never
printed, not even in part.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from agent.cloud import provision
from agent.config import Config, load_config
from agent.config.sections import PaasSection, Secret
from agent.errors import ConfigError, PaasError
from agent.service.control_client import NotRunning, Refused, Unreachable, ask
from agent.service.health import health_shapes
from agent.service.status import control_socket

if TYPE_CHECKING:
    from agent.cloud.rest import Credentials, PaasClient

EXIT_PENDING = 2
EXIT_ERROR = 1
API_KEY_CREDENTIAL = "paas-api-key"
CLIENT_SECRET_CREDENTIAL = "paas-client-secret"
DEFAULT_SINCE = 300.0


def cloud(
    command: str,
    config_path: Path,
    *,
    force: bool = False,
    prune: bool = False,
    since: float = DEFAULT_SINCE,
    group: str | None = None,
    control: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
        return EXIT_ERROR
    from agent.cloud.rest import PaasClient  # the adapter: deferred

    try:
        credentials = read_credentials(config.paas, os.environ)
        with PaasClient(
            config.paas.url, credentials, timeout=config.paas.timeout, retries=config.paas.retries
        ) as client:
            socket = control_socket(control, config_path)
            run: dict[str, Callable[[], int]] = {
                "plan": lambda: plan(client, config, out),
                "apply": lambda: apply(client, config, out, force=force, prune=prune),
                "verify": lambda: verify(client, config, out, since=since, socket=socket),
                "config": lambda: show_config(client, config, out, group=group, socket=socket),
            }
            return run[command]()
    except PaasError as exc:
        print(f"orio-agent cloud {command}: {exc}", file=sys.stderr)
        return EXIT_ERROR


Environ = dict[str, str] | os._Environ[str]


def read_credentials(paas: PaasSection, environ: Environ) -> Credentials:
    """The API key, or the client credentials, from the config, a file or a credential."""
    from agent.cloud.rest import Credentials

    if paas.auth == "api_key":
        key = _secret(paas.api_key, paas.api_key_file, API_KEY_CREDENTIAL, environ, "api_key")
        return Credentials(api_key=key)
    if not paas.client_id:
        raise PaasError('[paas] auth = "oauth" needs client_id')
    secret = _secret(
        paas.client_secret,
        paas.client_secret_file,
        CLIENT_SECRET_CREDENTIAL,
        environ,
        "client_secret",
    )
    return Credentials(
        client_id=paas.client_id, client_secret=secret, redirect_uri=paas.redirect_uri
    )


def _secret(
    given: Secret | None,
    file: Path | None,
    credential: str,
    environ: Environ,
    key: str,
) -> str:
    if given is not None:
        return given.get_secret_value()
    directory = environ.get("CREDENTIALS_DIRECTORY")
    path = file or (Path(directory) / credential if directory else None)
    if path is None:
        raise PaasError(
            f"no PaaS {key}: set [paas] {key} or {key}_file, ORIO_AGENT_PAAS__{key.upper()}, "
            f"or the systemd credential {credential!r}"
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PaasError(f"cannot read the PaaS {key} from {path}: {reason}") from None
    if not text:
        raise PaasError(f"the PaaS {key} file {path} is empty")
    return text


def _buckets_path(config: Config) -> str:
    return f"things/{quote(config.thing_id, safe='')}/data-buckets"


def _wanted(config: Config) -> provision.Buckets:
    sources = [d.name for _, d in config.all_devices()] + [i.name for i in config.instruments]
    return provision.wanted(config, health_shapes(sources))


# -- plan and apply ---------------------------------------------------------------------


def plan(client: PaasClient, config: Config, out: TextIO) -> int:
    got = provision.have(client.list(_buckets_path(config)))
    changes = provision.compare(_wanted(config), got)
    out.write(f"thing {config.thing_id} at {client.base_url}\n")
    out.write("\n".join(provision.render(changes, got)) + "\n")
    return EXIT_PENDING if changes else 0


def apply(client: PaasClient, config: Config, out: TextIO, *, force: bool, prune: bool) -> int:
    buckets = _buckets_path(config)
    got = provision.have(client.list(buckets))
    left = 0
    for change in provision.compare(_wanted(config), got):
        done = _apply_one(client, buckets, change, force=force, prune=prune)
        out.write(done + "\n")
        left += done.startswith("left")
    after = provision.compare(_wanted(config), provision.have(client.list(buckets)))
    pending = [c for c in after if not _skipped(c, force=force, prune=prune)]
    if pending:
        first = pending[0].line().strip()
        raise PaasError(f"{len(pending)} changes still pending after apply: {first}")
    out.write("Apply complete." + (f" {left} left (see above)." if left else "") + "\n")
    return EXIT_PENDING if left else 0


def _skipped(change: provision.Change, *, force: bool, prune: bool) -> bool:
    return (change.action == "replace" and not force) or (change.action == "delete" and not prune)


def _apply_one(
    client: PaasClient, buckets: str, change: provision.Change, *, force: bool, prune: bool
) -> str:
    """One change made, or left; what was done, as a line."""
    bucket = f"{buckets}/{quote(change.bucket, safe='')}"
    if change.shape is None:
        return _apply_bucket(client, buckets, bucket, change, prune=prune)
    shapes = f"{bucket}/data-shapes"
    where = f"{change.bucket}/{change.shape}"
    if change.action == "create":
        assert change.wanted is not None
        _created(client, shapes, change.wanted.body(change.shape))
        return f"created shape {where}"
    if change.action == "replace":
        assert change.wanted is not None
        assert change.had is not None
        if not force:
            return f"left shape {where}: {_DIFFERS} (--force re-creates it)"
        client.delete(f"{shapes}/{quote(change.shape, safe='')}")
        _created(client, shapes, change.wanted.body(change.shape))
        return f"re-created shape {where} ({', '.join(change.wanted.differs(change.had))})"
    if not prune:
        return f"left shape {where}: {_NOT_IN_CONFIG}"
    client.delete(f"{shapes}/{quote(change.shape, safe='')}")
    return f"deleted shape {where}"


_DIFFERS = "its type, alias or unit differs"
_NOT_IN_CONFIG = "not in the config (--prune deletes it)"


def _apply_bucket(
    client: PaasClient, buckets: str, bucket: str, change: provision.Change, *, prune: bool
) -> str:
    if change.action == "create":
        body = {"id": change.bucket, "dataShapes": [s.body(i) for i, s in change.shapes.items()]}
        if not _created(client, buckets, body):
            return _complete(client, bucket, change)
        return f"created bucket {change.bucket} ({len(change.shapes)} shapes)"
    if not prune:
        return f"left bucket {change.bucket}: {_NOT_IN_CONFIG}"
    client.delete(bucket)
    return f"deleted bucket {change.bucket}"


def _created(client: PaasClient, path: str, body: dict[str, Any]) -> bool:
    """POST a bucket or a shape; False when it was already there (409)."""
    try:
        client.post(path, body)
    except PaasError as exc:
        if exc.status != 409:
            raise
        return False
    return True


def _complete(client: PaasClient, bucket: str, change: provision.Change) -> str:
    """A bucket that was there after all (409): its missing shapes, one by one."""
    data = client.get(bucket)
    present = provision.have([data]).get(change.bucket, {})
    for shape_id, shape in change.shapes.items():
        if shape_id not in present:
            _created(client, f"{bucket}/data-shapes", shape.body(shape_id))
    return f"bucket {change.bucket} was already there: completed its shapes"


# -- verify -----------------------------------------------------------------------------


def verify(client: PaasClient, config: Config, out: TextIO, *, since: float, socket: Path) -> int:
    local = _sent_by_agent(socket)
    now = datetime.now(UTC)
    problems = 0
    for bucket, shapes in _wanted(config).items():
        path = f"{_buckets_path(config)}/{quote(bucket, safe='')}/last-telemetries"
        try:
            seen = {str(t["id"]): t for t in client.list(path)}
        except PaasError as exc:
            if exc.status != 404:
                raise
            seen = {}
        for shape_id in shapes:
            said = _verdict(seen.get(shape_id), local.get((bucket, shape_id)), now, since)
            problems += said is not None
            if said is not None:
                out.write(f"  {bucket}/{shape_id}: {said}\n")
    agent = "" if local else " (the agent is not running: its readings are not compared)"
    out.write(f"{problems} points the cloud does not hold fresh{agent}\n")
    return EXIT_PENDING if problems else 0


def _verdict(
    telemetry: dict[str, Any] | None, local: float | None, now: datetime, since: float
) -> str | None:
    """What is wrong with one point's last telemetry; None when nothing is."""
    if telemetry is None:
        return "never seen by the cloud"
    at = _parse_time(telemetry.get("timestamp"))
    if at is None:
        return f"a timestamp that cannot be read: {telemetry.get('timestamp')!r}"
    age = (now - at).total_seconds()
    if age > since:
        return f"stale: the cloud's last value is {age:.0f} s old"
    if local is not None and age > local + since:
        return (
            f"behind: the cloud's last value is {age:.0f} s old, "
            f"the agent sent one {local:.0f} s ago"
        )
    return None


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _sent_by_agent(socket: Path) -> dict[tuple[str, str], float]:
    """(bucket, point id) → seconds since the running agent last sent a reading of it."""
    try:
        status = ask(socket, "status", {"points": True}, timeout=10.0)
    except (NotRunning, Unreachable, Refused):
        return {}
    return {
        (p["bucket"], p["id"]): float(p["age_s"])
        for source in status["sources"]
        for p in source["points"]
        if p["age_s"] is not None
    }


# -- config -----------------------------------------------------------------------------


def show_config(
    client: PaasClient, config: Config, out: TextIO, *, group: str | None, socket: Path
) -> int:
    path = f"things/{quote(config.thing_id, safe='')}/configs"
    if group is not None:
        path += f"?name={quote(group, safe='')}"
    groups = client.get(path) or []
    try:
        local = ask(socket, "settings", timeout=10.0)
    except (NotRunning, Unreachable, Refused):
        local = {}
    out.write(f"  {'setting':<24} {'expected':>12} {'reported':>12} {'agent':>12}\n")
    for entry in groups:
        name = entry.get("name")
        here = local.get(name, {}) if isinstance(local, dict) else {}
        out.write(f"{name}\n")
        for item in entry.get("configs") or []:
            out.write(_config_line(item, here) + "\n")
    if not local:
        out.write("(the agent is not running: its column is empty)\n")
    return 0


def _config_line(item: dict[str, Any], here: dict[str, Any]) -> str:
    key = str(item.get("key"))
    reported = here.get("reported", {})
    refused = here.get("refused", {})
    agent = _shown(reported[key]) if key in reported else "-"
    line = (
        f"  {key:<24} {_shown(item.get('expectedValue')):>12} "
        f"{_shown(item.get('reportedValue')):>12} {agent:>12}"
    )
    if key in refused:
        line += f"  REFUSED: {refused[key]}"
    return line


def _shown(value: object) -> str:
    return "-" if value is None else str(value)
