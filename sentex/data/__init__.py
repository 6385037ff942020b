"""Stage 1, data: reading and checking Kaggle-format CSVs and labelled texts, the data modules, batch samplers."""

from sentex.data.classification import ClassificationDataModule
from sentex.data.datamodule import TweetDataModule

__all__ = ["ClassificationDataModule", "TweetDataModule"]
