"""Training-row orders that are a pure function of ``(seed, epoch)`` and can start part-way.

Both samplers here can *skip* the rows an interrupted epoch already trained on: after a
``kill -9`` and ``--ckpt_path last``, the resumed run sees exactly the batches the uninterrupted
run would have seen (Lightning alone restarts a plain ``DataLoader`` from its first batch).
They are single-process samplers; under DDP the data module uses Lightning's
``DistributedSampler`` instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """A random permutation of ``range(num_rows)`` seeded by ``seed + epoch``.

    Args:
        num_rows: dataset size.
        seed: base seed; Lightning calls :meth:`set_epoch` each epoch.
        epoch: the epoch to start in (set when resuming).
        skip: rows of that epoch already trained on; skipped by the next iteration only.
    """

    def __init__(self, num_rows: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = epoch
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A generator, so the order is drawn at the first ``next`` (after Lightning's set_epoch).
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        skip, self.skip = self.skip, 0
        yield from order[skip:]

    def __len__(self) -> int:
        # The full epoch: Lightning counts the skipped batches as already done.
        return self.num_rows


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Shuffle, sort each window of ``window_batches`` batches by length, cut into batches, shuffle batches.

    Rows of similar length share a batch, so dynamic padding pads little, while the batch order
    (and which rows meet) still changes every epoch. Seeded by ``seed`` and the epoch.

    Args:
        lengths: a length per row (characters are a good proxy for tokens).
        batch_size: rows per batch.
        seed: base seed; Lightning calls :meth:`set_epoch` each epoch.
        window_batches: how many batches' worth of rows are sorted together.
        epoch: the epoch to start in (set when resuming).
        skip_batches: batches of that epoch already trained on; skipped by the next iteration only.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        window_batches: int = 50,
        epoch: int = 0,
        skip_batches: int = 0,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches
        self.epoch = epoch
        self.skip_batches = skip_batches

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
        skip, self.skip_batches = self.skip_batches, 0
        yield from batches[skip:]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.window)
        return full * -(-self.window // self.batch_size) + -(-rest // self.batch_size)
