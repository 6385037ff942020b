"""What every alignment module shares: DPO settings, pair building, the DPO training step.

Alignment continues a trained (SFT) sentex model against a frozen copy of itself: both start from
the SFT checkpoint named by ``sft_checkpoint``, and the reference is that same SFT model, frozen —
not the raw pre-trained base (https://arxiv.org/abs/2305.18290, §4: the reference should be the
model that produced the preference distribution). The families are
:class:`~sentex.alignment.span.DPOSpanExtractor`, :class:`~sentex.alignment.seq2seq.DPOSeq2SeqExtractor` and
:class:`~sentex.alignment.causal.DPOCausalExtractor`.

When a fit starts, the module replaces the data module's training tweets by preference pairs
(:mod:`sentex.alignment.pairs`), or, for the ``expected_jaccard`` objective, keeps the labelled
tweets of ``pair_sentiments``; validation rows stay labelled tweets, so the ``val/jaccard`` family
(with ``val/over_extraction``, ``val/under_extraction``, ``val/answer_words``) is logged as for any model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info

from sentex.alignment.losses import LOSS_TYPES, PAIR_LOSS_TYPES, dpo_loss, reward_stats
from sentex.alignment.pairs import (
    PreferencePair,
    balance_lengths,
    build_pairs,
    graded_pairs,
    mine_on_policy,
    quotas,
    read_pairs,
    write_pairs,
)
from sentex.alignment.reference import eval_mode, turn_off_dropout
from sentex.errors import DataError, NonFiniteLossError
from sentex.models.base import Batch

DEFAULT_MIX = {"on_policy": 0.5, "whole_tweet": 0.1, "grow": 0.15, "cut": 0.15, "other_span": 0.1}
DPO_ARGS = (
    "sft_checkpoint", "beta", "label_smoothing", "loss_type", "nll_weight", "rdpo_alpha", "dpop_lambda",
    "disable_dropout", "pairs_path", "pairs_output", "num_pairs", "pair_mix", "pair_seed", "pair_sentiments",
    "mine_max_rows", "graded_k", "graded_margin", "graded_per_tweet",
)  # fmt: skip


def pairs_dataset(pairs: Sequence[PreferencePair]) -> Dataset:
    """Training rows: the tweet fields (``selected_text`` = ``chosen``) plus ``rejected`` and ``source``."""
    fields = {"textID": "textID", "text": "text", "sentiment": "sentiment", "selected_text": "chosen"}
    columns = {name: [getattr(p, attr) for p in pairs] for name, attr in fields.items()}
    columns.update(rejected=[p.rejected for p in pairs], source=[p.source for p in pairs])
    return Dataset.from_dict(columns)


class DPOMixin:
    """DPO settings, pair building and the DPO training step, over a model family's LightningModule.

    A concrete class names its plain family (``plain_family``: the LightningModule its checkpoints
    load as, whose constructor names the model settings) and provides ``load_sft(path)`` (policy
    and reference from the SFT checkpoint),
    ``pair_log_probs(batch, reference)`` → ``(chosen, rejected)`` sequence log-probabilities,
    ``collate_pairs(rows)``, ``chosen_lengths(batch)`` (targets per row, to length-normalise NLL) and,
    for graded pairs, ``top_answers(batch, k)``.

    Args:
        sft_checkpoint: sentex checkpoint of the supervised model: the start and, frozen, the reference.
        beta: DPO temperature (KL strength); higher stays closer to the reference.
        label_smoothing: conservative-DPO ε (``sigmoid`` loss only).
        loss_type: ``sigmoid`` (DPO), ``ipo``, or ``expected_jaccard`` (not DPO: maximise the expected
            Jaccard over all spans with a β-weighted KL to the reference; span models only).
        nll_weight: weight of a length-normalised NLL term on ``chosen`` (0: pure DPO).
        rdpo_alpha: R-DPO's length term α (0: off), in words.
        dpop_lambda: DPOP's λ keeping the chosen answer at least as likely as under the reference (0: off).
        disable_dropout: switch dropout off in the policy (recommended for DPO).
        pairs_path: JSONL of pairs to train on (:func:`sentex.alignment.pairs.read_pairs`); unset: build
            them from the training tweets when the fit starts.
        pairs_output: where to write the pairs used (default: ``pairs.jsonl`` in the log folder).
        num_pairs: pairs to build.
        pair_mix: kind → weight; kinds ``on_policy``, ``graded``, ``whole_tweet``, ``grow``, ``cut``,
            ``other_span``, ``empty``.
        pair_seed: seed of pair building.
        pair_sentiments: build pairs (or take tweets) only from these sentiments (default: all).
        mine_max_rows: run the SFT model on at most this many training tweets for mined pairs.
        graded_k: answers per tweet the SFT model proposes for ``graded`` pairs (its top-k).
        graded_margin: smallest Jaccard gap between the chosen and rejected answer of a graded pair.
        graded_per_tweet: at most this many graded pairs from one tweet.
        **kwargs: settings of the model family; must match the SFT model's (``sentex align`` takes
            them from ``sft_checkpoint``: :func:`~sentex.alignment.sft.sft_model_settings`).
    """

    plain_family: ClassVar[type]

    def __init__(
        self,
        sft_checkpoint: str,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_type: str = "sigmoid",
        nll_weight: float = 0.0,
        rdpo_alpha: float = 0.0,
        dpop_lambda: float = 0.0,
        disable_dropout: bool = True,
        pairs_path: str | None = None,
        pairs_output: str | None = None,
        num_pairs: int = 2000,
        pair_mix: dict[str, float] | None = None,
        pair_seed: int = 0,
        pair_sentiments: list[str] | None = None,
        mine_max_rows: int | None = None,
        graded_k: int = 8,
        graded_margin: float = 0.1,
        graded_per_tweet: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the family's save_hyperparameters() records these arguments too
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"model.loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        z = torch.zeros(1)
        pair_loss = loss_type if loss_type in PAIR_LOSS_TYPES else "sigmoid"
        dpo_loss(z, z, z, z, beta, label_smoothing, pair_loss, z, rdpo_alpha, dpop_lambda)  # validates them
        if nll_weight < 0:
            raise ValueError(f"model.nll_weight must be >= 0, got {nll_weight}")
        pair_only = {"label_smoothing": label_smoothing, "nll_weight": nll_weight, "rdpo_alpha": rdpo_alpha,
                     "dpop_lambda": dpop_lambda}  # fmt: skip
        used = [k for k, v in pair_only.items() if v]
        if loss_type not in PAIR_LOSS_TYPES and used:  # silently ignoring them would mislead
            raise ValueError(f"model.{', model.'.join(used)} apply to loss_type sigmoid/ipo, not {loss_type!r}")
        if num_pairs < 1:
            raise ValueError(f"model.num_pairs must be at least 1, got {num_pairs}")
        if graded_k < 1 or graded_per_tweet < 1 or not 0 <= graded_margin <= 1:
            raise ValueError("model.graded_k and graded_per_tweet must be >= 1, graded_margin in [0, 1]")
        quotas(pair_mix or DEFAULT_MIX, num_pairs)  # unknown kinds fail now, not after loading data
        self.pairs: list[PreferencePair] | None = None
        self.load_sft(sft_checkpoint)
        if disable_dropout:
            turn_off_dropout(self)

    # --- training data ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """On ``fit``: replace the data module's training tweets by preference pairs (or filter them)."""
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or "train" not in getattr(datamodule, "datasets", {}):
            raise DataError("DPO training needs the sentex tweet data module (data.train_path)")
        if self.hparams.loss_type not in PAIR_LOSS_TYPES:
            wanted = self.hparams.pair_sentiments
            if wanted:
                datamodule.datasets["train"] = datamodule.datasets["train"].filter(lambda r: r["sentiment"] in wanted)
            return
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
        """Synthetic and mined (on-policy, graded) pairs from the data module's training tweets."""
        hp = self.hparams
        wanted = hp.pair_sentiments
        rows = [r for r in datamodule.datasets["train"].to_list() if not wanted or r["sentiment"] in wanted]
        mix = hp.pair_mix or DEFAULT_MIX
        mined: dict[str, list[PreferencePair]] = {}
        sample = rows[: hp.mine_max_rows] if hp.mine_max_rows else rows
        batch_size = datamodule.hparams.get("eval_batch_size") or datamodule.hparams.get("batch_size") or 32
        device = self.trainer.strategy.root_device
        if mix.get("on_policy", 0) > 0:
            mined["on_policy"] = mine_on_policy(sample, [a[0] for a in self.mine(sample, batch_size, device, 1)])
            rank_zero_info(
                f"sentex align: the SFT model is imperfect (Jaccard < 1) on {len(mined['on_policy'])}"
                f" of {len(sample)} tweets"
            )
        if mix.get("graded", 0) > 0:
            answers = self.mine(sample, batch_size, device, hp.graded_k)
            graded = [
                p
                for row, top in zip(sample, answers)
                for p in graded_pairs(row, top, hp.graded_margin, hp.graded_per_tweet, hp.pair_seed)
            ]
            mined["graded"] = balance_lengths(graded, hp.pair_seed)
            rank_zero_info(f"sentex align: {len(mined['graded'])} length-balanced graded pairs of {len(graded)}")
        return build_pairs(rows, mix, hp.num_pairs, hp.pair_seed, mined=mined, accept=self.accepts_pair)

    def accepts_pair(self, pair: PreferencePair) -> bool:
        """Whether this model can score both answers of ``pair``."""
        return True

    def trainable_shapes(self) -> dict[str, torch.Size]:
        """Shape of every weight a checkpoint of this model carries (what the SFT checkpoint must provide)."""
        keys = self.trainable_state_keys()
        return {k: v.shape for k, v in self.state_dict().items() if k in keys}

    @torch.no_grad()
    def mine(
        self, rows: Sequence[dict[str, Any]], batch_size: int, device: torch.device | None = None, k: int = 1
    ) -> list[list[str]]:
        """The current (before training: the SFT) model's ``k`` best answers for each of ``rows``."""
        out: list[list[str]] = []
        if device is not None:
            self.to(device)  # the trainer moves the module there anyway; mining should not run on CPU
        device = next(self.parameters()).device
        with eval_mode(self):
            for i in range(0, len(rows), batch_size):
                batch = self.collate(list(rows[i : i + batch_size]))
                batch = {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in batch.items()}
                out.extend([[a] for a in self.extract(batch)] if k == 1 else self.top_answers(batch, k))
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
        gap = torch.tensor(
            [len(c.split()) - len(r.split()) for c, r in zip(batch["selected_text"], batch["rejected"])],
            dtype=torch.float32,
            device=policy_c.device,
        )
        out = dpo_loss(
            policy_c, policy_r, ref_c, ref_r, hp.beta, hp.label_smoothing, hp.loss_type, gap,
            hp.get("rdpo_alpha", 0.0), hp.get("dpop_lambda", 0.0),
        )  # fmt: skip
        keep = batch["pair_valid"]
        n = keep.sum().clamp(min=1)
        loss = (out.losses * keep).sum() / n
        if hp.nll_weight > 0:  # keep the chosen answer likely, not just likelier than the rejected one
            loss = loss + hp.nll_weight * (-(policy_c / self.chosen_lengths(batch)) * keep).sum() / n
        self.check_finite(loss, batch_idx)
        size = int(n.item())
        self.log("dpo/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        if keep.any():
            stats = reward_stats(out.chosen_rewards[keep], out.rejected_rewards[keep])
            stats["length_gap"] = gap[keep].mean()  # chosen minus rejected words, of the pairs trained on
            self.log_dict({f"dpo/{k}": v for k, v in stats.items()}, batch_size=size)
        return loss

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop with a one-line message at the first non-finite alignment loss."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"alignment loss became {loss.item()} at global step {self.global_step} (batch {batch_idx}); "
                "lower the learning rate or beta, or use --trainer.precision 32"
            )

    # --- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sentex"]["dpo"] = {k: self.hparams.get(k) for k in DPO_ARGS}

    @staticmethod
    def as_plain_family(checkpoint: dict[str, Any], family: type, **overrides: Any) -> None:
        """Make the checkpoint's hyper-parameters those of a plain ``family`` model (DPO settings
        dropped, ``overrides`` applied), so predict, ``sentex.deploy.load`` and export rebuild it
        without the SFT file; the DPO settings stay under ``checkpoint["sentex"]["dpo"]``."""
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k not in DPO_ARGS}
        hparams.update(overrides)
        if "_class_path" in hparams:
            hparams["_class_path"] = f"{family.__module__}.{family.__name__}"
        checkpoint["hyper_parameters"] = hparams
