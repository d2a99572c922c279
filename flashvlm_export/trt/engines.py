"""The TensorRT engines of an export: where they go, what is checked before any graph is exported
(TensorRT, the GPU, the plugin library), and the build, one engine per exported graph.

export/job.py runs an export through this object's `prepare` and `build` (its EngineBuilder protocol),
so that export/ never imports trt/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flashvlm_export.errors import UsageError


@dataclass(frozen=True)
class EngineOptions:
    """TensorRT engines built from the exported graphs."""

    folder: Path
    timing_cache: Path | None = None  # default: <folder>/timing.cache
    plugin_lib: str | None = None  # libflashvlm_plugins.so for --plugin graphs; default: as build-plugin finds it
    workspace_gib: float = 4.0
    folder_given: bool = False  # the user named the folder (a split keeps its engines inside its own folder)

    @property
    def cache(self) -> Path:
        return self.timing_cache or self.folder / "timing.cache"


@dataclass
class EngineJob:
    """export/job.py's EngineBuilder: `prepare` before the export, `build` after it."""

    options: EngineOptions
    plugin_lib: Path | None = field(default=None, init=False)  # found by prepare() for --plugin graphs

    def paths(self, outputs) -> list[Path]:
        """One engine per graph: `<folder>/<stem>.plan`, or a split's own engines/ folder."""
        from flashvlm_export.artifacts.naming import artifact_stem

        plan = outputs.plan
        if plan is None:
            return [self.options.folder / f"{artifact_stem(r)}.plan" for r in outputs.requests]
        if self.options.folder_given:
            raise UsageError(
                f"--engine-dir {self.options.folder} does not apply to a split: its engines go in {plan.engine_folder}, "
                "inside the split folder, so that its manifest names only files in its own folder (docs/ARTIFACTS.md); "
                "drop --engine-dir"
            )
        return plan.engines()

    def prepare(self, outputs) -> list[Path]:
        """Fail fast, before the export, when TensorRT, the GPU or the plugin is missing; the engines' paths."""
        from flashvlm_export.device import gpu_info
        from flashvlm_export.trt.build import check_fp8_support
        from flashvlm_export.trt.env import import_tensorrt

        paths = self.paths(outputs)
        import_tensorrt()
        check_fp8_support(outputs.requests[0].precision, gpu_info())
        if outputs.requests[0].plugin:
            from flashvlm_export.plugin.build import find_plugin_library

            self.plugin_lib = find_plugin_library(self.options.plugin_lib)
        return paths

    def build(self, requests, graphs: list[Path], engine_paths: list[Path], weights: str | None, log=print) -> dict[str, Path]:
        """One engine per graph, each with its request's metadata; selector graphs hold no weights, encoders no plugin."""
        from flashvlm_export.trt.build import build_engine

        built = {}
        for request, graph, engine in zip(requests, graphs, engine_paths, strict=True):
            engine.parent.mkdir(parents=True, exist_ok=True)
            library = None if request.kind == "encoder" else self.plugin_lib
            own = request.metadata(None if request.kind == "selector" else weights)
            build_engine(graph, engine, own, request.precision, library, self.options.cache, self.options.workspace_gib, log=log)
            built[graph.stem] = engine
        return built
