"""Shared fixtures: a tiny T5 saved to disk (so the real ``from_pretrained`` path is tested) and
small hand-written Kaggle-format CSVs. Nothing here downloads anything."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and OpenMP spin-waiting makes two-thread runs crawl
# when anything else shares the cores. Tests that need both cores set it themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tweet-sentiment-extraction"

# Hand-written rows (not from the Kaggle data). Leading spaces are deliberate: real tweets have them.
TWEETS = [
    ("a1", " I love this sunny morning", "love this", "positive"),
    ("a2", "my phone died again, worst day", "worst day", "negative"),
    ("a3", "going to the store later", "going to the store later", "neutral"),
    ("a4", "so happy for you both!", "so happy", "positive"),
    ("a5", " hate waiting in lines", "hate", "negative"),
    ("a6", "the meeting moved to 3pm", "the meeting moved to 3pm", "neutral"),
    ("a7", "great game last night", "great game", "positive"),
    ("a8", "feeling sick and tired", "sick and tired", "negative"),
]


def write_rows(path: Path, rows, header=("textID", "text", "selected_text", "sentiment")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def tweets_csv(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "tweets.csv", TWEETS)


def build_tiny_t5(path: Path) -> Path:
    """Save a randomly initialised 2-layer T5 with a byte-level tokenizer (no vocab file needed)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=384,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))
