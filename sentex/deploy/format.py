"""The exported-folder format, defined once: file names, manifest, dtypes and their weight files.

Layout of a folder written by ``sentex export``::

    sentex.json              manifest: family, base model, LoRA, settings, metrics, dtype, version
    README.md                model card
    config.json              transformers config (encoder for span, the full model for the other families)
    model.safetensors        fp32 / fp16 / bf16 weights (plain ``from_pretrained`` loads them)
    model.int8.safetensors   int8 weights instead, for dtype int8 (see :mod:`sentex.deploy.quant.int8`)
    model.int4.safetensors   4-bit weights instead, for dtype int4 (see :mod:`sentex.deploy.quant.int4`)
    head.safetensors         span only: every weight outside the encoder (start/end head, pair term), float32
    tokenizer files

An ONNX export (``sentex export --format onnx``, span models, fp32 or int8) is run by ONNX Runtime
instead of torch; its manifest says ``"runtime": "onnx"`` (absent means ``torch``)::

    sentex.json              manifest as above, plus ``runtime`` and ``onnx`` (opset, inputs, outputs, versions)
    README.md                model card
    config.json              the encoder's transformers config (for reference; the graph holds every weight)
    model.onnx               the span network (encoder + heads) as one ONNX graph, fp32
    model.int8.onnx          instead, for dtype int8: that graph after ONNX Runtime's dynamic int8 quantization
    tokenizer files

An ensemble (``sentex export`` with several ``--ckpt_path``) is one folder of span models that
answers as one, the members' span probabilities averaged::

    sentex.json              manifest as above, plus ``ensemble``: {"members": ["members/0", ...],
                             "combine": "mean span probability"} and per-member ``member_info``
    README.md                model card naming the members and their metrics
    tokenizer files          shared by every member (they must tokenize alike)
    members/<i>/             member ``i``: a complete single-model export (layout above, any dtype)

Format version 2 stores the span heads under their network names (``head.weight``, ...); version 1
stored the start/end ``nn.Linear`` alone (``weight``, ``bias``), which loading still reads.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import torch
from torch import nn

from sentex.deploy.onnx_runtime import INSTALL_HINT
from sentex.deploy.quant.int4 import GROUP_SIZE, int4_linears, load_int4_into, save_int4
from sentex.deploy.quant.int8 import dynamic_int8, load_int8_into, save_int8
from sentex.errors import CheckpointError

FORMAT_VERSION = 2
MANIFEST = "sentex.json"
CARD = "README.md"
FLOAT_WEIGHTS = "model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
FAMILIES = ("span", "seq2seq", "causal", "classifier")
# Families whose model answers with a phrase (the classifier answers with a label).
EXTRACTION_FAMILIES = ("span", "seq2seq", "causal")
# Ensembles: where the members live, and how their answers are combined (the only way there is).
MEMBERS_DIR = "members"
ENSEMBLE_COMBINE = "mean span probability"
ENSEMBLE_FAMILIES = ("span",)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Per model family: module names (last component) kept in float32 when quantizing. T5's
# feed-forward output projections overflow otherwise (https://github.com/huggingface/transformers/issues/20287).
# A classifier's head is a few thousand weights that decide every answer: kept exact. A causal LM's
# output projection shares its weight with the token embeddings in small chat models (SmolLM2, Llama 3.2).
KEEP_FP32: dict[str, tuple[str, ...]] = {
    "seq2seq": ("wo",),
    "span": (),
    "causal": ("lm_head",),
    "classifier": ("classifier", "score"),
}


def _load_int8(model: nn.Module, path: Path, keep: Sequence[str]) -> nn.Module:
    return dynamic_int8(model.eval(), keep, load_int8_into(model, path))


def _load_int4(model: nn.Module, path: Path, keep: Sequence[str]) -> nn.Module:
    quantized, _ = load_int4_into(model, path)
    return int4_linears(model.eval(), quantized)


class Quantizer(NamedTuple):
    """A quantized dtype: its weight file, how it is written and read, and what the manifest says of it."""

    weights: str
    save: Callable[[nn.Module, Path, Sequence[str]], None]
    load: Callable[[nn.Module, Path, Sequence[str]], nn.Module]
    storage: str
    runtime: str


QUANTIZERS: dict[str, Quantizer] = {
    "int8": Quantizer(
        "model.int8.safetensors",
        save_int8,
        _load_int8,
        "symmetric per-row int8 weights + float32 scales (Linear and Embedding)",
        "torch dynamic int8 Linear with per-token activation scales where the CPU has VNNI/AMX, else the int8 "
        "weights computed in float32; embeddings float32",
    ),
    "int4": Quantizer(
        "model.int4.safetensors",
        save_int4,
        _load_int4,
        f"asymmetric 4-bit weights in groups of {GROUP_SIZE} + float32 scale/offset (Linear and Embedding)",
        "torch int4 weight-only Linear (_weight_int4pack_mm_for_cpu, bf16 activations); embeddings float32",
    ),
}
# sentex's own weight files; their kernels run on CPU only.
QUANTIZED_DTYPES = tuple(QUANTIZERS)
DTYPES = (*TORCH_DTYPES, *QUANTIZED_DTYPES)
# Who runs an export's network: torch (sentex's own weight files) or ONNX Runtime (an ONNX graph).
RUNTIMES = ("torch", "onnx")
ONNX_WEIGHTS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ONNX_DTYPES = tuple(ONNX_WEIGHTS)
ONNX_FAMILIES = ("span",)


def weights_file(dtype: str, runtime: str = "torch") -> str:
    """Name of the file that holds the weights of a ``dtype`` export (the whole graph for ONNX).

    >>> weights_file("int8"), weights_file("int8", "onnx")
    ('model.int8.safetensors', 'model.int8.onnx')
    """
    if runtime == "onnx":
        return ONNX_WEIGHTS[dtype]
    return QUANTIZERS[dtype].weights if dtype in QUANTIZERS else FLOAT_WEIGHTS


def runtime_of(manifest: dict[str, Any]) -> str:
    """Who runs an export: ``"onnx"`` or ``"torch"`` (manifests from before ONNX exports have no ``runtime``).

    >>> runtime_of({"dtype": "fp32"}), runtime_of({"dtype": "int8", "runtime": "onnx"})
    ('torch', 'onnx')
    """
    return manifest.get("runtime") or "torch"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``sentex.json``."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``sentex.json``; every failure is a one-line :class:`CheckpointError`."""
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a sentex export (no {MANIFEST})") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable manifest: {err}") from None
    for field in ("family", "dtype", "settings"):
        if field not in manifest:
            raise CheckpointError(f"{file}: manifest has no '{field}' entry")
    if manifest["family"] not in FAMILIES:
        raise CheckpointError(f"{file}: unknown model family {manifest['family']!r}")
    if manifest["dtype"] not in DTYPES:
        raise CheckpointError(f"{file}: unknown dtype {manifest['dtype']!r}")
    check_runtime(file, manifest)
    if manifest.get("ensemble") is not None:
        check_ensemble(file, manifest)
    return manifest


