"""McNemar's exact test: do two models that answered the same rows differ in how often they are right?

Only the discordant rows carry information: ``b`` rows the first model got right and the second
wrong, ``c`` the reverse. Under the null hypothesis (equal accuracy) each discordant row is a fair
coin, so ``b ~ Binomial(b + c, 1/2)``; the two-sided exact p-value is twice the smaller tail,
capped at 1 (McNemar 1947; the exact form is the one recommended for small or moderate ``b + c``,
Fagerland, Lydersen & Laake 2013, BMC Medical Research Methodology 13:91). The arithmetic is in
integers, so large tables neither overflow nor lose the tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb


@dataclass(frozen=True)
class Contingency:
    """The 2x2 table of two models' correctness on the same rows.

    Attributes:
        both: rows both got right.
        only_a: rows only the first got right (McNemar's ``b``).
        only_b: rows only the second got right (``c``).
        neither: rows both got wrong.
    """

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def rows(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def accuracy_a(self) -> float:
        return (self.both + self.only_a) / self.rows if self.rows else 0.0

    @property
    def accuracy_b(self) -> float:
        return (self.both + self.only_b) / self.rows if self.rows else 0.0


def contingency(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Contingency:
    """Count the 2x2 table from per-row correctness of two models (same rows, same order).

    >>> contingency([True, True, False, False, True], [True, False, True, False, False])
    Contingency(both=1, only_a=2, only_b=1, neither=1)
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"got {len(correct_a)} and {len(correct_b)} rows")
    pairs = list(zip(map(bool, correct_a), map(bool, correct_b)))
    return Contingency(
        both=pairs.count((True, True)),
        only_a=pairs.count((True, False)),
        only_b=pairs.count((False, True)),
        neither=pairs.count((False, False)),
    )


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``.

    ``p = min(1, 2 * sum_{k=0}^{min(b, c)} C(b + c, k) / 2^(b + c))``; 1.0 when there is no discordant row.

    >>> mcnemar_exact(0, 0), mcnemar_exact(3, 3)
    (1.0, 1.0)
    >>> mcnemar_exact(1, 6)  # 2 * (1 + 7) / 128
    0.125
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)
