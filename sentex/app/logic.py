"""What the Streamlit demo page does, minus the widgets: so it is testable without a browser.

The page (``sentex/app/streamlit_app.py``) only lays out widgets and calls these functions: choosing the
model, highlighting the phrase in the tweet, checking an uploaded CSV, running a batch with a
progress callback, scoring it, and turning results into downloadable CSV bytes. An extractor loaded
with a sentiment model (``sentex app --sentiment_model``) also takes tweets without a sentiment
(``"auto"``, an empty value or no ``sentiment`` column): the classifier's label is used and shown.
A classifier served as the model has its own page logic, :mod:`sentex.app.classify`.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sentex.app.csvfiles import SENTIMENT_HINT, csv_bytes
from sentex.data.tweets import SENTIMENTS, TweetTable
from sentex.deploy.sentiment import AUTO, missing_sentiment
from sentex.errors import DataError
from sentex.metrics import jaccard
from sentex.models.components.text_offsets import find_ignoring_case

MODEL_ENV = "SENTEX_MODEL"
SENTIMENT_MODEL_ENV = "SENTEX_SENTIMENT_MODEL"
QUICKSTART_COMMAND = "sentex fit --config configs/quickstart.yaml"
MARK_OPEN = '<mark class="sentex-phrase" style="background:#ffd54f;padding:0 3px;border-radius:3px">'

# Written for this demo (not from the Kaggle data): one per sentiment, loadable with one click.
EXAMPLES: dict[str, str] = {
    "positive": "Finally finished the marathon and my legs hurt, but what an amazing day with friends!",
    "negative": "Waited two hours for the bus in the rain and it never came. Worst commute ever.",
    "neutral": "The library opens at 9 tomorrow, bring your card if you want to borrow books.",
}


class Extractor(Protocol):
    """The part of :class:`sentex.deploy.load.Extractor` the app uses."""

    family: str
    info: dict[str, Any]

    def extract(self, texts: list[str], sentiments: list[str], batch_size: int = 16, **generation: Any) -> list[str]:
        """The phrase for each (tweet, sentiment)."""
        ...


# --- choosing the model -------------------------------------------------------------------
def find_quickstart_checkpoint(root: str | Path = ".") -> Path | None:
    """The newest ``best-*.ckpt`` under ``root/lightning_logs`` (what ``sentex fit`` writes), if any."""
    candidates = list(Path(root).glob("lightning_logs/*/checkpoints/best*.ckpt"))
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_model(cli_model: str | None, env: Mapping[str, str] | None = None, root: str | Path = ".") -> Path | None:
    """Which model the app serves: ``--model``, else ``$SENTEX_MODEL``, else the newest quickstart checkpoint.

    Returns:
        The path, or ``None`` when nothing was given and no quickstart checkpoint exists.
    """
    env = os.environ if env is None else env
    chosen = cli_model or env.get(MODEL_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return find_quickstart_checkpoint(root)


def resolve_sentiment_model(cli_value: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The classifier that fills in missing sentiments: ``--sentiment_model``, else ``$SENTEX_SENTIMENT_MODEL``.

    >>> resolve_sentiment_model(None, env={}) is None, resolve_sentiment_model(None, env={SENTIMENT_MODEL_ENV: "c"})
    (True, PosixPath('c'))
    """
    env = os.environ if env is None else env
    chosen = cli_value or env.get(SENTIMENT_MODEL_ENV)
    return Path(chosen).expanduser() if chosen else None


def sentiment_options(extractor: Extractor) -> tuple[str, ...]:
    """The page's sentiment choices: ``auto`` first (the default) when a sentiment model can fill it in."""
    return (AUTO, *SENTIMENTS) if getattr(extractor, "sentiment_model", None) is not None else SENTIMENTS


