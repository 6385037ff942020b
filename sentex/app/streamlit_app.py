"""sentex demo page: extract the sentiment phrase of one tweet or of a whole CSV (or classify texts).

    streamlit run app/streamlit_app.py -- --model PATH [--sentiment_model CLF]   # or: sentex app --model PATH ...

PATH is an exported model folder (``sentex export``) or a sentex ``.ckpt``; without it the page
uses ``$SENTEX_MODEL``, else the newest quickstart checkpoint under ``lightning_logs/``. CLF (or
``$SENTEX_SENTIMENT_MODEL``) is a sentiment classifier: the page then offers ``auto`` as a sentiment and
accepts CSVs without one. A classifier as PATH gets a classification page instead. The page only lays
out widgets: inference is ``sentex.deploy.load``, everything else ``sentex.app.logic`` and ``sentex.app.classify``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import streamlit as st

from sentex.app import classify, csvfiles, logic
from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError

PREVIEW_ROWS = 200
TITLES = {"extract": "sentex: tweet sentiment extraction", "classifier": "sentex: text classification"}


@st.cache_resource(show_spinner="Loading model…")
def get_model(path: str, sentiment_model: str | None = None) -> logic.Extractor | classify.Classifier:
    """Load the model (and its sentiment model) once per server process (every session and rerun shares it)."""
    from sentex.deploy.load import load

    return load(path, sentiment_model=sentiment_model)


def page_arguments() -> argparse.Namespace:
    """``--model`` and ``--sentiment_model`` from the arguments after ``streamlit run app/streamlit_app.py --``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model")
    parser.add_argument("--sentiment_model")
    return parser.parse_known_args(sys.argv[1:])[0]


def load_example(sentiment: str) -> None:
    """Button callback: put an example tweet and its sentiment into the widgets (runs before they render)."""
    st.session_state["tweet"] = logic.EXAMPLES[sentiment]
    st.session_state["sentiment"] = sentiment


def model_info(model: Any, path: str, header: str) -> None:
    """A model's path, summary (and labels, for a classifier) and manifest in the sidebar."""
    st.sidebar.header(header)
    st.sidebar.caption(path)
    rows = logic.model_summary(model.info or {})
    if model.family == "classifier":
        rows.append(("Labels", ", ".join(model.labels)))
    st.sidebar.markdown("\n".join(f"- **{k}:** {v}" for k, v in rows))
    with st.sidebar.expander("Full manifest"):
        st.json(model.info or {}, expanded=False)


def sidebar(extractor: logic.Extractor, path: str, sentiment_path: str | None) -> dict[str, Any]:
    """Model info and generation settings; returns the generation kwargs (empty for span models)."""
    model_info(extractor, path, "Model")
    if sentiment_path is not None:
        model_info(extractor.sentiment_model, sentiment_path, "Sentiment model")
    st.sidebar.header("Generation")
    span = extractor.family != "seq2seq"
    if span:
        st.sidebar.caption("Span models pick a substring of the tweet and generate nothing; these settings are off.")
    beams = st.sidebar.slider("Beams", 1, 8, 4, disabled=span)
    max_new = st.sidebar.slider("Max new tokens", 4, 128, 32, disabled=span)
    sample = st.sidebar.toggle("Sampling", False, disabled=span)
    off = span or not sample
    temperature = st.sidebar.slider("Temperature", 0.1, 2.0, 1.0, disabled=off)
    top_p = st.sidebar.slider("Top-p", 0.05, 1.0, 1.0, disabled=off)
    top_k = st.sidebar.slider("Top-k", 0, 200, 50, disabled=off)
    return {} if span else logic.generation_kwargs(beams, max_new, sample, temperature, top_p, top_k)


