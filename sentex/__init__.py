"""sentex: tweet sentiment extraction with PyTorch Lightning."""

__version__ = "0.1.0"