def no_model_message() -> str:
    """Markdown telling a user how to get a model when none was found."""
    return (
        "No model to serve: no `--model`, no `$SENTEX_MODEL`, and no checkpoint under `lightning_logs/`.\n\n"
        f"Train the quickstart model (a few minutes on a CPU) with `{QUICKSTART_COMMAND}`, then reload this page, "
        "or start the app with `sentex app --model PATH` (an exported model folder or a `.ckpt`)."
    )


def model_summary(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few manifest facts a demo visitor cares about, as ``(label, value)`` rows.

    Works for an export manifest (``lora`` entry) and for a checkpoint's minimal one (LoRA read
    from the hyper-parameters).

    >>> model_summary({"family": "seq2seq", "base_model": "google/flan-t5-base", "dtype": "int8",
    ...                "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q", "v"], "merged": True},
    ...                "metrics": {"val/jaccard": 0.70123}})  # doctest: +NORMALIZE_WHITESPACE
    [('Family', 'seq2seq'), ('Base model', 'google/flan-t5-base'), ('Precision', 'int8'),
     ('LoRA', 'r=16, alpha=32, dropout=0.05 on q, v (merged)'), ('val/jaccard', '0.7012')]
    """
    hparams = info.get("hyper_parameters") or {}
    rows = [
        ("Family", str(info.get("family", "?"))),
        ("Base model", str(info.get("base_model") or hparams.get("model_name_or_path", "?"))),
        ("Precision", str(info.get("dtype", "?"))),
        ("LoRA", _lora_text(info.get("lora"), hparams)),
    ]
    if info.get("ensemble"):
        rows += _ensemble_rows(info)
    metrics = info.get("metrics") or {}
    rows += [(name, f"{value:.4f}" if isinstance(value, float) else str(value)) for name, value in metrics.items()]
    return rows if metrics else [*rows, ("Validation", "not recorded")]


def _ensemble_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How many members an ensemble export has and how they combine, and each member's validation scores.

    >>> _ensemble_rows({"ensemble": {"members": ["members/0", "members/1"], "combine": "mean span probability"},
    ...                 "member_info": [{"metrics": {"val/jaccard": 0.7}}, {"metrics": {}}]})
    [('Ensemble', '2 members, mean span probability'), ("Members' val/jaccard", '0.7000, n/a')]
    """
    ensemble, members = info["ensemble"], info.get("member_info") or []
    rows = [("Ensemble", f"{len(ensemble['members'])} members, {ensemble.get('combine')}")]
    if any(m.get("lora") != members[0].get("lora") for m in members):  # the LoRA row shows the common one
        rows.append(("Members' LoRA", "differs per member (see the folder's README.md)"))
    names = sorted({name for m in members for name in m.get("metrics") or {}})
    for name in names:
        values = [(m.get("metrics") or {}).get(name) for m in members]
        rows.append((f"Members' {name}", ", ".join("n/a" if v is None else f"{v:.4f}" for v in values)))
    return rows


def _lora_text(lora: Mapping[str, Any] | None, hparams: Mapping[str, Any]) -> str:
    if not lora and hparams.get("lora_r") is not None:
        lora = {
            "r": hparams["lora_r"],
            "alpha": hparams.get("lora_alpha"),
            "dropout": hparams.get("lora_dropout"),
            "target_modules": hparams.get("lora_target_modules") or [],
        }
    if not lora:
        return "none (all weights fine-tuned)"
    modules = ", ".join(lora.get("target_modules") or []) or "default modules"
    merged = " (merged)" if lora.get("merged") else ""
    return f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')} on {modules}{merged}"


# --- single prediction --------------------------------------------------------------------
def locate_phrase(text: str, phrase: str) -> tuple[int, int] | None:
    """Character span of ``phrase`` in ``text``: exact match first, then ignoring case.

    A span model always answers with a substring; a seq2seq model may generate other words, in
    which case there is nothing to highlight.

    >>> locate_phrase("I LOVE it", "love")
    (2, 6)
    >>> locate_phrase("I love it", "hate") is None
    True
    """
    phrase = phrase.strip()
    if not phrase:
        return None
    start = text.find(phrase)
    return (start, start + len(phrase)) if start >= 0 else find_ignoring_case(text, phrase)


