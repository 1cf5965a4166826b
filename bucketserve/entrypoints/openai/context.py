"""What every handler needs, built once per server: the async engine, the event loop's own tokenizer,
the metrics, and the serving options (model name, queue limit, API key)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.async_engine import AsyncLLMEngine
from .errors import OpenAIError, bad_request
from .metrics import ServerMetrics


@dataclass
class ServerContext:
    engine: AsyncLLMEngine
    tokenizer: Any  # a copy of its own: HF fast tokenizers must not be shared with the engine thread
    metrics: ServerMetrics
    served_model_name: str
    model_dir: str
    max_waiting: int  # requests allowed to wait for a running slot before new ones get 503
    api_key: str | None = None
    max_model_len: int = field(init=False)
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_model_len = self.engine.max_model_len
        self.vocab_size = self.engine.vocab_size

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_model_name:
            raise bad_request(f"model {name!r} is not served here; use {self.served_model_name!r} (see GET /v1/models)",
                              param="model", code="model_not_found")

    def check_capacity(self, new_requests: int) -> None:
        waiting = self.engine.num_waiting_requests
        if waiting + new_requests > self.max_waiting:
            raise OpenAIError(503, f"the server is busy: {waiting} requests already wait for a slot and --max-waiting is "
                                   f"{self.max_waiting}; retry later", code="server_overloaded")
