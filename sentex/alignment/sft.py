"""Reading the supervised (SFT) checkpoint that alignment starts from, with one-line errors.

Two reads: :func:`sft_model_settings` takes the model settings the SFT model was trained with from
its saved hyper-parameters (``sentex align`` builds policy and reference from them), and
:func:`load_sft_state` its weights, checked to fit the module built.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sentex.errors import CheckpointError
from sentex.io.checkpoints import AtomicCheckpointIO, read_checkpoint
from sentex.models.base import rename_legacy_keys

# Constructor arguments of the model families that belong to the alignment run, not to the model: the
# optimizer's settings are the run's own choice (alignment wants a far smaller learning rate than SFT),
# gradient checkpointing trades memory for time, and a 4-bit base cannot take the merge that
# generative alignment does (a QLoRA SFT adapter loads onto the full-precision base instead).
RUN_SETTINGS = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "lr_schedule",
        "head_learning_rate",
        "optimizer",
        "gradient_checkpointing",
        "quantize_base",
        "quantize_compute_dtype",
    }
)


def model_setting_defaults(family: type) -> dict[str, Any]:
    """Every model setting of a family's constructor (run settings left out) with its default.

    Args:
        family: the plain LightningModule of a family (e.g. :class:`~sentex.models.span.SpanExtractor`).

    Returns:
        Setting name → default, in signature order.
    """
    params = inspect.signature(family.__init__).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in named and p.name != "self" and p.name not in RUN_SETTINGS}


def sft_model_settings(path: str, family: str, plain_family: type) -> dict[str, Any]:
    """The model settings an SFT checkpoint was trained with, read off its saved hyper-parameters.

    A setting the checkpoint lacks (written by a sentex from before the setting existed) gets the
    family's default, which is what that sentex did; run settings (:data:`RUN_SETTINGS`) are never taken.

    Args:
        path: the SFT checkpoint.
        family: the model family it must hold (``span``, ``seq2seq``, ``causal``).
        plain_family: that family's LightningModule, whose constructor names the settings.

    Returns:
        Every model setting of ``plain_family`` → the checkpoint's value (or the default).

    Raises:
        CheckpointError: unreadable file, not sentex's, or another family.
    """
    ckpt = read_checkpoint(path)
    if not ckpt:  # read_checkpoint's answer for a complete file holding more than plain data
        raise CheckpointError(f"{path}: model.sft_checkpoint holds more than plain data; its settings cannot be read")
    meta = ckpt.get("sentex")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: model.sft_checkpoint was not written by sentex (no 'sentex' entry)")
    if meta.get("family") != family:
        raise CheckpointError(
            f"{path}: model.sft_checkpoint is a '{meta.get('family')}' model; this DPO module needs a '{family}' model"
        )
    saved = ckpt.get("hyper_parameters") or {}
    return {
        name: saved[name] if name in saved else default
        for name, default in model_setting_defaults(plain_family).items()
        if name in saved or default is not inspect.Parameter.empty  # a required one left to the config
    }


def load_sft_state(
    path: str, family: str, expected: dict[str, torch.Size], legacy_prefixes: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """The weights of a sentex SFT checkpoint, checked to be a ``family`` model that fits.

    Args:
        path: the checkpoint.
        family: the model family it must hold.
        expected: state-dict key → shape of every weight the DPO module takes from it.
        legacy_prefixes: key renames for checkpoints of an earlier module layout.

    Raises:
        CheckpointError: unreadable file, another family, or weights that do not fit the model settings.
    """
    ckpt = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu", weights_only=True)
    meta = ckpt.get("sentex") if isinstance(ckpt, dict) else None
    if meta is None:
        raise CheckpointError(f"{path}: model.sft_checkpoint was not written by sentex (no 'sentex' entry)")
    if meta.get("family") != family:
        raise CheckpointError(
            f"{path}: model.sft_checkpoint is a '{meta.get('family')}' model; this DPO module needs a '{family}' model"
        )
    state = rename_legacy_keys(ckpt["state_dict"], legacy_prefixes or {})
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if unexpected:  # e.g. a joint-scoring SFT model aligned with span_scoring: independent
        raise CheckpointError(
            f"{path}: model.sft_checkpoint has {len(unexpected)} weights this model lacks"
            f" (e.g. '{sorted(unexpected)[0]}'); use the model settings it was trained with (span_scoring, LoRA)"
        )
    if missing:
        raise CheckpointError(
            f"{path}: model.sft_checkpoint lacks {len(missing)} weights of this model (e.g. '{sorted(missing)[0]}');"
            " use the model settings it was trained with"
        )
    wrong = sorted(k for k, shape in expected.items() if tuple(state[k].shape) != tuple(shape))
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: model.sft_checkpoint weight '{k}' has shape {tuple(state[k].shape)}, this model's is "
            f"{tuple(expected[k])} (e.g. a LoRA rank that differs: check model.lora_r)"
        )
    return state