def highlight_html(text: str, phrase: str) -> str:
    """The tweet as HTML-escaped text with the phrase wrapped in ``<mark>``.

    >>> highlight_html("so <happy> today", "<happy>").replace(MARK_OPEN, "<mark>")
    'so <mark>&lt;happy&gt;</mark> today'
    >>> highlight_html("a & b", "zzz")
    'a &amp; b'
    """
    span = locate_phrase(text, phrase)
    if span is None:
        return html.escape(text)
    start, end = span
    return html.escape(text[:start]) + f"{MARK_OPEN}{html.escape(text[start:end])}</mark>" + html.escape(text[end:])


@dataclass(frozen=True)
class SentimentChoice:
    """The sentiment a tweet is extracted with: the user's, or the sentiment model's (``auto``) with its probability."""

    sentiment: str
    auto: bool = False
    probability: float | None = None

    def caption(self) -> str:
        """What the page shows under the phrase.

        >>> SentimentChoice("negative", True, 0.912).caption(), SentimentChoice("positive").caption()
        ('sentiment: negative (auto, p=0.91)', 'sentiment: positive')
        """
        if not self.auto:
            return f"sentiment: {self.sentiment}"
        return f"sentiment: {self.sentiment} (auto, p={self.probability:.2f})"


def choose_sentiment(extractor: Extractor, text: str, sentiment: str | None) -> SentimentChoice:
    """The sentiment to extract ``text`` with: ``sentiment`` itself, or, when it is missing (``auto``, empty),
    the one the extractor's sentiment model gives (``Extractor.sentiments_for``) with its probability.

    Raises:
        DataError: an unknown sentiment, or a missing one without a sentiment model.
    """
    if not missing_sentiment(sentiment):
        if sentiment not in SENTIMENTS:
            raise DataError(f"unknown sentiment {sentiment!r} (expected one of {', '.join(SENTIMENTS)})")
        return SentimentChoice(sentiment)
    classifier = getattr(extractor, "sentiment_model", None)
    if classifier is None:
        raise DataError(f"no sentiment given; pick one, or {SENTIMENT_HINT}")
    label = extractor.sentiments_for([text], [AUTO], batch_size=1)[0]
    probability = float(classifier.predict_proba([text], batch_size=1)[0, classifier.labels.index(label)])
    return SentimentChoice(label, True, probability)


def extract_one(
    extractor: Extractor, text: str, sentiment: str | None, **generation: Any
) -> tuple[str, float, SentimentChoice]:
    """The phrase for one tweet, the wall-clock latency in milliseconds (sentiment model included) and the
    sentiment it was extracted with."""
    if not text.strip():
        raise DataError("the tweet is empty; type or load one first")
    start = time.perf_counter()
    choice = choose_sentiment(extractor, text, sentiment)
    phrase = extractor.extract([text], [choice.sentiment], batch_size=1, **generation)[0]
    return phrase, 1000 * (time.perf_counter() - start), choice


def generation_kwargs(
    num_beams: int, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, top_k: int
) -> dict[str, Any]:
    """Generation settings for a seq2seq model; the sampling knobs only when sampling is on.

    ``transformers`` warns when temperature/top-p/top-k are set without sampling, so they are left out.

    >>> generation_kwargs(4, 32, False, 0.7, 0.9, 50)
    {'num_beams': 4, 'max_new_tokens': 32, 'do_sample': False}
    >>> generation_kwargs(1, 16, True, 0.7, 0.9, 50)["top_k"]
    50
    """
    kwargs: dict[str, Any] = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    return kwargs


