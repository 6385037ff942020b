"""The tweet ``LightningDataModule``: checked CSVs in, batches out.

The data module owns *which rows* go where (files, seeded train/validation split, batching);
the LightningModule owns *how a row becomes tensors* (its ``collate``), because a prompt for
FLAN-T5 and a sentence pair for an encoder are model decisions, not data decisions.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from datasets import Dataset
import torch
from torch.utils.data import DataLoader

from sentex.errors import DataError
from sentex.sampling import LengthBucketBatchSampler
from sentex.tweets import read_tweets


class TweetDataModule(pl.LightningDataModule):
    """Kaggle "Tweet Sentiment Extraction" CSVs for every Lightning stage.

    Args:
        train_path: labelled CSV to train on (``sentex:sample.csv`` is the packaged sample).
        val_path: labelled CSV to validate on; if unset, ``val_fraction`` of ``train_path`` is held out.
        test_path: labelled CSV for ``sentex test``; defaults to the validation rows.
        predict_path: CSV (``selected_text`` optional) for ``sentex predict``.
        val_fraction: share of ``train_path`` held out when there is no ``val_path``.
        split_seed: seed of that split, independent of the training seed so runs compare on the same rows.
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        strict: fail on rows that are otherwise skipped and counted (empty text, phrase not in text).
        max_train_rows: use only the first N training rows (quick experiments).
        bucket_by_length: batch training rows of similar length together (faster; single process only).
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        strict: bool = False,
        max_train_rows: int | None = None,
        bucket_by_length: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

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
            self.datasets["predict"] = self._load(hp.predict_path, "data.predict_path", labels=False)

    def _setup_train_val(self, need_train: bool) -> None:
        hp = self.hparams
        if hp.val_path:
            if "val" not in self.datasets:
                self.datasets["val"] = self._load(hp.val_path, "data.val_path", labels=True)
            if need_train and "train" not in self.datasets:
                self.datasets["train"] = self._limit(self._load(hp.train_path, "data.train_path", labels=True))
            return
        if "train" in self.datasets:
            return
        full = self._load(hp.train_path, "data.train_path", labels=True)
        if len(full) < 2:
            raise DataError(f"{hp.train_path}: need at least 2 rows to split off validation rows")
        split = full.train_test_split(test_size=hp.val_fraction, seed=hp.split_seed)
        self.datasets["train"], self.datasets["val"] = self._limit(split["train"]), split["test"]

    def _load(self, path: str | None, option: str, labels: bool) -> Dataset:
        if not path:
            raise DataError(f"--{option} is required for this command")
        table = read_tweets(path, require_labels=labels, strict=self.hparams.strict)
        return Dataset.from_dict(table.columns)

    def _limit(self, train: Dataset) -> Dataset:
        n = self.hparams.max_train_rows
        return train.select(range(min(len(train), n))) if n else train

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        batch_size = hp.batch_size if name == "train" else (hp.eval_batch_size or hp.batch_size)
        if shuffle and hp.bucket_by_length:
            lengths = [len(t) for t in self.datasets[name]["text"]]
            sampler = LengthBucketBatchSampler(lengths, batch_size, seed=torch.initial_seed() % 2**31)
            return DataLoader(
                self.datasets[name],
                batch_sampler=sampler,
                num_workers=hp.num_workers,
                collate_fn=self._collate,
                persistent_workers=hp.num_workers > 0,
            )
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            collate_fn=self._collate,
            persistent_workers=hp.num_workers > 0,
        )

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.trainer.lightning_module.collate(rows)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
