"""The shapes a completions `prompt` takes: a string, a list of strings, token ids, or a list of token-id
lists; which one a prompt is comes from its JSON type and its first item's, so a malformed prompt gets the
errors of the shape it started as ("prompt[1]: not an integer"), not one per shape."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from .validation import STRICT, Text, one_of, value_error

MAX_PROMPTS = 64  # prompts in one completions request
MAX_PROMPT_CHARS = 1 << 22
MAX_PROMPT_TOKENS = 1 << 20

PromptText = Annotated[Text, Field(max_length=MAX_PROMPT_CHARS)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]
PromptTexts = Annotated[list[PromptText], Field(min_length=1, max_length=MAX_PROMPTS)]
TokenIdLists = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
_TEXT, _TEXTS, _TOKEN_IDS, _TOKEN_ID_LISTS = (TypeAdapter(shape, config=STRICT)
                                               for shape in (PromptText, PromptTexts, TokenIds, TokenIdLists))


def _prompt_shape(prompt: Any) -> TypeAdapter:
    if isinstance(prompt, str):
        return _TEXT
    if not isinstance(prompt, list):
        raise value_error("invalid_type", "expected a string, an array of strings, an array of token ids or an array "
                                          "of token-id arrays", prompt)
    first = prompt[0] if prompt else None
    if isinstance(first, str):
        return _TEXTS
    # [] and [1.5] get token ids' errors: "empty array", "prompt[0]: not an integer".
    return _TOKEN_ID_LISTS if isinstance(first, list) else _TOKEN_IDS


Prompt = one_of(PromptText | PromptTexts | TokenIds | TokenIdLists, _prompt_shape)
