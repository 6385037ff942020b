"""``bench/folds.py`` and ``bench/span_decoding.py``, which score a fold's checkpoint on the rows it was validated on.

One tiny fold run (fold 1 of 4, split seed 7, not the scripts' default 42) serves every test: each
must find the split in the checkpoint, the newest run of a fold, and decode as the checkpoint does.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench import folds, span_decoding
from sentex.data import TweetDataModule
from sentex.data.folds import stratified_folds
from sentex.deploy.load import module_from_checkpoint
from sentex.models import SpanExtractor
from tests.conftest import TWEETS, many_tweets
from tests.helpers import fit_steps

NUM_FOLDS, FOLD, SEED = 4, 1, 7
COPIES = 4  # 32 rows: 8 per fold, so another seed moves rows between folds


@dataclass(frozen=True)
class FoldRun:
    """A fold's data and the checkpoint trained on it, as ``bench/folds.py`` leaves them.

    Attributes:
        data: the labelled CSV that was split.
        checkpoint: the fold's ``best-*.ckpt``.
    """

    data: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory: pytest.TempPathFactory) -> FoldRun:
    """A span model trained one step on fold 1 of 4 (seed 7), with a small span cap and neutral tweets decoded."""
    root = tmp_path_factory.mktemp("fold-run")
    data = many_tweets(root / "tweets.csv", COPIES)
    torch.manual_seed(0)
    # Not the defaults, so a script that ignores the checkpoint's settings answers otherwise.
    model = SpanExtractor(max_length=32, max_span_tokens=3, neutral_full_tweet=False)
    dm = TweetDataModule(train_path=str(data), num_folds=NUM_FOLDS, fold=FOLD, split_seed=SEED, batch_size=4)
    trainer = fit_steps(model, dm, root, 1)
    checkpoint = root / "best-epoch0-step1.ckpt"
    trainer.save_checkpoint(checkpoint)
    return FoldRun(data, checkpoint)


def validation_ids(seed: int) -> list[str]:
    """The textIDs of fold :data:`FOLD` of the :func:`many_tweets` rows under ``seed``, from the fold assignment."""
    rows = [(f"{tid}_{i}", sentiment) for i in range(COPIES) for tid, _, _, sentiment in TWEETS]
    assignment = stratified_folds([s for _, s in rows], NUM_FOLDS, seed)
    return sorted(tid for (tid, _), f in zip(rows, assignment) if f == FOLD)


def place(checkpoint: Path, root: Path, version: int, fold: int = FOLD) -> Path:
    """Link ``checkpoint`` where a ``bench/folds.py`` run of ``fold`` keeps its ``version`` (no copy of the weights)."""
    path = root / f"fold{fold}" / "lightning_logs" / f"version_{version}" / "checkpoints" / checkpoint.name
    path.parent.mkdir(parents=True)
    path.symlink_to(checkpoint)
    return path


def script_args(run: FoldRun, root: Path, **extra: object) -> argparse.Namespace:
    """``bench/folds.py`` arguments as its parser gives them; ``split_seed`` is the old default, which training did
    not use (the fixed script has no such option and must not need one)."""
    return argparse.Namespace(root=str(root), data=str(run.data), num_folds=NUM_FOLDS, split_seed=42, **extra)


# --- bench/folds.py ---------------------------------------------------------------------------------
def test_a_fold_is_scored_on_the_rows_its_checkpoint_was_validated_on(fold_run: FoldRun, tmp_path: Path) -> None:
    # Fails before the fix: the rows came from the script's own split seed (42), partly training rows.
    expected = validation_ids(SEED)
    assert expected != validation_ids(42)  # else this test could not tell the two splits apart
    (tmp_path / f"fold{FOLD}").mkdir()
    result = folds.evaluate_fold(script_args(fold_run, tmp_path), FOLD, str(fold_run.checkpoint), None)
    with open(tmp_path / f"fold{FOLD}" / "val_rows.csv", encoding="utf-8") as f:
        scored = sorted(row["textID"] for row in csv.DictReader(f))
    assert scored == expected and result["rows"] == len(expected)


def test_eval_only_scores_the_newest_run_of_a_fold(fold_run: FoldRun, tmp_path: Path) -> None:
    # Fails before the fix: a textual sort puts version_9 last (after version_10 and version_2).
    newest = [place(fold_run.checkpoint, tmp_path, version) for version in (2, 10, 9)][1]
    result = folds.run_fold(script_args(fold_run, tmp_path, eval_only=True), FOLD)
    assert result["best_checkpoint"] == str(newest)
    assert folds.newest_best_checkpoint(tmp_path / "fold0") is None


@pytest.mark.parametrize(("fold", "num_folds"), [(0, NUM_FOLDS), (FOLD, 5)])
def test_a_checkpoint_of_another_fold_or_split_is_refused(
    fold_run: FoldRun, tmp_path: Path, fold: int, num_folds: int
) -> None:
    # Fails before the fix: it was scored on the asked fold's rows, which it partly trained on.
    (tmp_path / f"fold{fold}").mkdir()
    args = argparse.Namespace(root=str(tmp_path), data=str(fold_run.data), num_folds=num_folds, split_seed=SEED)
    with pytest.raises(SystemExit, match=f"trained with num_folds={NUM_FOLDS}, fold={FOLD}, not fold {fold} of"):
        folds.evaluate_fold(args, fold, str(fold_run.checkpoint), None)
    assert not (tmp_path / f"fold{fold}" / "val_rows.csv").exists()


def test_data_options_come_from_the_runs_config_yaml_when_the_checkpoint_has_none(tmp_path: Path) -> None:
    checkpoint = tmp_path / "version_3" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    with pytest.raises(SystemExit, match="no data options saved"):
        folds.run_data_options({}, checkpoint)
    config = tmp_path / "version_3" / "config.yaml"
    # What `sentex fit` writes: the data module by class, and LightningCLI's private entry.
    config.write_text(
        "data:\n  class_path: sentex.data.TweetDataModule\n  init_args:\n    train_path: t.csv\n"
        "    num_folds: 5\n    fold: 2\n    split_seed: 9\n    _instantiator: x\n"
    )
    assert folds.run_data_options({}, checkpoint) == {"train_path": "t.csv", "num_folds": 5, "fold": 2, "split_seed": 9}
    saved = {"datamodule_hyper_parameters": {"train_path": "u.csv", "split_seed": 3}}
    assert folds.run_data_options(saved, checkpoint) == saved["datamodule_hyper_parameters"]  # the checkpoint first
    config.write_text("data:\n  class_path: sentex.data.ClassificationDataModule\n  init_args: {}\n")
    with pytest.raises(SystemExit, match="ClassificationDataModule; this script scores tweet runs"):
        folds.run_data_options({}, checkpoint)


# --- bench/span_decoding.py -------------------------------------------------------------------------
def test_span_decoding_baseline_is_the_checkpoints_own_rule(fold_run: FoldRun) -> None:
    """The model's rule scored from the candidates answers every row as the model does: its split, its span
    cap of 3 tokens (which none of the top 2 spans may fit), and neutral tweets decoded, not answered whole.

    Fails before the fix: neutral rows were answered whole, and a row whose top spans exceed the cap crashed.
    """
    # The old options (data, split_seed) too: the fixed script ignores them, the old one read the split from them.
    args = argparse.Namespace(num_folds=NUM_FOLDS, top_k=2, max_span=64, data=str(fold_run.data), split_seed=42)
    rows, decoding = span_decoding.fold_candidates(str(fold_run.checkpoint), args, FOLD)
    assert decoding == span_decoding.Decoding(cap=3, shift=False, neutral_full_tweet=False)
    assert sorted(r["textID"] for r in rows) == validation_ids(SEED)
    model, _ = module_from_checkpoint(fold_run.checkpoint)
    plain = [{k: v for k, v in r.items() if k != "candidates"} for r in rows]
    expected = model.codec.extract(model.net, model.collate(plain))
    pick, cap, whole = next(iter(span_decoding.rules(decoding.cap).values()))  # "the model's rule"
    assert [span_decoding.answer(r, pick, cap, whole, decoding) for r in rows] == expected
    assert any(r["sentiment"] == "neutral" and a != r["text"].strip() for r, a in zip(rows, expected))


# A tweet of three one-letter words: [CLS] a b c [SEP], with the characters each token covers.
TEXT, OFFSETS = "a b c", [[(0, 0), (0, 1), (2, 3), (4, 5), (0, 0)]]
ARGMAX = span_decoding.length_bonus(0.0)


def span_matrix(probabilities: dict[tuple[int, int], float]) -> torch.Tensor:
    """``(1, 5, 5)`` span log-probabilities of :data:`TEXT`: ``-inf`` but for the given ``(start, end)`` tokens."""
    log_p = torch.full((1, 5, 5), -math.inf)
    for (s, e), p in probabilities.items():
        log_p[0, s, e] = math.log(p)
    return log_p


def test_candidates_hold_the_best_span_of_every_cap_even_outside_the_top_k() -> None:
    log_p = span_matrix({(1, 3): 0.5, (2, 3): 0.3, (1, 1): 0.15, (3, 3): 0.05})
    (found,) = span_decoding.row_candidates(log_p, OFFSETS, top_k=2, caps=[1, 3])
    # The top 2 (3 and 2 tokens), then the best 1-token span; cap 3's best is already there, once.
    assert [c[:3] for c in found] == [(0, 5, 3), (2, 5, 2), (0, 1, 1)]
    assert [c[3] for c in found] == pytest.approx([0.5, 0.3, 0.15])
    row = {"text": TEXT, "sentiment": "negative", "candidates": found}
    assert span_decoding.answer(row, ARGMAX, 1, 0, span_decoding.Decoding(1, False, True)) == "a"


def test_a_row_without_any_span_answers_nothing_instead_of_crashing() -> None:
    assert span_decoding.row_candidates(span_matrix({}), OFFSETS, top_k=2, caps=[1]) == [[]]
    row = {"text": TEXT, "sentiment": "positive", "candidates": []}
    # Fails before the fix: max() of an empty list. The model's argmax of an all -inf row is [CLS]: "" too.
    assert span_decoding.answer(row, ARGMAX, 3, 0, span_decoding.Decoding(3, False, True)) == ""


@pytest.mark.parametrize(("neutral_full_tweet", "expected"), [(True, TEXT), (False, "b c")])
def test_neutral_tweets_are_answered_as_the_checkpoint_says(neutral_full_tweet: bool, expected: str) -> None:
    # Fails before the fix for False: every neutral tweet was answered whole whatever the checkpoint said.
    row = {"text": f"  {TEXT} ", "sentiment": "neutral", "candidates": [(4, 7, 2, 0.6), (2, 3, 1, 0.4)]}
    decoding = span_decoding.Decoding(3, False, neutral_full_tweet)
    assert span_decoding.answer(row, ARGMAX, 3, 0, decoding) == expected
