"""The gate every API request passes before any of it is parsed: the key, then the body's size.

FastAPI reads and decodes a request's body while it solves the endpoint's parameters, before
the key dependency runs: without this gate a 200 MB JSON body sent with no key is read and
parsed (seconds of CPU, hundreds of MB) just to answer 401, and invalid JSON without a key
answers 422. Here, as plain ASGI in front of the app:

1. Under ``/api/v1`` (except the health check), a request without a valid ``X-API-Key`` is
   answered 401 at once; its body is never read. The caller found is handed to the endpoint's
   role check (``scope["state"]["principal"]``), so the key is looked up once per request.
2. A body larger than its route's cap is answered 413: at once when ``Content-Length`` says so,
   else as soon as the bytes received pass the cap. A body within the cap is buffered (it is
   small by construction) and replayed to the app.

Roles (403) stay with the endpoints: they know what they need.
"""

from __future__ import annotations

import json
import logging

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import ANONYMOUS
from app.auth import Principal, authenticate
from app.runtime import Runtime
from store.db import session_scope

logger = logging.getLogger(__name__)


API_PREFIX = "/api/v1"
OPEN_PATHS = frozenset({f"{API_PREFIX}/health"})
# Ground-truth uploads (a cytometer export, manual calls) get the larger cap.
UPLOAD_SUFFIXES = ("/fct", "/manual-calls")
PRINCIPAL_STATE_KEY = "principal"
AUTHENTICATE = {"WWW-Authenticate": "APIKey"}


class RequestGuard:
    """ASGI middleware: 401 without a valid key, 413 above the body cap, both before parsing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
        if runtime is None:  # not started (no lifespan): nothing to check against
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        declared = _content_length(scope)
        has_body = bool(declared) or _header(scope, b"transfer-encoding") is not None
        if path.startswith(API_PREFIX) and path not in OPEN_PATHS:
            principal = await self._principal(runtime, scope)
            if principal is None:
                detail = _missing_or_invalid(scope)
                await _refuse(send, 401, detail, close=has_body, headers=AUTHENTICATE)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        if not has_body:
            await self.app(scope, receive, send)
            return
        limit = self._body_limit(runtime, path)
        if declared is not None and declared > limit:
            await _refuse(send, 413, _too_large(limit), close=True)
            return
        body, more = await _read_body(receive, limit)
        if more:
            await _refuse(send, 413, _too_large(limit), close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _body_limit(runtime: Runtime, path: str) -> int:
        settings = runtime.settings
        if path.endswith(UPLOAD_SUFFIXES):
            return settings.max_upload_bytes
        return settings.max_body_bytes

    @staticmethod
    async def _principal(runtime: Runtime, scope: Scope) -> Principal | None:
        if runtime.settings.auth_disabled:
            return ANONYMOUS
        secret = _header(scope, b"x-api-key")
        if not secret:
            return None
        principal = runtime.key_cache.get(secret)
        if principal is None:
            principal = await to_thread.run_sync(_lookup, runtime, secret)
            if principal is not None:
                runtime.key_cache.put(secret, principal)
        return principal


def _lookup(runtime: Runtime, secret: str) -> Principal | None:
    with session_scope(runtime.session_factory) as session:
        return authenticate(session, secret)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1").strip()
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _missing_or_invalid(scope: Scope) -> str:
    if not _header(scope, b"x-api-key"):
        return "missing X-API-Key header"
    return "invalid or revoked API key"


def _too_large(limit: int) -> str:
    return (
        f"request body larger than {limit} bytes, this route's limit "
        "(MSCREEN_MAX_BODY_BYTES, or MSCREEN_MAX_UPLOAD_BYTES for ground-truth uploads)"
    )


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body if it fits in ``limit`` bytes, and whether more was sent than that."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the buffered body once, then waits on the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # only http.disconnect comes after the body

    return replay


async def _refuse(
    send: Send,
    status: int,
    detail: str,
    *,
    close: bool,
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # the body was not read, so the connection cannot carry another request
        raw_headers.append((b"connection", b"close"))
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
