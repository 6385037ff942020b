"""Reading the supervised (SFT) checkpoint that alignment starts from, with one-line errors."""

from __future__ import annotations

import torch

from sentex.errors import CheckpointError
from sentex.io.checkpoints import AtomicCheckpointIO
from sentex.models.base import rename_legacy_keys


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
