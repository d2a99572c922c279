"""INT8 and FP8 encoders (--precision int8 | fp8): explicit quantization of the exported fp32 encoder, Q/DQ nodes in the
graph, calibrated on pictures; the selector stays fp32.

The tool: ONNX Runtime's static post-training quantization (`onnxruntime.quantization.quantize_static`, QDQ format),
which our onnxruntime already ships; NVIDIA Model Optimizer's `[onnx]` extra replaces that onnxruntime with another
build (../shared/NOTES.md), so it is not a dependency. The settings are TensorRT's: symmetric scales (zero points 0),
weights per output channel, activations per tensor, calibrated by MinMax over the calibration pictures.

What is quantized: the encoder's weight-bearing MatMul, Gemm and Conv nodes (the linear layers and the patch
embedding: nearly all of a ViT's arithmetic), with their activation inputs. What stays in float: LayerNorm, Softmax,
GELU, and attention's two activation-by-activation products (Q K^T and the probabilities times V), so the last
block's attention probabilities that give `a` are computed in float from quantized projections; every node after
the encoder's outputs X, a, P(X) (the selector) is never touched.

The calibration cache (`llava15_int8.calib.json` beside the full graphs, `encoder.calib.json` in a split) records the
ranges with what they were measured on: model, weights, shape, frames, batch, precision, the pictures' sha256, the
quantized nodes and onnxruntime's version; an export with the same key skips calibration, one with another key is
refused in one line (a cache of another graph would quantize wrongly).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from flashvlm_export.errors import UsageError
from flashvlm_export.export.options import QUANTIZED_PRECISIONS as QUANTIZED  # noqa: E402

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_CALIBRATION = 4096  # pictures: ranges stop moving long before (TensorRT's guidance: ~500 for ImageNet-class data)


@dataclass(frozen=True)
class Calibration:
    """The pictures an encoder is calibrated on: the user's (images) or `demo` pictures the tool draws."""

    images: tuple[str, ...] = ()
    demo: int = 0
    # how a picture becomes pixel_values: runtime/calibration.py's calibration_pixels, bound by the CLI (export/ sits
    # below runtime/, which holds the checkpoint's processor path)
    source: object = field(default=None, compare=False, hash=False, repr=False)

    @property
    def count(self) -> int:
        return self.demo or len(self.images)

    @cached_property
    def sha256(self) -> str:
        """The set's identity: the pictures' bytes in name order, or the demo pictures' recipe (read once: the metadata
        and the cache key both name it)."""
        digest = hashlib.sha256()
        if self.demo:
            digest.update(f"flashvlm-export demo pictures v1 x {self.demo}".encode())
        for path in self.images:
            digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
        return digest.hexdigest()

    def metadata(self) -> dict[str, str]:
        """What the graph records of its calibration (and `sidecar` shows)."""
        values = {"calib_images": str(self.count), "calib_sha256": self.sha256}
        if self.demo:
            values["calib_demo"] = "drawn by the tool: not representative of real photos"
        return values


def calibration_from_flags(precision: str, images_dir: str | None, demo: int | None) -> Calibration | None:
    """--calib-images DIR / --calib-demo N, checked against --precision; None for a float encoder."""
    if precision not in QUANTIZED:
        given = "--calib-images" if images_dir is not None else "--calib-demo" if demo is not None else None
        if given:
            raise UsageError(
                f"{given} calibrates a quantized encoder; --precision {precision} needs none: drop it or pass --precision int8"
            )
        return None
    if (images_dir is None) == (demo is None):
        raise UsageError(
            f"--precision {precision} needs calibration pictures: pass --calib-images DIR (a few hundred of your own photos) "
            "or, for tests and demos, --calib-demo N (pictures the tool draws); one of the two"
        )
    if demo is not None:
        if not 1 <= demo <= MAX_CALIBRATION:
            raise UsageError(f"--calib-demo {demo} is out of range; use 1 to {MAX_CALIBRATION} (e.g. --calib-demo 64)")
        return Calibration(demo=demo)
    folder = Path(images_dir)
    if not folder.is_dir():
        raise UsageError(f"--calib-images {images_dir} is not a folder; pass a folder of photos (jpg, png, ...)")
    try:
        found = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise UsageError(f"--calib-images {images_dir} cannot be read ({exc.strerror}); pass a readable folder") from None
    if not found:
        raise UsageError(
            f"--calib-images {images_dir} holds no pictures ({', '.join(IMAGE_SUFFIXES)}); add photos like the ones you will run"
        )
    if len(found) > MAX_CALIBRATION:
        raise UsageError(f"--calib-images {images_dir} holds {len(found)} pictures; use at most {MAX_CALIBRATION}")
    for path in found:
        if not os.access(path, os.R_OK):
            raise UsageError(f"--calib-images: {path} is not readable; fix its permissions or remove it")
    return Calibration(images=tuple(found))


