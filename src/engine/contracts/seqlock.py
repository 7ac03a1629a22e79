"""The one seqlock: a sequence counter in shared memory that makes a record tear-free.

The writer makes the counter odd, writes, and makes it even again; a reader copies the
record between two loads of an even counter and retries a bounded number of times, so
neither side ever waits for the other. Counters are aligned 8-byte numpy loads and stores,
which x86 keeps in program order (on a weakly ordered CPU the writer would need fences;
Python gives none).

A writer that was stopped half-way (killed, or interrupted by a signal between its two
stores) leaves the counter odd. The next :meth:`Seqlock.begin_write` takes ``seq | 1`` as
its odd value, so the counter moves on to even at the end of that write and readers see
the block again: a block is never stuck "mid-write".

Example:
    >>> import numpy as np
    >>> words = np.zeros(4, dtype="<u8")
    >>> lock = Seqlock(words, 0)
    >>> odd = lock.begin_write(); words[1] = 42; lock.end_write(odd)
    >>> lock.read(lambda: int(words[1]))
    42
    >>> words[0] = 7                    # a writer died mid-write
    >>> lock.read(lambda: int(words[1])) is None
    True
    >>> odd = lock.begin_write(); lock.end_write(odd); lock.read(lambda: int(words[1]))
    42
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")

U64_MAX = 2**64 - 1
#: How often a reader retries a record the writer keeps changing before it gives up.
READ_ATTEMPTS = 16


class Seqlock:
    """One sequence counter: word ``index`` of ``words`` (a ``<u8`` view of shared memory).

    The counter starts at 0, which readers take as "nothing written yet".
    """

    __slots__ = ("_words", "_index")

    def __init__(self, words: np.ndarray, index: int) -> None:
        self._words = words
        self._index = index

    def load(self) -> int:
        """The counter now (one aligned 8-byte load)."""
        return int(self._words[self._index])

    def begin_write(self) -> int:
        """Make the counter odd (readers keep out) and return that odd value.

        A counter left odd by a writer that stopped half-way stays odd here and is made
        even by the matching :meth:`end_write`.
        """
        odd = (int(self._words[self._index]) | 1) & U64_MAX
        self._words[self._index] = odd
        return odd

    def end_write(self, odd: int) -> None:
        """Make the counter even again: the record written since :meth:`begin_write` is
        settled."""
        self._words[self._index] = (odd + 1) & U64_MAX

    def bump_even(self, step: int = 2) -> None:
        """Move the counter on to a fresh even value (invalidates what readers hold)."""
        self._words[self._index] = (int(self._words[self._index]) + step) & U64_MAX & ~1

    def read(self, copy: Callable[[], T], attempts: int = READ_ATTEMPTS) -> T | None:
        """``copy()`` taken while the counter was even and unchanged, or ``None`` when
        nothing was written yet (counter 0) or the writer kept it moving for ``attempts``
        tries. Never waits."""
        for _ in range(attempts):
            seq = int(self._words[self._index])
            if seq == 0:
                return None
            if seq & 1:
                continue
            value = copy()
            if int(self._words[self._index]) == seq:
                return value
        return None
