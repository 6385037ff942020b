"""The frozen reference of alignment, and the dropout handling both policy and reference need."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run with dropout off, then restore every submodule's own train/eval mode."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def turn_off_dropout(module: nn.Module) -> None:
    """Set every dropout probability to 0: with dropout the policy/reference log-ratio is noise at
    step 0 instead of exactly 0, which biases the DPO gradient (TRL's ``disable_dropout`` default)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # transformers 4.x BERT sdpa attention passes its own ``dropout_prob`` to the kernel, not an nn.Dropout
        if isinstance(getattr(m, "dropout_prob", None), float):
            m.dropout_prob = 0.0


class FrozenCopy(nn.Module):
    """A frozen deep copy of a network (the SFT model at the start of alignment): eval mode, no gradients.

    ``forward`` is the copied network's own, so reference and policy score answers identically
    by construction.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenCopy:
        """Stay in eval mode whatever the trainer asks: the reference never samples dropout."""
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)
