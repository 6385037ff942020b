"""Running an ONNX export: the span network's graph in an ONNX Runtime session, behind the network's own call.

:class:`OnnxSpanNetwork` takes what :class:`~sentex.models.components.span_network.SpanNetwork` takes
(``input_ids``, ``attention_mask``, ``token_type_ids``) and returns the same
:class:`~sentex.models.components.span_network.SpanLogits`, so the codec, the inference pipeline and
ensembles run it unchanged: tokenizing, span choice, offsets and the label-shift rule stay sentex's
Python code, and an ONNX export answers as the torch network it was exported from.

ONNX Runtime and the exporter's packages are optional (``pip install 'sentex[onnx]'``); they are
imported here only when an ONNX export is written or loaded.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sentex.errors import SentexError
from sentex.io.checkpoints import first_line
from sentex.models.components.span_network import SpanLogits

INSTALL_HINT = "pip install 'sentex[onnx]'"
# Graph outputs, in the order SpanLogits holds them; "pair" only under joint scoring.
OUTPUTS = ("start", "end", "pair")


def import_optional(name: str, purpose: str) -> ModuleType:
    """Import one of the ONNX packages, or raise a one-line :class:`SentexError` saying how to install it.

    >>> import_optional("no_such_onnx_package", "an ONNX export")
    Traceback (most recent call last):
    ...
    sentex.errors.SentexError: an ONNX export needs the 'no_such_onnx_package' package: pip install 'sentex[onnx]'
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SentexError(f"{purpose} needs the '{name}' package: {INSTALL_HINT}") from None


def session_options(ort: ModuleType, threads: int | None = None) -> Any:
    """Session options that use the threads torch would, so an ONNX export is compared with torch fairly.

    ``intra_op_num_threads`` is ``threads`` or ``torch.get_num_threads()`` (what ``OMP_NUM_THREADS``,
    ``torch.set_num_threads`` or ``sentex bench --threads`` set); ONNX Runtime's own default is every
    physical core. Its worker threads spin between operators unless ``OMP_WAIT_POLICY=PASSIVE`` asks
    OpenMP (torch) not to; then they sleep too, so one setting governs both runtimes on a shared CPU.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxSpanNetwork(nn.Module):
    """A span network exported to ONNX, run by ONNX Runtime on CPU; called like ``SpanNetwork``.

    It has no torch parameters. Inputs may live on any device: they are copied to the CPU for the
    session, and the logits come back on the device of ``input_ids``.

    Args:
        path: the ``.onnx`` file (``model.onnx`` or ``model.int8.onnx`` of an ONNX export).
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()`` at load time).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        ort = import_optional("onnxruntime", f"{self.path.parent}: an ONNX export")
        try:
            options = session_options(ort, threads)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's errors derive from Exception only
            raise ValueError(f"{self.path.name}: {first_line(err)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names[:2] != list(OUTPUTS[:2]) or not set(self.output_names) <= set(OUTPUTS):
            raise ValueError(f"{self.path.name} outputs {self.output_names}, not start, end[, pair]")
        self.scoring = "joint" if "pair" in self.output_names else "independent"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> SpanLogits:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        missing = [name for name in self.input_names if given.get(name) is None]
        if missing:
            raise SentexError(f"{self.path}: the graph needs {', '.join(missing)}, which the batch lacks")
        feed = {name: given[name].detach().to("cpu", torch.int64).numpy() for name in self.input_names}
        try:
            out = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        except Exception as err:  # a graph that loads but cannot run: re-export it
            raise SentexError(f"{self.path}: ONNX Runtime failed: {first_line(err)}") from None
        device = input_ids.device

        def tensor(name: str) -> torch.Tensor | None:
            return torch.from_numpy(out[name]).to(device) if name in out else None

        return SpanLogits(tensor("start"), tensor("end"), tensor("pair"))


def onnx_span_network(folder: Path, weights: str) -> OnnxSpanNetwork:
    """The network of an ONNX export folder, from its graph file ``weights`` (named in the manifest)."""
    path = folder / weights
    if not path.is_file():
        raise FileNotFoundError(f"no {weights}")
    return OnnxSpanNetwork(path).eval()
