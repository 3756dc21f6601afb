"""Token ids -> text deltas, safely: never half a UTF-8 character, never part of a stop string;
and the event a stream yields for each new token."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.tokenizers import Tokenizer


class TextAssembler:
    """Builds one sequence's text token by token.

    Decoding a window of recent tokens (not each token alone) keeps multi-token characters and
    byte-level spaces right; text ending in U+FFFD waits for the rest of its bytes. Text that
    could be the start of a stop string is held back until it is known not to be one.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0  # decoding window: ids[_prefix:_read] were already turned into text
        self._read = 0

    def add(self, token_id: int) -> str:
        """Append a token; return the new text that is safe to show (maybe empty)."""
        self.ids.append(token_id)
        if self.stopped:
            return ""
        done = self.tokenizer.decode(self.ids[self._prefix : self._read])
        now = self.tokenizer.decode(self.ids[self._prefix :])
        if len(now) > len(done) and not now.endswith("\ufffd"):
            self._append(now[len(done) :])
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The end of the sequence: release everything still held back."""
        if not self.stopped and self._read < len(self.ids):
            done = self.tokenizer.decode(self.ids[self._prefix : self._read])
            now = self.tokenizer.decode(self.ids[self._prefix :])
            self._append(now[len(done) :])
            self._read = len(self.ids)
        return self._release(final=True)

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


@dataclass
class StreamEvent:
    """One new token of sequence `index`: its id, log-probability and the text it adds.
    `token_id` is None only for a sequence that ends with no token (max_new_tokens=0)."""

    index: int
    token_id: int | None
    logprob: float | None
    text: str
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None


def token_event(
    row: int,
    token: int,
    logprob: float,
    top: dict[int, float] | None,
    assembler: TextAssembler,
    eos: set[int],
    last: bool,
) -> StreamEvent:
    """The event for one new token: its text, and why the sequence ends here, if it does."""
    reason = None
    if token in eos:
        reason, text = "eos", assembler.finish()
    else:
        text = assembler.add(token)
        if assembler.stopped:
            reason = "stop"
        elif last:
            reason, text = "length", text + assembler.finish()
    return StreamEvent(row, token, logprob, text, top, reason)
