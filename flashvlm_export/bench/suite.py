"""`flashvlm-export bench`: every figure with warm-up, repeats, median / p10 / p90, same inputs for all.

Sections: selector core (N=576 at K=32/64/128/192, N=2880 at K=160/320/640) on the eager reference,
the static torch module and ONNX Runtime CPU, plus torch on GPU (eager, CUDA graph) where a GPU is
present; the full graph in ONNX Runtime and the selector's share of it; the export's time and peak
RSS; and, on a GPU, LLM prefill time per budget. The plugin kernel is timed by
scripts/plugin_harness.py, not here.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvlm_export.bench.timing import Timing, measure
from flashvlm_export.errors import BuildError
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.export.interface import SELECTOR_INPUTS, TEXT_MASK
from flashvlm_export.models.registry import get_spec
from flashvlm_export.models.zoo.llava15 import LLAMA2_7B
from flashvlm_export.parity.backends import OnnxRuntime, SelectorReference, TorchModule
from flashvlm_export.parity.corpus import Geometry, selector_corpus
from flashvlm_export.selector.config import SelectorConfig

SELECTOR_GRID = ((576, (32, 64, 128, 192)), (2880, (160, 320, 640)))
FULL_GRAPH_BUDGET = 128  # the README's main job; the full graph is timed at this budget
ONNXRUNTIME_CPU = "onnxruntime CPU"  # the backend the full graph runs on: its selector time is the share's numerator


@dataclass(frozen=True)
class BenchSettings:
    repeats: int = 10  # timed runs per figure (N=2880 and the full graph use fewer, see below)
    warmup: int = 2
    text_len: int = 60  # prompt rows of T_max = 128: a LLaVA-1.5 chat prompt with a short question
    full_graph: bool = True
    export: bool = True
    gpu: bool = True  # use a CUDA GPU when one is present
    split: bool = True  # fused graphs against a split export: time, disk, memory
    selector: bool = True  # the selector core on every backend (the full graph's share needs it)


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, where platform.processor() is empty), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _row(section: str, n: int, k: int, timing: Timing, **extra) -> dict:
    return {"section": section, "n_tokens": n, "budget": k, **timing.to_dict(), **extra}


def with_prompt_len(case, text_len: int):
    """Unmask exactly the first text_len rows: a prompt of that length in T_max."""
    case.feeds[TEXT_MASK][:] = False
    case.feeds[TEXT_MASK][:, :text_len] = True
    return case


def selector_case(n: int, text_len: int):
    """The inputs every selector backend is timed on: a corpus scene at llava15 widths, batch 1."""
    spec = get_spec("llava15")
    return with_prompt_len(
        selector_corpus(Geometry(n, spec.vision_hidden, spec.text_hidden, spec.t_max, 1), repeats=1)[0], text_len
    )


def cpu_selector_timings(request, case, graph: Path, warmup: int, repeats: int) -> list[Timing]:
    """Eager reference, static torch and ONNX Runtime (the exported `graph`) on the same case."""
    backends = [
        ("eager reference", SelectorReference(request.budget, request.config, verification=False)),
        ("static torch (CPU)", TorchModule(request.module(), request.interface())),
        (ONNXRUNTIME_CPU, OnnxRuntime(graph)),
    ]
    with torch.inference_mode():
        return [measure(name, lambda b=backend, f=case.feeds: b.infer(f), warmup, repeats) for name, backend in backends]


def _gpu_selector(request, case, settings: BenchSettings) -> list[Timing]:
    """The static selector in torch on the GPU, eager and replayed as a CUDA graph."""
    module = request.module().cuda().eval()
    inputs = [torch.from_numpy(case.feeds[name]).cuda() for name in SELECTOR_INPUTS]
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        eager = measure("torch GPU (eager)", lambda: module(*inputs), settings.warmup, settings.repeats, sync)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(2):
                module(*inputs)
        sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(*inputs)
        replay = measure("torch GPU (CUDA graph)", graph.replay, settings.warmup, settings.repeats, sync)
    return [eager, replay]


@dataclass
class SelectorCore:
    rows: list[dict]  # one per (N, K, backend)
    full_graph_point_ms: float | None  # ONNX Runtime CPU at the model's N and FULL_GRAPH_BUDGET, if measured


def selector_core(settings: BenchSettings, log=print) -> SelectorCore:
    rows, point_ms = [], None
    spec = get_spec("llava15")
    gpu = settings.gpu and torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as scratch:
        for n, budgets in SELECTOR_GRID:
            case = selector_case(n, settings.text_len)
            repeats = settings.repeats if n <= 576 else max(3, settings.repeats // 2)
            exporter = "dynamo" if n <= 576 else "torchscript"  # same graph; dynamo takes ~100 s for 280 rounds
            for k in budgets:
                request = ExportRequest(
                    spec=spec,
                    budget=k,
                    t_max=spec.t_max,
                    batch=1,
                    config=SelectorConfig(),
                    selector_only=True,
                    n_tokens=None if n == spec.n_tokens else n,
                )
                graph = export_graph(request, Path(scratch) / f"s{n}_{k}.onnx", exporter=exporter)
                timings = cpu_selector_timings(request, case, graph, settings.warmup, repeats)
                if gpu:
                    timings += _gpu_selector(request, case, settings)
                for timing in timings:
                    rows.append(_row("selector", n, k, timing))
                    log(f"  selector N={n} K={k:<4} {timing.row()}")
                    if (n, k, timing.name) == (spec.n_tokens, FULL_GRAPH_BUDGET, ONNXRUNTIME_CPU):
                        point_ms = timing.median_ms
    return SelectorCore(rows, point_ms)


def export_cost(graph: Path, log=print) -> dict:
    """Wall time and peak RSS of the README's main job, in a child process writing `graph`."""
    args = ["--model", "llava15", "--budget", str(FULL_GRAPH_BUDGET), "--random-weights"]
    command = [sys.executable, "-m", "flashvlm_export.cli", *args, "--out", str(graph), "--force"]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(
            f"bench: the export child failed (exit {run.returncode}): {tail[0]}; run `flashvlm-export {' '.join(args)}` to see why"
        )
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1 << 20)  # KiB on Linux
    log(f"  export llava15 K={FULL_GRAPH_BUDGET} random weights: {wall:.1f} s wall, {peak_gib:.2f} GiB peak RSS")
    return {
        "section": "export",
        "command": "flashvlm-export " + " ".join(args),  # into a temp folder
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_gib, 2),
    }


