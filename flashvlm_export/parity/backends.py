"""Backends that turn a case's feeds into indices (B, K): reference, static torch, ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import MissingDependencyError, UsageError
from flashvlm_export.parity.corpus import SELECTOR_INPUTS
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import NearTie, reference_select


def _tensors(feeds: dict[str, np.ndarray], names) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names]


class SelectorReference:
    """The gold standard on selector feeds; returns indices and each image's near-ties."""

    name = "reference"

    def __init__(self, budget: int, config: SelectorConfig, trace: bool = True):
        self.budget = budget
        self.config = config
        self.trace = trace  # near-tie tracing costs time; benchmarks turn it off

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[list[NearTie]]]:
        x, a, p, t, mask = _tensors(feeds, SELECTOR_INPUTS)
        rows, ties = [], []
        for b in range(x.shape[0]):
            text = t[b][mask[b].bool()]
            if self.trace:
                indices, trace = reference_select(x[b], a[b], p[b], text, self.budget, self.config, trace=True)
                ties.append(trace.near_ties)
            else:
                indices = reference_select(x[b], a[b], p[b], text, self.budget, self.config)
                ties.append([])
            rows.append(indices.numpy())
        return np.stack(rows), ties


class PipelineFeatures:
    """pixels -> selector feeds, with the model's own torch vision tower and projector (fp32)."""

    def __init__(self, parts):
        self.vision = parts.vision_features().eval()
        self.projector = parts.projector.eval()

    @torch.no_grad()
    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, a = self.vision(torch.from_numpy(feeds["pixel_values"]))
        p = self.projector(x)
        return dict(
            vision_features=x.numpy(),
            cls_attention=a.numpy(),
            projected_features=p.numpy(),
            text_embeds=feeds["text_embeds"],
            text_mask=feeds["text_mask"],
        )


class PipelineReference(SelectorReference):
    def __init__(self, parts, budget: int, config: SelectorConfig):
        super().__init__(budget, config)
        self.features = PipelineFeatures(parts)

    def run(self, feeds):
        return super().run(self.features(feeds))


class TorchModule:
    """A static torch module (selector or pipeline) run eagerly on the same feeds."""

    name = "static-torch"

    def __init__(self, module: torch.nn.Module, input_names):
        self.module = module.eval()
        self.input_names = tuple(input_names)

    @torch.no_grad()
    def run(self, feeds) -> np.ndarray:
        out = self.module(*_tensors(feeds, self.input_names))
        return (out[0] if isinstance(out, tuple) else out).numpy()


class OnnxRuntime:
    """An ONNX graph in ONNX Runtime (CPU unless another provider is asked for and present)."""

    def __init__(self, path: Path, providers: list[str] | None = None, plugin: bool = False):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = providers or ["CPUExecutionProvider"]
        for provider in providers:
            if provider not in available:
                raise UsageError(f"ONNX Runtime provider {provider} is not available here ({', '.join(available)})")
        options = None
        if plugin:  # flashvlm::ResidualPrune runs as an onnxruntime-extensions Python op
            from flashvlm_export.plugin.ort_op import session_options

            options = session_options()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # e.g. bf16 kernels the CPU provider lacks
            first = str(exc).strip().splitlines()[0][:300]
            raise MissingDependencyError(f"ONNX Runtime ({providers[0]}) cannot run {Path(path).name}: {first}") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.name = f"onnxruntime[{providers[0].replace('ExecutionProvider', '')}{', plugin op' if plugin else ''}]"

    def run(self, feeds) -> np.ndarray:
        return self.session.run(["indices"], {name: feeds[name] for name in self.input_names})[0]
