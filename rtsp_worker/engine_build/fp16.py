"""FP32 -> FP16 ONNX conversion that keeps the model's inputs and outputs float32.

TensorRT 11 dropped the FP16 builder flag: a network runs in the precision its ONNX spells out, so an
FP16 engine needs an FP16 ONNX. The conversion here:

- runs every node that feeds a convolution or matrix multiply in float16 (that is where the time goes);
- keeps the tail after the last of those in float32 by default: the box decoding there multiplies grid
  offsets by strides, and float16's 0.5 px resolution above 512 px would move boxes for nothing;
- keeps ops whose inputs or outputs must be float32 (NMS, Range, random ops, Resize's `scales`/`roi`);
- stores float16 copies of initializers, and inserts one Cast wherever a tensor crosses between the two
  precisions, including at the graph inputs and outputs, so callers still feed and read float32.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rtsp_worker.engine_build import BuildError

log = logging.getLogger(__name__)

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# Ops left in float32: outputs that must be float32 by the ONNX spec, or no gain from float16.
DEFAULT_KEEP_FP32_OPS = frozenset({
    "NonMaxSuppression", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial",
})
# Input slots the ONNX spec types as float32 whatever the data's type is.
_FP32_SLOTS = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}
_FP16_MAX = float(np.finfo(np.float16).max)


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes holding floats become initializers, so one rule (convert a copy) covers both."""
    kept = []
    for node in graph.node:
        attr = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and ("value" in attr or "value_float" in attr or "value_floats" in attr):
            if "value" in attr:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr["value"].t)
            elif "value_float" in attr:
                tensor = numpy_helper.from_array(np.array(attr["value_float"].f, dtype=np.float32))
            else:
                tensor = numpy_helper.from_array(np.array(list(attr["value_floats"].floats), dtype=np.float32))
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _feeds_heavy_ops(nodes: list[onnx.NodeProto]) -> set[int]:
    """Indices of heavy nodes and of every node upstream of one."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    todo = deque(i for i, n in enumerate(nodes) if n.op_type in HEAVY_OPS)
    seen = set(todo)
    while todo:
        for name in nodes[todo.popleft()].input:
            j = producer.get(name)
            if j is not None and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def convert_to_fp16(
    model: onnx.ModelProto,
    keep_fp32_ops: Iterable[str] = DEFAULT_KEEP_FP32_OPS,
    fp32_tail: bool = True,
) -> onnx.ModelProto:
    """Return a float16 copy of `model` with float32 inputs and outputs (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if _has_subgraphs(graph):
        raise BuildError("FP16 conversion does not handle control flow (If/Loop/Scan); export without it")
    _constants_to_initializers(graph)
    del graph.value_info[:]  # stale after conversion; re-inferred below
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})

    nodes = list(graph.node)
    keep = frozenset(keep_fp32_ops)
    low = _feeds_heavy_ops(nodes) if fp32_tail else set(range(len(nodes)))
    low = {i for i in low if nodes[i].op_type not in keep}

    inits = {t.name: t for t in graph.initializer}
    cur: dict[str, int] = {name: t for name, t in types.items() if t in (FLOAT, HALF) and
                           (name in inits or name in {i.name for i in graph.input})}
    cast_cache: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def as_type(name: str, want: int) -> str:
        have = cur.get(name)
        if have is None or have == want:
            return name
        key = (name, want)
        if key not in cast_cache:
            suffix = "fp16" if want == HALF else "fp32"
            new = f"{name}__{suffix}"
            if name in inits:
                arr = numpy_helper.to_array(inits[name])
                arr = np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16) if want == HALF else arr.astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(arr, new))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [new], to=want, name=f"{new}__cast"))
            cur[new] = want
            cast_cache[key] = new
        return cast_cache[key]

    for i, node in enumerate(nodes):
        is_low = i in low
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if is_low and to.i == FLOAT:
                to.i = HALF  # casts into float keep the float16 region float16
            out_type = to.i
        else:
            out_type = None
            slots = _FP32_SLOTS.get(node.op_type, frozenset())
            for slot, name in enumerate(node.input):
                if name and cur.get(name) in (FLOAT, HALF):
                    node.input[slot] = as_type(name, HALF if is_low and slot not in slots else FLOAT)
            if node.op_type == "ConstantOfShape" and is_low:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is None or value.t.data_type == FLOAT:
                    v = numpy_helper.to_array(value.t) if value is not None else np.zeros(1, np.float32)
                    node.ClearField("attribute")
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(v.astype(np.float16))))
                    out_type = HALF
        for out in node.output:
            t = types.get(out)
            if not out:
                continue
            if t is None or t == TensorProto.UNDEFINED:
                raise BuildError(f"FP16 conversion: cannot infer the type of tensor {out!r} "
                                 f"({node.op_type} node {node.name!r}); simplify the ONNX first (onnxslim)")
            if out_type is not None:
                if out_type in (FLOAT, HALF):
                    cur[out] = out_type
            elif t in (FLOAT, HALF):
                cur[out] = HALF if is_low else t
        new_nodes.append(node)

    # Graph outputs keep their original float32 type: rename the producer's tensor, cast back at the end.
    for out in graph.output:
        if types.get(out.name) == FLOAT and cur.get(out.name) == HALF:
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                for k, name in enumerate(n.input):
                    if name == out.name:
                        n.input[k] = inner
                for k, name in enumerate(n.output):
                    if name == out.name:
                        n.output[k] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__cast_out"))

    # Drop float32 initializers nobody reads any more (all their readers now use the float16 copy).
    still_read = {name for n in new_nodes for name in n.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker and shape-inference errors alike
        raise BuildError(f"FP16 conversion produced an invalid model: {str(e).splitlines()[0]}") from None
    n_half = sum(1 for i in range(len(nodes)) if i in low)
    log.info("FP16 conversion: %d of %d nodes in float16, %d casts inserted", n_half, len(nodes),
             sum(1 for n in new_nodes if n.op_type == "Cast"))
    return model


def convert_file_to_fp16(src: str | Path, dst: str | Path, **kwargs: object) -> Path:
    """Convert the ONNX at `src` and save it to `dst` (metadata such as `names` is kept)."""
    src, dst = Path(src), Path(dst)
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - DecodeError, OSError...
        raise BuildError(f"{src}: not a readable ONNX model ({type(e).__name__})") from None
    if any(t.data_type == HALF for t in model.graph.initializer):
        raise BuildError(f"{src}: model is already float16 (it has float16 weights)")
    converted = convert_to_fp16(model, **kwargs)  # type: ignore[arg-type]
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    return dst
