"""vLLM's tokenizer endpoints: POST /tokenize (a prompt, or chat messages through the template),
POST /detokenize (both run on the prompt thread), GET /tokenizer_info."""
from __future__ import annotations

from ...models.vocabulary import check_token_ids
from .context import ServerContext
from .errors import bad_request
from .prompt_tokens import check_text_fits, render_chat
from .protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    TokenizerInfo,
)


def tokenize(ctx: ServerContext, body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
    ctx.check_model(body.model)
    if isinstance(body, TokenizeChatRequest):
        text = render_chat(ctx, body.messages, body.add_generation_prompt)
        check_text_fits(ctx, text, param="messages")
        tokens = ctx.prompt_tokenizer.encode(text, add_special_tokens=False)
    else:
        check_text_fits(ctx, body.prompt)
        tokens = ctx.prompt_tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return TokenizeResponse(count=len(tokens), max_model_len=ctx.max_model_len, tokens=tokens)


def detokenize(ctx: ServerContext, body: DetokenizeRequest) -> DetokenizeResponse:
    ctx.check_model(body.model)
    try:
        check_token_ids(body.tokens, ctx.vocab_size)
    except ValueError as error:
        raise bad_request(str(error), param="tokens") from None
    return DetokenizeResponse(prompt=ctx.prompt_tokenizer.decode(body.tokens))


def tokenizer_info(ctx: ServerContext) -> TokenizerInfo:
    tokenizer = ctx.tokenizer
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__, vocab_size=ctx.vocab_size, max_model_len=ctx.max_model_len,
        bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
