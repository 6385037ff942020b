"""sentex demo page: extract the sentiment phrase of one tweet or of a whole CSV.

    streamlit run app/streamlit_app.py -- --model PATH      # or: sentex app --model PATH

PATH is an exported model folder (``sentex export``) or a sentex ``.ckpt``; without it the page
uses ``$SENTEX_MODEL``, else the newest quickstart checkpoint under ``lightning_logs/``. The page
only lays out widgets: inference is ``sentex.deploy.load``, everything else ``sentex.app.logic``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import streamlit as st

from sentex.app import logic
from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError

PREVIEW_ROWS = 200


@st.cache_resource(show_spinner="Loading model…")
def get_extractor(path: str) -> logic.Extractor:
    """Load the model once per server process (every session and rerun shares it)."""
    from sentex.deploy.load import load

    return load(path)


def model_argument() -> str | None:
    """``--model`` from the arguments after ``streamlit run app/streamlit_app.py --``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model")
    return parser.parse_known_args(sys.argv[1:])[0].model


def load_example(sentiment: str) -> None:
    """Button callback: put an example tweet and its sentiment into the widgets (runs before they render)."""
    st.session_state["tweet"] = logic.EXAMPLES[sentiment]
    st.session_state["sentiment"] = sentiment


def sidebar(extractor: logic.Extractor, path: str) -> dict[str, Any]:
    """Model info and generation settings; returns the generation kwargs (empty for span models)."""
    st.sidebar.header("Model")
    st.sidebar.caption(path)
    st.sidebar.markdown("\n".join(f"- **{k}:** {v}" for k, v in logic.model_summary(extractor.info or {})))
    with st.sidebar.expander("Full manifest"):
        st.json(extractor.info or {}, expanded=False)
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
    sentiment = st.radio("Sentiment", SENTIMENTS, key="sentiment", horizontal=True)
    if st.button("Extract", type="primary"):
        try:
            phrase, ms = logic.extract_one(extractor, text, sentiment, **generation)
            st.session_state["single"] = (text, phrase, ms)
        except (SentexError, ValueError) as err:  # ValueError: generate() rejecting a setting combination
            st.session_state.pop("single", None)
            st.error(str(err))
    if "single" in st.session_state:
        text, phrase, ms = st.session_state["single"]
        st.markdown("**Extracted phrase**")
        st.code(phrase, language=None)
        marked = logic.highlight_html(text, phrase)
        st.html(f'<div class="sentex-tweet" style="font-size:1.1rem;line-height:1.8">{marked}</div>')
        if logic.locate_phrase(text, phrase) is None:
            st.caption("The phrase is not part of the tweet's text, so nothing is highlighted.")
        st.caption(f"Latency: {ms:.1f} ms for this tweet ({extractor.family} model)")


def batch(extractor: logic.Extractor, generation: dict[str, Any]) -> None:
    """A CSV upload, extracted once per (file, generation settings) and kept across reruns."""
    st.subheader("A CSV of tweets")
    st.caption(
        "Kaggle columns `textID,text,sentiment`; with `selected_text` the rows are scored by Jaccard and, as in "
        "`sentex test`, rows with an empty tweet or a phrase that is not in the tweet are skipped and counted."
    )
    upload = st.file_uploader("CSV file", type=["csv"])
    if upload is None:
        return
    key = (upload.file_id, tuple(sorted(generation.items())))
    if st.session_state.get("batch_key") != key:
        st.session_state.pop("batch", None)
        try:
            table = logic.read_upload(upload.name, upload.getvalue())
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


def show_batch(result: logic.BatchResult, name: str) -> None:
    """Scores, a preview table and the two downloads of a finished batch."""
    n = len(result.rows)
    cells = st.columns(3)
    cells[0].metric("Tweets", n)
    cells[1].metric("Tweets / second", f"{n / max(result.seconds, 1e-9):.1f}")
    if result.mean_jaccard is not None:
        cells[2].metric("Jaccard", f"{result.mean_jaccard:.4f}")
        st.caption(" · ".join(f"{s}: {j:.4f}" for s, j in result.jaccard_by_sentiment().items()))
    for note in result.notes():
        st.warning(note)
    st.dataframe(result.rows[:PREVIEW_ROWS], hide_index=True)
    if n > PREVIEW_ROWS:
        st.caption(f"Showing the first {PREVIEW_ROWS} of {n} rows; the downloads have all of them.")
    stem = name.rsplit(".", 1)[0]
    left, right = st.columns(2)
    left.download_button(
        "Download results CSV", logic.results_csv(result), f"{stem}-results.csv", "text/csv", on_click="ignore"
    )
    right.download_button(
        "Download submission CSV", logic.submission_csv(result), "submission.csv", "text/csv", on_click="ignore"
    )


def page() -> None:
    """The whole page: pick and load the model, then sidebar, one tweet, CSV."""
    st.set_page_config(page_title="sentex", layout="wide")
    st.title("sentex: tweet sentiment extraction")
    path = logic.resolve_model(model_argument())
    if path is None:
        st.info(logic.no_model_message())
        return
    try:
        extractor = get_extractor(str(path))
    except Exception as err:  # any load failure must become a message in the page, not a traceback
        st.error(f"Cannot load the model {path}: {err}")
        return
    generation = sidebar(extractor, str(path))
    single(extractor, generation)
    st.divider()
    batch(extractor, generation)


page()