def _feeds(request, calibration: Calibration, inputs: dict, log, model_dir: Path | None = None) -> Iterator[dict]:
    """A feed per picture for the encoder: its pixels (the checkpoint's processor config where there is one), a still
    picture repeated over a clip's frames, and over the batch."""
    shape, dtype = inputs["pixel_values"]
    if calibration.source is None:
        raise UsageError("calibration pictures need a source of pixels: build the Calibration with calibration_from_flags")
    for pixels in calibration.source(calibration, request.spec, log, model_dir):
        value = np.repeat(pixels[:, None], request.frames, axis=1) if request.frames is not None else pixels
        yield {"pixel_values": np.ascontiguousarray(np.broadcast_to(value, shape)).astype(dtype)}


def encoder_nodes(model, outputs: tuple[str, ...]) -> set[str]:
    """The names of the nodes the encoder's output tensors depend on (the whole graph of an encoder graph)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    seen, stack = set(), [t for t in outputs if t in producer]
    while stack:
        node = producer[stack.pop()]
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(t for t in node.input if t in producer)
    return seen


def quantized_nodes(model, outputs: tuple[str, ...], inside: set[str] | None = None) -> list[str]:
    """The encoder's weight-bearing MatMul / Gemm / Conv nodes (a constant or initializer among their inputs)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    inside = encoder_nodes(model, outputs) if inside is None else inside
    return [
        n.name
        for n in model.graph.node
        if n.name in inside and n.op_type in QUANTIZED_OPS and any(i in constants for i in n.input[:2])
    ]


def _cache_record(cache: Path) -> dict | None:
    """The cache at `cache`, or None when there is none; one line for a file that is not one."""
    if not cache.exists():
        return None
    try:
        record = json.loads(cache.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if (
        not isinstance(record, dict)
        or record.get("producer") != "flashvlm-export"
        or not isinstance(record.get("ranges"), dict)
        or not isinstance(record.get("key"), dict)
    ):
        raise UsageError(f"{cache} is not a calibration cache this tool wrote; move it away or choose another --out-dir")
    return record


def _protect_outputs(model, outputs: tuple[str, ...]) -> None:
    """Each encoder output X, a, P(X) becomes an Identity of the tensor its producer writes, which every reader takes
    instead: the quantizer's Q/DQ pairs then sit on that tensor (for the projector's MatMul), never on the named output
    a split's selectors or a fused graph's selector read, which stays the float value (parity's layer 1)."""
    from onnx import helper

    produced = {o for n in model.graph.node for o in n.output}
    for name in [t for t in outputs if t in produced]:
        inner = f"{name}/float"
        for node in model.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}/output"))