def full_graph(graph: Path, selector_ms: float, settings: BenchSettings, log=print) -> dict:
    """Encoder + projector + selector in ONNX Runtime CPU; the selector's share of it."""
    from flashvlm_export.parity.corpus import pipeline_corpus

    spec = get_spec("llava15")
    case = pipeline_corpus(
        Geometry(spec.n_tokens, spec.vision_hidden, spec.text_hidden, spec.t_max, 1), spec.image_shape, repeats=1
    )[0]
    with_prompt_len(case, settings.text_len)
    runtime = OnnxRuntime(graph)
    timing = measure(
        "full graph onnxruntime CPU", lambda: runtime.indices(case.feeds), warmup=1, repeats=max(3, settings.repeats // 2)
    )
    share = selector_ms / timing.median_ms
    log(
        f"  full graph N={spec.n_tokens} K={FULL_GRAPH_BUDGET} {timing.row()}  (selector core {selector_ms:.2f} ms = {100 * share:.2f}%)"
    )
    return {
        "section": "full_graph",
        "n_tokens": spec.n_tokens,
        "budget": FULL_GRAPH_BUDGET,
        **timing.to_dict(),
        "selector_ms": selector_ms,
        "selector_share": share,
    }


def prefill_gpu(settings: BenchSettings, budgets=(576, 128, 64, 32), text_len: int = 60, log=print) -> list[dict]:
    """Llama-2-7B-geometry decoder, random fp16 weights, on the GPU: prefill time per visual-token count."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(**LLAMA2_7B.llama_config())
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaModel(config).half().eval()
    rows = []
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        for visual in budgets:
            embeds = torch.randn(1, visual + text_len, LLAMA2_7B.hidden, device="cuda", dtype=torch.float16) * 0.02
            timing = measure(
                f"prefill {visual}+{text_len} tokens",
                lambda e=embeds, m=model: m(inputs_embeds=e, use_cache=True),
                settings.warmup,
                settings.repeats,
                sync,
            )
            rows.append({"section": "prefill", "visual_tokens": visual, "text_tokens": text_len, **timing.to_dict()})
            log(f"  {timing.row()}")
    del model
    torch.cuda.empty_cache()
    return rows
