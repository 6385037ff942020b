"""What the Streamlit demo page does, minus the widgets: so it is testable without a browser.

The page (``sentex/app/streamlit_app.py``) only lays out widgets and calls these functions: choosing the
model, highlighting the phrase in the tweet, checking an uploaded CSV, running a batch with a
progress callback, scoring it, and turning results into downloadable CSV bytes.
"""

from __future__ import annotations

import csv
import html
import io
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sentex.data.tweets import SENTIMENTS, TweetTable, read_for_scoring
from sentex.errors import DataError
from sentex.metrics import jaccard

MODEL_ENV = "SENTEX_MODEL"
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
    if start < 0:
        start = text.lower().find(phrase.lower())
    return (start, start + len(phrase)) if start >= 0 else None


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


def extract_one(extractor: Extractor, text: str, sentiment: str, **generation: Any) -> tuple[str, float]:
    """The phrase for one tweet and the wall-clock latency in milliseconds."""
    if not text.strip():
        raise DataError("the tweet is empty; type or load one first")
    if sentiment not in SENTIMENTS:
        raise DataError(f"unknown sentiment {sentiment!r} (expected one of {', '.join(SENTIMENTS)})")
    start = time.perf_counter()
    phrase = extractor.extract([text], [sentiment], batch_size=1, **generation)[0]
    return phrase, 1000 * (time.perf_counter() - start)


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
    ``empty_texts`` the empty tweets kept in an unlabelled one.
    """

    rows: list[dict[str, Any]]
    has_labels: bool
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    empty_texts: int = 0

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


def read_upload(name: str, data: bytes) -> TweetTable:
    """Check an uploaded Kaggle-format CSV with the same rules as ``sentex test`` or ``sentex predict``.

    One row policy for every labelled file (:func:`sentex.data.tweets.read_for_scoring`): with a
    ``selected_text`` column, rows ``sentex test`` skips (empty text, empty phrase, phrase not in the tweet) are
    skipped and counted here too, so the page's Jaccard is over the same rows as ``sentex test``'s;
    without it, every row is kept, as by ``sentex predict``.

    The reader works on paths, so the bytes go to a temporary file; error messages name the
    upload, not the temporary file.

    Raises:
        DataError: wrong columns, bad encoding, empty file, bad rows (one message, all problems).
    """
    with tempfile.TemporaryDirectory(prefix="sentex-upload-") as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(data)
        try:
            table = read_for_scoring(path)
        except DataError as err:
            raise DataError(str(err).replace(str(path), name)) from None
    table.path = name
    return table


def run_batch(
    extractor: Extractor,
    table: TweetTable,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    **generation: Any,
) -> BatchResult:
    """Extract a phrase for every row, reporting ``progress(done, total)`` after each chunk."""
    cols = table.columns
    total = len(table)
    preds: list[str] = []
    start = time.perf_counter()
    for lo in range(0, total, batch_size):
        hi = min(lo + batch_size, total)
        preds.extend(extractor.extract(cols["text"][lo:hi], cols["sentiment"][lo:hi], batch_size, **generation))
        if progress is not None:
            progress(hi, total)
    rows = []
    for i, pred in enumerate(preds):
        row = {
            "textID": cols["textID"][i],
            "text": cols["text"][i],
            "sentiment": cols["sentiment"][i],
            "prediction": pred,
        }
        if table.has_labels:
            gold = cols["selected_text"][i]
            row.update(selected_text=gold, jaccard=jaccard(pred, gold))
        rows.append(row)
    seconds = time.perf_counter() - start
    return BatchResult(rows, table.has_labels, dict(table.skipped), seconds, table.empty_texts_kept)


def _csv_bytes(fieldnames: Sequence[str], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def submission_csv(result: BatchResult) -> bytes:
    """Kaggle submission (``textID,selected_text``) of the predictions, in input order."""
    return _csv_bytes(
        ["textID", "selected_text"], [{"textID": r["textID"], "selected_text": r["prediction"]} for r in result.rows]
    )


def results_csv(result: BatchResult) -> bytes:
    """Every column shown in the page: tweet, sentiment, prediction (and gold phrase, Jaccard)."""
    names = ["textID", "text", "sentiment", "prediction"] + (["selected_text", "jaccard"] if result.has_labels else [])
    return _csv_bytes(names, result.rows)
