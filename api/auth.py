"""API-key checks for HTTP and WebSocket.

With no key configured everything stays open (the local default of `make up`).
Once a key exists, every /api/ request needs one — `X-API-Key`, `Authorization:
Bearer`, or `?api_key=` (for <img> tags and downloads) — and sees only its
project: routes read `request.state.project`; reads of another project's run
answer 404, so existence does not leak.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from runstream.keys import KeyStore


class Auth:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    def project_for(self, token: str | None) -> str | None:
        return self.store.project_for(token)


def token_of(request: Request) -> str | None:
    header = request.headers.get("x-api-key")
    if header:
        return header
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.query_params.get("api_key")


def middleware(auth: Auth) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.project = None
        if request.url.path.startswith("/api/") and auth.enabled:
            project = auth.project_for(token_of(request))
            if project is None:
                return JSONResponse({"detail": "a valid API key is required (X-API-Key header, Bearer token or api_key parameter)"}, 401)
            request.state.project = project
        return await call_next(request)

    return check