# --- batch --------------------------------------------------------------------------------
@dataclass
class BatchResult:
    """Predictions for an uploaded file, with Jaccard scores when it had ``selected_text``.

    ``skipped`` counts the rows the reader left out, by reason (only a labelled file loses rows);
    ``empty_texts`` the empty tweets kept in an unlabelled one. With ``auto_sentiment`` (the extractor
    has a sentiment model) every row has ``sentiment_predicted``: whether its ``sentiment`` is the model's.
    """

    rows: list[dict[str, Any]]
    has_labels: bool
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    empty_texts: int = 0
    auto_sentiment: bool = False

    @property
    def predicted_sentiments(self) -> int:
        """How many rows got their sentiment from the sentiment model."""
        return sum(bool(r.get("sentiment_predicted")) for r in self.rows)

    def notes(self) -> list[str]:
        """Warnings worth showing next to the results (rows dropped or kept empty by the CSV reader)."""
        out = [f"{n} row(s) skipped: {why}" for why, n in sorted(self.skipped.items())]
        if self.empty_texts:
            out.append(f"{self.empty_texts} row(s) with empty text kept; their prediction is empty")
        return out

    @property
    def mean_jaccard(self) -> float | None:
        """Mean per-row Jaccard (the competition score), or ``None`` without labels."""
        if not self.has_labels or not self.rows:
            return None
        return sum(r["jaccard"] for r in self.rows) / len(self.rows)

    def jaccard_by_sentiment(self) -> dict[str, float]:
        """Mean Jaccard per sentiment present in the file."""
        if not self.has_labels:
            return {}
        groups: dict[str, list[float]] = {}
        for r in self.rows:
            groups.setdefault(r["sentiment"], []).append(r["jaccard"])
        return {s: sum(v) / len(v) for s, v in sorted(groups.items())}


def run_batch(
    extractor: Extractor,
    table: TweetTable,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    **generation: Any,
) -> BatchResult:
    """Extract a phrase for every row, reporting ``progress(done, total)`` after each chunk.

    Rows without a sentiment get the extractor's sentiment model's (``Extractor.sentiments_for``), which
    the rows then show, marked ``sentiment_predicted``.
    """
    cols = table.columns
    total = len(table)
    auto = getattr(extractor, "sentiment_model", None) is not None
    preds: list[str] = []
    sentiments: list[str] = []
    start = time.perf_counter()
    for lo in range(0, total, batch_size):
        hi = min(lo + batch_size, total)
        texts, given = cols["text"][lo:hi], cols["sentiment"][lo:hi]
        if auto and any(map(missing_sentiment, given)):
            given = extractor.sentiments_for(texts, given, batch_size)
        sentiments.extend(given)
        preds.extend(extractor.extract(texts, given, batch_size, **generation))
        if progress is not None:
            progress(hi, total)
    rows = []
    for i, pred in enumerate(preds):
        row = {"textID": cols["textID"][i], "text": cols["text"][i], "sentiment": sentiments[i], "prediction": pred}
        if auto:
            row["sentiment_predicted"] = missing_sentiment(cols["sentiment"][i])
        if table.has_labels:
            gold = cols["selected_text"][i]
            row.update(selected_text=gold, jaccard=jaccard(pred, gold))
        rows.append(row)
    seconds = time.perf_counter() - start
    return BatchResult(rows, table.has_labels, dict(table.skipped), seconds, table.empty_texts_kept, auto)


def submission_csv(result: BatchResult) -> bytes:
    """Kaggle submission (``textID,selected_text``) of the predictions, in input order."""
    return csv_bytes(
        ["textID", "selected_text"], [{"textID": r["textID"], "selected_text": r["prediction"]} for r in result.rows]
    )


def results_csv(result: BatchResult) -> bytes:
    """Every column shown in the page: tweet, sentiment (and whether it was predicted), prediction (and gold
    phrase, Jaccard)."""
    names = ["textID", "text", "sentiment"] + (["sentiment_predicted"] if result.auto_sentiment else [])
    names += ["prediction"] + (["selected_text", "jaccard"] if result.has_labels else [])
    return csv_bytes(names, result.rows)