def _float_inputs(model, selector: set[str]) -> None:
    """The selector's nodes read the encoder's float outputs, not their quantized copies: where the quantizer put a
    Q/DQ pair on a tensor the selector also reads (X feeds the projector and the Gram), the selector's node is given
    the tensor itself again, so the graph's X, a, P(X) are what its selector computes on (parity's layer 1)."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def source(tensor: str) -> str:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return tensor
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else tensor

    for node in model.graph.node:
        if node.name in selector:
            for i, name in enumerate(node.input):
                node.input[i] = source(name)


def cache_key(request, calibration: Calibration, nodes: list[str]) -> dict:
    return {
        "model": request.spec.name,
        "shape": request.spec.shape_text if request.spec.grid is None else f"grid {request.spec.grid[0]}x{request.spec.grid[1]}",
        "frames": request.frames,
        "batch": request.batch,
        "precision": request.precision,
        "calib_sha256": calibration.sha256,
        "calib_images": calibration.count,
        "nodes_sha256": hashlib.sha256("\n".join(nodes).encode()).hexdigest(),
    }


def quantize_encoder(graph: Path, request, weights: str | None, cache: Path, overwrite: bool = False, log=print) -> None:
    """Quantize the encoder of the fp32 graph at `graph` in place (its nodes before X, a, P(X)); calibration ranges from
    `cache` when it holds this graph's, else measured and written there."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType

    from flashvlm_export.artifacts.naming import external_data_path
    from flashvlm_export.export.interface import ENCODER_OUTPUTS

    model = onnx.load(str(graph), load_external_data=False)
    for i, node in enumerate(model.graph.node):  # quantize_static names nodes to quantize by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    outputs = tuple(name for name in ENCODER_OUTPUTS)
    _protect_outputs(model, outputs)
    onnx.save(model, str(graph))  # names and Identity nodes only: external tensors stay where they are
    large = external_data_path(graph).exists()
    from flashvlm_export.limits import check_quantization_fits

    weight_bytes = graph.stat().st_size + (external_data_path(graph).stat().st_size if large else 0)
    check_quantization_fits(weight_bytes, request.precision, request.spec.name)
    inside = encoder_nodes(model, outputs)
    nodes = quantized_nodes(model, outputs, inside)
    selector = {n.name for n in model.graph.node} - inside  # never quantized, nor fed Q/DQ
    selector |= {f"{t}/output" for t in outputs}  # the Identity that names each output reads the float tensor too
    if not nodes:
        raise UsageError(f"{graph.name}: no encoder MatMul/Gemm/Conv with weights to quantize; export it at fp32")
    import onnxruntime

    key = dict(cache_key(request, request.calibration, nodes), weights=weights, onnxruntime=onnxruntime.__version__)
    ort_cache = graph.with_name(graph.name + ".ranges.json")
    record = _cache_record(cache)
    if record is not None and record.get("key") != key and not overwrite:
        differ = sorted(k for k in key if record.get("key", {}).get(k) != key[k])
        raise UsageError(
            f"{cache} is the calibration cache of another graph ({', '.join(differ)} differ); delete it, or pass --force "
            "to measure this graph's ranges and replace it"
        )
    if record is not None and record.get("key") == key:
        ort_cache.write_text(json.dumps(record["ranges"]))
        log(f"Calibration: ranges from {cache} ({request.calibration.count} pictures, same graph and pictures): skipped")
    inputs = {
        i.name: (
            tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
            onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
        )
        for i in model.graph.input
    }
    del model
    model_dir = None if weights is None or weights.startswith("random") else Path(weights)
    feeds = _feeds(request, request.calibration, inputs, log, model_dir if model_dir and model_dir.is_dir() else None)

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    import time

    start = time.perf_counter()
    fp8 = request.precision == "fp8"
    kind = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    temp = graph.with_name(graph.stem + ".quantized.onnx")
    import logging

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the quantizer's "consider pre-processing" warnings: not ours to act on
    import warnings

    try:
        with warnings.catch_warnings():  # the Distribution calibrator's "invalid value" on constant tensors (fp8)
            warnings.simplefilter("ignore", RuntimeWarning)
            if selector and not ort_cache.exists():  # calibrated on the encoder alone (a plugin op, no text needed)
                _calibrate_encoder(graph, outputs, ort_cache, Reader, nodes, kind, fp8, large)
            _quantize(graph, temp, ort_cache, Reader, nodes, kind, fp8, large)
    finally:
        root.setLevel(level)
    record = {"producer": "flashvlm-export", "key": key, "ranges": json.loads(ort_cache.read_text())}
    ort_cache.unlink()
    from flashvlm_export.artifacts.placement import write_json_atomic

    write_json_atomic(cache, record)  # in one rename; never over a file that is not this tool's
    quantized = onnx.load(str(temp))
    _float_inputs(quantized, selector)
    for prop in onnx.load(str(graph), load_external_data=False).metadata_props:
        if prop.key not in {p.key for p in quantized.metadata_props}:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(quantized, str(graph))
    temp.unlink()
    external_data_path(graph).unlink(missing_ok=True)  # int8 weights fit inline (4x smaller than fp32)
    log(
        f"Quantization: {len(nodes)} encoder nodes to {request.precision} (Q/DQ, symmetric), the rest in float; "
        f"calibration and quantization {time.perf_counter() - start:.1f}s"
    )


def _calibrate_encoder(
    graph: Path, outputs: tuple[str, ...], ort_cache: Path, reader, nodes, kind, fp8: bool, large: bool = False
) -> None:
    """The ranges of a full graph's encoder, measured on the encoder alone: the graph cut at X, a, P(X) (the selector,
    which may hold the plugin op ONNX Runtime's calibrator cannot load, and the text inputs dropped)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    inside = encoder_nodes(model, outputs)
    kept = [n for n in model.graph.node if n.name in inside]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    produced = {o for n in kept for o in n.output}
    outs = [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in outputs if t in produced]
    del model.graph.output[:]
    model.graph.output.extend(outs)
    used = {i for n in kept for i in n.input}
    inputs = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    del model.graph.value_info[:]
    encoder = graph.with_name(graph.stem + ".encoder.onnx")  # beside the graph: its external data resolves the same
    quantized = graph.with_name(graph.stem + ".encoder-q.onnx")
    onnx.save(model, str(encoder))
    try:
        _quantize(encoder, quantized, ort_cache, reader, nodes, kind, fp8, large)
    finally:
        encoder.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)


def _quantize(graph: Path, temp: Path, ort_cache: Path, reader, nodes: list[str], kind, fp8: bool, large: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = CalibrationMethod.Distribution if fp8 else CalibrationMethod.MinMax  # ORT's only one for float types
    quantize_static(
        str(graph), str(temp), None if ort_cache.exists() else reader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes, per_channel=not fp8,
        activation_type=kind, weight_type=kind, use_external_data_format=large, calibrate_method=method,
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
            # biases left in float: onnx-tensorrt dequantizes INT8 and FP8 only, not the int32 of a quantized bias. The
            # Q/DQ on each quantized node's output stays: ONNX Runtime's CPU provider fuses DQ -> MatMul -> Q into an
            # integer GEMM only with it (without it, measured: 0.71x fp32's speed on llava15); TensorRT fuses either
            "QuantizeBias": False,
        },
        calibration_cache_path=str(ort_cache),
    )  # fmt: skip
