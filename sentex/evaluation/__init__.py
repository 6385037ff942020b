"""Evaluation beyond one model's metrics: McNemar's test between two models' per-row predictions
(``sentex compare``)."""