def single(extractor: logic.Extractor, generation: dict[str, Any]) -> None:
    """One tweet: examples, text, sentiment, Extract; the result stays until the next Extract."""
    st.subheader("One tweet")
    for column, sentiment in zip(st.columns(len(SENTIMENTS)), SENTIMENTS):
        column.button(f"Example: {sentiment}", on_click=load_example, args=(sentiment,), width="stretch")
    text = st.text_area("Tweet", key="tweet", height=90, placeholder="Type a tweet…")
    # With a sentiment model "auto" comes first, so it is the default.
    sentiment = st.radio("Sentiment", logic.sentiment_options(extractor), key="sentiment", horizontal=True)
    if st.button("Extract", type="primary"):
        try:
            phrase, ms, choice = logic.extract_one(extractor, text, sentiment, **generation)
            st.session_state["single"] = (text, phrase, ms, choice)
        except (SentexError, ValueError) as err:  # ValueError: generate() rejecting a setting combination
            st.session_state.pop("single", None)
            st.error(str(err))
    if "single" in st.session_state:
        text, phrase, ms, choice = st.session_state["single"]
        st.markdown("**Extracted phrase**")
        st.code(phrase, language=None)
        marked = logic.highlight_html(text, phrase)
        st.html(f'<div class="sentex-tweet" style="font-size:1.1rem;line-height:1.8">{marked}</div>')
        if logic.locate_phrase(text, phrase) is None:
            st.caption("The phrase is not part of the tweet's text, so nothing is highlighted.")
        st.caption(choice.caption())
        st.caption(f"Latency: {ms:.1f} ms for this tweet ({extractor.family} model)")


def batch(extractor: logic.Extractor, generation: dict[str, Any]) -> None:
    """A CSV upload, extracted once per (file, generation settings) and kept across reruns."""
    auto = extractor.sentiment_model is not None
    st.subheader("A CSV of tweets")
    about_auto = " Rows whose sentiment is empty or `auto` (or a file without `sentiment`) get the sentiment model's."
    st.caption(
        "Kaggle columns `textID,text,sentiment`; with `selected_text` the rows are scored by Jaccard and, as in "
        "`sentex test`, rows with an empty tweet or a phrase that is not in the tweet are skipped and counted."
        + (about_auto if auto else "")
    )
    upload = st.file_uploader("CSV file", type=["csv"])
    if upload is None:
        return
    key = (upload.file_id, tuple(sorted(generation.items())))
    if st.session_state.get("batch_key") != key:
        st.session_state.pop("batch", None)
        try:
            table = csvfiles.read_upload(upload.name, upload.getvalue(), sentiment_optional=auto)
            bar = st.progress(0.0, text="Extracting…")
            result = logic.run_batch(
                extractor,
                table,
                progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} tweets"),
                **generation,
            )
            st.session_state["batch"] = result
        except (SentexError, ValueError) as err:
            st.session_state["batch_error"] = str(err)
        else:
            st.session_state.pop("batch_error", None)
        st.session_state["batch_key"] = key
    if "batch_error" in st.session_state:
        st.error(st.session_state["batch_error"])
        return
    show_batch(st.session_state["batch"], upload.name)


def batch_metrics(what: str, n: int, seconds: float, score_name: str, score: float | None, notes: list[str]) -> None:
    """The row count, rows per second and score (when there is one) of a finished batch, then its warnings."""
    cells = st.columns(3)
    cells[0].metric(what, n)
    cells[1].metric(f"{what} / second", f"{n / max(seconds, 1e-9):.1f}")
    if score is not None:
        cells[2].metric(score_name, f"{score:.4f}")
    for note in notes:
        st.warning(note)


def show_batch(result: logic.BatchResult, name: str) -> None:
    """Scores, a preview table and the two downloads of a finished batch."""
    n = len(result.rows)
    batch_metrics("Tweets", n, result.seconds, "Jaccard", result.mean_jaccard, result.notes())
    if result.mean_jaccard is not None:
        st.caption(" · ".join(f"{s}: {j:.4f}" for s, j in result.jaccard_by_sentiment().items()))
    if result.predicted_sentiments:
        st.caption(
            f"{result.predicted_sentiments} sentiment(s) predicted by the sentiment model: `sentiment_predicted`"
        )
    preview(result.rows, n)
    stem = name.rsplit(".", 1)[0]
    left, right = st.columns(2)
    left.download_button(
        "Download results CSV", logic.results_csv(result), f"{stem}-results.csv", "text/csv", on_click="ignore"
    )
    right.download_button(
        "Download submission CSV", logic.submission_csv(result), "submission.csv", "text/csv", on_click="ignore"
    )


