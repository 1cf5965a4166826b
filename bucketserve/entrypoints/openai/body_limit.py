"""A cap on request bodies (--max-request-bytes): beyond it, 413 before the body is parsed, so one client
cannot make the event loop parse (or the prompt thread tokenize) megabytes that no context could hold."""
from __future__ import annotations

from .errors import OpenAIError

# A few MB: room for the largest prompt a context of a few hundred thousand tokens could use, with JSON overhead.
DEFAULT_MAX_REQUEST_BYTES = 4 << 20


class LimitRequestBody:
    """ASGI middleware: a declared Content-Length over the cap is refused at once; a chunked body is read up to
    the cap and refused as soon as it goes over, then handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self, size: str) -> OpenAIError:
        return OpenAIError(413, f"the request body is {size} bytes, over this server's --max-request-bytes "
                                f"{self.max_bytes}; send a smaller request (a shorter prompt)", code="request_too_large")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(declared.decode()).response()(scope, receive, send)
        if declared is not None:  # the server stops reading at the declared length
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self.too_large(f"over {self.max_bytes}").response()(scope, receive, send)
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return chunks.pop(0) if chunks else await receive()

        return await self.app(scope, replay, send)
