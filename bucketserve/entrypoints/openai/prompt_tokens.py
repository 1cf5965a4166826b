"""From a request's prompt (text, token ids, or chat messages) to checked token ids: inside the
vocabulary, and leaving room for max_tokens within max_model_len. Tokenizing runs on the prompt thread
(ServerContext.in_prompt_thread), with its own tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

from ...models.vocabulary import check_token_ids
from .chat_messages import ChatMessage, content_text
from .context import ServerContext
from .errors import bad_request


@dataclass
class Prompt:
    text: str | None  # None when the request gave token ids
    token_ids: list[int]

    def echo_text(self, tokenizer) -> str:
        return self.text if self.text is not None else tokenizer.decode(self.token_ids)


def completion_prompts(ctx: ServerContext, prompt) -> list[Prompt]:
    """A completions `prompt`: a string, a list of strings, token ids, or a list of token-id lists."""
    items = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
    prompts = []
    for item in items:
        if isinstance(item, str):
            check_text_fits(ctx, item)
            prompts.append(Prompt(item, ctx.prompt_tokenizer.encode(item, add_special_tokens=True)))
        else:
            prompts.append(Prompt(None, list(item)))
    return prompts


def chat_prompt(ctx: ServerContext, messages: list[ChatMessage], add_generation_prompt: bool) -> Prompt:
    text = render_chat(ctx, messages, add_generation_prompt)
    check_text_fits(ctx, text, param="messages")
    # The chat template writes any special tokens itself.
    return Prompt(text, ctx.prompt_tokenizer.encode(text, add_special_tokens=False))


def render_chat(ctx: ServerContext, messages: list[ChatMessage], add_generation_prompt: bool) -> str:
    conversation = [{"role": m.role, "content": content_text(m.content), **({"name": m.name} if m.name else {})}
                    for m in messages]
    # Before the template runs over it: the messages' text alone may be more than any context holds.
    check_text_fits(ctx, "".join(turn["content"] for turn in conversation), param="messages")
    try:
        return ctx.prompt_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as error:  # a template may reject a conversation (roles out of order, ...): the caller's input
        raise bad_request(f"the model's chat template rejected these messages: {error}", param="messages") from error


def check_text_fits(ctx: ServerContext, text: str, param: str = "prompt") -> None:
    """Refuse, before tokenizing it, text too long for any prompt of max_model_len tokens: tokenizing megabytes
    would hold the prompt thread for seconds, and every other request's prompt behind it."""
    if len(text) > ctx.max_prompt_chars:
        raise bad_request(f"the prompt is {len(text)} characters, more than a context of {ctx.max_model_len} tokens "
                          f"can hold (at most {ctx.max_prompt_chars} characters with this tokenizer); shorten it",
                          param=param, code="context_length_exceeded")


def check_prompt(ctx: ServerContext, prompt: Prompt, max_tokens: int | None, param: str = "prompt") -> int:
    """Reject a prompt the model cannot run; returns max_tokens, filled in with the room left when None."""
    ids = prompt.token_ids
    if not ids:
        raise bad_request("the prompt is empty after tokenization; give at least one token", param=param)
    try:
        check_token_ids(ids, ctx.vocab_size, "prompt token ids")
    except ValueError as error:
        raise bad_request(str(error), param=param) from None
    room = ctx.max_model_len - len(ids)
    if max_tokens is None:
        if room < 1:
            raise bad_request(f"the prompt has {len(ids)} tokens but the model's context is {ctx.max_model_len}; "
                              f"shorten it to at most {ctx.max_model_len - 1} tokens", param=param, code="context_length_exceeded")
        return room
    if max_tokens > room:
        fix = f"lower max_tokens to at most {room} or shorten the prompt" if room >= 1 else \
            f"shorten the prompt to at most {ctx.max_model_len - 1} tokens"
        raise bad_request(f"the prompt has {len(ids)} tokens and max_tokens asks for {max_tokens} more, over the model's "
                          f"context of {ctx.max_model_len}; {fix}", param="max_tokens", code="context_length_exceeded")
    return max_tokens
