"""Files a user gets: ``submission.csv`` from predict and the per-row report from test.

Every file is written to a temporary name in the target folder and renamed into place, so a
crash or ``kill`` never leaves a half-written file where a finished one is expected.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info

from sentex.io.atomic import atomic_path
from sentex.training.error_taxonomy import error_class, taxonomy_table

TEST_REPORT = "test_predictions.csv"
TEST_SCORES = "test_span_probs.jsonl"
TEST_TAXONOMY = "test_error_taxonomy.md"


def write_csv(path: str | Path, fieldnames: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as a UTF-8 CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def gather_per_process(items: list[Any]) -> list[list[Any]]:
    """Every process's list, in rank order (``[items]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [items]
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return gathered


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate a list from every process (identity when not distributed)."""
    return [x for part in gather_per_process(items) for x in part]


def undo_distributed_split(parts: Sequence[Sequence[Any]], num_rows: int) -> list[Any]:
    """Rows in dataset order from what each rank of an unshuffled ``DistributedSampler`` produced.

    Rank ``r`` of ``W`` gets rows ``r, r + W, r + 2W, ...``, and the sampler repeats the first
    rows so every rank gets as many; interleaving the ranks and cutting at ``num_rows`` undoes both.

    >>> undo_distributed_split([["a", "c", "e"], ["b", "d", "a"]], 5)
    ['a', 'b', 'c', 'd', 'e']
    >>> undo_distributed_split([["a", "b"]], 2)
    ['a', 'b']
    """
    longest = max((len(p) for p in parts), default=0)
    ordered = [part[k] for k in range(longest) for part in parts if k < len(part)]
    return ordered[:num_rows]


class SubmissionWriter(BasePredictionWriter):
    """Write predictions as a Kaggle submission (``textID,selected_text``), in input order.

    The columns are those of the module's ``predict_step`` dict, in its order (extraction models:
    ``textID,selected_text``; the sentiment classifier: ``id,prediction,confidence,prob_<label>...``).

    Args:
        output_path: where ``sentex predict`` writes the submission.
    """

    def __init__(self, output_path: str = "submission.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        rows, columns = [], list(predictions[0]) if predictions else ["textID", "selected_text"]
        for batch, indices in zip(predictions, _flatten_batches(batch_indices)):
            rows.extend((i, {c: batch[c][k] for c in columns}) for k, i in enumerate(indices))
        # Under DDP each process predicted a share; a DistributedSampler may repeat rows to even
        # out the shares, so rows are de-duplicated by dataset index before sorting.
        by_index = dict(gather_objects(rows))
        if trainer.is_global_zero:
            ordered = [by_index[i] for i in sorted(by_index)]
            write_csv(self.output_path, columns, ordered)
            rank_zero_info(f"sentex: wrote {len(ordered)} predictions to {self.output_path}")


def _flatten_batches(batch_indices: Sequence[Any]) -> list[list[int]]:
    # Lightning nests batch indices per dataloader when there is more than one.
    if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
        return [b for loader in batch_indices for b in loader]
    return list(batch_indices)


class TestReportWriter(Callback):
    """After ``sentex test``: one CSV row per tweet (text, sentiment, gold, prediction, Jaccard) for error analysis.

    Families with per-row scores (span models: token offsets and start/end probabilities) also get
    ``test_span_probs.jsonl``, one JSON object per row in the same order, keyed by ``textID``: run on a
    held-out fold, those are the out-of-fold probabilities a second-stage model or a blend trains on.
    """

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parts = gather_per_process(list(getattr(pl_module, "test_rows", [])))
        # Under DDP the per-rank rows interleave and end with the sampler's padding repeats.
        rows = undo_distributed_split(parts, _dataset_size(trainer.test_dataloaders, sum(map(len, parts))))
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        if trainer.is_global_zero and rows:
            scores = [(row["textID"], row.pop("scores")) for row in rows if "scores" in row]
            for row in rows:
                found = error_class(row["text"], row["sentiment"], row["prediction"], row["selected_text"])
                row["error_class"] = found or ""
            path = Path(log_dir or ".") / TEST_REPORT
            write_csv(path, list(rows[0]), rows)
            rank_zero_info(f"sentex: wrote per-row test report to {path}")
            table = taxonomy_table(rows)
            with atomic_path(Path(log_dir or ".") / TEST_TAXONOMY) as tmp:
                Path(tmp).write_text(f"# Error taxonomy of {len(rows)} test rows\n\n{table}\n", encoding="utf-8")
            rank_zero_info(f"sentex: error taxonomy ({TEST_TAXONOMY}):\n{table}")
            if scores:
                write_jsonl(Path(log_dir or ".") / TEST_SCORES, ({"textID": t, **s} for t, s in scores))


def _dataset_size(loaders: Any, default: int) -> int:
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return default
