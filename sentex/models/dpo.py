"""DPO fine-tuning of a trained (SFT) sentex model against a frozen copy of itself.

Both policies start from the SFT checkpoint named by ``sft_checkpoint``; the reference is that
same SFT model, frozen — not the raw pre-trained base (https://arxiv.org/abs/2305.18290, §4:
the reference should be the model that produced the preference distribution).

* :class:`DPOSpanExtractor` — the span model is fully fine-tuned, so the reference is a frozen
  deep copy of encoder + head (22M parameters on MiniLM: cheap). Its checkpoints are ordinary
  ``span`` checkpoints (same weights, plain span hyper-parameters), so predict, ``sentex.inference``
  and export load them like any span model, without the SFT file.
* :class:`DPOSeq2SeqExtractor` — the SFT LoRA adapter is merged into the base, a fresh LoRA
  adapter is the policy, and reference log-probabilities are computed with that adapter disabled:
  one copy of the big model in memory. Its checkpoints store the SFT adapter and the policy
  adapter stacked into one adapter of the base (:func:`~sentex.models.lora.stack_lora`), with
  plain seq2seq hyper-parameters: an ordinary ``seq2seq`` checkpoint that predict, export and
  ``sentex.inference`` load without the SFT file.

When a fit starts, the module replaces the data module's training tweets by preference pairs
(:mod:`sentex.pairs`); validation rows stay labelled tweets, so the ``val/jaccard`` family is
logged as for any model, plus how often the prediction is longer (``val/over_extraction``) or
shorter (``val/under_extraction``) than the gold.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from sentex.checkpointing import AtomicCheckpointIO
from sentex.dpo import LOSS_TYPES, dpo_loss, over_extracted, reward_stats, under_extracted
from sentex.errors import CheckpointError, DataError, NonFiniteLossError
from sentex.metrics import _MeanTextScore
from sentex.models.base import Batch
from sentex.models.lora import apply_lora, stack_lora, unstack_lora
from sentex.models.seq2seq import Seq2SeqExtractor
from sentex.models.span import IGNORE, SpanExtractor, gather_span_log_probs
from sentex.pairs import PreferencePair, build_pairs, mine_on_policy, quotas, read_pairs, write_pairs

DEFAULT_MIX = {"on_policy": 0.5, "whole_tweet": 0.1, "grow": 0.15, "cut": 0.15, "other_span": 0.1}
DPO_ARGS = (
    "sft_checkpoint", "beta", "label_smoothing", "loss_type", "nll_weight", "disable_dropout", "pairs_path",
    "pairs_output", "num_pairs", "pair_mix", "pair_seed", "pair_sentiments", "mine_max_rows",
)  # fmt: skip


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


def load_sft_state(path: str, family: str, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The weights of a sentex SFT checkpoint, checked to be a ``family`` model that fits.

    Args:
        path: the checkpoint.
        family: the model family it must hold.
        expected: state-dict key → shape of every weight the DPO module takes from it.

    Raises:
        CheckpointError: unreadable file, another family, or weights that do not fit the model settings.
    """
    ckpt = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu", weights_only=True)
    meta = ckpt.get("sentex") if isinstance(ckpt, dict) else None
    if meta is None:
        raise CheckpointError(f"{path}: model.sft_checkpoint was not written by sentex (no 'sentex' entry)")
    if meta.get("family") != family:
        raise CheckpointError(
            f"{path}: model.sft_checkpoint is a '{meta.get('family')}' model; this DPO module needs a '{family}' model"
        )
    state = ckpt["state_dict"]
    missing = set(expected) - set(state)
    if missing:
        raise CheckpointError(
            f"{path}: model.sft_checkpoint lacks {len(missing)} weights of this model (e.g. '{sorted(missing)[0]}');"
            " use the model settings it was trained with"
        )
    wrong = sorted(k for k, shape in expected.items() if tuple(state[k].shape) != tuple(shape))
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: model.sft_checkpoint weight '{k}' has shape {tuple(state[k].shape)}, this model's is "
            f"{tuple(expected[k])} (e.g. a LoRA rank that differs: check model.lora_r)"
        )
    return state


