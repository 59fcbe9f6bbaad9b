"""Sequence sets ("1,3:5,7:*"), of message sequence numbers or of UIDs."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Sequence

STAR = 0  # "*": the largest number in use (never a valid number itself)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    ranges: tuple[tuple[int, int], ...]

    def bounds(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with "*" as ``largest``, each as (low, high)."""
        out = []
        for lo, hi in self.ranges:
            lo = largest if lo == STAR else lo
            hi = largest if hi == STAR else hi
            out.append((lo, hi) if lo <= hi else (hi, lo))
        return out

    def largest_number(self) -> int:
        return max(max(r) for r in self.ranges)

    def has_star(self) -> bool:
        return any(STAR in r for r in self.ranges)

    def sequence_numbers(self, count: int) -> list[int]:
        """Message numbers, ascending, each once; ValueError if one is past ``count``
        (a client's view is out of step: RFC 3501 calls for BAD)."""
        if count == 0:
            if all(STAR in r for r in self.ranges):
                return []
            raise ValueError("no such message (the mailbox is empty)")
        if len(self.ranges) == 1:
            lo, hi = self.bounds(count)[0]
            if hi > count:
                raise ValueError("no such message")
            return list(range(lo, hi + 1))
        seen: set[int] = set()
        for lo, hi in self.bounds(count):
            if hi > count:
                raise ValueError("no such message")
            seen.update(range(lo, hi + 1))
        return sorted(seen)

    def select_uids(self, uids: Sequence[int]) -> list[int]:
        """Which of ``uids`` (ascending) are in the set; UIDs not there are ignored, and
        "N:*" always takes the largest UID (RFC 3501 6.4.8)."""
        if not uids:
            return []
        largest = uids[-1]
        if len(self.ranges) == 1:
            lo, hi = self.bounds(largest)[0]
            return list(uids[bisect_left(uids, lo):bisect_right(uids, hi)])
        picked: set[int] = set()
        for lo, hi in self.bounds(largest):
            picked.update(uids[bisect_left(uids, lo):bisect_right(uids, hi)])
        return sorted(picked)

    def contains(self, number: int, largest: int) -> bool:
        return any(lo <= number <= hi for lo, hi in self.bounds(largest))

    def __str__(self) -> str:
        def one(n: int) -> str:
            return "*" if n == STAR else str(n)
        return ",".join(one(lo) if lo == hi else f"{one(lo)}:{one(hi)}" for lo, hi in self.ranges)


def parse_sequence_set(text: str) -> SequenceSet:
    ranges = []
    for item in text.split(","):
        ends = item.split(":")
        if len(ends) > 2:
            raise ValueError("bad sequence set")
        numbers = []
        for end in ends:
            if end == "*":
                numbers.append(STAR)
            elif end.isdigit() and not end.startswith("0") and int(end) <= 0xFFFFFFFF:
                numbers.append(int(end))
            else:
                raise ValueError("bad sequence set")
        ranges.append((numbers[0], numbers[-1]))
    return SequenceSet(tuple(ranges))


def compress(numbers: Sequence[int]) -> str:
    """Ascending numbers as a short set: [1, 2, 3, 5] -> "1:3,5" (for COPYUID and such)."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)
