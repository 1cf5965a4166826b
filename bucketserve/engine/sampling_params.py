"""SamplingParams with vLLM's names, defaults and range checks (ValueError naming the field)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models.vocabulary import check_token_ids

GREEDY_EPSILON = 1e-5
# torch.Generator.manual_seed's range; choice i of a request is seeded with seed + i.
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: every token
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to max_model_len
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True  # accepted for vLLM scripts; fast tokenizers ignore it, as here
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # top-k log-probabilities of each sampled token (-1: the whole vocabulary)
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None  # added to those tokens' logits before choosing (not to logprobs)

    def __post_init__(self) -> None:
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check(_is_int(self.n) and self.n >= 1, "n", self.n, "an integer >= 1")
        _check(_is_num(self.temperature) and self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(_is_int(self.top_k) and self.top_k >= -1, "top_k", self.top_k, "an integer >= -1 (0 or -1: off)")
        _check(_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(self.seed is None or (_is_int(self.seed) and SEED_RANGE[0] <= self.seed and self.seed + self.n - 1 <= SEED_RANGE[1]),
               "seed", self.seed, f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]} - (n - 1)] or None")
        _check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1), "max_tokens", self.max_tokens, "an integer >= 1 or None")
        _check(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", self.min_tokens, "an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} must be <= max_tokens {self.max_tokens}")
        _check(all(isinstance(s, str) and s for s in self.stop_strings), "stop", self.stop, "a non-empty string or list of them")
        _check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids", self.stop_token_ids, "a list of token ids >= 0")
        _check(_is_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "> 0")
        _check(_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty, "in [-2, 2]")
        _check(_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        _check(self.logprobs is None or (_is_int(self.logprobs) and self.logprobs >= -1), "logprobs", self.logprobs, "an integer >= -1 or None")
        _check(self.prompt_logprobs is None or (_is_int(self.prompt_logprobs) and self.prompt_logprobs >= -1), "prompt_logprobs", self.prompt_logprobs, "an integer >= -1 or None")
        _check(self.logit_bias is None or (isinstance(self.logit_bias, dict) and all(
            _is_int(t) and t >= 0 and _is_num(b) and abs(b) != float("inf") for t, b in self.logit_bias.items())),
            "logit_bias", self.logit_bias, "a dict of token id (>= 0) to a finite bias, or None")

    def check_vocabulary(self, vocab_size: int) -> None:
        """What the fields cannot check alone: the token ids and counts they name against a vocabulary (caught
        when a request is added, not as an index error in a later step that would end every request in it)."""
        for name in ("logprobs", "prompt_logprobs"):
            count = getattr(self, name)
            if count is not None and count > vocab_size:
                raise SamplingParamsError(name, f"SamplingParams.{name} {count} is more than the vocabulary's "
                                                f"{vocab_size} tokens; use -1 for all of them")
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("logit_bias", list(self.logit_bias or {}))):
            try:
                check_token_ids(ids or (), vocab_size, f"{name} token ids")
            except ValueError as error:
                raise SamplingParamsError(name, str(error)) from None

    @property
    def stop_strings(self) -> list[str]:
        """stop as a list, read when a request starts (so a stop set after construction counts too)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPSILON

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # rejects NaN


class SamplingParamsError(ValueError):
    """A field out of range; .field names it (the server reports it as the error's param)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _check(ok: bool, name: str, value, rule: str) -> None:
    if not ok:
        raise SamplingParamsError(name, f"SamplingParams.{name} must be {rule}, got {value!r}")
