"""The OpenAI wire format as pydantic models: requests (validated strictly, every count bounded so no
request can ask for unbounded work) and responses (OpenAI's field names and shapes). No behavior here."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .chat_messages import ChatMessages
from .prompt_shapes import MAX_PROMPT_TOKENS, Prompt, PromptText
from .validation import RequestModel, by_json_type, one_of

# Bounds on the work one request can ask for; the model's own limit (max_model_len) is checked later.
MAX_TOKENS_LIMIT = 1 << 20
MAX_CHOICES = 16  # n
MAX_LOGPROBS = 20  # logprobs / top_logprobs, as OpenAI and vLLM allow
MAX_STOP_STRINGS = 32
MAX_LOGIT_BIAS = 1024  # tokens in logit_bias (OpenAI allows 300)
MAX_SEED = (1 << 63) - 1 - MAX_CHOICES  # the engine seeds choice i with seed + i


class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


StopStrings = Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)]
Stop = by_json_type(str | StopStrings, "a string or an array of strings", {str: str, list: StopStrings})
ToolChoice = by_json_type(str | dict, "a string or an object", {str: str, dict: dict})


class SamplingFields(RequestModel):
    """Sampling options shared by completions and chat (vLLM's extras included)."""
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    temperature: float | None = Field(None, ge=0, le=1e4)  # above float32's range, logits / temperature is NaN
    # Lower bounds tighter than vLLM's "> 0": the sampler works in float32, where a top_p below ~1e-45 is 0
    # (every token filtered out) and logits / a tiny repetition_penalty overflow to inf.
    top_p: float | None = Field(None, ge=1e-6, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    stop: Stop | None = None
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_STOP_STRINGS)] | None = None
    include_stop_str_in_output: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    # Token id (a string in JSON) -> bias added to its logit, OpenAI's range.
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=0, le=MAX_TOKENS_LIMIT)  # 0 only with echo
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: None = None  # not supported; any value is a 400
    best_of: int | None = None  # only None or n: more candidates than returned choices is not supported


class ChatCompletionRequest(SamplingFields):
    messages: ChatMessages
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    # Not supported, and a request that sets them expects what they do, so any value but "off" is a 400.
    tools: list | None = None
    functions: list | None = None
    tool_choice: ToolChoice | None = None
    response_format: dict | None = None


class TokenizeCompletionRequest(RequestModel):
    model: str | None = None
    prompt: PromptText
    add_special_tokens: bool = True


class TokenizeChatRequest(RequestModel):
    model: str | None = None
    messages: ChatMessages
    add_generation_prompt: bool = True


_TOKENIZE_ADAPTERS = {"chat": TypeAdapter(TokenizeChatRequest), "completion": TypeAdapter(TokenizeCompletionRequest)}
# A body with `messages` is a chat one (so its errors are about the messages, not a missing prompt).
TokenizeRequest = one_of(TokenizeCompletionRequest | TokenizeChatRequest, lambda body: _TOKENIZE_ADAPTERS[
    "chat" if isinstance(body, dict) and "messages" in body else "completion"])


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_PROMPT_TOKENS)]


# ---- responses ----
def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorInfo


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "bucketserve"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class CompletionLogprobs(ResponseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: the first prompt token
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None


class CompletionResponse(ResponseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(ResponseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(ResponseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(ResponseModel):
    prompt: str


class TokenizerInfo(ResponseModel):
    tokenizer_class: str
    vocab_size: int
    max_model_len: int
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    chat_template: str | None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