def pairs_dataset(pairs: Sequence[PreferencePair]) -> Dataset:
    """Training rows: the tweet fields (``selected_text`` = ``chosen``) plus ``rejected`` and ``source``."""
    fields = {"textID": "textID", "text": "text", "sentiment": "sentiment", "selected_text": "chosen"}
    columns = {name: [getattr(p, attr) for p in pairs] for name, attr in fields.items()}
    columns.update(rejected=[p.rejected for p in pairs], source=[p.source for p in pairs])
    return Dataset.from_dict(columns)


class OverExtraction(_MeanTextScore):
    """Share of predictions with more words than the gold (:func:`sentex.dpo.over_extracted`).

    Built on sentex's sum/count text metric: its out-of-place updates survive a ``validate``
    (inference mode) before ``fit``, which torchmetrics' ``MeanMetric`` does not.
    """

    higher_is_better = False
    score = staticmethod(over_extracted)


class UnderExtraction(_MeanTextScore):
    """Share of predictions with fewer words than the gold (:func:`sentex.dpo.under_extracted`)."""

    higher_is_better = False
    score = staticmethod(under_extracted)


class DPOMixin:
    """DPO settings, pair building, the DPO training step, and extraction-length metrics.

    A concrete class provides ``load_sft(path)`` (policy and reference from the SFT checkpoint),
    ``pair_log_probs(batch, reference)`` → ``(chosen, rejected)`` sequence log-probabilities,
    ``collate_pairs(rows)`` and ``chosen_lengths(batch)`` (targets per row, to length-normalise NLL).

    Args:
        sft_checkpoint: sentex checkpoint of the supervised model: the start and, frozen, the reference.
        beta: DPO temperature (KL strength); higher stays closer to the reference.
        label_smoothing: conservative-DPO ε (``sigmoid`` loss only).
        loss_type: ``sigmoid`` (DPO) or ``ipo``.
        nll_weight: weight of a length-normalised NLL term on ``chosen`` (0: pure DPO).
        disable_dropout: switch dropout off in the policy (recommended for DPO).
        pairs_path: JSONL of pairs to train on (:func:`sentex.pairs.read_pairs`); unset: build them
            from the training tweets when the fit starts.
        pairs_output: where to write the pairs used (default: ``pairs.jsonl`` in the log folder).
        num_pairs: pairs to build.
        pair_mix: kind → weight; kinds ``on_policy``, ``whole_tweet``, ``grow``, ``cut``, ``other_span``, ``empty``.
        pair_seed: seed of pair building.
        pair_sentiments: build pairs only from tweets of these sentiments (default: all).
        mine_max_rows: run the SFT model on at most this many training tweets for ``on_policy`` pairs.
        **kwargs: settings of the model family; must match the SFT model's.
    """

    def __init__(
        self,
        sft_checkpoint: str,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_type: str = "sigmoid",
        nll_weight: float = 0.0,
        disable_dropout: bool = True,
        pairs_path: str | None = None,
        pairs_output: str | None = None,
        num_pairs: int = 2000,
        pair_mix: dict[str, float] | None = None,
        pair_seed: int = 0,
        pair_sentiments: list[str] | None = None,
        mine_max_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the family's save_hyperparameters() records these arguments too
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"model.loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        dpo_loss(*(torch.zeros(1),) * 4, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type)  # validates
        if nll_weight < 0:
            raise ValueError(f"model.nll_weight must be >= 0, got {nll_weight}")
        if num_pairs < 1:
            raise ValueError(f"model.num_pairs must be at least 1, got {num_pairs}")
        quotas(pair_mix or DEFAULT_MIX, num_pairs)  # unknown kinds fail now, not after loading data
        self.val_over = OverExtraction()
        self.val_under = UnderExtraction()
        self.pairs: list[PreferencePair] | None = None
        self.load_sft(sft_checkpoint)
        if disable_dropout:
            turn_off_dropout(self)

    # --- preference pairs -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """On ``fit``: replace the data module's training tweets by preference pairs."""
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or "train" not in getattr(datamodule, "datasets", {}):
            raise DataError("DPO training needs the sentex tweet data module (data.train_path)")
        if self.pairs is None:  # built once per module: a second fit trains on the same pairs
            self.pairs = self.load_or_build_pairs(datamodule)
        datamodule.datasets["train"] = pairs_dataset(self.pairs)

    def load_or_build_pairs(self, datamodule: Any) -> list[PreferencePair]:
        """The pairs this model can score, from ``pairs_path`` or built; logged and written to JSONL."""
        hp = self.hparams
        pairs = read_pairs(hp.pairs_path) if hp.pairs_path else self.build_pairs(datamodule)
        pairs = [p for p in pairs if self.accepts_pair(p)]
        if not pairs:
            raise DataError("no usable preference pairs: this model cannot score any of them")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(Counter(p.source for p in pairs).items()))
        rank_zero_info(f"sentex align: {len(pairs)} preference pairs ({counts})")
        target = hp.pairs_output or (str(Path(self.trainer.log_dir) / "pairs.jsonl") if self.trainer.log_dir else None)
        if target and self.trainer.is_global_zero:
            write_pairs(target, pairs)
            rank_zero_info(f"sentex align: pairs written to {target}")
        return pairs

    def build_pairs(self, datamodule: Any) -> list[PreferencePair]:
        """Synthetic and on-policy pairs from the data module's training tweets."""
        hp = self.hparams
        wanted = hp.pair_sentiments
        rows = [r for r in datamodule.datasets["train"].to_list() if not wanted or r["sentiment"] in wanted]
        mix = hp.pair_mix or DEFAULT_MIX
        mined: list[PreferencePair] = []
        if mix.get("on_policy", 0) > 0:
            sample = rows[: hp.mine_max_rows] if hp.mine_max_rows else rows
            batch_size = datamodule.hparams.get("eval_batch_size") or datamodule.hparams.get("batch_size") or 32
            mined = mine_on_policy(sample, self.mine(sample, batch_size, self.trainer.strategy.root_device))
            rank_zero_info(
                f"sentex align: the SFT model is imperfect (Jaccard < 1) on {len(mined)} of {len(sample)} tweets"
            )
        return build_pairs(rows, mix, hp.num_pairs, hp.pair_seed, on_policy=mined, accept=self.accepts_pair)

    def accepts_pair(self, pair: PreferencePair) -> bool:
        """Whether this model can score both answers of ``pair``."""
        return True

    def trainable_shapes(self) -> dict[str, torch.Size]:
        """Shape of every weight a checkpoint of this model carries (what the SFT checkpoint must provide)."""
        keys = self.trainable_state_keys()
        return {k: v.shape for k, v in self.state_dict().items() if k in keys}

    @torch.no_grad()
    def mine(self, rows: Sequence[dict[str, Any]], batch_size: int, device: torch.device | None = None) -> list[str]:
        """The current (before training: the SFT) model's answers for ``rows``, for on-policy pairs."""
        out: list[str] = []
        if device is not None:
            self.to(device)  # the trainer moves the module there anyway; mining should not run on CPU
        device = next(self.parameters()).device
        with eval_mode(self):
            for i in range(0, len(rows), batch_size):
                batch = self.collate(list(rows[i : i + batch_size]))
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                out.extend(self.extract(batch))
        return out

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        if rows and "rejected" in rows[0]:
            return self.collate_pairs(rows)
        return super().collate(rows)

    # --- training -----------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        policy_c, policy_r = self.pair_log_probs(batch, reference=False)
        with torch.no_grad():
            ref_c, ref_r = self.pair_log_probs(batch, reference=True)
        out = dpo_loss(policy_c, policy_r, ref_c, ref_r, hp.beta, hp.label_smoothing, hp.loss_type)
        keep = batch["pair_valid"]
        n = keep.sum().clamp(min=1)
        loss = (out.losses * keep).sum() / n
        if hp.nll_weight > 0:  # keep the chosen answer likely, not just likelier than the rejected one
            loss = loss + hp.nll_weight * (-(policy_c / self.chosen_lengths(batch)) * keep).sum() / n
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"DPO loss became {loss.item()} at global step {self.global_step} (batch {batch_idx}); "
                "lower the learning rate or beta, or use --trainer.precision 32"
            )
        size = int(n.item())
        self.log("dpo/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        if keep.any():
            stats = reward_stats(out.chosen_rewards[keep], out.rejected_rewards[keep])
            self.log_dict({f"dpo/{k}": v for k, v in stats.items()}, batch_size=size)
        return loss

    # --- validation and checkpoints ------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, self.val_metrics, "val")
        self.val_over.update(preds, batch["selected_text"])
        self.val_under.update(preds, batch["selected_text"])
        self.log("val/over_extraction", self.val_over, on_step=False, on_epoch=True, batch_size=len(preds))
        self.log("val/under_extraction", self.val_under, on_step=False, on_epoch=True, batch_size=len(preds))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sentex"]["dpo"] = {k: self.hparams.get(k) for k in DPO_ARGS}

    @staticmethod
    def as_plain_family(checkpoint: dict[str, Any], family: type, **overrides: Any) -> None:
        """Make the checkpoint's hyper-parameters those of a plain ``family`` model (DPO settings
        dropped, ``overrides`` applied), so predict, ``sentex.inference`` and export rebuild it
        without the SFT file; the DPO settings stay under ``checkpoint["sentex"]["dpo"]``."""
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k not in DPO_ARGS}
        hparams.update(overrides)
        if "_class_path" in hparams:
            hparams["_class_path"] = f"{family.__module__}.{family.__name__}"
        checkpoint["hyper_parameters"] = hparams


