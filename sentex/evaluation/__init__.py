"""Evaluation beyond one model's metrics: classification metrics and reports, the confusion-matrix image,
error analysis by textual cues, and McNemar's test between two models' per-row predictions (``sentex compare``)."""
