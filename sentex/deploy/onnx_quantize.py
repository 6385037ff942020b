"""Int8 weights in an ONNX graph: each constant weight becomes int8 + per-channel scales behind a DequantizeLinear.

ONNX Runtime's dynamic quantization (``quantize_dynamic``) quantizes activations with one scale per
*batch* (``DynamicQuantizeLinear``), so a tweet's answer depended on what it was batched with, and on
the untrained MiniLM span network 20% of start positions differed from fp32 on 64 real tweets
(largest logit error 0.29; issue #24). Here only the weights are int8 on disk; the graph dequantizes
them (``DequantizeLinear``, a standard ONNX operator since opset 13) and multiplies in float32, so
every row is computed alone, exactly as in the fp32 graph up to the rounding of the weights (largest
logit error 0.018 on the same rows, answers batch-invariant). The file is a quarter of the fp32 one;
the speed is the fp32 graph's (README: "int8 on both kinds of CPU").

Weights quantized: the right-hand side ``B`` (``K x N``) of every ``MatMul`` whose ``B`` is a constant
(every Linear; one scale per output column, ``axis=1``) and the table of every ``Gather`` on a constant
(the embeddings; one scale per row, ``axis=0``), symmetric as in the torch int8 file
(:func:`~sentex.deploy.quant.int8.quantize_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sentex.deploy.onnx_runtime import import_optional
from sentex.deploy.quant.int8 import quantize_rows


def weight_inputs(graph: Any, constants: set[str]) -> dict[str, int]:
    """``{initializer name: channel axis}`` of the weights to quantize (MatMul ``B`` and Gather tables)."""
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants:
            found[node.input[1]] = 1
        elif node.op_type == "Gather" and node.input[0] in constants:
            found[node.input[0]] = 0
    return found


def quantize_weights_int8(source: Path, target: Path) -> int:
    """Write ``source``'s graph to ``target`` with its MatMul and Gather weights int8 (module docstring).

    Returns:
        The number of weight tensors quantized.
    """
    onnx = import_optional("onnx", "--format onnx --dtype int8")
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    floats = {name for name, init in initializers.items() if init.data_type == onnx.TensorProto.FLOAT}
    targets = {name: axis for name, axis in weight_inputs(graph, floats).items() if len(initializers[name].dims) == 2}
    dequantize_nodes = []
    for name, axis in targets.items():
        # quantize_rows scales each row (axis 0); a MatMul's B is scaled per column, so it goes in transposed.
        weight = torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())
        q, scale = quantize_rows(weight if axis == 0 else weight.T)
        q, scale = (q if axis == 0 else q.T).contiguous().numpy(), scale.numpy()
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}.int8"),
                numpy_helper.from_array(scale, f"{name}.scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}.zero_point"),
            ]
        )
        # The dequantized tensor takes the original name, so every consumer reads it unchanged.
        dequantize_nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}.int8", f"{name}.scale", f"{name}.zero_point"], [name], axis=axis
            )
        )
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequantize_nodes + nodes)  # before their consumers: ONNX graphs are topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return len(targets)
