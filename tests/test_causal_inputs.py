"""Inputs that once made the causal family slow or wrong: long tweets, characters whose lower case is
longer, and prompts whose template barely fits ``max_length``.

What must hold: :func:`closest_substring` answers as scoring every run of words would, a 2,500-word
tweet within a second; every "ignoring case" match slices the tweet where the phrase really is, with
``İ``, ``ß``, emoji and right-to-left text; a prompt is cut in its tweet, never in its template, and a
``max_length`` with no room for a tweet is a one-line error at construction.
"""

from __future__ import annotations

import random
import re
import string
import time

import pytest
from transformers import PreTrainedTokenizerFast

from sentex.app.logic import MARK_OPEN, highlight_html, locate_phrase
from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError
from sentex.metrics import jaccard
from sentex.models.components.causal_codec import DEFAULT_INSTRUCTION, CausalCodec
from sentex.models.components.causal_match import Match, closest_substring
from sentex.models.components.seq2seq_codec import restore_source_case
from sentex.models.components.text_offsets import find_ignoring_case
from tests.test_causal import CHAT_TEMPLATE


# --- the closest run of words --------------------------------------------------------------------
def reference_answer(generated: str, text: str) -> Match:
    """What closest_substring promises, by brute force: the phrase itself, then its words, then every run scored."""
    phrase = " ".join(generated.split())
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if phrase:
        at = text.lower().find(phrase.lower())  # the random vocabulary has no character whose lower case is longer
        if at >= 0:
            return Match(text[at : at + len(phrase)], True)
        wanted = phrase.lower().split()
        for i in range(len(spans) - len(wanted) + 1):
            if [text[a:b].lower() for a, b in spans[i : i + len(wanted)]] == wanted:
                return Match(text[spans[i][0] : spans[i + len(wanted) - 1][1]], True)

    def strip_ends(words: str) -> str:
        return " ".join(w.strip(string.punctuation) or w for w in words.lower().split())

    scored = []
    for i in range(len(spans)):
        for j in range(i, len(spans)):
            run = " ".join(strip_ends(text[a:b]) for a, b in spans[i : j + 1])
            scored.append((jaccard(run, strip_ends(phrase)), -(j - i), -i, text[spans[i][0] : spans[j][1]]))
    best = max(scored, default=None)
    return Match(best[3], False) if best and best[0] > 0 else Match(text.strip(), False)


VOCAB = ["so", "So", "SO", "happy", "happy!", "sad", "sad...", ":)", "!!", "a", "b", "B", "day", "straße", "😀", "سعيد"]


def test_closest_substring_answers_as_scoring_every_run_would() -> None:
    rng = random.Random(24)
    kinds = {True: 0, False: 0}
    for _ in range(3000):
        words = rng.choices(VOCAB, k=rng.randint(0, 12))
        text = rng.choice(["", " ", "  "]) + rng.choice([" ", "  "]).join(words)
        generated = " ".join(rng.choices(VOCAB + ["other", "words"], k=rng.randint(0, 5)))
        if words and rng.random() < 0.4:  # a run of the tweet's own words, in another case
            first = rng.randrange(len(words))
            generated = " ".join(words[first : rng.randint(first + 1, len(words))]).swapcase()
        got = closest_substring(generated, text)
        assert got == reference_answer(generated, text), (generated, text)
        kinds[got.exact] += 1
    assert min(kinds.values()) > 1000  # both the exact paths and the scored runs were exercised


def test_a_2500_word_tweet_of_one_letter_words_is_answered_within_a_second() -> None:
    # The model's answer names every letter, backwards, so it is nowhere in the tweet as written: every
    # run is a candidate. Scoring each one from scratch took minutes for this tweet.
    letters = string.ascii_lowercase
    tweet = " ".join(["a", "b"] * 1237 + list(letters[2:]))  # 2,498 words, 4,995 characters
    started = time.perf_counter()
    answer = closest_substring(" ".join(reversed(letters)), tweet)
    assert time.perf_counter() - started < 1.0
    assert answer == Match(" ".join(letters), False)  # the only run holding all 26 letters and nothing else
    rng = random.Random(0)
    noise = " ".join(rng.choices(letters, k=2500))
    started = time.perf_counter()
    answer = closest_substring("the quick brown fox jumps over the lazy dog", noise)
    assert time.perf_counter() - started < 1.0 and answer.phrase in noise and not answer.exact


