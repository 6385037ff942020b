"""``sentex export --format onnx``: the span network as one ONNX graph, fp32 or with int8 weights.

What is exported is the span network inference runs: the (LoRA-merged) encoder and the heads put
together by :func:`sentex.deploy.assembly.assemble_span_network`, exactly as a torch fp32 export is
loaded, behind :class:`SpanGraph`, which only turns its ``SpanLogits`` into a tuple of tensors (ONNX
outputs cannot be ``None``). Tokenizing and decoding (span choice, offsets, neutral rule, label
shift) are not in the graph: :class:`~sentex.models.components.span_codec.SpanCodec` does them for
both runtimes, so an ONNX export answers as the torch network does.

The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), not the legacy
TorchScript tracer (``dynamo=False``). The tracer records one run of Python code, and transformers'
attention-mask code branches on the padded length in Python (``masking_utils``), so a graph traced at
one (batch, length) computed other shapes wrongly: start logits off by up to 0.38 (torch 2.13,
transformers 5.24, MiniLM). ``torch.export`` keeps batch and sequence symbolic (``Dim``) and guards
such branches; its graph matched torch to 2e-5 at every shape tried. It runs offline (onnxscript
translates the graph locally). After writing, every export is run once by ONNX Runtime on a batch of
another shape than the traced one and compared with the torch network; a mismatch fails the export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentex.deploy.format import ONNX_WEIGHTS
from sentex.deploy.onnx_quantize import quantize_weights_int8
from sentex.deploy.onnx_runtime import OUTPUTS, OnnxSpanNetwork, import_optional
from sentex.errors import SentexError
from sentex.io.checkpoints import first_line
from sentex.models.components.span_codec import NETWORK_INPUTS, SpanCodec
from sentex.models.components.span_network import SpanNetwork

# Opset 20 is what torch 2.13's exporter writes by default; fixed so the graph does not change with the torch
# release. ONNX Runtime runs opset 20 from 1.17; the oldest built for NumPy 2 (and tested here) is 1.19.2.
OPSET = 20
# fp32 graph vs torch on the check batch: ONNX Runtime fuses and reorders float ops (measured ~2e-5).
CHECK_ATOL = 1e-3
# Traced with two rows of different lengths (a dimension of size 1 would be specialised), checked on three others.
TRACE_ROWS = [
    {"text": "so happy for you both, congrats!", "sentiment": "positive"},
    {"text": "worst day", "sentiment": "negative"},
]
CHECK_ROWS = [
    {"text": "my phone died again and the bus never came, what a terrible morning this is", "sentiment": "negative"},
    {"text": "the meeting moved to 3pm", "sentiment": "neutral"},
    {"text": "  Sooo happy  today!!", "sentiment": "positive"},
]
ONNX_INT8 = {
    "storage": "MatMul weights int8 per output column, embeddings (Gather) int8 per row, float32 scales",
    "runtime": "ONNX Runtime: DequantizeLinear then float32 MatMul (weight-only: answers do not depend on the batch)",
    "kept_fp32": ["LayerNorm", "biases", "activations"],
}
# The int8 graph vs the torch network on the check batch; beyond these bounds the export is refused. Weight
# rounding alone moves the logits of an untrained MiniLM span network by up to 0.25 (of logits up to 1.2), so the
# bound is on their direction: cosine of the start and end logits over the real tokens (measured 0.99+ on
# untrained and trained networks), and the share of check rows whose most likely start and end tokens are fp32's.
INT8_CHECK_COSINE = 0.95
INT8_CHECK_AGREEMENT = 2 / 3


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from the logger ``name`` (``""``: the root logger) while the block runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class SpanGraph(nn.Module):
    """What is exported: a span network's own forward, its ``SpanLogits`` flattened to ``(start, end[, pair])``.

    Args:
        net: the span network.
    """

    def __init__(self, net: SpanNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in self.net(input_ids, attention_mask, token_type_ids) if t is not None)


def network_inputs(codec: SpanCodec, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The network's inputs for ``rows`` as the codec collates them (``token_type_ids`` if the tokenizer has them)."""
    batch = codec.collate(rows)
    return {name: batch[name] for name in NETWORK_INPUTS if name in batch}


