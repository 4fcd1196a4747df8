"""The ORing PaaS REST API adapter: httpx, the document's authentication, pagination and
error body, retries.

- Authentication: `Authorization: ApiKey {key}`, or an OAuth 2.0 access token from the
  client-credentials grant (`POST /v4/oauth/token`), kept until `expires_in` runs out
  and fetched again once when a request is answered 401.
- Pagination: a list is followed through `paging.nextLink` until it is null.
- Errors: the document's body (`code`, `message`) becomes a PaasError naming the request;
  401 and 403 are PaasAuthError. A 5xx, a time-out or a network error is retried, with a
  capped exponential back-off, `retries` times, then PaasUnavailable; a 4xx never is.
- Secrets: the key, the client secret and the token go into headers and the token
  request's body only; no error message or log line carries them.

httpx: a well-kept client with time-outs on every phase, a sync API (the `cloud`
commands are short, sequential runs) and a pluggable transport.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import structlog

from agent.errors import PaasAuthError, PaasError, PaasUnavailable

log = structlog.get_logger("agent.paas")

BACKOFF_FIRST = 0.5  # seconds before the first retry; doubled each time
BACKOFF_CAP = 8.0
TOKEN_MARGIN = 30.0  # seconds: a token this close to expiry is fetched again first
_MAX_PAGES = 10_000  # a loop guard: a nextLink that never ends


@dataclass(frozen=True)
class Credentials:
    """How to authenticate: an API key, or an OAuth application's client credentials."""

    api_key: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    redirect_uri: str = "http://localhost/"

    def __repr__(self) -> str:  # never the secrets
        kind = "api_key" if self.api_key else "oauth"
        return f"Credentials({kind}, client_id={self.client_id!r})"


class PaasClient:
    """One API base URL and one set of credentials; use as a context manager."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._credentials = credentials
        self._retries = retries
        self._sleep = sleep
        self._token: str | None = None
        self._token_until = 0.0
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __enter__(self) -> PaasClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    # -- the verbs ------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """The `data` of a GET."""
        return self._data(self.request("GET", path))

    def list(self, path: str) -> list[Any]:
        """Every item of a paginated list, `nextLink` followed to the end."""
        items: list[Any] = []
        url: str | None = path
        for _ in range(_MAX_PAGES):
            if url is None:
                return items
            body = self.request("GET", url)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise PaasError(f"GET {url}: the reply has no data list")
            items += data
            paging = body.get("paging") or {}
            url = paging.get("nextLink") if isinstance(paging, dict) else None
            if url is not None:
                self._check_link(str(url))
        raise PaasError(f"GET {path}: more than {_MAX_PAGES} pages")

    def _check_link(self, url: str) -> None:
        """A nextLink elsewhere than the API itself is not followed: the credentials would
        go with it."""
        link, base = httpx.URL(urljoin(self.base_url, url)), httpx.URL(self.base_url)
        if (link.scheme, link.host, link.port) != (base.scheme, base.host, base.port):
            raise PaasError(f"a nextLink to another host or scheme was not followed: {link.host}")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._data(self.request("POST", path, body))

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._data(self.request("PUT", path, body))

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- one request, authenticated and retried --------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON reply; raises PaasError (and its kinds) for what went wrong."""
        url = urljoin(self.base_url, path)
        response = self._send(method, url, body)
        if response.status_code == 401 and self._credentials.api_key is None:
            self._token = None  # expired or revoked early: one new token, one more try
            response = self._send(method, url, body)
        if response.is_success:
            return _json(response, method, url) if response.content else {}
        raise _error(response, method, _shown(url))

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        def send() -> httpx.Response:
            headers = {"Authorization": self._authorization(), "Accept": "application/json"}
            return self._http.request(method, url, json=body, headers=headers)

        return self._retried(send, method, url)

    def _retried(self, send: Callable[[], httpx.Response], method: str, url: str) -> httpx.Response:
        """`send()` until it gets an answer below 500, `retries` more times at most."""
        delay = BACKOFF_FIRST
        for attempt in range(self._retries + 1):
            try:
                response = send()
            except httpx.TransportError as exc:  # time-outs included
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code < 500:
                    return response
                failure = f"HTTP {response.status_code}"
            if attempt < self._retries:
                log.info(
                    "paas_retry", method=method, url=_shown(url), error=failure, retry_in=delay
                )
                self._sleep(delay)
                delay = min(BACKOFF_CAP, delay * 2)
        raise PaasUnavailable(
            f"{method} {_shown(url)}: {failure} (after {self._retries + 1} attempts)"
        )

    def _authorization(self) -> str:
        credentials = self._credentials
        if credentials.api_key is not None:
            return f"ApiKey {credentials.api_key}"
        if self._token is None or time.monotonic() > self._token_until:
            self._fetch_token()
        return f"Bearer {self._token}"

    def _fetch_token(self) -> None:
        """The client-credentials grant, as the document gives it (a JSON body)."""
        credentials = self._credentials
        url = urljoin(self.base_url, "oauth/token")
        body = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "redirect_uri": credentials.redirect_uri,
        }
        response = self._retried(lambda: self._http.post(url, json=body), "POST", url)
        if not response.is_success:
            raise _error(response, "POST", url)
        token = _json(response, "POST", url)
        if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
            raise PaasError(f"POST {url}: the reply holds no access_token")
        self._token = token["access_token"]
        lifetime = token.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            # No usable lifetime: kept until a 401 says otherwise (one token, not one a
            # request, which a missing or a short `expires_in` would have meant).
            lifetime = math.inf
        # Fetched again a margin before it ends: half its life for a short-lived one.
        self._token_until = time.monotonic() + lifetime - min(TOKEN_MARGIN, lifetime / 2)

    @staticmethod
    def _data(body: Any) -> Any:
        return body.get("data") if isinstance(body, dict) else body


def _json(response: httpx.Response, method: str, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise PaasError(f"{method} {_shown(url)}: HTTP {response.status_code}, not JSON") from None


def _error(response: httpx.Response, method: str, url: str) -> PaasError:
    """The document's error body (`code`, `message`) as the agent's error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    said = f"{method} {url}: HTTP {response.status_code}"
    if code or message:
        said += f" {code or ''}: {message or ''}".rstrip(": ")
    kind = PaasAuthError if response.status_code in (401, 403) else PaasError
    return kind(said, status=response.status_code, code=code if isinstance(code, str) else None)


def _shown(url: str) -> str:
    """A URL for a message: its path and query (the host is the configured one)."""
    parsed = httpx.URL(url)
    return parsed.raw_path.decode("ascii", "replace")
