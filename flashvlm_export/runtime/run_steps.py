"""What `run` does for a picture and for a clip alike (runtime/api.py, runtime/clip_run.py): read the graph's or the
manifest's metadata, pick the backend, check the graph's budget and positions, print ids, save a picture."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import FlashVLMError, UsageError, arg, switch
from flashvlm_export.progress import plural
from flashvlm_export.runtime.answer import Answer
from flashvlm_export.runtime.graph_info import GraphInfo

RANDOM_NOTE = "random weights and a stand-in tokenizer: the answers below are noise; they show the plumbing, not a model"


@dataclass
class RunResult:
    indices: np.ndarray  # (K,) kept token indices, ascending
    n_tokens: int  # N
    selection_ms: float
    backend: str
    positions: np.ndarray | None = None  # (K, 3) the graph's (t, h, w) of each kept token (3-axis rotary models)
    shape: str | None = None  # a split of several shapes: the one chosen for this photo (models/shapes.py shape_key)
    heatmap: Path | None = None
    answers: dict[str, Answer] = field(default_factory=dict)  # "pruned" and, with compare_full, "full"


def manifest_info(manifest: str, budget: int | None, tensorrt: bool) -> tuple[GraphInfo, object]:
    """The manifest (checked: hashes and each graph's metadata) and the request of the budget asked for."""
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.models.weights import recorded_weights

    split = read_manifest(Path(manifest), engines=tensorrt)
    if budget is None and split.budget_range is None and len(split.budgets) == 1:  # one budget: no choice to make
        budget = split.budgets[0]
    if budget is None:
        raise UsageError(f"{arg('manifest', manifest)} serves {split.serves}; choose one per request with {arg('budget')}")
    request = split.request(split.check_budget(budget))
    return GraphInfo(request, recorded_weights(split.weights, str(manifest)), str(manifest)), split


def graph_metadata_of(graph: str | None, engine: str | None) -> tuple[dict[str, str], str]:
    if engine is not None:
        from flashvlm_export.artifact_paths import own_file
        from flashvlm_export.artifacts.sidecar import read_sidecar

        own_file(Path(engine), "engine", "engine", "build it with flashvlm-export ... --engine")  # regular, plausible size
        return read_sidecar(Path(engine))["onnx_metadata"], engine
    if graph is None:
        raise UsageError(f"run needs {arg('graph')} (a full graph from flashvlm-export) or {arg('engine')} (a TensorRT plan)")
    from flashvlm_export.export.metadata import graph_metadata

    return graph_metadata(Path(graph)), graph


def check_output(path: Path, force: bool) -> None:
    """--heatmap: artifacts/placement.check_new_file."""
    from flashvlm_export.artifacts.placement import check_new_file

    check_new_file(path, "heatmap", ".png", force)


def save_png(picture, path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    from flashvlm_export.artifacts.ownership import PNG_KEY, PRODUCER

    fd, temp = tempfile.mkstemp(prefix=".flashvlm-tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        stamp = PngInfo()
        stamp.add_text(PNG_KEY, PRODUCER)  # what a later --force recognises as this tool's
        picture.save(temp, format="PNG", optimize=True, pnginfo=stamp)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def ids_text(ids: list[int], shown: int = 12) -> str:
    more = f", ... {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{plural(len(ids), 'new token')}: ids {', '.join(map(str, ids[:shown]))}{more}"


def load_parts(info: GraphInfo, log):
    from flashvlm_export.models.adapter import get_parts_logged

    return get_parts_logged(info.spec, info.weights, log, with_embeddings=True, what=" vision tower and embed_tokens")


def graph_provider(backend: str | None, engine: str | None, tensorrt: bool) -> str | None:
    """The provider (backend.py) of `backend` for run's graphs; an engine is TensorRT's, so naming another runtime for it
    is refused in one line."""
    from flashvlm_export.backend import ONNXRUNTIME_BACKEND, backend_provider

    if backend not in (None, ONNXRUNTIME_BACKEND) and (engine is not None or tensorrt):
        given = arg("engine") if engine is not None else switch("tensorrt")
        raise UsageError(f"{arg('backend', backend)} runs ONNX graphs and {given} runs TensorRT engines; drop one")
    return backend_provider(backend)


def selection_backend(
    info: GraphInfo,
    graph: str | None,
    engine: str | None,
    plugin_lib: str | None,
    split=None,
    tensorrt=False,
    budget=None,
    provider: str | None = None,
):
    """The backend of run's selection: a split's chain at the budget, an engine, or the graph (in ONNX Runtime, or
    OpenVINO with provider OPENVINO)."""
    if split is not None:
        from flashvlm_export.runtime.chain import BudgetBackend, SplitChain

        chain = SplitChain(split, tensorrt, Path(plugin_lib) if plugin_lib else None, provider)
        # no --budget: the split's one budget, as manifest_info chose it for the request
        return BudgetBackend(chain, info.request.budget if budget is None else budget)
    if engine is not None:
        from flashvlm_export.trt.runner import EngineRunner

        return EngineRunner(Path(engine), plugin_library=Path(plugin_lib) if plugin_lib else None)
    from flashvlm_export.runtime.session import OrtGraph

    return OrtGraph(Path(graph), plugin=info.request.plugin, provider=provider)


def check_graph_budget(request, budget: int | None, source: str) -> None:
    """A budget-range graph needs --budget in its range; a fixed graph's budget is its own (--budget may only repeat it)."""
    if request.ranged:
        if budget is None:
            raise UsageError(f"{source} serves any K in {request.budget_min}..{request.budget}; choose one with {arg('budget')}")
        from flashvlm_export.runtime.budgets import budget_feed

        budget_feed(budget, 1, request.budget_min, request.budget, source)
    elif budget is not None and budget != request.budget:
        raise UsageError(
            f"{arg('budget', budget)}: {source} keeps K={request.budget}, fixed at export; drop {arg('budget')}, or export with "
            "--budget-range (or pass a split's --manifest)"
        )


def check_positions(selection, spec, source: str) -> None:
    """The graph's positions are its kept tokens' own (t, h, w): what the LLM is given is what the graph selected."""
    from flashvlm_export.models.positions import token_positions

    if selection.positions is None:
        raise FlashVLMError(
            f"{source} returns no kept-token positions, which {spec.name} needs; re-export it with flashvlm-export"
        )
    want = token_positions(spec)[torch.from_numpy(selection.indices)]
    if not torch.equal(selection.positions, want):
        row = int(torch.any(selection.positions != want, dim=1).nonzero()[0])
        raise FlashVLMError(
            f"{source} returned position {selection.positions[row].tolist()} for token {int(selection.indices[row])}, "
            f"whose (t, h, w) is {want[row].tolist()}; re-export the graph with flashvlm-export"
        )


def positions_text(positions: torch.Tensor, shown: int = 6) -> str:
    rows = [f"({t}, {h}, {w})" for t, h, w in positions[:shown].tolist()]
    more = f", ... {len(positions) - shown} more" if len(positions) > shown else ""
    return ", ".join(rows) + more


def log_answers(answers: dict[str, Answer], kept: int, total: int, log) -> None:
    """Each answer's prefill, KV cache and text; with both ("pruned" and "full"), what pruning saved."""
    from flashvlm_export.artifacts.files import human_size

    for a in answers.values():
        log(
            f"Answer [{a.label}]: prefill {a.prefill_ms:.1f} ms (LLM time to first token over {a.prompt_tokens} tokens), "
            f"KV cache {human_size(a.kv_bytes)}: {a.text!r} ({ids_text(a.token_ids)})"
        )
    if "full" in answers:
        pruned, full = answers["pruned"], answers["full"]
        log(
            f"Answer: pruning kept {kept}/{total} tokens: prefill {full.prefill_ms:.1f} -> {pruned.prefill_ms:.1f} ms, "
            f"KV cache {human_size(full.kv_bytes)} -> {human_size(pruned.kv_bytes)}"
        )


@dataclass
class AnswerPlan:
    """What `run` checked before loading anything for --answer: the GGUF (llama.cpp), or the LLM's device, dtype and
    parameter count (transformers)."""

    gguf: object | None = None  # runtime/llama_cpp.GGUFInfo
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    params: int | None = None
    layers: int | None = None  # a random LLM cut to its first `layers` decoder layers (eval --llm-layers)


def plan_answer(
    info: GraphInfo, gguf: str | None, random_weights: bool, llm_dtype: str, source: str, llm_layers: int | None = None
) -> AnswerPlan:
    """Before anything is loaded: a GGUF of the graph's width and family (llama.cpp), or an LLM that fits in memory
    (transformers); one line otherwise. llm_layers: a random-weight LLM cut to that many decoder layers (timing)."""
    spec = info.spec
    if llm_layers is not None:
        _check_llm_layers(info, llm_layers, gguf)
    if gguf is not None:
        from flashvlm_export.runtime import llama_cpp

        checked = llama_cpp.check_gguf(gguf, spec, source)
        llama_cpp.check_llama_cpp_runs(checked, spec)  # the installed llama.cpp has its architecture
        return AnswerPlan(gguf=checked)
    from flashvlm_export.runtime import answer as llm_answer

    if info.weights.random:
        named = switch("random_weights") if random_weights else f"the random weights {source} records (seed {info.weights.seed})"
        llm_answer.check_random_llm_fits(spec, named, llm_layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = llm_answer.llm_dtype(llm_dtype, device)
    params = llm_answer.llm_parameters(spec, None if info.weights.random else str(info.weights.path), llm_layers)
    llm_answer.check_llm_fits(params, dtype, device, info.weights.random)
    return AnswerPlan(device=device, dtype=dtype, params=params, layers=llm_layers)


def _check_llm_layers(info: GraphInfo, layers: int, gguf: str | None) -> None:
    """--llm-layers cuts a random-weight transformers LLM for timing; a checkpoint's or a GGUF's LLM is answered whole."""
    if gguf is not None:
        raise UsageError(f"{arg('llm_layers', layers)} cuts the transformers LLM; a GGUF has its own layers (gguf --layers N)")
    if not info.weights.random:
        raise UsageError(f"{arg('llm_layers', layers)} cuts a random-weight LLM for timing; a checkpoint answers whole: drop it")
    from flashvlm_export.models.registry import adapter

    full = adapter(info.spec).full_config(info.spec).text_config.num_hidden_layers
    if not 1 <= layers <= full:
        raise UsageError(f"{arg('llm_layers', layers)} is outside 1..{full}, {info.spec.name}'s decoder layers")


def load_llm(plan: AnswerPlan, info: GraphInfo, parts, log):
    """The transformers LLM the plan checked, built (random, the graph's seed) or loaded (the checkpoint)."""
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.runtime import answer as llm_answer

    timer = StepTimer("Model", log)
    checkpoint = None if info.weights.random else str(info.weights.path)
    llm = llm_answer.build_llm(info.spec, parts, checkpoint, info.weights.seed, plan.device, plan.dtype, plan.layers)
    cut = "" if plan.layers is None else f", cut to {plan.layers} decoder layers for timing"
    timer.done(
        f"LLM ready on {plan.device}, {llm_answer.dtype_name(plan.dtype)} ({llm_answer.parameter_count(plan.params)} parameters{cut})"
    )
    return llm


def open_source(graph: str | None, engine: str | None, manifest: str | None, budget: int | None, tensorrt: bool):
    """What `run` reads its request from: a split's manifest (the budget asked for) or one graph or engine (its own
    budget). Returns (GraphInfo, the split or None, the weights it records, its name for messages)."""
    from flashvlm_export.runtime import graph_info as graph_info_module

    if manifest is not None:
        if graph is not None or engine is not None:
            raise UsageError(f"{arg('manifest')} names the graphs and engines; drop {arg('graph')}/{arg('engine')}")
        info, split = manifest_info(manifest, budget, tensorrt)
        return info, split, split.weights, manifest
    if tensorrt:
        raise UsageError(
            f"{switch('tensorrt')} runs a manifest's engines; pass {arg('manifest')} (a single engine: {arg('engine')})"
        )
    meta, source = graph_metadata_of(graph, engine)
    info = graph_info_module.graph_info(meta, source)
    check_graph_budget(info.request, budget, source)
    return info, None, meta.get("weights"), source
