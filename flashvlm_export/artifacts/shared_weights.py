"""One external-data file for the graphs of a multi-shape split, each distinct weight stored once.

A multi-shape split exports the same encoder at several input shapes (448x448, 364x504, ...). The weights are the
same tensors in every graph, yet the exporter gives each graph its own copy (inline or in `<graph>.onnx.data`), so a
folder of N shapes weighs N times the model. share_weights rewrites the graphs so they all point into one file.

Tensors are matched by content (sha256 of the raw bytes, with dtype and dims), not by name: exporters rename
initializers between versions and shapes, and two names holding equal bytes may share one copy all the same.

Order of the writes, so that a failure at any step leaves every graph loadable: the rewritten graphs go to temp files
while `data` is written (opened exclusively: an existing file is refused before anything is touched); `data` is
fsynced; then each graph replaces its original (os.replace); only then are the old per-graph data files deleted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import external_data_helper, numpy_helper

# Offsets of the tensors in `data` are multiples of this (a page), so a reader may mmap a tensor in place. onnx's
# own writer (external_data_helper.save_external_data) packs tensors densely unless an offset is given.
ALIGN = 4096
TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's bytes as raw_data holds them (little-endian), whether it came in raw_data or in a typed field."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rewrite(
    graph: Path, out: BinaryIO, index: dict[tuple, tuple[int, int]], min_bytes: int, stats: dict
) -> tuple[onnx.ModelProto, set[Path]]:
    """Load `graph` with its weights inline, append its new large tensors to `out`, point them all into it."""
    model = onnx.load(graph, load_external_data=False)
    attributes = (t for node in model.graph.node for a in node.attribute for t in (a.t, *a.tensors))
    old_files = {
        graph.parent / entry.value
        for tensor in (*model.graph.initializer, *attributes)
        if external_data_helper.uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    external_data_helper.load_external_data_for_model(model, str(graph.parent))  # every tensor inline: old files unused
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.STRING:
            continue  # strings have no raw_data form, so they cannot live in external data
        raw = _raw_bytes(tensor)
        if len(raw) < min_bytes:
            continue
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).hexdigest())
        if key in index:
            stats["saved_bytes"] += len(raw)
        else:
            offset = -(-out.tell() // ALIGN) * ALIGN
            out.write(b"\0" * (offset - out.tell()))
            out.write(raw)
            index[key] = (offset, len(raw))
            stats["tensors"] += 1
        offset, length = index[key]
        for field in ("raw_data", *TYPED_FIELDS):
            # ClearField, not raw_data = b"": onnx.save_model writes every EXTERNAL tensor that still HasField
            # ("raw_data") to its location (external_data_helper.write_external_data_tensors), an empty one included.
            tensor.ClearField(field)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", Path(out.name).name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v
        stats["references"] += 1
    return model, old_files


def share_weights(graphs: list[Path], data: Path, min_bytes: int = 1024) -> dict:
    """Rewrite each ONNX graph in `graphs` (in place) so that every initializer of at least min_bytes (raw bytes) lives
    in the one external-data file `data` (same folder as every graph; written new: an existing one is refused), each
    distinct tensor (sha256 of its bytes, dtype and dims) stored once. Graphs may come with inline initializers or their
    own external-data files; those files are deleted once every graph is rewritten.

    Returns {"tensors": distinct tensors written, "references": initializers moved, "bytes": size of data,
    "saved_bytes": bytes not written thanks to sharing}."""
    graphs = [Path(g) for g in graphs]
    data = Path(data)
    folder = data.parent.resolve()
    for graph in graphs:
        if graph.parent.resolve() != folder:
            raise ValueError(f"{graph} is not in the folder of the shared data file {data}")
    stats = {"tensors": 0, "references": 0, "bytes": 0, "saved_bytes": 0}
    index: dict[tuple, tuple[int, int]] = {}
    temps: list[tuple[Path, Path]] = []
    old_files: set[Path] = set()
    out = open(data, "xb")  # FileExistsError, naming the path, if data exists: nothing touched yet
    try:
        with out:
            for graph in graphs:
                model, olds = _rewrite(graph, out, index, min_bytes, stats)
                old_files |= olds
                tmp = graph.with_name(f".{graph.name}.shared-tmp")
                temps.append((tmp, graph))
                with open(tmp, "wb") as f:
                    onnx.save_model(model, f, format="protobuf")  # large tensors are EXTERNAL without raw_data
                    f.flush()
                    os.fsync(f.fileno())
                del model
            out.flush()
            os.fsync(out.fileno())
            stats["bytes"] = out.tell()
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise
    for tmp, graph in temps:
        os.replace(tmp, graph)
    _fsync_folder(folder)
    for old in old_files:
        if old.resolve() != data.resolve():
            old.unlink(missing_ok=True)
    return stats
