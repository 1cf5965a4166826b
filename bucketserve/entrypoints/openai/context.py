"""What every handler needs, built once per server: the async engine, the tokenizers (one for the event
loop, one for the prompt thread), the metrics, and the serving options (model name, queue limit, API key)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...engine.async_engine import AsyncLLMEngine
from .errors import OpenAIError, bad_request
from .metrics import ServerMetrics

T = TypeVar("T")
# Characters a normalizer may fold into one (NFC composes a letter and up to a few combining marks).
NORMALIZER_MARGIN = 4


def longest_token_chars(tokenizer) -> int:
    """The most characters of text one token can stand for: its vocabulary's longest entry (byte-level BPE spells
    each byte as one character, SentencePiece a space as one, so no token covers more text than its entry is
    long; added tokens are their text). So a prompt of n characters has at least n / this many tokens."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


@dataclass
class ServerContext:
    engine: AsyncLLMEngine
    # HF fast tokenizers must not be shared between threads, so each user has its own copy: the engine
    # thread (output text), the event loop (logprob and echo token text: short work), and the prompt thread,
    # which tokenizes and detokenizes requests' prompts (up to MAX_PROMPT_CHARS, seconds of work).
    tokenizer: Any
    prompt_tokenizer: Any
    metrics: ServerMetrics
    served_model_name: str
    model_dir: str
    max_waiting: int  # requests allowed to wait for a running slot before new ones get 503
    api_key: str | None = None
    max_model_len: int = field(init=False)
    vocab_size: int = field(init=False)
    max_prompt_chars: int = field(init=False)  # no longer text can fit max_model_len tokens (prompts.check_text_fits)
    _prompt_thread: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.max_model_len = self.engine.max_model_len
        self.vocab_size = self.engine.vocab_size
        self.max_prompt_chars = self.max_model_len * longest_token_chars(self.prompt_tokenizer) * NORMALIZER_MARGIN
        self._prompt_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bucketserve-prompts")

    async def in_prompt_thread(self, work: Callable[..., T], *args) -> T:
        """work(*args) on the prompt thread (which owns prompt_tokenizer), the event loop free meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._prompt_thread, work, *args)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_model_name:
            raise bad_request(f"model {name!r} is not served here; use {self.served_model_name!r} (see GET /v1/models)",
                              param="model", code="model_not_found")

    def check_capacity(self, new_requests: int) -> None:
        """503 unless the new requests (one per prompt) find a running slot or a place among the --max-waiting
        that wait for one. A request counts once whatever its n, so a server with room takes any n."""
        slots = self.engine.max_num_seqs
        unfinished = self.engine.num_unfinished_requests
        if unfinished + new_requests > slots + self.max_waiting:
            raise OpenAIError(503, f"the server is busy: {min(unfinished, slots)} requests hold its {slots} running slots, "
                                   f"{max(unfinished - slots, 0)} wait for one and --max-waiting is {self.max_waiting}; "
                                   "retry later", code="server_overloaded")
