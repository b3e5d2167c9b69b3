"""Standard FP8 QDQ ONNX from Model Optimizer's export: the graph ONNX Runtime and TensorRT both load.

``torch.onnx.export`` of a modelopt-quantized module writes TensorRT's custom
``trt::TRT_FP8QuantizeLinear`` / ``trt::TRT_FP8DequantizeLinear`` nodes, which ONNX Runtime
cannot load. ``to_standard_qdq`` rewrites them as opset-19 ``QuantizeLinear`` /
``DequantizeLinear`` with a float8e4m3fn zero point (E4M3, per-tensor scale), drops the stale
uint8 value_info of the quantized tensors, and folds each weight's QuantizeLinear into an
FP8 initializer (weights stored in one byte; the graph keeps one DequantizeLinear per weight).

``fp16_embedding_storage`` stores the unified embedding table as FP16 (a Cast after the Gather),
the embedding choice reported by export/fp8.py.
"""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TRT_DOMAIN = "trt"
TRT_OPS = {"TRT_FP8QuantizeLinear": "QuantizeLinear", "TRT_FP8DequantizeLinear": "DequantizeLinear"}
FP8_ZERO_POINT = "fp8_e4m3fn_zero_point"
EMBEDDING_TABLE = "embedding.table"


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of every initializer and every ``Constant`` node's output, by tensor name."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def quantize_e4m3(x: np.ndarray, scale: float) -> np.ndarray:
    """x / scale saturated to +-448 and rounded to nearest even E4M3: QuantizeLinear's arithmetic."""
    limit = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
    return np.clip(x.astype(np.float32) / np.float32(scale), -limit, limit).astype(ml_dtypes.float8_e4m3fn)


def _fp8_initializer(name: str, values: np.ndarray) -> TensorProto:
    raw = np.ascontiguousarray(values.astype(ml_dtypes.float8_e4m3fn)).view(np.uint8).tobytes()
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(values.shape), raw, raw=True)


def to_standard_qdq(model: onnx.ModelProto, fold_weights: bool = True) -> onnx.ModelProto:
    """Rewrite TRT FP8 Q/DQ nodes as standard opset-19 QDQ (in place; returns ``model``)."""
    graph = model.graph
    consts = _constant_values(graph)
    initializers = {i.name for i in graph.initializer}
    graph.initializer.append(_fp8_initializer(FP8_ZERO_POINT, np.zeros((), dtype=np.float32)))
    quantized: set[str] = set()
    folded: dict[str, str] = {}  # Q output -> FP8 initializer replacing it
    fp8_weights: dict[str, np.ndarray] = {}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != TRT_DOMAIN:
            keep.append(node)
            continue
        if node.op_type not in TRT_OPS:
            raise ValueError(f"unexpected TensorRT node {node.op_type} ({node.name}); known: {sorted(TRT_OPS)}")
        x, scale = node.input[0], node.input[1]
        if node.op_type == "TRT_FP8QuantizeLinear":
            quantized.add(node.output[0])
            if fold_weights and x in initializers and scale in consts:
                name = f"{x}_fp8"
                if name not in fp8_weights:  # a weight used twice is quantized twice with the same scale
                    fp8_weights[name] = quantize_e4m3(consts[x], float(consts[scale]))
                    graph.initializer.append(_fp8_initializer(name, fp8_weights[name]))
                elif not np.array_equal(fp8_weights[name], quantize_e4m3(consts[x], float(consts[scale]))):
                    raise ValueError(f"weight {x} is quantized with two different scales")
                folded[node.output[0]] = name
                continue
        new = helper.make_node(TRT_OPS[node.op_type], [x, scale, FP8_ZERO_POINT], list(node.output), name=node.name)
        keep.append(new)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in folded:
                node.input[i] = folded[name]
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused_initializers(graph)
    stale = [v for v in graph.value_info if v.name in quantized]
    for v in stale:
        graph.value_info.remove(v)
    opsets = [o for o in model.opset_import if o.domain != TRT_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Drop initializers and Constant nodes nothing reads (the scales of folded weight Q nodes)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
    for node in dead:
        graph.node.remove(node)
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def fp16_embedding_storage(model: onnx.ModelProto, table: str = EMBEDDING_TABLE) -> onnx.ModelProto:
    """Store ``table`` as FP16 and Cast every Gather of it back to FP32 (in place; returns ``model``)."""
    graph = model.graph
    init = next((i for i in graph.initializer if i.name == table), None)
    if init is None:
        raise ValueError(f"no initializer '{table}' in the graph; initializers: {[i.name for i in graph.initializer]}")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), table))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] == table:
            out = node.output[0]
            node.output[0] = f"{out}_fp16"
            nodes += [node, helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT, name=f"{out}_cast")]
        else:
            nodes.append(node)
    if len(nodes) == len(graph.node):
        raise ValueError(f"no Gather reads '{table}'")
    del graph.node[:]
    graph.node.extend(nodes)
    stale = [v for v in graph.value_info if v.name.endswith("_fp16") or v.name == table]
    for v in stale:
        graph.value_info.remove(v)
    return model


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts that show what a graph is: standard Q/DQ nodes, FP8 / FP16 initializers, leftover TRT nodes."""
    ops = Counter(n.op_type for n in model.graph.node)
    inits = Counter(i.data_type for i in model.graph.initializer)
    return {
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "fp8_initializers": inits[TensorProto.FLOAT8E4M3FN],
        "fp16_initializers": inits[TensorProto.FLOAT16],
        "trt_custom_nodes": sum(1 for n in model.graph.node if n.domain == TRT_DOMAIN),
    }
