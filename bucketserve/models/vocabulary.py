"""The one check of token ids against a vocabulary, made wherever ids come in (the raw prefill/decode API, a
request added to the engine, the server's prompts and sampling fields): an id outside it would index past the
embedding inside a graph (a C++ trace on every rank) or past the logits in the sampler."""
from __future__ import annotations

from collections.abc import Iterable


def check_token_ids(token_ids: Iterable, vocab_size: int, what: str = "token ids") -> None:
    """Raise ValueError naming the first ids outside [0, vocab_size) (anything but an int counts as outside)."""
    outside = [t for t in token_ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
    if outside:
        raise ValueError(f"{what} {outside[:5]} are outside the vocabulary [0, {vocab_size})")
