"""The sentiment classifier's network: any encoder or decoder through ``AutoModelForSequenceClassification``.

An encoder (BERT, MiniLM, DistilBERT, ...) classifies from its pooled first token; a decoder (GPT-2,
SmolLM, Llama, ...) from its last non-padding token, which transformers finds through
``config.pad_token_id``. Decoder tokenizers often have no padding token, so the end-of-text token
stands in for it (the usual choice), and the model's config is told which id that is: without it
transformers would pool the last position whatever it holds, i.e. padding in a padded batch.

Under LoRA only the adapters and the classification head train; the head is whatever the pretrained
checkpoint did not provide (transformers' ``missing_keys``) plus the model's ``classifier`` / ``score``
module, so a checkpoint that already carries a head of the right size fine-tunes it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from sentex.models.components.lora import apply_lora

log = logging.getLogger(__name__)

# Names transformers gives the classification head of its sequence-classification models.
HEAD_NAMES = ("classifier", "score")


@contextmanager
def quiet_transformers():
    """Silence transformers' load report (a fresh head is expected here; sentex says so in one line)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with a padding token (the end-of-text token for decoders that lack one)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: the classifier needs a fast tokenizer (character offsets for truncation)")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a padding nor an end-of-text token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def head_parameter_names(model: nn.Module, new_keys: Sequence[str]) -> set[str]:
    """Parameters of the classification head: freshly initialised ones and those under ``classifier``/``score``."""
    names = set()
    for name, _ in model.named_parameters():
        top = name.split(".", 1)[0]
        if name in new_keys or top in HEAD_NAMES:
            names.add(name)
    return names


def linear_module_names(model: nn.Module, exclude: Sequence[str] = HEAD_NAMES) -> list[str]:
    """The distinct leaf names of the model's linear layers outside the head (LoRA's default targets).

    GPT-2 builds its projections as ``Conv1D`` (a transposed linear layer), which peft adapts too.
    """
    names = set()
    for name, module in model.named_modules():
        if name.split(".", 1)[0] in exclude:
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_classifier_network(
    path: str,
    labels: Sequence[str],
    tokenizer: Any,
    lora_r: int | None = None,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    lora_target_modules: Sequence[str] | None = None,
    classifier_dropout: float | None = None,
) -> nn.Module:
    """A sequence-classification model with one output per label, LoRA-wrapped when ``lora_r`` is set.

    Args:
        path: what ``from_pretrained`` takes (see :func:`~sentex.models.components.pretrained.resolve_model_path`).
        labels: class names, in output order (stored as the config's ``id2label``).
        tokenizer: the tokenizer from :func:`load_tokenizer` (its padding token is the pooling marker).
        lora_r: LoRA rank; ``None`` trains every weight.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names that get adapters; default every linear layer outside the head.
        classifier_dropout: dropout before the head, where the architecture has such a setting
            (BERT's ``classifier_dropout``); ``None`` keeps the model's own.

    Returns:
        The network in training mode.
    """
    extra = {} if classifier_dropout is None else {"classifier_dropout": classifier_dropout}
    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,  # a pretrained head for other classes is replaced, not an error
            output_loading_info=True,
            **extra,
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    new_keys = sorted(set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())})
    if new_keys:
        log.info("%s: new classification weights %s for labels %s", path, ", ".join(new_keys), ", ".join(labels))
    head = head_parameter_names(model, new_keys)
    if lora_r is not None:
        targets = list(lora_target_modules or linear_module_names(model))
        model = apply_lora(model, lora_r, lora_alpha, lora_dropout, targets)
        # peft froze everything but the adapters; the head is new and must learn (peft's modules_to_save
        # would do the same through a wrapped copy, which renames the weights an export has to merge).
        for name, param in model.base_model.model.named_parameters():
            if name in head:
                param.requires_grad_(True)
    # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
    return model.train()


def unwrap(net: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (``net`` itself when there is none)."""
    return net.base_model.model if isinstance(net, PeftModel) else net
