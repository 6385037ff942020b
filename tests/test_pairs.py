"""Preference-pair building and the JSONL format (sentex.alignment.pairs)."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sentex.alignment.pairs import (
    GENERATORS,
    PreferencePair,
    build_pairs,
    mine_on_policy,
    normalize,
    quotas,
    read_pairs,
    reject_cut,
    reject_grow,
    reject_other_span,
    write_pairs,
)
from sentex.errors import DataError
from tests.conftest import TWEETS

WORDS = "we had the best time at the beach today and then it rained so hard".split()


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Synthetic tweets with gold phrases of 1-4 words at random places; some gold = whole tweet."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(1, 9))
        first = rng.randrange(len(words))
        last = rng.randrange(first, min(len(words), first + 4))
        text = ("  " if i % 3 == 0 else "") + " ".join(words)
        rows.append({"textID": f"r{i}", "text": text, "selected_text": " ".join(words[first : last + 1]),
                     "sentiment": rng.choice(["positive", "negative", "neutral"])})  # fmt: skip
    return rows


def test_generators_give_substrings_of_the_promised_shape() -> None:
    rng = random.Random(1)
    text, gold = "  oh well the sunny beach day was great fun", "sunny beach day"
    for _ in range(50):
        grown, cut, other = (f(text, gold, rng) for f in (reject_grow, reject_cut, reject_other_span))
        assert grown in text and gold in grown and len(grown.split()) > len(gold.split())
        assert len(grown.split()) <= len(gold.split()) + 6
        assert cut in gold and 1 <= len(cut.split()) < len(gold.split())
        assert other in text and not set(other.split()) & set(gold.split())


def test_generators_decline_impossible_edits() -> None:
    rng = random.Random(0)
    assert reject_grow("just this", "just this", rng) is None  # nothing to grow into
    assert reject_cut("one word here", "word", rng) is None  # nothing to cut
    assert reject_other_span("all of it", "all of it", rng) is None  # no other words
    assert reject_grow("some text", "not in it", rng) is None


def test_never_chosen_equal_rejected_and_no_duplicates() -> None:
    rows = make_rows(300)
    pairs = build_pairs(rows, {k: 1.0 for k in GENERATORS}, count=600, seed=3)
    assert len(pairs) > 300
    assert all(normalize(p.chosen) != normalize(p.rejected) for p in pairs)
    keys = [(p.text, normalize(p.chosen), normalize(p.rejected)) for p in pairs]
    assert len(keys) == len(set(keys))


def test_mix_is_respected_when_rows_suffice() -> None:
    rows = make_rows(400)
    mix = {"grow": 3, "cut": 1, "other_span": 1, "empty": 0.5, "whole_tweet": 0.5}
    pairs = build_pairs(rows, mix, count=120, seed=0)
    assert Counter(p.source for p in pairs) == quotas(mix, 120) == {
        "grow": 60, "cut": 20, "other_span": 20, "empty": 10, "whole_tweet": 10,
    }  # fmt: skip


def test_building_is_seeded() -> None:
    rows, mix = make_rows(100), {"grow": 1, "cut": 1, "other_span": 1}
    assert build_pairs(rows, mix, 60, seed=5) == build_pairs(rows, mix, 60, seed=5)
    assert build_pairs(rows, mix, 60, seed=5) != build_pairs(rows, mix, 60, seed=6)


def test_accept_filter_and_short_supply() -> None:
    rows = make_rows(50)
    pairs = build_pairs(rows, {"empty": 1, "cut": 1}, count=40, accept=lambda p: bool(p.rejected.strip()))
    assert pairs and all(p.source == "cut" for p in pairs) and len(pairs) <= 20


def test_on_policy_pairs_are_the_models_imperfect_answers() -> None:
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
    answers = [r["selected_text"].upper() if i % 2 else r["text"] for i, r in enumerate(rows)]
    mined = mine_on_policy(rows, answers)
    # upper-cased gold is still Jaccard 1; the whole tweet is wrong unless the gold is the whole tweet
    assert {p.textID for p in mined} == {
        r["textID"] for i, r in enumerate(rows) if i % 2 == 0 and r["text"].strip() != r["selected_text"]
    }
    pairs = build_pairs(rows, {"on_policy": 1.0}, count=100, mined={"on_policy": mined})
    assert sorted(p.textID for p in pairs) == sorted(p.textID for p in mined)


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(DataError, match="unknown kind.*whole_tweets"):
        quotas({"whole_tweets": 1}, 10)
    with pytest.raises(DataError, match="not all 0"):
        quotas({"grow": 0}, 10)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    pairs = build_pairs(make_rows(30), {"grow": 1, "empty": 1}, count=20)
    write_pairs(tmp_path / "p.jsonl", pairs)
    assert read_pairs(tmp_path / "p.jsonl") == pairs
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"p.jsonl:2: not valid JSON"),
        ('{"text": "a b", "sentiment": "positive", "chosen": "a"}', r"p.jsonl:2: field 'rejected' is missing"),
        ('{"text": "a b", "sentiment": "happy", "chosen": "a", "rejected": "b"}', r"p.jsonl:2: field 'sentiment'"),
        (
            '{"text": "a b", "sentiment": "positive", "chosen": "A ", "rejected": "a"}',
            r"p.jsonl:2: field 'rejected' is the same",
        ),
        ("[1, 2]", r"p.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"text": "a b", "sentiment": "positive", "chosen": "a", "rejected": "b"})
    (tmp_path / "p.jsonl").write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "p.jsonl")


def test_user_pairs_default_their_id_and_source(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('\n{"text": "a b", "sentiment": "neutral", "chosen": "a b", "rejected": ""}\n')
    assert read_pairs(tmp_path / "p.jsonl") == [PreferencePair("line2", "a b", "neutral", "a b", "", "user")]
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "missing.jsonl")
