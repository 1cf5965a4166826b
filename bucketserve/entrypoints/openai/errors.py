"""OpenAI-style errors, {"error": {"message", "type", "param", "code"}}, for every failure a request can
meet: our own checks, FastAPI's validation (422 there, 400 here, as OpenAI answers), unknown routes, bugs."""
from __future__ import annotations

import json
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
    """OpenAI's 400 for what pydantic found, first error first: "Invalid type for 'messages[0].name': input
    should be a valid string (got 5)." with `param` that error's path and `code` its kind."""
    details = error.errors()
    if any(detail.get("type") == "json_invalid" for detail in details):
        return bad_request("the request body is not valid JSON; send a JSON object with Content-Type: application/json")
    described = [_describe(detail) for detail in details]
    messages = [message for _, _, message in described[:MAX_VALIDATION_ERRORS_SHOWN]]
    if len(described) > MAX_VALIDATION_ERRORS_SHOWN:
        messages.append(f"({len(described) - MAX_VALIDATION_ERRORS_SHOWN} more not shown.)")
    param, code, _ = described[0]
    return bad_request(" ".join(messages), param=param, code=code)


def _describe(detail: dict) -> tuple[str | None, str, str]:
    """(param, code, message) for one pydantic error, with OpenAI's codes and wording."""
    param = _param(detail.get("loc", ()))
    where = f"'{param}'" if param else "the request body"
    kind = detail.get("type", "")
    if kind == "missing":
        return param, "missing_required_parameter", f"Missing required parameter: {where}."
    message = detail.get("msg", "invalid value")
    message = message[:1].lower() + message[1:] + _shown_input(detail)
    context = detail.get("ctx") or {}
    if kind == "too_short" and context.get("actual_length") == 0:
        return param, "empty_array", f"Invalid {where}: empty array; give at least {context.get('min_length', 1)} item."
    if kind.endswith("_type"):  # pydantic's string_type, list_type, model_type, ..., and value_error("invalid_type")
        return param, "invalid_type", f"Invalid type for {where}: {message}."
    if kind == "unsupported_value":
        return param, kind, f"Unsupported value for {where}: {message}."
    return param, "invalid_value", f"Invalid value for {where}: {message}."


def _param(location: tuple) -> str | None:
    """pydantic's ('body', 'messages', 1, 'content') as OpenAI writes it: messages[1].content."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "body" or path:
            path += f".{part}" if path else str(part)
    return path or None


def _shown_input(detail: dict) -> str:
    """The offending value as JSON, when it is a short scalar."""
    if "input" not in detail:
        return ""
    value = detail["input"]
    short = value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= MAX_QUOTED_INPUT_CHARS)
    return f" (got {json.dumps(value)})" if short else ""


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
