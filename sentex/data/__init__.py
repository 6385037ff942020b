"""Stage 1, data: reading and checking Kaggle-format CSVs, the data module, batch samplers."""

from sentex.data.datamodule import TweetDataModule

__all__ = ["TweetDataModule"]