def export_graph(net: SpanNetwork, codec: SpanCodec, path: Path) -> dict[str, Any]:
    """Write ``net`` as one self-contained fp32 ONNX graph with symbolic batch and token axes; returns its facts."""
    import_optional("onnx", "--format onnx")
    import_optional("onnxscript", "--format onnx")  # the dynamo exporter translates through it
    inputs = network_inputs(codec, TRACE_ROWS)
    outputs = list(OUTPUTS if net.scoring == "joint" else OUTPUTS[:2])
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    try:
        # The exporter prints its progress, logs missing torchvision ops and warns about every transformers idiom
        # it rewrites; none of it is for the user of ``sentex export``.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                SpanGraph(net).eval(),
                (),
                str(path),
                kwargs=inputs,
                input_names=list(inputs),
                output_names=outputs,
                dynamic_shapes={name: {0: batch, 1: tokens} for name in inputs},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one file; the 2 GB protobuf limit is far above these encoders
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; the user needs one line
        raise SentexError(f"ONNX export failed: {first_line(err)}") from None
    return {"opset": OPSET, "inputs": list(inputs), "outputs": outputs, "exporter": "torch.onnx.export(dynamo=True)"}


def quantize_int8(source: Path, target: Path) -> None:
    """The fp32 graph ``source`` with int8 weights (:func:`~sentex.deploy.onnx_quantize.quantize_weights_int8`)."""
    try:
        quantize_weights_int8(source, target)
    except SentexError:
        raise
    except Exception as err:
        raise SentexError(f"ONNX int8 quantization failed: {first_line(err)}") from None


def int8_agreement(graph: OnnxSpanNetwork, net: SpanNetwork, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """How closely ``graph`` follows ``net``: the lower cosine of the start and end logits over the real tokens,
    and the share of rows whose most likely start and end token (padding excluded) are the same in both."""
    with torch.no_grad():
        want, got = net(**inputs), graph(**inputs)
    real = inputs["attention_mask"] == 1
    same = torch.ones(real.shape[0], dtype=torch.bool)
    cosine = 1.0
    for g, w in ((got.start, want.start), (got.end, want.end)):
        cosine = min(cosine, torch.cosine_similarity(g[real], w[real], dim=0).item())
        same &= g.masked_fill(~real, -1e9).argmax(dim=1) == w.masked_fill(~real, -1e9).argmax(dim=1)
    return cosine, same.float().mean().item()


def max_logit_difference(graph: OnnxSpanNetwork, net: SpanNetwork, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference of any logit (start, end, pair) between the ONNX graph and the torch network."""
    with torch.no_grad():
        want, got = net(**inputs), graph(**inputs)
    return max(float((g - w).abs().max()) for g, w in zip(got, want) if w is not None)


def write_onnx(net: SpanNetwork, codec: SpanCodec, folder: Path, dtype: str) -> dict[str, Any]:
    """Write the ``dtype`` ONNX graph of ``net`` into ``folder``; returns the manifest's ``onnx`` entry.

    Raises:
        SentexError: a package is missing, the exporter or quantizer failed, or the fp32 graph's
            logits differ from the torch network's by more than :data:`CHECK_ATOL` on the check batch.
    """
    ort = import_optional("onnxruntime", "--format onnx")  # the check below runs the graph
    net = net.eval()
    fp32_path = folder / ONNX_WEIGHTS["fp32"]
    facts = export_graph(net, codec, fp32_path)
    inputs = network_inputs(codec, CHECK_ROWS)
    diff = max_logit_difference(OnnxSpanNetwork(fp32_path), net, inputs)
    if not diff <= CHECK_ATOL:
        raise SentexError(f"ONNX export failed: its logits differ from torch's by {diff:.3g} (> {CHECK_ATOL:g})")
    facts["max_abs_logit_diff_fp32"] = round(diff, 8)
    if dtype == "int8":
        target = folder / ONNX_WEIGHTS["int8"]
        quantize_int8(fp32_path, target)
        fp32_path.unlink()
        graph = OnnxSpanNetwork(target)
        cosine, agreement = int8_agreement(graph, net, inputs)
        if not (cosine >= INT8_CHECK_COSINE and agreement >= INT8_CHECK_AGREEMENT):
            raise SentexError(
                f"ONNX int8 export failed: its logits' cosine to torch's: {cosine:.3f} (bound {INT8_CHECK_COSINE:g}), "
                f"{agreement:.0%} of check rows keep their boundaries (bound {INT8_CHECK_AGREEMENT:.0%})"
            )
        facts["max_abs_logit_diff_int8"] = round(max_logit_difference(graph, net, inputs), 6)
        facts["logit_cosine_int8"] = round(cosine, 5)
        facts["boundary_agreement_int8"] = round(agreement, 4)
    onnx = import_optional("onnx", "--format onnx")
    facts["versions"] = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    return facts
