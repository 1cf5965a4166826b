"""`bucketserve serve OUT-DIR`: the FastAPI app (routes only; handlers live in serving_*.py) and its
uvicorn wiring. The engine thread starts with the app and stops after uvicorn has drained connections."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...engine.async_engine import AsyncLLMEngine
from ...version import __version__
from .body_limit import DEFAULT_MAX_REQUEST_BYTES, LimitRequestBody
from .context import ServerContext
from .errors import OpenAIError, install_error_handlers
from .metrics import ServerMetrics
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    dump,
)
from .serving_chat import create_chat_completion
from .serving_completion import create_completion
from .serving_tokens import detokenize, tokenize, tokenizer_info
from .sse import DONE, event

logger = logging.getLogger(__name__)

DEFAULT_MAX_WAITING = 256
DEFAULT_SHUTDOWN_TIMEOUT_S = 10
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}
# Where --api-key is read from when not given (vLLM reads VLLM_API_KEY): a key on the command line shows in `ps`.
API_KEY_ENV = "BUCKETSERVE_API_KEY"


def load_server_context(model_dir: str | Path, served_model_name: str | None = None,
                        max_waiting: int = DEFAULT_MAX_WAITING, api_key: str | None = None,
                        enable_prefix_caching: bool = True, max_num_batched_tokens: int | None = None,
                        llm=None, traffic_log: str | None = None) -> ServerContext:
    """Load a compiled directory into an engine (not started yet) and everything the handlers need; llm: the
    directory already loaded (run_server loads it first to learn this process's rank)."""
    from transformers import AutoTokenizer

    from ..llm import LLM

    if max_waiting < 0:
        raise ValueError(f"max_waiting is {max_waiting}; give 0 (no queue: only what the running slots hold) or more")
    if llm is None:
        llm = LLM(model=str(model_dir), enable_prefix_caching=enable_prefix_caching,
                  max_num_batched_tokens=max_num_batched_tokens)
    metrics = ServerMetrics(traffic_log)
    engine = AsyncLLMEngine(llm.llm_engine, observer=metrics)
    metrics.watch(engine)
    return ServerContext(engine=engine, tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
                         prompt_tokenizer=AutoTokenizer.from_pretrained(str(model_dir)), metrics=metrics,
                         served_model_name=served_model_name or Path(model_dir).name, model_dir=str(model_dir),
                         max_waiting=max_waiting, api_key=api_key)


def build_app(ctx: ServerContext, allowed_origins: list[str] | None = None,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The app over ctx; allowed_origins: the browser origins CORS lets call it (default all, as vLLM);
    max_request_bytes: bodies over it get 413 unread."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await ctx.engine.shutdown()

    app = FastAPI(title="bucketserve", description="OpenAI-compatible server over a bucketserve compiled directory",
                  lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.ctx = ctx
    app.add_middleware(EndCancelledRequests)
    app.add_middleware(LimitRequestBody, max_bytes=max_request_bytes)
    app.add_middleware(CORSMiddleware, allow_origins=allowed_origins or ["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(_openai_routes(ctx))
    app.include_router(_extra_routes(ctx))
    return app


class EndCancelledRequests:
    """uvicorn cancels requests still open when its graceful-shutdown timeout ends (their engine requests are
    aborted by then, in each handler's finally). Answer them properly instead of with a traceback: a 503 if
    nothing was sent yet, else an error event and [DONE] to end the stream."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent_headers: list = []

        async def send_tracked(message) -> None:
            if message["type"] == "http.response.start":
                sent_headers.append(dict(message.get("headers", [])))
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            logger.warning("%s %s was cut short by the server shutting down", scope.get("method"), scope.get("path"))
            error = OpenAIError(503, "the server is shutting down; retry on another server")
            if not sent_headers:
                await error.response()(scope, receive, send)
            elif sent_headers[0].get(b"content-type", b"").startswith(b"text/event-stream"):
                body = (event(error.body()) + DONE).encode()
                await send({"type": "http.response.body", "body": body, "more_body": False})


def _api_key_check(ctx: ServerContext):
    """The dependency /v1 and the tokenizer routes share: 401 unless the request carries the key (if any)."""
    async def check_api_key(request: Request) -> None:
        if ctx.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), ctx.api_key.encode()):
            raise OpenAIError(401, "missing or wrong API key; send the key given to --api-key (or "
                                   f"{API_KEY_ENV}) as 'Authorization: Bearer KEY'", code="invalid_api_key")

    return Depends(check_api_key)


def _openai_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[_api_key_check(ctx)])

    def card() -> ModelCard:
        return ModelCard(id=ctx.served_model_name, root=ctx.model_dir, max_model_len=ctx.max_model_len)

    @router.get("/models", response_model=ModelList)
    async def models() -> JSONResponse:
        return JSONResponse(dump(ModelList(data=[card()])))

    @router.get("/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str) -> JSONResponse:
        if model_id != ctx.served_model_name:
            raise OpenAIError(404, f"model {model_id!r} is not served here; use {ctx.served_model_name!r}",
                              param="model", code="model_not_found")
        return JSONResponse(dump(card()))

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(ctx, body, request)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(ctx, body, request)

    return router


def _extra_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if ctx.engine.is_running else 503)

    @router.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": __version__})

    # Tokenizing is work a client could make the server do without end: behind the key, as /v1 is. Health,
    # version, tokenizer_info and metrics stay open (probes and scrapers carry no key).
    @router.post("/tokenize", dependencies=[_api_key_check(ctx)])
    async def tokenize_route(body: TokenizeRequest) -> JSONResponse:
        return JSONResponse(dump(await ctx.in_prompt_thread(tokenize, ctx, body)))

    @router.post("/detokenize", dependencies=[_api_key_check(ctx)])
    async def detokenize_route(body: DetokenizeRequest) -> JSONResponse:
        return JSONResponse(dump(await ctx.in_prompt_thread(detokenize, ctx, body)))

    @router.get("/tokenizer_info")
    async def tokenizer_info_route() -> JSONResponse:
        return JSONResponse(dump(tokenizer_info(ctx)))

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


# ---- command line ----
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="compiled directory (bucketserve compile / save_pretrained)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                        help=f"require 'Authorization: Bearer KEY' on /v1, /tokenize and /detokenize (default: "
                             f"${API_KEY_ENV}, which keeps the key out of `ps`)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"request bodies over this many bytes get 413 unread (default {DEFAULT_MAX_REQUEST_BYTES})")
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: the directory name)")
    parser.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                        help="requests (one per prompt) allowed to wait for a running slot (the compiled batch size) "
                             "before new ones get 503; 0: only what the running slots hold")
    parser.add_argument("--allowed-origins", nargs="+", default=["*"], metavar="ORIGIN",
                        help="browser origins CORS lets call the server (default: any)")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                        help="seconds in-flight requests get to finish on SIGINT/SIGTERM before they are aborted")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV blocks of prompt prefixes seen before (default: on)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="prompt tokens one engine step prefills at most (a longer prompt takes several steps, "
                             "so decoding requests wait at most this many tokens' prefill); default max_model_len")
    parser.add_argument("--traffic-log", default=None, metavar="FILE",
                        help="append one JSON line per finished request (arrival, prompt/cached/output tokens, finish) "
                             "for `bucketserve plan MODEL --traffic FILE`")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    from ..llm import LLM

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    llm = LLM(model=str(args.model), enable_prefix_caching=args.enable_prefix_caching,
              max_num_batched_tokens=args.max_num_batched_tokens)
    if llm.rank != 0:  # under torchrun: rank 0 alone serves HTTP; this rank runs its steps until it stops
        logger.info("rank %d: running rank 0's steps; rank 0 serves HTTP", llm.rank)
        llm.follow()
        return
    ctx = load_server_context(args.model, args.served_model_name, args.max_waiting, args.api_key, llm=llm,
                              traffic_log=args.traffic_log)
    logger.info("serving %s as %r on http://%s:%d/v1", args.model, ctx.served_model_name, args.host, args.port)
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, gives open requests --shutdown-timeout seconds, cancels
    # the rest (which aborts their engine requests), then runs the lifespan exit that stops the engine thread.
    # After a clean shutdown uvicorn re-raises the signal it caught, so SIGTERM ends the process with the
    # usual 143; SIGINT comes back as KeyboardInterrupt, which needs no traceback.
    try:
        uvicorn.run(build_app(ctx, args.allowed_origins, args.max_request_bytes), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=args.shutdown_timeout)
    except KeyboardInterrupt:
        logger.info("stopped by SIGINT")