class FrozenSpanReference(nn.Module):
    """The SFT span model, frozen: a deep copy of encoder + head, always in eval mode, no gradients."""

    # The policy's own arithmetic, so reference and policy score spans identically by construction.
    span_log_probs = SpanExtractor.span_log_probs

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.head = copy.deepcopy(head)
        self.dropout = nn.Identity()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenSpanReference:
        """Stay in eval mode whatever the trainer asks: the reference never samples dropout."""
        return super().train(False)


class DPOSpanExtractor(DPOMixin, SpanExtractor):
    """DPO on the span model (full fine-tune or LoRA): a phrase scores ``log p(start) + log p(end)``.

    Takes the :class:`DPOMixin` settings plus the :class:`~sentex.models.span.SpanExtractor` ones,
    which must match the SFT model's. Pairs whose answers are not spans of the tweet are skipped.
    """

    family = "span"

    def load_sft(self, path: str) -> None:
        self.load_state_dict(load_sft_state(path, "span", self.trainable_shapes()), strict=False)
        self.reference = FrozenSpanReference(self.encoder, self.head)

    def trainable_state_keys(self) -> set[str]:
        return {k for k in super().trainable_state_keys() if not k.startswith("reference.")}

    def accepts_pair(self, pair: PreferencePair) -> bool:
        """Both answers must be non-empty substrings of the tweet: a span model can only point at spans."""
        return all(p.strip() and p in pair.text for p in (pair.chosen, pair.rejected))

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = SpanExtractor.collate(self, rows)  # the tweet once; "span" is the chosen answer's
        batch["rejected_span"] = self.phrase_spans(batch, batch["rejected"])
        batch["pair_valid"] = (batch["span"] != IGNORE).all(1) & (batch["rejected_span"] != IGNORE).all(1)
        return batch

    def pair_log_probs(self, batch: Batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        start_logp, end_logp = (self.reference if reference else self).span_log_probs(batch)  # one pass, both answers
        chosen = gather_span_log_probs(start_logp, end_logp, batch["span"])
        return chosen, gather_span_log_probs(start_logp, end_logp, batch["rejected_span"])

    def chosen_lengths(self, batch: Batch) -> torch.Tensor:
        return torch.full((len(batch["text"]),), 2.0, device=batch["span"].device)  # a start and an end

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.as_plain_family(checkpoint, SpanExtractor)  # the weights are a plain span model's


class DPOSeq2SeqExtractor(DPOMixin, Seq2SeqExtractor):
    """DPO on the seq2seq LoRA model: a phrase scores the sum of its target-token log-probabilities.

    Takes the :class:`DPOMixin` settings plus the :class:`~sentex.models.seq2seq.Seq2SeqExtractor`
    ones, which must match the SFT model's; the new policy adapter reuses its rank, alpha and targets.
    """

    family = "seq2seq"  # checkpoints are ordinary seq2seq LoRA checkpoints (see on_save_checkpoint)

    def load_sft(self, path: str) -> None:
        hp = self.hparams
        if hp.lora_r is None:
            raise ValueError("seq2seq DPO needs a LoRA SFT model (model.lora_r is null)")
        shapes = self.trainable_shapes()
        state = load_sft_state(path, "seq2seq", shapes)
        self.load_state_dict(state, strict=False)
        # Kept (a few MB) to write self-contained checkpoints: SFT and policy adapters stacked.
        self._sft_adapter = {k: state[k].detach().float().clone() for k in shapes}
        merged = self.model.merge_and_unload()  # SFT weights folded into the base: the frozen reference
        targets = hp.lora_target_modules or ["q", "v"]
        self.model = apply_lora(merged, hp.lora_r, hp.lora_alpha, hp.lora_dropout, targets, "SEQ_2_SEQ_LM").train()

    @property
    def lora_scale(self) -> float:
        """peft's LoRA scaling ``alpha / r``, the same for the SFT and the policy adapter."""
        return self.hparams.lora_alpha / self.hparams.lora_r

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write an ordinary seq2seq checkpoint: one rank-2r adapter of the *base* model.

        The policy adapter sits on the base with the SFT adapter merged in, so ``W + s·B1A1 + s·B2A2``
        is what the model computes; :func:`stack_lora` writes that as a single adapter (alpha = rank,
        scales folded into B). Resuming ``sentex align`` splits the policy half back out.
        """
        super().on_save_checkpoint(checkpoint)
        # On CPU: the policy's tensors live on the training device, the kept SFT adapter on CPU.
        policy = {k: v.detach().float().cpu() for k, v in checkpoint["state_dict"].items()}
        checkpoint["state_dict"] = stack_lora(self._sft_adapter, policy, self.lora_scale, self.lora_scale)
        rank = 2 * self.hparams.lora_r
        self.as_plain_family(checkpoint, Seq2SeqExtractor, lora_r=rank, lora_alpha=rank)
        checkpoint["sentex"]["dpo"]["stacked_lora"] = {"policy_rank": self.hparams.lora_r, "scale": self.lora_scale}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("sentex") or {}
        if meta.get("family") == "dpo-seq2seq":  # sentex before stacking: the policy adapter alone
            meta["family"] = "seq2seq"
        stacked = (meta.get("dpo") or {}).get("stacked_lora")
        if stacked:  # resuming align: train the policy half on, on top of the merged SFT model
            checkpoint["state_dict"] = unstack_lora(checkpoint["state_dict"], stacked["policy_rank"], stacked["scale"])
        super().on_load_checkpoint(checkpoint)

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = Seq2SeqExtractor.collate(self, rows)  # prompt + chosen labels
        batch["rejected_labels"] = self.target_labels(batch["rejected"])
        batch["pair_valid"] = torch.ones(len(rows), dtype=torch.bool)
        return batch

    def pair_log_probs(self, batch: Batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not reference:
            return self._both_log_probs(batch)
        with self.model.disable_adapter(), eval_mode(self.model):  # adapter off = the merged SFT model
            return self._both_log_probs(batch)

    def _both_log_probs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sequence_log_probs(batch, batch["labels"]), self.sequence_log_probs(batch, batch["rejected_labels"])

    def chosen_lengths(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != -100).sum(dim=1).clamp(min=1).float()