def preview(rows: list[dict[str, Any]], n: int) -> None:
    """The first rows of a batch's results as a table."""
    st.dataframe(rows[:PREVIEW_ROWS], hide_index=True)
    if n > PREVIEW_ROWS:
        st.caption(f"Showing the first {PREVIEW_ROWS} of {n} rows; the downloads have all of them.")


# --- a classifier as the model ----------------------------------------------------------------
def classify_single(classifier: classify.Classifier) -> None:
    """One text: its label and every class's probability; the result stays until the next Classify."""
    st.subheader("One text")
    text = st.text_area("Text", key="clf_text", height=90, placeholder="Type a text…")
    if st.button("Classify", type="primary"):
        try:
            st.session_state["clf_single"] = classify.classify_one(classifier, text)
        except SentexError as err:
            st.session_state.pop("clf_single", None)
            st.error(str(err))
    if "clf_single" in st.session_state:
        result = st.session_state["clf_single"]
        st.markdown("**Predicted label**")
        st.code(result.label, language=None)
        st.dataframe(result.table(), hide_index=True)
        st.caption(f"Latency: {result.ms:.1f} ms for this text (classifier)")


def classify_batch(classifier: classify.Classifier) -> None:
    """A CSV upload, classified once per file and kept across reruns."""
    st.subheader("A CSV of texts")
    st.caption(
        "A `text` column (ids from `textID` or `id`, else the line number); with a `label` or `sentiment` column "
        f"the rows are scored by accuracy (labels: {', '.join(classifier.labels)})."
    )
    upload = st.file_uploader("CSV file", type=["csv"])
    if upload is None:
        return
    if st.session_state.get("clf_batch_key") != upload.file_id:
        st.session_state.pop("clf_batch", None)
        try:
            table = classify.read_text_upload(upload.name, upload.getvalue(), classifier.labels)
            bar = st.progress(0.0, text="Classifying…")
            st.session_state["clf_batch"] = classify.run_classify_batch(
                classifier, table, progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} texts")
            )
        except SentexError as err:
            st.session_state["clf_batch_error"] = str(err)
        else:
            st.session_state.pop("clf_batch_error", None)
        st.session_state["clf_batch_key"] = upload.file_id
    if "clf_batch_error" in st.session_state:
        st.error(st.session_state["clf_batch_error"])
        return
    result: classify.ClassifyBatchResult = st.session_state["clf_batch"]
    n = len(result.rows)
    batch_metrics("Texts", n, result.seconds, "Accuracy", result.accuracy, result.notes())
    preview([{c: r.get(c) for c in result.columns()} for r in result.rows[:PREVIEW_ROWS]], n)
    stem = upload.name.rsplit(".", 1)[0]
    st.download_button(
        "Download results CSV",
        classify.classify_results_csv(result),
        f"{stem}-results.csv",
        "text/csv",
        on_click="ignore",
    )


def page() -> None:
    """The whole page: pick and load the model, then sidebar, one tweet (or text), CSV."""
    st.set_page_config(page_title="sentex", layout="wide")
    args = page_arguments()
    path, sentiment_path = logic.resolve_model(args.model), logic.resolve_sentiment_model(args.sentiment_model)
    if path is None:
        st.title(TITLES["extract"])
        st.info(logic.no_model_message())
        return
    sentiment = None if sentiment_path is None else str(sentiment_path)
    try:
        model = get_model(str(path), sentiment)
    except Exception as err:  # any load failure must become a message in the page, not a traceback
        st.title(TITLES["extract"])
        with_sentiment = "" if sentiment is None else f" with the sentiment model {sentiment}"
        st.error(f"Cannot load the model {path}{with_sentiment}: {err}")
        return
    if model.family == "classifier":
        st.title(TITLES["classifier"])
        model_info(model, str(path), "Model")
        classify_single(model)
        st.divider()
        classify_batch(model)
        return
    st.title(TITLES["extract"])
    generation = sidebar(model, str(path), sentiment)
    single(model, generation)
    st.divider()
    batch(model, generation)


page()
