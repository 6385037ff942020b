"""CPU training machinery: the fused AdamW, gradient clipping under bf16-mixed, the no-native-bf16 warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sentex.data import TweetDataModule
from sentex.models import Seq2SeqExtractor, SpanExtractor
from sentex.training import cpu_precision
from sentex.training.cpu_precision import CPUPrecisionCheck
from sentex.training.optim import build_optimizer


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


def fit(module: pl.LightningModule, clip: float | None, callbacks: list[Callback], steps: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=steps, gradient_clip_val=clip, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, TweetDataModule(train_path="sentex:sample.csv", batch_size=4))
    return trainer


def test_bf16_mixed_on_cpu_clips_gradients_with_the_fused_optimizer() -> None:
    # Lightning refuses to clip for a fused optimizer under mixed precision; sentex clips itself (no scaler in bf16).
    norms = GradNorms()
    torch.manual_seed(0)
    fit(SpanExtractor(max_length=32), clip=1e-2, callbacks=[norms])
    assert norms.fused == [True]
    assert len(norms.norms) == 3 and all(n <= 1e-2 * 1.001 for n in norms.norms), norms.norms

    unclipped = GradNorms()
    torch.manual_seed(0)
    fit(SpanExtractor(max_length=32), clip=None, callbacks=[unclipped])
    assert all(n > 1e-2 for n in unclipped.norms), unclipped.norms  # so the clipping above did something


def test_bf16_mixed_trains_the_seq2seq_family_on_cpu(tiny_t5: Path) -> None:
    losses: list[float] = []

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    module = Seq2SeqExtractor(model_name_or_path=str(tiny_t5), lora_r=4, learning_rate=1e-3, warmup_steps=0)
    fit(module, clip=1.0, callbacks=[Losses()], steps=4)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_precision, "native_bf16_cpu", lambda: False)
    with pytest.warns(UserWarning, match="bf16 is emulated here"):
        fit(SpanExtractor(max_length=32), clip=1.0, callbacks=[CPUPrecisionCheck()], steps=1)
    monkeypatch.setattr(cpu_precision, "native_bf16_cpu", lambda: True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(SpanExtractor(max_length=32), clip=1.0, callbacks=[CPUPrecisionCheck()], steps=1)
    assert not [w for w in record if "emulated" in str(w.message)]
