"""The causal model's pre- and post-processing: chat prompts and answer labels in, substrings of the tweet out.

The network is the transformers ``AutoModelForCausalLM`` itself (LoRA-wrapped while training); this
codec is the one object that turns rows into its inputs and its generations into answers, for training
(:class:`sentex.models.CausalExtractor`), DPO and exported models alike.

A row becomes the model's chat template applied to one user message (``instruction`` with the
sentiment and the tweet) and, for labelled rows, the assistant's reply: the phrase, then the
template's end-of-turn token. Training sequences are ``prompt + reply``, right-padded, with labels
``-100`` on the prompt and the padding, so the loss is on the reply's tokens alone; generation runs
on the prompts alone, left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError
from sentex.models.components.causal_match import closest_substring

Batch = dict[str, Any]
IGNORE = -100
DEFAULT_INSTRUCTION = "Copy the words of this tweet that express its {sentiment} sentiment.\nTweet: {text}"
DEFAULT_GENERATION = {"num_beams": 1, "max_new_tokens": 32, "do_sample": False}
# For tokenizers without a chat template (base models): plain text, the reply after "Answer:".
PLAIN_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Answer:\n{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:\n{% endif %}"
)
# Llama 3.x templates print today's date unless given one: pinned, so a prompt is the same every day.
TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}
_PROBE = "\x00answer\x00"


@dataclass(frozen=True)
class Answer:
    """One row's answer.

    Attributes:
        phrase: the answer, always a substring of the tweet.
        generated: what the model wrote (``None`` for a row answered by rule: neutral → whole tweet).
        exact: whether ``generated`` was in the tweet as written (see :func:`closest_substring`).
    """

    phrase: str
    generated: str | None = None
    exact: bool = True


class CausalCodec:
    """Chat prompts, reply labels, generation and answer mapping of a decoder-only extractor.

    Args:
        tokenizer: the model's tokenizer (its chat template is used; :data:`PLAIN_TEMPLATE` if it has none).
        instruction: the user message, with ``{sentiment}`` and ``{text}`` fields.
        system_prompt: a system message before it (``None``: the template's default, if any).
        max_length: most prompt tokens; a longer tweet is cut at the end to fit, the template never is.
        max_target_length: most reply tokens in labels (the end-of-turn token included).
        generation: keyword arguments for ``generate``, over :data:`DEFAULT_GENERATION`.
        neutral_full_tweet: answer neutral tweets with the whole tweet, without generating.

    Raises:
        SentexError: ``instruction`` lacks a field, the chat template writes no reply after its
            generation prompt, or ``max_length`` leaves no room for a tweet after the template.
    """

    def __init__(
        self,
        tokenizer: Any,
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        max_length: int = 192,
        max_target_length: int = 48,
        generation: dict[str, Any] | None = None,
        neutral_full_tweet: bool = True,
    ) -> None:
        for field in ("{sentiment}", "{text}"):
            if field not in instruction:
                raise SentexError(f"model.instruction must contain {field}")
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}
        self.neutral_full_tweet = neutral_full_tweet
        self.template = getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE
        self.reply_prefix, reply_suffix = self._reply_format()
        suffix_ids = self.tokenizer(reply_suffix, add_special_tokens=False)["input_ids"]
        # The reply ends at the template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``): the
        # label's last token and where generation stops; what the template writes after it is not learnt.
        self.end_ids = suffix_ids[:1] or [tokenizer.eos_token_id]
        self.stop_ids = list(dict.fromkeys([*self.end_ids, tokenizer.eos_token_id]))
        # Checked now, not when the first row is cut: a prompt without its assistant header trains
        # labels at the wrong positions and generates from the middle of the template.
        template = max(len(self._prompt_tokens(s, "")) for s in SENTIMENTS)
        if max_length <= template:
            raise SentexError(
                f"model.max_length is {max_length}, but the prompt without the tweet (chat template, "
                f"instruction, system prompt) takes {template} tokens: set it to at least {template + 1}"
            )

    def settings(self) -> dict[str, Any]:
        """The constructor arguments besides the tokenizer (an export's ``settings``)."""
        return {
            "instruction": self.instruction,
            "system_prompt": self.system_prompt,
            "max_length": self.max_length,
            "max_target_length": self.max_target_length,
            "generation": dict(self.generation),
            "neutral_full_tweet": self.neutral_full_tweet,
        }

    # --- prompts and replies ---------------------------------------------------------------
    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **TEMPLATE_KWARGS,
        )

    def _messages(self, sentiment: str, text: str) -> list[dict[str, str]]:
        user = {"role": "user", "content": self.instruction.format(sentiment=sentiment, text=text)}
        return [{"role": "system", "content": self.system_prompt}, user] if self.system_prompt else [user]

    def _reply_format(self) -> tuple[str, str]:
        """What the template writes before and after a reply, found by rendering a probe reply once."""
        messages = self._messages("positive", "probe")
        prompt = self._render(messages, True)
        full = self._render([*messages, {"role": "assistant", "content": _PROBE}], False)
        if not full.startswith(prompt) or _PROBE not in full[len(prompt) :]:
            raise SentexError("the tokenizer's chat template does not write a reply after its generation prompt")
        before, _, after = full[len(prompt) :].partition(_PROBE)
        return before, after

    def _prompt_tokens(self, sentiment: str, text: str) -> list[int]:
        prompt = self._render(self._messages(sentiment, text), True)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, sentiment: str, text: str) -> list[int]:
        """Token ids of a row's prompt, at most ``max_length``: the tweet is cut at its end to fit, never the template.

        Raises:
            SentexError: the prompt does not fit even without the tweet (a sentiment longer than
                those the constructor checked).
        """
        while True:
            ids = self._prompt_tokens(sentiment, text)
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids
            if not text:
                raise SentexError(
                    f"the {sentiment!r} prompt takes {len(ids)} tokens without its tweet: more than model.max_length"
                    f" ({self.max_length})"
                )
            # A cut can change the tokens around it, so the prompt is measured again. A byte-level
            # tokenizer spells an emoji with several tokens that all end where the emoji ends, so
            # dropping some of them may shorten nothing: then the last character goes. The tweet
            # shrinks every pass, so the loop ends, at the latest with no tweet left.
            shorter = self._drop_tokens(text, excess)
            text = shorter if len(shorter) < len(text) else text[:-1]

    def _drop_tokens(self, text: str, count: int) -> str:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        keep = max(0, len(enc["input_ids"]) - count - 1)
        if "offset_mapping" in enc:
            return text[: enc["offset_mapping"][keep - 1][1]] if keep else ""
        return text[: len(text) * keep // max(1, len(enc["input_ids"]))]

    def reply_ids(self, phrase: str) -> list[int]:
        """Token ids of the reply ``phrase``: the phrase, then the end-of-turn token (cut to ``max_target_length``)."""
        ids = self.tokenizer(self.reply_prefix + phrase.strip(), add_special_tokens=False)["input_ids"]
        return (ids + self.end_ids)[: self.max_target_length]

    # --- batches ---------------------------------------------------------------------------
    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """Rows → the raw fields, left-padded prompts and (labelled rows) the training sequences."""
        batch: Batch = {k: [r[k] for r in rows] for k in rows[0]}
        prompts = [self.prompt_ids(s, t) for s, t in zip(batch["sentiment"], batch["text"])]
        batch["prompt_tokens"] = prompts
        batch["prompt_ids"], batch["prompt_mask"] = pad(prompts, self.tokenizer.pad_token_id, left=True)
        if "selected_text" in batch:
            batch.update(self.sequences(prompts, batch["selected_text"]))
        return batch

    def sequences(self, prompts: list[list[int]], phrases: list[str], prefix: str = "") -> Batch:
        """``{prefix}input_ids``, ``attention_mask`` and ``labels`` of ``prompt + reply(phrase)``, right-padded."""
        replies = [self.reply_ids(p) for p in phrases]
        ids, mask = pad([p + r for p, r in zip(prompts, replies)], self.tokenizer.pad_token_id, left=False)
        labels = torch.full_like(ids, IGNORE)
        for i, (p, r) in enumerate(zip(prompts, replies)):
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}

    # --- scores and answers ----------------------------------------------------------------
    def reply_log_probs(
        self, net: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every reply token given what precedes it, and the row it belongs to.

        Runs the decoder once and the output layer only at the positions that predict a reply token
        (a tenth of a tweet prompt's positions): the ``(positions, vocabulary)`` logits are most of
        a small model's memory and much of its time.
        """
        model = net.get_base_model() if hasattr(net, "get_base_model") else net
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)  # position t predicts token t + 1
        logits = model.get_output_embeddings()(hidden[rows, cols]).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, labels[rows, cols + 1][:, None]).squeeze(-1), rows

    def loss(self, net: nn.Module, batch: Batch, prefix: str = "") -> torch.Tensor:
        """Mean cross-entropy over the reply tokens of a batch's training sequences."""
        ids, mask, labels = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "labels"))
        logp, _ = self.reply_log_probs(net, ids, mask, labels)
        return -logp.mean()

    def sequence_log_probs(
        self, net: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Summed log-probability of each row's reply tokens given its prompt (DPO's sequence score)."""
        logp, rows = self.reply_log_probs(net, ids, mask, labels)
        return torch.zeros(ids.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)

    def generate_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """``generate`` settings: :attr:`generation`, stopping at the end of the reply."""
        pad_id = self.tokenizer.pad_token_id
        return {**self.generation, "eos_token_id": self.stop_ids, "pad_token_id": pad_id, **overrides}

    @torch.no_grad()
    def generate(self, net: nn.Module, batch: Batch, rows: list[int], **overrides: Any) -> list[str]:
        """The text ``net`` writes after the prompts of ``rows`` (``num_return_sequences`` per row, in order)."""
        ids, mask = batch["prompt_ids"][rows], batch["prompt_mask"][rows]
        first = int(mask.any(0).nonzero()[0])  # padding columns every selected row has
        ids, mask = ids[:, first:], mask[:, first:]
        out = net.generate(input_ids=ids, attention_mask=mask, **self.generate_kwargs(**overrides))
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)

    def by_rule(self, sentiment: str) -> bool:
        """Whether a row of this sentiment is answered without the model (neutral → whole tweet)."""
        return self.neutral_full_tweet and sentiment == "neutral"

    @torch.no_grad()
    def answers(self, net: nn.Module, batch: Batch) -> list[Answer]:
        """Each row's :class:`Answer`: the whole tweet by rule, or the generation mapped onto the tweet."""
        texts = batch["text"]
        out = [Answer(t.strip()) for t in texts]
        rows = [i for i, s in enumerate(batch["sentiment"]) if not self.by_rule(s)]
        if rows:
            for i, generated in zip(rows, self.generate(net, batch, rows)):
                match = closest_substring(generated, texts[i])
                out[i] = Answer(match.phrase, generated, match.exact)
        return out

    @torch.no_grad()
    def extract(self, net: nn.Module, batch: Batch) -> list[str]:
        """The predicted phrase of each row: always a substring of its tweet."""
        return [a.phrase for a in self.answers(net, batch)]


def pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of token lists padded to the longest, on the left or the right.

    >>> pad([[5], [6, 7]], 0, left=True)[0].tolist(), pad([[5], [6, 7]], 0, left=False)[1].tolist()
    ([[0, 5], [6, 7]], [[1, 0], [1, 1]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, cols], mask[i, cols] = torch.tensor(seq, dtype=torch.long), 1
    return ids, mask
