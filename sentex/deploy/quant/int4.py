"""Int4 weights: group-wise 4-bit storage on disk and torch's int4 CPU matmul at run time.

On disk (``model.int4.safetensors``) each ``nn.Linear`` and ``nn.Embedding`` weight whose input size
is a multiple of :data:`GROUP_SIZE` is stored as asymmetric 4-bit codes, two per byte, with a
float32 scale and offset per group of :data:`GROUP_SIZE` inputs: ``w ≈ (q - 8) · scale + zero``,
``q ∈ [0, 15]`` (the layout of torch's ``_weight_int4pack_mm_for_cpu``, also used by torchao's
int4 weight-only CPU path). Everything else (biases, norms, the ``keep`` layers) stays float32.

At load time the codes are unpacked into a float32 model; each quantized ``nn.Linear`` then becomes
an :class:`Int4Linear` that keeps the weight packed in 4 bits and multiplies with
``torch.ops.aten._weight_int4pack_mm_for_cpu`` (bfloat16 activations), or, where that kernel is
missing, an ordinary Linear holding the dequantized weight. Embeddings stay float32 in memory.

Where the int4 kernel is slower than float32 (as on the CPU of the README's export table), int4 is
the *smallest* export rather than the fastest, and int8 stays the recommended CPU export; the
measured numbers are in the README, not here, because they depend on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sentex.deploy.quant.int8 import is_kept, plain_tensor, stored_tensors, untied_state

GROUP_SIZE = 32
SCALE_SUFFIX, ZERO_SUFFIX = ".int4_scale", ".int4_zero"


def quantize_groups(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, ...]:
    """Asymmetric 4-bit codes per group of ``group_size`` columns: ``(codes, scale, zero)``.

    ``codes`` is uint8 in ``[0, 15]``, shape ``(rows, cols)``; ``scale`` and ``zero`` are
    ``(rows, cols // group_size)`` float32 with ``w ≈ (codes - 8) · scale + zero``.

    >>> q, s, z = quantize_groups(torch.tensor([[0.0, 1.5, 3.0, 1.0]]), group_size=4)
    >>> q.tolist(), s.tolist(), z.tolist()
    ([[0, 8, 15, 5]], [[0.20000000298023224]], [[1.600000023841858]])
    >>> dequantize_groups(q, s, z).tolist()
    [[0.0, 1.600000023841858, 3.0, 1.0]]
    """
    rows, cols = weight.shape
    w = weight.detach().float().reshape(rows, cols // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    codes = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return codes.reshape(rows, cols), scale, low + 8 * scale


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Float32 weights from :func:`quantize_groups`' output."""
    rows, cols = codes.shape
    groups = scale.shape[1]
    w = (codes.float().reshape(rows, groups, -1) - 8) * scale[..., None] + zero[..., None]
    return w.reshape(rows, cols)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (even column in the low nibble).

    >>> pack_nibbles(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)).tolist()
    [[33, 15]]
    """
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`.

    >>> unpack_nibbles(torch.tensor([[33, 15]], dtype=torch.uint8)).tolist()
    [[1, 2, 15, 0]]
    """
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def int4_weights(model: nn.Module, keep: Sequence[str], group_size: int = GROUP_SIZE) -> set[str]:
    """State-dict keys of the Linear/Embedding weights that go to 4 bits (input size divisible by the group)."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and not is_kept(name, keep):
            if module.weight.shape[1] % group_size == 0:
                out.add(f"{name}.weight" if name else "weight")
    return out


def save_int4(model: nn.Module, path: Path, keep: Sequence[str], group_size: int = GROUP_SIZE) -> None:
    """Write ``model``'s state dict with 4-bit Linear/Embedding weights (see module docstring)."""
    targets = int4_weights(model, keep, group_size)
    untied, aliases = untied_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in untied.items():
        if key in targets:
            codes, scale, zero = quantize_groups(value, group_size)
            tensors[key], tensors[key + SCALE_SUFFIX], tensors[key + ZERO_SUFFIX] = pack_nibbles(codes), scale, zero
        else:
            tensors[key] = plain_tensor(value)
    meta = {"aliases": json.dumps(aliases), "format": "sentex-int4-groups", "group_size": str(group_size)}
    save_file(tensors, str(path), metadata=meta)


def load_int4_into(model: nn.Module, path: Path) -> tuple[dict[str, tuple[torch.Tensor, ...]], int]:
    """Fill ``model`` (same architecture) with the dequantized weights of a :func:`save_int4` file.

    Returns:
        ``({key: (codes, scale, zero)}, group_size)`` of the 4-bit weights, for :func:`int4_linears`.

    Raises:
        KeyError: the file lacks a weight of ``model``.
    """
    quantized: dict[str, tuple[torch.Tensor, ...]] = {}
    group_size, stored = GROUP_SIZE, None
    for key, target, f, source in stored_tensors(model, path):
        if stored is None:  # read once, from the file the generator opened
            group_size, stored = int((f.metadata() or {}).get("group_size", GROUP_SIZE)), set(f.keys())
        value = f.get_tensor(source)
        if value.dtype == torch.uint8 and source + SCALE_SUFFIX in stored:
            scale, zero = f.get_tensor(source + SCALE_SUFFIX), f.get_tensor(source + ZERO_SUFFIX)
            quantized[key] = parts = (unpack_nibbles(value), scale, zero)
            value = dequantize_groups(*parts)
        target.copy_(value)
    return quantized, group_size


def int4_kernel_available() -> bool:
    """Whether this torch has the int4 weight-only CPU matmul."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int4Linear(nn.Module):
    """A Linear whose weight stays packed in 4 bits; ``x @ W.T`` by ``_weight_int4pack_mm_for_cpu``.

    Activations go in as bfloat16: the kernel also accepts float32, but on torch 2.13 CPU that is a
    slow path, many times slower than bfloat16 for a BERT-sized product. The result is cast back to
    the input's dtype and the bias added in that dtype.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size = self.in_features // scale.shape[1]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)
        self.register_buffer("packed", packed)
        # the kernel wants (groups, out_features, 2) = (scale, zero)
        self.register_buffer("scale_zero", torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scale_zero)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def int4_linears(model: nn.Module, quantized: dict[str, tuple[torch.Tensor, ...]]) -> nn.Module:
    """Swap each Linear with stored 4-bit weights for an :class:`Int4Linear` (in place), where the kernel exists.

    Linears the kernel cannot pack (output size not a multiple of 16) keep their dequantized weights.
    """
    if not int4_kernel_available():
        return model  # the dequantized float32 weights already loaded are the fallback
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if isinstance(module, nn.Linear) and key in quantized and module.out_features % 16 == 0:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Int4Linear(*quantized[key], module.bias))
    return model
