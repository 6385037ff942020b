"""Int8 weights on disk and int8 matrix multiplies on CPU.

On disk (``model.int8.safetensors``) every ``nn.Linear`` and ``nn.Embedding`` weight is stored as
symmetric per-row int8 plus one float32 scale per row (``w ≈ q * scale``); everything else
(biases, norms, the layers in ``keep``) stays float32. Tensors that alias another (tied
embeddings) are stored once and listed in the file's metadata.

At load time the weights are dequantized into an ordinary float32 model. Where the CPU has
VNNI/AMX (:func:`int8_compute`), each ``nn.Linear`` not in ``keep`` is then swapped for a
dynamic-quantized int8 Linear on torch's fbgemm/oneDNN kernels (:class:`RowScaledDynamicLinear`:
int8 weights, activations quantized with one scale per token, so an answer does not depend on its
batch) whose weight is set to exactly the stored int8 values. Elsewhere (AVX2 only) the
dequantized weights are computed in float32. Embeddings stay float32 in memory: a lookup costs
nothing to compute, so int8 there only saves disk. The CPU-dependent choices were picked by
measurement: int8 kernels only with VNNI/AMX, 8-bit activations there, and weights packed for
oneDNN where the CPU has AMX (:func:`packing_engine`).

T5's feed-forward output projections (``wo``) must stay in higher precision, otherwise int8
FLAN-T5 produces garbage (https://github.com/huggingface/transformers/issues/20287).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

SCALE_SUFFIX = ".int8_scale"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``q = round(w / s)`` with ``s = max|row| / 127`` (1 for an all-zero row).

    >>> q, s = quantize_rows(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
    >>> q.tolist(), [round(x, 6) for x in s.tolist()]
    ([[64, -127], [0, 0]], [0.015748, 1.0])
    """
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_rows` (up to rounding): ``q * scale`` per row, float32."""
    return q.float() * scale[:, None]


def is_kept(module_name: str, keep: Sequence[str]) -> bool:
    """Whether a module stays float32: its last name component is in ``keep``.

    >>> is_kept("encoder.block.0.layer.1.DenseReluDense.wo", ["wo"])
    True
    >>> is_kept("encoder.block.0.layer.1.DenseReluDense.wi", ["wo"])
    False
    """
    return module_name.rsplit(".", 1)[-1] in keep


def quantizable_weights(model: nn.Module, keep: Sequence[str]) -> set[str]:
    """State-dict keys of the Linear and Embedding weights that go to int8."""
    return {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding)) and not is_kept(name, keep)
    }


def untied_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``model``'s state dict with each tied tensor once, and ``{alias key: stored key}`` for the rest.

    safetensors refuses tensors that share storage (e.g. T5's tied embeddings and ``lm_head``).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_key: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), tuple(value.shape))
        if ident in first_key:
            aliases[key] = first_key[ident]
        else:
            first_key[ident] = key
            tensors[key] = value
    return tensors, aliases


def plain_tensor(value: torch.Tensor) -> torch.Tensor:
    """A tensor kept as it is on disk: floating point as float32, contiguous."""
    return value.detach().float().contiguous() if value.is_floating_point() else value.contiguous()


def stored_tensors(model: nn.Module, path: Path) -> Iterator[tuple[str, torch.Tensor, Any, str]]:
    """For each state-dict entry of ``model``: ``(key, model tensor, open file, key in the file)``.

    Follows the file's tied-weight aliases; the caller copies the (decoded) value into the model
    tensor, one at a time, which keeps loading near one float32 copy of the model in memory.

    Raises:
        KeyError: the file lacks a weight of ``model``.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        stored = set(f.keys())
        with torch.no_grad():
            for key, target in model.state_dict().items():
                source = aliases.get(key, key)
                if source not in stored:
                    raise KeyError(f"{path.name} has no weight '{key}'")
                yield key, target, f, source


def save_int8(model: nn.Module, path: Path, keep: Sequence[str]) -> None:
    """Write ``model``'s state dict with int8 Linear/Embedding weights (see module docstring)."""
    targets = quantizable_weights(model, keep)
    untied, aliases = untied_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in untied.items():
        if key in targets and value.is_floating_point() and value.dim() == 2:
            tensors[key], tensors[key + SCALE_SUFFIX] = quantize_rows(value)
        else:
            tensors[key] = plain_tensor(value)
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases), "format": "sentex-int8-rows"})


def load_int8_into(model: nn.Module, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fill ``model`` (same architecture) from a :func:`save_int8` file, one tensor at a time.

    Returns:
        ``{key: (int8, scale)}`` of the int8 weights, for :func:`dynamic_int8`.

    Raises:
        KeyError: the file lacks a weight of ``model``.
    """
    packed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, target, f, source in stored_tensors(model, path):
        value = f.get_tensor(source)
        if value.dtype == torch.int8:
            packed[key] = (value, f.get_tensor(source + SCALE_SUFFIX))
            value = dequantize_rows(*packed[key])
        target.copy_(value)
    return packed


class RowScaledDynamicLinear(DynamicLinear):
    """Dynamic int8 Linear whose activations are quantized with one scale per row (token), not per batch.

    torch's dynamic Linear quantizes its whole input with one scale: a tweet's answer then depends on
    what it is batched with (the largest activation in the batch sets everyone's step), and one
    outlier token (often ``[CLS]``) coarsens every other token's step (issue #24). Here each row
    ``x_i`` is divided by its own ``a_i = max|x_i|``, so every row lies in ``[-1, 1]``; two
    calibration rows ``(1, 0, ...)`` and ``(-1, 0, ...)`` appended to the batch pin the quantizer's
    range to exactly ``[-1, 1]`` whatever the batch holds; fbgemm's int8 kernel then multiplies, and the row is scaled
    back: ``y_i = a_i · (W x_i / a_i) + b``. Integer accumulation is exact, so a row's output is the
    same in any batch. The bias is added afterwards in float32 (it must not be scaled by ``a_i``).

    Activations use 8 bits where the CPU accumulates pairs in int32 (VNNI/AMX) and 7 bits elsewhere:
    fbgemm's AVX2 kernels add pairs of u8·s8 products in saturating int16, so 255·127·2 overflows
    (torch's ``reduce_range``). Measurements: README, "int8 on both kinds of CPU".
    """

    full_range: bool = False
    float_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        n, width = rows.shape
        amax = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True)
        amax = amax.masked_fill_(amax == 0, 1.0)
        # Rows divided by their own maximum, then two calibration rows (1 and -1 in the first column) that
        # pin the quantizer's range, written into one buffer to spare a copy.
        scaled = rows.new_zeros(n + 2, width)
        torch.div(rows, amax, out=scaled[:n])
        scaled[n, 0], scaled[n + 1, 0] = 1.0, -1.0
        packed = self._packed_params._packed_params
        out = torch.ops.quantized.linear_dynamic(scaled, packed, reduce_range=not self.full_range)[:n]
        out.mul_(amax)
        if self.float_bias is not None:
            out.add_(self.float_bias)
        return out.reshape(*shape[:-1], out.shape[-1]).to(x.dtype)

    def _get_name(self) -> str:
        return "RowScaledDynamicLinear"


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        return set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return set()


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX); False where unknown."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def packing_engine() -> str:
    """The quantized engine to pack int8 weights for: oneDNN on CPUs with AMX, else torch's current one.

    Chosen by interleaved runs on an AMX CPU, where oneDNN-packed int8 was clearly faster than
    fbgemm/x86-packed int8 (how much depends on the CPU). A packed weight keeps its engine's kernels
    whatever ``torch.backends.quantized.engine`` says later, so the engine is only switched while
    packing.
    """
    if "amx_int8" in cpu_flags() and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


@contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Use quantized engine ``name`` inside the block, then restore the previous one."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


INT8_COMPUTES = ("int8", "float")


def int8_compute() -> str:
    """How int8 weights are computed with on this CPU: ``int8`` kernels where it has VNNI/AMX, else ``float``.

    Without VNNI, fbgemm adds pairs of u8·s8 products in saturating int16, which forces 7-bit
    activations; on an AMD EPYC (AVX2 only) that cost a random-head MiniLM classifier 0.057 in
    probability even with per-token scales (0.005 with the int8 weights computed in float32), while
    int8 kernels gained little speed there (issue #24; README "int8 on both kinds of CPU"). So such a
    CPU keeps the int8 file (a third of the size on disk) and multiplies the dequantized weights in
    float32: answers as exact as the rounding of the weights allows, and batch-invariant.

    ``SENTEX_INT8_COMPUTE=int8`` or ``float`` overrides the choice (e.g. to trade accuracy for speed).
    """
    forced = os.environ.get("SENTEX_INT8_COMPUTE", "").strip().lower()
    if forced:
        if forced not in INT8_COMPUTES:
            raise ValueError(f"SENTEX_INT8_COMPUTE must be one of {', '.join(INT8_COMPUTES)}, got {forced!r}")
        return forced
    return "int8" if cpu_has_vnni() else "float"


def dynamic_int8(
    model: nn.Module,
    keep: Sequence[str],
    packed: dict | None = None,
    full_range: bool | None = None,
    compute: str | None = None,
) -> nn.Module:
    """Swap every ``nn.Linear`` not in ``keep`` for a :class:`RowScaledDynamicLinear` (in place).

    Args:
        model: a float32 model in eval mode (with the int8 weights already dequantized into it, when
            it comes from :func:`load_int8_into`).
        keep: module names (last component) left in float32.
        packed: ``{weight key: (int8, scale)}`` from :func:`load_int8_into`; these exact values
            become the int8 weights (otherwise torch's per-channel observer picks them).
        full_range: 8-bit activations; default: where the CPU has VNNI/AMX (7-bit elsewhere).
        compute: ``int8`` (int8 kernels) or ``float`` (leave the model as it is: weight-only int8);
            default :func:`int8_compute`.

    Returns:
        The quantized model.
    """
    compute = int8_compute() if compute is None else compute
    if compute not in INT8_COMPUTES:
        raise ValueError(f"int8 compute must be one of {', '.join(INT8_COMPUTES)}, got {compute!r}")
    if compute == "float":
        if packed is None:  # a float model: round its weights as the int8 file would
            with torch.no_grad():
                for name, module in model.named_modules():
                    if isinstance(module, nn.Linear) and not is_kept(name, keep):
                        module.weight.copy_(dequantize_rows(*quantize_rows(module.weight)))
        return model
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_kept(n, keep)]
    full_range = cpu_has_vnni() if full_range is None else full_range
    with warnings.catch_warnings(), quantized_engine(packing_engine()):
        # torch.ao.quantization is deprecated in favour of torchao, but in torch 2.13 it is still
        # the int8 path with fast x86 (fbgemm) kernels and no extra dependency; see the bench notes.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*deprecated", category=UserWarning)
        qconfigs = {n: per_channel_dynamic_qconfig for n in names}
        mapping = {nn.Linear: RowScaledDynamicLinear}
        quantize_dynamic(model, qconfigs, dtype=torch.qint8, mapping=mapping, inplace=True)
        modules = dict(model.named_modules())
        for name in names:
            module = modules[name]
            weight, bias = module.weight(), module.bias()
            if packed and f"{name}.weight" in packed:
                q, scale = packed[f"{name}.weight"]
                zero = torch.zeros_like(scale, dtype=torch.long)
                weight = torch.quantize_per_channel(dequantize_rows(q, scale), scale.double(), zero, 0, torch.qint8)
            # The bias is added after the row scale is undone, so it is packed without one.
            module.set_weight_bias(weight, None)
            module.float_bias = None if bias is None else bias.detach().float().clone()
            module.full_range = full_range
    return model
