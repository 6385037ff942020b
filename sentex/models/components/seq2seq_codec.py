"""The seq2seq model's pre- and post-processing: prompts and label ids in, generated phrases out.

The network is the transformers ``AutoModelForSeq2SeqLM`` itself (LoRA-wrapped while training);
this codec is the one object that turns rows into its inputs and its generations into answers, for
training (:class:`sentex.models.Seq2SeqExtractor`), DPO and exported models alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sentex.models.components.text_offsets import find_ignoring_case

Batch = dict[str, Any]
DEFAULT_PROMPT = "Extract the {sentiment} sentiment phrase from: {text}"
DEFAULT_GENERATION = {"num_beams": 1, "max_new_tokens": 64}


def restore_source_case(prediction: str, text: str) -> str:
    """Return the tweet's own spelling of ``prediction`` when it occurs in ``text`` ignoring case.

    Generation may change case or spacing; where the phrase is really in the tweet we answer with
    the tweet's exact substring, otherwise with the stripped generated text.

    >>> restore_source_case("sooo sad", " Sooo SAD I will miss you")
    'Sooo SAD'
    >>> restore_source_case(" not there ", "something else")
    'not there'
    """
    cleaned = " ".join(prediction.split())
    span = find_ignoring_case(text, cleaned)
    return text[span[0] : span[1]] if span is not None else cleaned


def label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of ``log softmax(logits)[label]``, skipping ``-100`` labels.

    >>> logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    >>> round(label_log_probs(logits, torch.tensor([[1, -100]])).exp().item(), 4)
    0.5
    """
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * mask).sum(dim=-1)


class Seq2SeqCodec:
    """Prompt template, tokenization, target labels and generation settings of a seq2seq extractor.

    Args:
        tokenizer: the model's tokenizer.
        prompt_template: prompt with ``{sentiment}`` and ``{text}`` fields.
        max_length: maximum prompt tokens (longer prompts are truncated).
        max_target_length: maximum phrase tokens in labels.
        generation: keyword arguments for ``generate``, over :data:`DEFAULT_GENERATION`.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_template: str = DEFAULT_PROMPT,
        max_length: int = 128,
        max_target_length: int = 64,
        generation: dict[str, Any] | None = None,
    ) -> None:
        for field in ("{sentiment}", "{text}"):
            if field not in prompt_template:
                raise ValueError(f"model.prompt_template must contain {field}")
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}

    def settings(self) -> dict[str, Any]:
        """The constructor arguments besides the tokenizer (an export's ``settings``)."""
        return {
            "prompt_template": self.prompt_template,
            "max_length": self.max_length,
            "max_target_length": self.max_target_length,
            "generation": dict(self.generation),
        }

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """Rows → a batch with the raw fields, prompt ids and (labelled rows) ``labels``."""
        batch: Batch = {k: [r[k] for r in rows] for k in rows[0]}
        prompts = [self.prompt_template.format(sentiment=r["sentiment"], text=r["text"]) for r in rows]
        enc = self.tokenizer(prompts, max_length=self.max_length, truncation=True, padding=True, return_tensors="pt")
        batch.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if "selected_text" in batch:
            batch["labels"] = self.target_labels(batch["selected_text"])
        return batch

    def target_labels(self, phrases: list[str]) -> torch.Tensor:
        """Padded label ids of ``phrases`` (``-100`` on padding): gold phrases, or DPO rejections."""
        labels = self.tokenizer(
            phrases, max_length=self.max_target_length, truncation=True, padding=True, return_tensors="pt"
        )["input_ids"]
        labels[labels == self.tokenizer.pad_token_id] = -100
        return labels

    def sequence_log_probs(self, net: nn.Module, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each row's target tokens given its prompt."""
        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        return label_log_probs(logits, labels)

    @torch.no_grad()
    def extract(self, net: nn.Module, batch: Batch) -> list[str]:
        """Generate each row's phrase and answer with the tweet's own spelling where it occurs."""
        ids = net.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **self.generation)
        decoded = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [restore_source_case(d, t) for d, t in zip(decoded, batch["text"])]
