"""CPU training machinery: the fused AdamW, clipping and learning under bf16-mixed, the no-native-bf16 warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sentex.models import Seq2SeqExtractor, SpanExtractor
from sentex.models.optim import build_optimizer
from sentex.training import cpu_precision
from sentex.training.cpu_precision import CPUPrecisionCheck
from tests.conftest import TWEETS, write_rows
from tests.helpers import fit_steps


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused"))


def test_build_optimizer_uses_the_fused_adamw_on_cpu_unless_told_not_to() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer, _ = build_optimizer(net, 1e-3, 0.01, 0, 10)
    assert is_fused(optimizer)
    unfused, _ = build_optimizer(net, 1e-3, 0.01, 0, 10, allow_fused=False)
    assert not is_fused(unfused)
    # Same update either way (the fused kernel is a faster implementation, not another optimizer).
    torch.manual_seed(0)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.step()
    fused_after = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p, b in zip(net.parameters(), before, strict=True):
            p.copy_(b)
    unfused.step()
    for a, p in zip(fused_after, net.parameters(), strict=True):
        torch.testing.assert_close(a, p.detach(), rtol=1e-5, atol=1e-6)


class GradNorms(Callback):
    """Records the gradient norm each optimizer step used (Lightning runs the backward and clipping inside ``step``)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.fused: list[bool] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        self.fused.append(is_fused(optimizer))

        def record(opt: torch.optim.Optimizer, *_: object) -> None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        optimizer.register_step_post_hook(record)


def fit_bf16(module: pl.LightningModule, clip: float | None, callbacks: list[Callback], steps: int = 3) -> pl.Trainer:
    """``steps`` bf16-mixed steps on the packaged sample (batch 4), clipping at ``clip``."""
    return fit_steps(module, "sentex:sample.csv", None, steps, precision="bf16-mixed", gradient_clip_val=clip,
                     callbacks=callbacks)  # fmt: skip


def test_bf16_mixed_on_cpu_clips_gradients_with_the_fused_optimizer() -> None:
    # Lightning refuses to clip for a fused optimizer under mixed precision; sentex clips itself (no scaler in bf16).
    norms = GradNorms()
    torch.manual_seed(0)
    fit_bf16(SpanExtractor(max_length=32), clip=1e-2, callbacks=[norms])
    assert norms.fused == [True]
    assert len(norms.norms) == 3 and all(n <= 1e-2 * 1.001 for n in norms.norms), norms.norms

    unclipped = GradNorms()
    torch.manual_seed(0)
    fit_bf16(SpanExtractor(max_length=32), clip=None, callbacks=[unclipped])
    assert all(n > 1e-2 for n in unclipped.norms), unclipped.norms  # so the clipping above did something


def test_bf16_mixed_trains_the_seq2seq_family_on_cpu(tiny_t5: Path, tmp_path: Path) -> None:
    """Six bf16-mixed steps on the eight hand-written tweets lower the tiny T5's loss on them.

    Measured: 6.573 before, 6.181 after (a drop of 0.392), so the bound is about half the drop. A
    step that updates nothing (no gradient reaching the LoRA weights under autocast, a zero learning
    rate) leaves the loss where it was and fails this; finite losses alone would not.
    """
    losses: list[float] = []

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    module = Seq2SeqExtractor(model_name_or_path=str(tiny_t5), lora_r=4, learning_rate=1e-3, warmup_steps=0)
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
    batch = module.collate(rows)
    with torch.no_grad():
        before = module.eval().compute_loss(batch).item()
    module.train()  # Lightning trains the module in the mode it is handed
    data = write_rows(tmp_path / "tweets.csv", TWEETS)
    trainer = fit_steps(module, data, tmp_path, 6, batch_size=8, precision="bf16-mixed", gradient_clip_val=1.0,
                        callbacks=[Losses()])  # fmt: skip
    with torch.no_grad():
        after = module.eval().compute_loss(batch).item()
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 6
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert after < before - 0.2, (before, after)


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_precision, "native_bf16_cpu", lambda: False)
    with pytest.warns(UserWarning, match="bf16 is emulated here"):
        fit_bf16(SpanExtractor(max_length=32), clip=1.0, callbacks=[CPUPrecisionCheck()], steps=1)
    monkeypatch.setattr(cpu_precision, "native_bf16_cpu", lambda: True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit_bf16(SpanExtractor(max_length=32), clip=1.0, callbacks=[CPUPrecisionCheck()], steps=1)
    assert not [w for w in record if "emulated" in str(w.message)]
