"""A Triton model repository from a split export's manifest (docs/TRITON.md).

Three flavours, one shape (an entry model `flashvlm` that takes pixel_values, text_embeds, text_mask and a budget
per image, and returns indices, visual_embeds, and positions / deepstack_embeds / kept where the graphs have them):

  cpu       the whole chain as one Python-backend model, ONNX Runtime inside (runtime/chain.py): runs on any
            tritonserver with the Python backend, this machine's included
  onnx      flashvlm_encoder and flashvlm_selector_b<K> as onnxruntime_onnx models, chained by a Python BLS entry that
            passes the encoder's outputs (X, a, P(X), and Qwen3-VL's deepstack_features: its `shared` parameter)
  tensorrt  the same with the manifest's engines as tensorrt_plan models (the plugin library named where needed)

The manifest and every file it names are checked (sha256, graph metadata) before anything is written; the
repository is built in a staging folder beside --out and moved into place whole, with a ledger of its files
(artifacts/ownership.py): --force replaces only a repository whose every file is in its ledger, unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from flashvlm_export.artifact_paths import SHARED_DATA
from flashvlm_export.artifacts.files import sha256_of
from flashvlm_export.artifacts.naming import external_data_path
from flashvlm_export.artifacts.ownership import PRODUCER, check_folder_replaceable, mark_folder
from flashvlm_export.artifacts.staging import make_staging, reclaim_stale_staging
from flashvlm_export.errors import UsageError
from flashvlm_export.export.manifest import ENCODER_STEM, MANIFEST_NAME, Manifest, entry_stem, read_manifest
from flashvlm_export.serve.layout import entry_tensors, graph_tensors, model_config, shared_tensors

FLAVOURS = ("cpu", "onnx", "tensorrt")
ENTRY = "flashvlm"
VERSION = "1"
RECORD = "flashvlm_repository.json"  # a file at the repository's root: Triton reads folders only
PLUGIN_FILE = "libflashvlm_plugins.so"
SOURCES = Path(__file__).parent
SPLIT_FOLDER = "split"  # the CPU model's copy of the split, in its version folder


def default_python_path() -> str:
    """Where this flashvlm-export, its numpy and its onnxruntime are imported from: the Python backend's stub finds
    them there (it runs the system's libpython, not this environment)."""
    import numpy

    import flashvlm_export

    folders = [Path(flashvlm_export.__file__).resolve().parents[1], Path(numpy.__file__).resolve().parents[1]]
    try:
        import onnxruntime

        folders.append(Path(onnxruntime.__file__).resolve().parents[1])
    except ImportError:
        pass
    return os.pathsep.join(dict.fromkeys(str(f) for f in folders))


def sub_model(stem: str) -> str:
    return f"{ENTRY}_{stem}"


def check_out(out: Path, force: bool) -> None:
    """--out: a new folder, or with --force one this tool wrote (empty, or every file its ledger's, unchanged)."""
    if os.path.lexists(out) and not (out.is_dir() and not out.is_symlink()):
        raise UsageError(f"--out {out} exists and is not a folder; choose another --out")
    if out.exists() and not force:
        raise UsageError(f"--out {out} already exists; pass --force to replace it, or choose another --out")
    if out.exists():
        check_folder_replaceable(out, "--out")


def make_parent(out: Path) -> None:
    """The folder --out goes in, created only once every check has passed (a refusal leaves nothing behind)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out.parent}: {exc.strerror}; choose another --out") from None


def write_repository(
    manifest_path: Path,
    out: Path,
    flavour: str = "cpu",
    force: bool = False,
    plugin_library: Path | None = None,
    instances: int = 1,
    log=print,
    python_path: str | None = None,
) -> Path:
    """Check everything, build the repository in staging, move it to `out`; `out`. `python_path`: the folders the
    Python-backend models put first on sys.path (None: this environment's, default_python_path; "": none)."""
    out = Path(out)
    python_path = default_python_path() if python_path is None else python_path
    if flavour not in FLAVOURS:
        raise UsageError(f"--flavour {flavour!r} is not one of {', '.join(FLAVOURS)}")
    if isinstance(instances, bool) or not isinstance(instances, int) or not 1 <= instances <= 64:
        raise UsageError(f"--instances {instances!r} must be a whole number in 1..64")
    check_out(out, force)
    manifests, shape_set = open_split(Path(manifest_path), flavour == "tensorrt")
    manifest = manifests[0]
    plugin = bool(manifest.record["plugin"])
    if flavour == "onnx" and plugin:
        raise UsageError(
            f"{manifest.path} holds --plugin graphs: Triton's onnxruntime backend cannot load the flashvlm::ResidualPrune op; "
            "use --flavour cpu or tensorrt, or re-export without --plugin"
        )
    if flavour == "tensorrt":
        for each in manifests:
            each.engines()  # one line when a manifest lists none
        if plugin and plugin_library is None:
            raise UsageError(
                f"{manifest.path}'s engines need the ResidualPrune plugin: pass --plugin-lib libflashvlm_plugins.so "
                "(flashvlm-export build-plugin builds it)"
            )
        if plugin and not Path(plugin_library).is_file():
            raise UsageError(f"--plugin-lib {plugin_library} is not a file; build it with flashvlm-export build-plugin")
    make_parent(out)
    reclaim_stale_staging(out.parent, log)
    staging = make_staging(out.parent)
    try:
        built = staging / "repository"
        built.mkdir()
        models = (
            _write_cpu(manifests, shape_set, built, instances, python_path)
            if flavour == "cpu"
            else _write_chained(manifests, shape_set, built, flavour, instances, python_path)
        )
        record = {
            "flavour": flavour,
            "manifest_sha256": sha256_of(manifest.path),
            "model": manifest.record["model"],
            "models": models,
        }
        if flavour == "tensorrt" and plugin:
            shutil.copyfile(plugin_library, built / PLUGIN_FILE)
            record["plugin_library"] = PLUGIN_FILE
        record["serve"] = serve_command(out, flavour, plugin)
        (built / RECORD).write_text(json.dumps({"producer": PRODUCER, **record}, indent=2) + "\n")
        mark_folder(built)  # what a later --force may replace: these files, unchanged
        if out.exists():
            check_folder_replaceable(out, "--out")  # again: a file may have been put there meanwhile
            os.replace(out, staging / "replaced")
        os.replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shapes = "" if shape_set is None else f"; routes each request by its pixels' shape to {shape_set.listing}"
    log(f"Triton: wrote {out} ({flavour} flavour: {', '.join(models)}; serves {manifest.serves}{shapes})")
    return out


def open_split(path: Path, engines: bool):
    """The split's manifests, checked: one, or each shape's of a split of several shapes (and its ShapeSet)."""
    from flashvlm_export.export.shapes import is_shape_set, read_shape_set

    if not is_shape_set(path):
        return [read_manifest(path, engines=engines)], None
    from flashvlm_export.serve.handler import pixel_routes

    shape_set = read_shape_set(path)
    manifests = [shape_set.manifest(i, engines=engines) for i in range(len(shape_set.keys))]
    pixel_routes(path, shape_set.keys, manifests)  # the entry routes by the pixels' shape alone: each must differ
    return manifests, shape_set


def serve_command(out: Path, flavour: str, plugin: bool) -> str:
    line = f"tritonserver --model-repository {out.resolve()}"
    if flavour == "tensorrt" and plugin:
        line += f' --backend-config=tensorrt,plugins="{(out / PLUGIN_FILE).resolve()}"'
    return line


def _graph_files(manifest: Manifest, entry: dict) -> list[Path]:
    """A graph and its external data: its own `.onnx.data`, or a split of several shapes' shared weights file."""
    graph = manifest.folder / entry["path"]
    data = [external_data_path(graph), manifest.folder / SHARED_DATA]
    return [graph] + [d for d in data if d.is_file() and (d.name != SHARED_DATA or _reads(graph, d.name))]


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (a split of several shapes' shared weights, in every shape's
    encoder model folder, stays one copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _reads(graph: Path, location: str) -> bool:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return any(e.value == location for t in model.graph.initializer for e in t.external_data if e.key == "location")


def _write_cpu(manifests: list[Manifest], shape_set, root: Path, instances: int, python_path: str) -> list[str]:
    """One Python-backend model: model.py and a copy of the split (manifests, graphs) in its version folder."""
    version = root / ENTRY / VERSION
    split = version / SPLIT_FOLDER
    split.mkdir(parents=True)
    for manifest in manifests:
        for entry in [manifest.record["encoder"], *manifest.record["selectors"]]:
            for file in _graph_files(manifest, entry["onnx"]):
                target = split / file.relative_to(manifest.folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copyfile(file, target)
    if shape_set is not None:  # the shapes' manifests and the top one as they are (their hashes chain)
        for path in [*shape_set.manifests, shape_set.path]:
            shutil.copyfile(path, split / path.name)
    else:
        record = json.loads(json.dumps(manifests[0].record))
        for entry in [record["encoder"], *record["selectors"]]:  # the engines stay behind: this flavour runs the graphs
            entry["engine"] = None
        (split / MANIFEST_NAME).write_text(json.dumps(record, indent=2) + "\n")
    shutil.copyfile(SOURCES / "model_chain.py", version / "model.py")
    batch, inputs, outputs = _entry_io(manifests)
    config = model_config(
        ENTRY, "python", batch, inputs, outputs, instances, gpu=False,
        parameters={"manifest": f"{SPLIT_FOLDER}/{MANIFEST_NAME}", "python_path": python_path}, dynamic_batching=True,
    )  # fmt: skip
    (root / ENTRY / "config.pbtxt").write_text(config)
    return [ENTRY]


def _entry_io(manifests: list[Manifest]):
    """The entry model's tensors; over several shapes, each dimension that differs between them is -1 (any)."""
    found = []
    for manifest in manifests:
        encoder = graph_tensors(manifest.encoder_graph)
        selector = graph_tensors(manifest.selector_graph(manifest.budgets[0]))
        found.append(entry_tensors(encoder, selector, manifest.record["batch"]))
    batch = found[0][0]
    return batch, _merged([f[1] for f in found]), _merged([f[2] for f in found])


def _merged(tensor_lists) -> tuple:
    first = tensor_lists[0]
    merged = []
    for i, tensor in enumerate(first):
        dims = tuple(d if all(t[i].dims[j] == d for t in tensor_lists) else -1 for j, d in enumerate(tensor.dims))
        merged.append(replace(tensor, dims=dims))
    return tuple(merged)


def _shared(manifest: Manifest) -> tuple[str, ...]:
    """What the BLS entry passes from the encoder model to a selector model: the encoder graph's outputs every
    selector graph reads (X, a, P(X), and Qwen3-VL's deepstack_features)."""
    encoder = graph_tensors(manifest.encoder_graph)
    found = {shared_tensors(encoder, graph_tensors(manifest.selector_graph(k))) for k in manifest.budgets}
    return found.pop()


def _write_chained(manifests: list[Manifest], shape_set, root: Path, flavour: str, instances: int, python_path: str) -> list[str]:
    """The encoder and each selector as their own models (per shape, named flashvlm_<shape>_encoder, ...), and the
    Python BLS entry that chains them (routing each request by its pixels' shape, over several shapes)."""
    from flashvlm_export.serve.handler import pixel_dims, route_text

    platform = "tensorrt_plan" if flavour == "tensorrt" else "onnxruntime_onnx"
    version = root / ENTRY / VERSION
    version.mkdir(parents=True)
    names, routes = [], []
    for i, manifest in enumerate(manifests):
        tag = "" if shape_set is None else f"{shape_set.keys[i]}_"
        engines = manifest.engines()[1] if flavour == "tensorrt" else None
        stems = {ENCODER_STEM: (manifest.record["encoder"], manifest.encoder_graph)}
        for entry in manifest.record["selectors"]:
            stems[entry_stem(entry)] = (entry, manifest.selector_graph(entry["budget"]))
        for stem, (entry, graph) in stems.items():
            name = sub_model(tag + stem)
            model_version = root / name / VERSION
            model_version.mkdir(parents=True)
            if flavour == "tensorrt":
                source = manifest.engines()[0] if stem == ENCODER_STEM else engines[entry["budget"]]
                shutil.copyfile(source, model_version / "model.plan")
            else:
                for file in _graph_files(manifest, entry["onnx"]):
                    _link_or_copy(file, model_version / ("model.onnx" if file == graph else file.name))
            inputs, outputs = graph_tensors(graph)
            config = model_config(name, platform, 0, inputs, outputs, instances, gpu=True)
            (root / name / "config.pbtxt").write_text(config)
            names.append(name)
        copy = MANIFEST_NAME if shape_set is None else manifest.path.name
        (version / copy).write_text(json.dumps(manifest.record, indent=2) + "\n")  # its budgets; the graphs are the models
        routes.append(
            {
                "pixels": route_text(pixel_dims(manifest)),
                "manifest": copy,
                "encoder": sub_model(tag + ENCODER_STEM),
                "selector_prefix": f"{ENTRY}_{tag}",
            }
        )
    shutil.copyfile(SOURCES / "model_bls.py", version / "model.py")
    batch, inputs, outputs = _entry_io(manifests)
    parameters = {
        "manifest": routes[0]["manifest"],
        "encoder": routes[0]["encoder"],
        "selector_prefix": routes[0]["selector_prefix"],
        "shared": ",".join(_shared(manifests[0])),  # the encoder outputs the entry passes to the selector
        "python_path": python_path,
    }
    if shape_set is not None:  # the BLS entry picks a route by the request's pixel_values shape
        parameters["routes"] = ";".join(f"{r['pixels']}={r['manifest']},{r['encoder']},{r['selector_prefix']}" for r in routes)
    config = model_config(
        ENTRY, "python", batch, inputs, outputs, instances, gpu=False, parameters=parameters, dynamic_batching=True
    )
    (root / ENTRY / "config.pbtxt").write_text(config)
    return [ENTRY, *names]
