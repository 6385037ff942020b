"""FLAN-T5 (any ``AutoModelForSeq2SeqLM``) + LoRA: the phrase is *generated*."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from sentex.models.base import Batch, ExtractorModule
from sentex.models.lora import apply_lora, enable_gradient_checkpointing
from sentex.pretrained import resolve_model_path

DEFAULT_PROMPT = "Extract the {sentiment} sentiment phrase from: {text}"


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
    start = text.lower().find(cleaned.lower()) if cleaned else -1
    return text[start : start + len(cleaned)] if start >= 0 else cleaned


class Seq2SeqExtractor(ExtractorModule):
    """A seq2seq LM that generates the sentiment phrase from a prompt, fine-tuned with LoRA.

    Args:
        model_name_or_path: Hugging Face model id or local folder.
        prompt_template: prompt with ``{sentiment}`` and ``{text}`` fields.
        max_length: maximum prompt tokens (longer prompts are truncated).
        max_target_length: maximum phrase tokens in training labels.
        lora_r: LoRA rank; ``null`` trains the full model instead.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names that get adapters (T5: ``q``, ``k``, ``v``, ``o``, ``wi``, ``wo``).
        gradient_checkpointing: trade compute for activation memory.
        generation: keyword arguments for ``generate`` (``num_beams``, ``max_new_tokens``, ...).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before cosine decay.
    """

    family = "seq2seq"

    def __init__(
        self,
        model_name_or_path: str = "google/flan-t5-base",
        prompt_template: str = DEFAULT_PROMPT,
        max_length: int = 128,
        max_target_length: int = 64,
        lora_r: int | None = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        gradient_checkpointing: bool = False,
        generation: dict[str, Any] | None = None,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps)
        self.save_hyperparameters()
        for field in ("{sentiment}", "{text}"):
            if field not in prompt_template:
                raise ValueError(f"model.prompt_template must contain {field}")
        path = resolve_model_path(model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if lora_r is not None:
            model = apply_lora(
                model, lora_r, lora_alpha, lora_dropout, lora_target_modules or ["q", "v"], "SEQ_2_SEQ_LM"
            )
        # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
        self.model = model.train()
        self.generation = {"num_beams": 1, "max_new_tokens": 64, **(generation or {})}

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        batch: Batch = {k: [r[k] for r in rows] for k in rows[0]}
        prompts = [self.hparams.prompt_template.format(sentiment=r["sentiment"], text=r["text"]) for r in rows]
        enc = self.tokenizer(
            prompts, max_length=self.hparams.max_length, truncation=True, padding=True, return_tensors="pt"
        )
        batch.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if "selected_text" in batch:
            batch["labels"] = self.target_labels(batch["selected_text"])
        return batch

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        ids = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **self.generation
        )
        decoded = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [restore_source_case(d, t) for d, t in zip(decoded, batch["text"])]

    def target_labels(self, phrases: list[str]) -> torch.Tensor:
        """Padded label ids of ``phrases`` (``-100`` on padding): gold phrases in ``collate``, DPO rejections."""
        labels = self.tokenizer(
            phrases, max_length=self.hparams.max_target_length, truncation=True, padding=True, return_tensors="pt"
        )["input_ids"]
        labels[labels == self.tokenizer.pad_token_id] = -100
        return labels

    def sequence_log_probs(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each row's target tokens given its prompt (DPO's sequence score)."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        return label_log_probs(logits, labels)


def label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of ``log softmax(logits)[label]``, skipping ``-100`` labels.

    >>> logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    >>> round(label_log_probs(logits, torch.tensor([[1, -100]])).exp().item(), 4)
    0.5
    """
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * mask).sum(dim=-1)
