"""Incremental detokenization and stop-string matching for one sequence.

Text grows by the delta between decoding a window of tokens with and without the newest ones, and only
when that delta does not end inside a multi-byte character (U+FFFD), so UTF-8 split across tokens comes out
whole. Stop strings are matched on the text; streaming holds back what could still become one.
"""
from __future__ import annotations

PROMPT_CONTEXT_TOKENS = 5  # prompt tokens kept in the window so the first output token spaces correctly


class Detokenizer:
    def __init__(self, tokenizer, special_ids: set[int], prompt_token_ids: list[int], skip_special_tokens: bool,
                 stop_strings: list[str], include_stop_str_in_output: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop_strings = stop_strings
        self.include_stop_str_in_output = include_stop_str_in_output
        self.special_ids = special_ids  # special_token_ids(tokenizer), computed once by the engine
        self.tokens = self._to_tokens(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.text = ""
        self.stop_hold = max((len(s) for s in stop_strings), default=1) - 1

    def _to_tokens(self, token_ids: list[int]) -> list[str]:
        if self.skip_special_tokens:
            token_ids = [t for t in token_ids if t not in self.special_ids]
        return [t for t in self.tokenizer.convert_ids_to_tokens(token_ids) if t is not None]

    def add_token(self, token_id: int, check_stop: bool) -> str | None:
        """Append one token's text; returns the stop string it completed (text then cut there), if any."""
        self.tokens.extend(self._to_tokens([token_id]))
        before = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:self.read_offset])
        after = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return None
        delta = after[len(before):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        self.text += delta
        if check_stop:
            return self._cut_at_stop(len(delta))
        return None

    def _cut_at_stop(self, delta_len: int) -> str | None:
        for stop in self.stop_strings:
            # Only a match that ends inside the new text is new.
            start = self.text.find(stop, max(0, len(self.text) - delta_len - len(stop) + 1))
            if start != -1:
                self.text = self.text[: start + len(stop) if self.include_stop_str_in_output else start]
                return stop
        return None

    def streamable_text(self, finished: bool) -> str:
        """Text safe to send now: all of it once finished, else without a tail that may begin a stop string."""
        if finished or not self.stop_hold:
            return self.text
        return self.text[: max(0, len(self.text) - self.stop_hold)]


def special_token_ids(tokenizer) -> set[int]:
    """Ids tokenizer.decode(skip_special_tokens=True) drops: the special tokens and added tokens marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(token, "special", False))
    return ids
