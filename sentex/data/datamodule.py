"""The tweet ``LightningDataModule``: checked CSVs in, batches out.

The data module owns *which rows* go where (files, seeded train/validation split, batching);
the LightningModule owns *how a row becomes tensors* (its ``collate``), because a prompt for
FLAN-T5 and a sentence pair for an encoder are model decisions, not data decisions.

Rows given without a sentiment are labelled by a :data:`SentimentLabeller` handed in from outside
(``TweetDataModule.sentiment_labeller``): loading a sentiment classifier is the deploy stage's job
(:func:`sentex.deploy.load.sentiment_labeller`), and the data stage comes before it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from datasets import Dataset
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from sentex.data.folds import stratified_folds
from sentex.data.sampling import LengthBucketBatchSampler, ResumableRandomSampler
from sentex.data.tweets import SENTIMENTS, read_tweets
from sentex.errors import DataError

# Texts and a batch size in, one sentiment per text out: what gives ``predict_path`` rows without a
# sentiment theirs (``sentex.load(...).classify`` is one; the CLI builds one from ``--data.sentiment_model``).
SentimentLabeller = Callable[[Sequence[str], int], list[str]]


class TweetDataModule(pl.LightningDataModule):
    """Kaggle "Tweet Sentiment Extraction" CSVs for every Lightning stage.

    Args:
        train_path: labelled CSV to train on (``sentex:sample.csv`` is the packaged sample).
        val_path: labelled CSV to validate on; if unset, ``val_fraction`` of ``train_path`` is held out.
        test_path: labelled CSV for ``sentex test``; defaults to the validation rows.
        predict_path: CSV (``selected_text`` optional) for ``sentex predict``.
        val_fraction: share of ``train_path`` held out when there is no ``val_path``.
        split_seed: seed of that split, independent of the training seed so runs compare on the same rows.
        num_folds: split ``train_path`` into this many folds stratified by sentiment (seeded by
            ``split_seed``) and validate on fold ``fold`` instead of a ``val_fraction`` split; K runs
            with ``fold`` 0..K-1 give out-of-fold predictions for every row.
        fold: the validation fold when ``num_folds`` is set.
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        strict: fail on rows that are otherwise skipped and counted (empty text, phrase not in text).
        max_train_rows: use only the first N training rows (quick experiments).
        bucket_by_length: batch training rows of similar length together (faster; single process only).
        train_sentiments: train only on rows of these sentiments (validation and test keep every row),
            e.g. ``[positive, negative]`` when the model answers neutral tweets by rule.
        sentiment_model: a sentiment classifier (exported folder or checkpoint) that gives the
            ``predict_path`` rows without a sentiment (no ``sentiment`` column, an empty value or
            ``auto``) theirs, so tweets can be predicted from their text alone. The data module only
            names it; the ``sentex`` CLI loads it and sets :attr:`sentiment_labeller`.

    Attributes:
        sentiment_labeller: the :data:`SentimentLabeller` that labels those rows. Set from outside,
            after construction: by the CLI for ``sentiment_model``, or in Python to any callable, e.g.
            ``dm.sentiment_labeller = sentex.load("models/sentiment").classify``.

    The training order is a pure function of the seed and the epoch, and the data module's
    checkpoint state records how far into the epoch training got, so a run resumed from a
    mid-epoch ``last.ckpt`` trains on exactly the batches an uninterrupted run would have.
    """

    # The column folds are stratified by (the tweets' sentiment; a classifier's label).
    stratify_column = "sentiment"

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        num_folds: int | None = None,
        fold: int = 0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        strict: bool = False,
        max_train_rows: int | None = None,
        bucket_by_length: bool = False,
        train_sentiments: list[str] | None = None,
        sentiment_model: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        if num_folds is not None and (num_folds < 2 or not 0 <= fold < num_folds):
            raise DataError(f"data.num_folds must be >= 2 and data.fold in [0, num_folds), got {num_folds}, {fold}")
        unknown = sorted(set(train_sentiments or []) - set(SENTIMENTS))
        if unknown or train_sentiments == []:
            raise DataError(f"data.train_sentiments must name some of {', '.join(SENTIMENTS)}, got {train_sentiments}")
        self.save_hyperparameters()
        self.sentiment_model = sentiment_model
        self.sentiment_labeller: SentimentLabeller | None = None
        self.datasets: dict[str, Dataset] = {}
        self._resume_epoch, self._resume_batches = 0, 0

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage in ("fit", "validate") or (stage == "test" and not hp.test_path):
            self._setup_train_val(need_train=stage == "fit")
        if stage == "test":
            if hp.test_path:
                self.datasets["test"] = self._load(hp.test_path, "data.test_path", labels=True)
            else:
                self.datasets["test"] = self.datasets["val"]
        if stage == "predict":
            rows = self._load(hp.predict_path, "data.predict_path", labels=False)
            self.datasets["predict"] = self._with_predicted_sentiments(rows)

    def _labels_sentiments(self) -> bool:
        """Whether ``predict_path`` rows may come without a sentiment (a model to label them is named or set)."""
        return self.sentiment_model is not None or self.sentiment_labeller is not None

    def _with_predicted_sentiments(self, rows: Dataset) -> Dataset:
        """``rows`` with the labeller's answer wherever the sentiment is empty (read as ``""``).

        Raises:
            DataError: rows need labels but no labeller was set, or its answers are not one tweet
                sentiment per row.
        """
        todo = [i for i, s in enumerate(rows["sentiment"]) if not s] if self._labels_sentiments() else []
        if not todo:
            return rows
        name = self.sentiment_model or "the sentiment labeller"
        if self.sentiment_labeller is None:
            raise DataError(
                f"--data.sentiment_model {name}: {len(todo)} row(s) need a sentiment, but no sentiment_labeller"
                " was set on the data module (the sentex CLI sets one; in Python set it yourself)"
            )
        texts = rows["text"]
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        labels = list(self.sentiment_labeller([texts[i] for i in todo], batch_size))
        if len(labels) != len(todo):
            raise DataError(f"{name}: answered {len(labels)} sentiment(s) for {len(todo)} row(s)")
        if unknown := sorted(set(labels) - set(SENTIMENTS), key=str):
            raise DataError(f"{name}: answered sentiment {unknown[0]!r}, not one of {', '.join(SENTIMENTS)}")
        sentiments = list(rows["sentiment"])
        for i, label in zip(todo, labels):
            sentiments[i] = label
        rank_zero_info(f"sentex: predicted the sentiment of {len(todo)} of {len(rows)} row(s) with {name}")
        return rows.remove_columns("sentiment").add_column("sentiment", sentiments)

    def _setup_train_val(self, need_train: bool) -> None:
        hp = self.hparams
        if hp.val_path:
            # The training file first: a subclass that takes its label names from the data takes the training file's.
            if need_train and "train" not in self.datasets:
                self.datasets["train"] = self._training_rows(self._load(hp.train_path, "data.train_path", labels=True))
            if "val" not in self.datasets:
                self.datasets["val"] = self._load(hp.val_path, "data.val_path", labels=True)
            return
        if "train" in self.datasets:
            return
        full = self._load(hp.train_path, "data.train_path", labels=True)
        if len(full) < 2:
            raise DataError(f"{hp.train_path}: need at least 2 rows to split off validation rows")
        if hp.num_folds:
            folds = stratified_folds(full[self.stratify_column], hp.num_folds, hp.split_seed)
            train = full.select([i for i, f in enumerate(folds) if f != hp.fold])
            val = full.select([i for i, f in enumerate(folds) if f == hp.fold])
        else:
            split = full.train_test_split(test_size=hp.val_fraction, seed=hp.split_seed)
            train, val = split["train"], split["test"]
        # Filtering after the split keeps the validation rows those of any other run with this split.
        self.datasets["train"], self.datasets["val"] = self._training_rows(train), val

    def _load(self, path: str | None, option: str, labels: bool) -> Dataset:
        if not path:
            raise DataError(f"--{option} is required for this command")
        optional = option == "data.predict_path" and self._labels_sentiments()
        table = read_tweets(path, require_labels=labels, strict=self.hparams.strict, sentiment_optional=optional)
        return Dataset.from_dict(table.columns)

    def _training_rows(self, train: Dataset) -> Dataset:
        """``train_sentiments`` filter, then the ``max_train_rows`` cut."""
        hp = self.hparams
        if hp.train_sentiments:
            keep = set(hp.train_sentiments)
            train = train.select([i for i, s in enumerate(train["sentiment"]) if s in keep])
            if len(train) == 0:
                raise DataError(f"{hp.train_path}: no training rows with sentiment {', '.join(sorted(keep))}")
        n = hp.max_train_rows
        return train.select(range(min(len(train), n))) if n else train

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the epoch, saved in every checkpoint (see the class docstring)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "batches_done": 0}
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("epoch", 0))
        self._resume_batches = int(state_dict.get("batches_done", 0))

    def _train_loader(self) -> DataLoader:
        hp = self.hparams
        rows = self.datasets["train"]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed:
            if hp.bucket_by_length:
                raise DataError(
                    "data.bucket_by_length works in a single process only; "
                    "set --data.bucket_by_length false for multi-device (DDP/FSDP/DeepSpeed) training"
                )
            # Lightning swaps in a DistributedSampler (seeded by the global seed, reshuffled per epoch).
            return self._make_loader(rows, batch_size=hp.batch_size, shuffle=True)
        epoch, skip = self._resume_epoch, self._resume_batches
        self._resume_epoch, self._resume_batches = 0, 0  # a later fit starts from the beginning
        if skip:
            # Lightning warns that a plain DataLoader cannot resume mid-epoch; these samplers can.
            warnings.filterwarnings(
                "ignore", "You're resuming from a checkpoint that ended before", PossibleUserWarning
            )
        if hp.bucket_by_length:
            lengths = [len(t) for t in rows["text"]]
            sampler = LengthBucketBatchSampler(lengths, hp.batch_size, _seed(), epoch=epoch, skip_batches=skip)
            return self._make_loader(rows, batch_sampler=sampler)
        sampler = ResumableRandomSampler(len(rows), _seed(), epoch=epoch, skip=skip * hp.batch_size)
        return self._make_loader(rows, batch_size=hp.batch_size, sampler=sampler)

    def _eval_loader(self, name: str) -> DataLoader:
        hp = self.hparams
        rows, batch_size = self.datasets[name], hp.eval_batch_size or hp.batch_size
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and name != "predict":
            # Lightning's default DistributedSampler repeats rows to even out the shares, and the
            # repeats would be scored twice; this one gives every row to exactly one process.
            # Safe because evaluation steps run no collective operation (metrics sync at the end).
            sampler = UnrepeatedDistributedSampler(
                rows, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
            return self._make_loader(rows, batch_size=batch_size, sampler=sampler)
        return self._make_loader(rows, batch_size=batch_size, shuffle=False)

    def _make_loader(self, rows: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            rows,
            num_workers=workers,
            collate_fn=self._collate,
            persistent_workers=workers > 0,
            # Its own generator: creating a loader iterator then draws no number from the global
            # RNG, so dropout sees the same random stream whether or not a run was resumed.
            generator=torch.Generator().manual_seed(_seed()),
            **kwargs,
        )

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.trainer.lightning_module.collate(rows)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader()

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def _seed() -> int:
    """The run's seed (``seed_everything`` exports it), so every order derives from it."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**31))
