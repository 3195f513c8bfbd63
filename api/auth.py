"""API-key checks for HTTP and WebSocket, and the early body-size check.

With no key configured everything stays open (the local default of `make up`).
Once a key exists, every /api/ request and every /ws connection needs one —
`X-API-Key`, `Authorization: Bearer`, or `?api_key=` (for <img> tags,
downloads and the browser's WebSocket) — and sees only its project: routes
read `request.state.project`; reads of another project's run answer 404, so
existence does not leak. `/healthz`, `/metrics`, `/docs`, `/openapi.json` and
the dashboard's static files stay open.

This is plain ASGI middleware (not BaseHTTPMiddleware) so that it also covers
the WebSocket: a refused socket is accepted and closed with code 4401, which a
browser can see (a handshake refused with HTTP 403 reaches it only as 1006).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from runstream.keys import KeyStore

UNAUTHORIZED = "a valid API key is required (X-API-Key header, Authorization: Bearer <key>, or api_key query parameter)"
WS_UNAUTHORIZED = 4401


class Auth:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    def project_for(self, token: str | None) -> str | None:
        return self.store.project_for(token)


def token_of(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("x-api-key")
    if header:
        return header.strip()
    authorization = conn.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return conn.query_params.get("api_key")


def _protected(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path == "/ws" or path.startswith("/ws/")


class AuthMiddleware:
    """Sets `state.project` (None = every project) and refuses requests without a valid key."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["project"] = None
        if _protected(scope.get("path", "")) and self.auth.enabled:
            conn = HTTPConnection(scope)
            project = self.auth.project_for(token_of(conn))
            if project is None:
                if scope["type"] == "websocket":
                    ws = WebSocket(scope, receive, send)
                    await ws.accept()
                    await ws.close(code=WS_UNAUTHORIZED, reason="a valid API key is required")
                else:
                    response = JSONResponse({"detail": UNAUTHORIZED}, 401, headers={"WWW-Authenticate": "Bearer"})
                    await response(scope, receive, send)
                return
            state["project"] = project
        if scope["type"] == "http" and (limit := _body_limit(scope)) is not None:
            length = _content_length(scope)
            if length is not None and length > limit:
                detail = f"request body of {length} bytes exceeds the {limit}-byte limit"
                await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _body_limit(scope: Scope) -> int | None:
    """Uploads are checked against Content-Length before a byte of the body is read."""
    path: str = scope.get("path", "")
    if scope.get("method") == "PUT" and path.startswith("/api/v1/runs/") and "/files/" in path:
        app = scope.get("app")
        limit = getattr(getattr(app, "state", None), "max_upload_bytes", None)
        return int(limit) if limit is not None else None
    return None
