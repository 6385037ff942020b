"""Length-bucketed batching: fewer pad tokens per batch, same randomness across epochs."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Shuffle, sort each window of ``window_batches`` batches by length, cut into batches, shuffle batches.

    Rows of similar length share a batch, so dynamic padding pads little, while the batch order
    (and which rows meet) still changes every epoch. Seeded by ``seed`` and the epoch.

    Args:
        lengths: a length per row (characters are a good proxy for tokens).
        batch_size: rows per batch.
        seed: base seed; Lightning calls :meth:`set_epoch` each epoch.
        window_batches: how many batches' worth of rows are sorted together.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=self.lengths.__getitem__)
            batches.extend(window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size))
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.window)
        return full * -(-self.window // self.batch_size) + -(-rest // self.batch_size)
