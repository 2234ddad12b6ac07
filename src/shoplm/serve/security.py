"""API keys for the routes that change data, and a cap on request body size."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def api_key_guard(digests: list[bytes]) -> Callable[[str | None], Awaitable[None]]:
    """A FastAPI dependency that admits a request carrying one of the keys behind ``digests``.

    The presented key is hashed and compared with every stored digest in constant time, and
    the loop never stops early, so response timing says nothing about which key was close.
    With no key configured every request is refused: a service started without keys is
    read-only rather than open to writes. The check is ``async`` (it never blocks) so that
    FastAPI runs it on the event loop instead of sending each request through a thread.
    """

    async def check(key: str | None = Security(_KEY_HEADER)) -> None:
        if not key:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "X-API-Key header: missing (this route needs an API key)",
                headers={"WWW-Authenticate": "X-API-Key"},
            )
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        matched = False
        for digest in digests:
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "X-API-Key header: key not accepted")

    return check


class BodySizeLimit:
    """ASGI middleware: answer 413 for a request body over ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before anything is read. A
    chunked body is read here up to the limit and handed on whole (the routes read whole
    bodies anyway), so an over-long one is refused before any route sees it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"request body: larger than the limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