# --- characters whose lower case is longer ---------------------------------------------------------
@pytest.mark.parametrize(
    ("generated", "tweet", "expected"),
    [
        ("great day", "İstanbul'da GREAT day ☀️", "GREAT day"),  # "İ".lower() is two characters
        ("İYİ günler".lower(), "İYİ günler 😀", "İYİ günler"),  # the model wrote Python's lower case of İ
        ("straße ist", "İch mag die STRAßE ist toll", "STRAßE ist"),  # ß lowers to itself: one character
        ("שמח מאוד", "İ 😀 אני שמח מאוד היום", "שמח מאוד"),  # right-to-left: Hebrew
        ("سعيد جدا", "İİİ أنا سعيد جدا 😀😀", "سعيد جدا"),  # and Arabic, after three İ
    ],
)
def test_matches_ignoring_case_slice_the_tweet_where_the_phrase_is(generated: str, tweet: str, expected: str) -> None:
    assert closest_substring(generated, tweet) == Match(expected, True)  # the causal family
    assert restore_source_case(generated, tweet) == expected  # the seq2seq family
    span = locate_phrase(tweet, generated)  # the app's highlight
    assert span is not None and tweet[span[0] : span[1]] == expected
    assert f"{MARK_OPEN}{expected}</mark>" in highlight_html(tweet, generated)


def test_a_match_inside_a_lowered_character_takes_the_whole_character() -> None:
    assert find_ignoring_case("xİy", "i") == (1, 2)  # "i" is the first half of "i̇"
    assert find_ignoring_case("xİy", "\u0307y") == (1, 3)  # the combining dot is the second half
    assert find_ignoring_case("ΟΔΟΣ ok", "οδος") == (0, 4)  # a final sigma lowers in context, at the same length


# --- prompts that barely fit ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges, as Llama's and SmolLM2's are at heart: an emoji is four tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab, []))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


SYSTEM = "You copy phrases from tweets."


def template_tokens(tokenizer: PreTrainedTokenizerFast) -> int:
    """Tokens of the longest prompt with an empty tweet, rendered here by hand from CHAT_TEMPLATE."""
    return max(
        len(tokenizer(template_around(s)[0] + template_around(s)[1], add_special_tokens=False)["input_ids"])
        for s in SENTIMENTS
    )


def template_around(sentiment: str) -> tuple[str, str]:
    """The prompt's text before and after the tweet, for CHAT_TEMPLATE with the system message."""
    user = DEFAULT_INSTRUCTION.format(sentiment=sentiment, text="")
    before = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}"
    return before, "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("tweet", ["so happy 😀😀", "😀", "אני שמח 😀 היום", "great game, last night!! " * 4])
def test_the_tweet_is_cut_never_the_template(byte_tokenizer: PreTrainedTokenizerFast, tweet: str) -> None:
    before, after = template_around("positive")
    whole = len(byte_tokenizer(before + tweet + after, add_special_tokens=False)["input_ids"])
    for max_length in range(template_tokens(byte_tokenizer) + 1, whole + 2):
        codec = CausalCodec(byte_tokenizer, system_prompt=SYSTEM, max_length=max_length)
        ids = codec.prompt_ids("positive", tweet)
        prompt = byte_tokenizer.decode(ids)
        assert len(ids) <= max_length and prompt.startswith(before) and prompt.endswith(after), max_length
        kept = prompt[len(before) : len(prompt) - len(after)]
        assert tweet.startswith(kept), max_length
        assert (kept == tweet) == (max_length >= whole), max_length  # cut only when the whole prompt is too long


def test_a_max_length_with_no_room_for_a_tweet_is_a_one_line_error(byte_tokenizer: PreTrainedTokenizerFast) -> None:
    needed = template_tokens(byte_tokenizer) + 1
    for max_length in (8, needed - 1):
        with pytest.raises(SentexError) as info:
            CausalCodec(byte_tokenizer, system_prompt=SYSTEM, max_length=max_length)
        assert str(info.value) == (
            f"model.max_length is {max_length}, but the prompt without the tweet (chat template, instruction, "
            f"system prompt) takes {needed - 1} tokens: set it to at least {needed}"
        )
    assert CausalCodec(byte_tokenizer, system_prompt=SYSTEM, max_length=needed).max_length == needed
