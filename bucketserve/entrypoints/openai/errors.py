"""OpenAI-style errors, {"error": {"message", "type", "param", "code"}}, for every failure a request can
meet: our own checks, FastAPI's validation (422 there, 400 here, as OpenAI answers), unknown routes, bugs."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import ErrorInfo, ErrorResponse, dump

logger = logging.getLogger(__name__)

# HTTP status -> OpenAI's error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable_error"}
MAX_VALIDATION_ERRORS_SHOWN = 3
MAX_QUOTED_INPUT_CHARS = 40


class OpenAIError(Exception):
    def __init__(self, status_code: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        error_type = ERROR_TYPES.get(self.status_code, "server_error")
        return dump(ErrorResponse(error=ErrorInfo(message=self.message, type=error_type, param=self.param, code=self.code)))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


def validation_error(error: RequestValidationError) -> OpenAIError:
    """One readable 400 from pydantic's list: 'max_tokens: Input should be less than or equal to 1048576'."""
    details = error.errors()
    if any(detail.get("type") == "json_invalid" for detail in details):
        return bad_request("the request body is not valid JSON; send a JSON object with Content-Type: application/json")
    by_field: dict[str, list[tuple[int, str]]] = {}
    for detail in details:
        location = [str(part) for part in detail.get("loc", ()) if part != "body"]
        by_field.setdefault(location[0] if location else "body", []).append(
            (len(location), f"{'.'.join(location) or 'body'}: {detail.get('msg', 'invalid value')}{_shown_input(detail)}"))
    parts = []
    for name, messages in list(by_field.items())[:MAX_VALIDATION_ERRORS_SHOWN]:
        # A field that fails every branch of a union yields one error per branch; the one that got deepest
        # into the value is the branch the caller meant.
        deepest = max(messages)[1]
        parts.append(deepest if len(messages) == 1 else f"{name} matches none of its accepted forms; closest: {deepest}")
    if len(by_field) > MAX_VALIDATION_ERRORS_SHOWN:
        parts.append(f"and {len(by_field) - MAX_VALIDATION_ERRORS_SHOWN} more fields")
    param = next(iter(by_field), None)
    return bad_request("invalid request: " + "; ".join(parts), param=None if param == "body" else param)


def _shown_input(detail: dict) -> str:
    """The offending value, when it is short enough to quote."""
    value = detail.get("input")
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= MAX_QUOTED_INPUT_CHARS):
        return f" (got {value!r})"
    return ""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /openapi.json for the API"
        else:
            message = str(error.detail)
        response = OpenAIError(error.status_code, message).response()
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return OpenAIError(500, f"internal server error: {type(error).__name__}").response()