def check_runtime(file: Path, manifest: dict[str, Any]) -> None:
    """Check a manifest's ``runtime`` against its family and dtype; a :class:`CheckpointError` names what is wrong."""
    runtime = runtime_of(manifest)
    if runtime not in RUNTIMES:
        raise CheckpointError(f"{file}: unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if runtime == "onnx" and manifest["family"] not in ONNX_FAMILIES:
        raise CheckpointError(f"{file}: a {manifest['family']} model cannot be an ONNX export")
    if runtime == "onnx" and manifest["dtype"] not in ONNX_DTYPES:
        raise CheckpointError(f"{file}: an ONNX export is {' or '.join(ONNX_DTYPES)}, not {manifest['dtype']!r}")
    if runtime == "onnx" and not installed("onnxruntime"):
        # Said here, where the CLI reads the manifest before building the model, so it stays one line.
        raise CheckpointError(f"{file.parent}: an ONNX export needs the 'onnxruntime' package: {INSTALL_HINT}")


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it.

    >>> installed("json"), installed("no_such_package_here")
    (True, False)
    """
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules as None: imports of it fail
        return False


def member_folder(index: int) -> str:
    """Where member ``index`` of an ensemble lives, relative to the ensemble folder.

    >>> member_folder(3)
    'members/3'
    """
    return f"{MEMBERS_DIR}/{index}"


def check_ensemble(file: Path, manifest: dict[str, Any]) -> None:
    """Check an ensemble manifest's ``ensemble`` entry; a :class:`CheckpointError` names what is wrong."""
    entry = manifest["ensemble"]
    members = entry.get("members") if isinstance(entry, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise CheckpointError(f"{file}: 'ensemble' entry has no list of member folders")
    if manifest["family"] not in ENSEMBLE_FAMILIES:
        raise CheckpointError(f"{file}: a {manifest['family']} model cannot be an ensemble")
    if entry.get("combine", ENSEMBLE_COMBINE) != ENSEMBLE_COMBINE:
        raise CheckpointError(f"{file}: unknown ensemble combination {entry['combine']!r}")
    for member in members:
        parts = PurePosixPath(member).parts
        if not parts or PurePosixPath(member).is_absolute() or ".." in parts:
            raise CheckpointError(f"{file}: ensemble member {member!r} is not a folder inside the ensemble")


def ensemble_members(folder: Path, manifest: dict[str, Any]) -> list[Path] | None:
    """The member folders of an ensemble export (checked by :func:`read_manifest`); ``None`` for a single model."""
    entry = manifest.get("ensemble")
    return None if entry is None else [folder / member for member in entry["members"]]


def head_state_from_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The span heads' state dict (network names) from a ``head.safetensors`` of format 1 or 2.

    >>> sorted(head_state_from_file({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}))
    ['head.bias', 'head.weight']
    """
    if set(state) == {"weight", "bias"}:  # format 1: the start/end Linear alone
        return {f"head.{k}": v for k, v in state.items()}
    return dict(state)
