"""A split export as one pipeline: the encoder, then the selector of the budget each request asks for.

ONNX Runtime (`OrtChain`): the encoder's three outputs are OrtValues allocated once on the session's
device (CUDA with onnxruntime-gpu, else CPU) and bound, through I/O binding, as the encoder's outputs
and as every selector's inputs: nothing of the N rows of X, a or P(X) passes through the host or is
copied between sessions. Only indices and visual_embeds (B, K, Dl) come back. TensorRT
(`trt/chain.py`, EngineChain) does the same with device buffers shared between execution contexts.
OpenVINO (`OpenVinoChain`, on the CPU): the encoder request's output tensors are set as every selector
request's inputs, one host buffer each, not copied.

`SplitChain` picks the runtime from a manifest and serves any of its budgets per request; `BudgetBackend`
is a chain at one budget, a backend like any other (backend.py). A budget-range split (one selector for KMIN..KMAX)
takes a budget per image of the batch (a list), or one for all of them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from flashvlm_export.backend import CUDA, OPENVINO, ort_provider, ort_session, runtime_label
from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import (
    BUDGET,
    DEEPSTACK_EMBEDS,
    INDICES,
    KEPT,
    PIXEL_VALUES,
    POSITIONS,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISUAL_EMBEDS,
    encoder_outputs_among,
)
from flashvlm_export.export.manifest import Manifest
from flashvlm_export.runtime.budgets import budget_feed, per_image


class _Chain:
    """What every chain of a manifest shares: its budgets, the selector a request's budget needs, one request at a time."""

    manifest: Manifest
    selectors: dict

    @staticmethod
    def _returned(session) -> tuple[str, ...]:
        """What a selector returns: indices and visual_embeds, and positions and DeepStack rows where the model has them
        (and kept, for a budget-range selector)."""
        names = {o.name for o in session.get_outputs()}
        return (INDICES, VISUAL_EMBEDS) + tuple(name for name in (POSITIONS, DEEPSTACK_EMBEDS, KEPT) if name in names)

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(self.selectors)

    def selector_key(self, budget, batch: int) -> int:
        """The selector that serves `budget` (one K, or a list of one per image); a one-line error when none does."""
        keys = {self.manifest.check_budget(k) for k in per_image(budget, batch, str(self.manifest.path))}
        if len(keys) > 1:
            raise UsageError(
                f"budgets {budget} need {len(keys)} selector graphs of {self.manifest.path}; a split of fixed budgets takes one "
                "budget per batch (export with --budget-range for a budget per image)"
            )
        return keys.pop()

    def text_feeds(self, feeds: dict[str, np.ndarray], budget, batch: int) -> dict[str, np.ndarray]:
        """The selector's own inputs besides the encoder's: the text rows, and a budget-range selector's budgets."""
        text = {name: np.ascontiguousarray(feeds[name]) for name in (TEXT_EMBEDS, TEXT_MASK)}
        if self.manifest.budget_range is not None:
            text[BUDGET] = budget_feed(budget, batch, *self.manifest.budget_range, str(self.manifest.path))
        return text

    def infer(self, feeds: dict[str, np.ndarray], budget) -> dict[str, np.ndarray]:
        self.selector_key(budget, len(feeds[TEXT_MASK]))  # before any work
        with self._lock:
            self.encode(feeds)
            return self.select(feeds, budget)


class OrtChain(_Chain):
    """Encoder session -> selector session of the request's budget, joined by I/O binding on one device."""

    def __init__(self, manifest: Manifest, provider: str | None = None, spin: bool = True):
        import onnxruntime as ort

        provider = ort_provider(provider)
        if provider == OPENVINO:
            raise UsageError("OrtChain runs ONNX Runtime; OpenVINO's chain is OpenVinoChain (SplitChain picks it)")
        self.device = "cuda" if provider == CUDA else "cpu"
        plugin = bool(manifest.record["plugin"])
        self.encoder = ort_session(manifest.encoder_graph, provider, spin=spin)
        self.selectors = {
            k: ort_session(manifest.selector_graph(k), provider, plugin=plugin, spin=spin) for k in manifest.budgets
        }
        # X, a, P(X) (and Qwen3-VL's DeepStack rows): allocated once on the device, written by the encoder, read by
        # every selector
        shapes = {o.name: o.shape for o in self.encoder.get_outputs()}
        self.features = {
            name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], np.float32, self.device, 0)
            for name in encoder_outputs_among(shapes)
        }
        self.encoder_binding = self.encoder.io_binding()
        for name, value in self.features.items():
            self.encoder_binding.bind_ortvalue_output(name, value)
        self.bindings = {}
        for k, session in self.selectors.items():
            binding = session.io_binding()
            for name, value in self.features.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._returned(session):  # the K rows only come back to the host
                binding.bind_output(name, "cpu")
            self.bindings[k] = binding
        self.manifest = manifest
        self.name = f"{runtime_label(provider)} chain"
        self._lock = threading.Lock()  # the shared buffers serve one request at a time

    def encode(self, feeds: dict[str, np.ndarray]) -> None:
        """Run the encoder into the shared device buffers."""
        self.encoder_binding.bind_cpu_input(PIXEL_VALUES, np.ascontiguousarray(feeds[PIXEL_VALUES]))
        self.encoder.run_with_iobinding(self.encoder_binding)

    def features_on_host(self) -> dict[str, np.ndarray]:
        """A copy of the shared X, a, P(X) (for parity: the encoder's own outputs)."""
        return {name: value.numpy() for name, value in self.features.items()}

    def select(self, feeds: dict[str, np.ndarray], budget) -> dict[str, np.ndarray]:
        """The selector of `budget` (one K, or one per image for a budget-range split) on what the encoder last wrote."""
        batch = len(feeds[TEXT_MASK])
        key = self.selector_key(budget, batch)
        binding = self.bindings[key]
        for name, value in self.text_feeds(feeds, budget, batch).items():
            binding.bind_cpu_input(name, value)
        self.selectors[key].run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self._returned(self.selectors[key]), outputs, strict=True))


class OpenVinoChain(_Chain):
    """Encoder request -> selector request of the request's budget, in OpenVINO on the CPU: the encoder's output
    tensors become the selector's input tensors (set_tensor shares the host buffer). `cache`: OpenVINO's model cache
    (True: openvino_cache/ beside the graphs; a folder; False: none)."""

    def __init__(self, manifest: Manifest, cache: Path | bool = True):
        plugin = bool(manifest.record["plugin"])
        self.encoder = ort_session(manifest.encoder_graph, OPENVINO, cache=cache)
        self.selectors = {
            k: ort_session(manifest.selector_graph(k), OPENVINO, plugin=plugin, cache=cache) for k in manifest.budgets
        }
        self.feature_names = encoder_outputs_among({o.name: o.shape for o in self.encoder.get_outputs()})
        self.features = {}
        self.manifest = manifest
        self.name = f"{runtime_label(OPENVINO)} chain"
        self._lock = threading.Lock()

    def encode(self, feeds: dict[str, np.ndarray]) -> None:
        request = self.encoder.request
        request.infer({PIXEL_VALUES: np.ascontiguousarray(feeds[PIXEL_VALUES])}, share_outputs=True)  # nothing copied
        self.features = {name: request.get_tensor(name) for name in self.feature_names}

    def features_on_host(self) -> dict[str, np.ndarray]:
        return {name: np.array(tensor.data, copy=True) for name, tensor in self.features.items()}

    def select(self, feeds: dict[str, np.ndarray], budget) -> dict[str, np.ndarray]:
        batch = len(feeds[TEXT_MASK])
        key = self.selector_key(budget, batch)
        session = self.selectors[key]
        wanted = {i.name for i in session.get_inputs()}
        for name, tensor in self.features.items():
            if name in wanted:
                session.request.set_tensor(name, tensor)
        text = {name: value for name, value in self.text_feeds(feeds, budget, batch).items() if name in wanted}
        session.request.infer(text, share_outputs=True)
        return {name: np.array(session.request.get_tensor(name).data, copy=True) for name in self._returned(session)}


class SplitChain:
    """A manifest's chain in ONNX Runtime (or OpenVINO: provider OPENVINO), or its TensorRT engines with tensorrt=True."""

    def __init__(
        self,
        manifest: Manifest | str | Path,
        tensorrt: bool = False,
        plugin_library: Path | None = None,
        provider: str | None = None,
        spin: bool = True,
    ):
        """spin=False: ONNX Runtime's threads sleep between runs (backend.ort_session)."""
        if not isinstance(manifest, Manifest):
            from flashvlm_export.export.manifest import read_manifest

            manifest = read_manifest(Path(manifest), engines=tensorrt)
        self.manifest = manifest
        if tensorrt:
            from flashvlm_export.trt.chain import EngineChain

            if manifest.budget_range is not None:
                raise UsageError(
                    f"{manifest.path} is a budget-range split: its TensorRT chain is not built yet; run it in ONNX Runtime"
                )
            encoder, selectors = manifest.engines()
            self.chain = EngineChain(encoder, selectors, plugin_library)
        elif provider == OPENVINO:
            self.chain = OpenVinoChain(manifest)
        else:
            self.chain = OrtChain(manifest, provider, spin)
        self.name = self.chain.name

    def infer(self, feeds: dict[str, np.ndarray], budget) -> dict[str, np.ndarray]:
        """`budget`: one K for the batch, or (a budget-range split) a list of one K per image."""
        if self.manifest.budget_range is not None:
            return self.chain.infer(feeds, budget)  # the ONNX Runtime chain checks and feeds it
        return self.chain.infer(feeds, self.manifest.check_budget(budget))


class BudgetBackend:
    """A chain fixed to one budget (or one per image, for a budget-range split): a backend (backend.py) for
    runtime/session.select and the rest."""

    def __init__(self, chain: SplitChain, budget):
        for k in [budget] if isinstance(budget, (int, np.integer)) else list(budget):
            chain.manifest.check_budget(k)
        self.chain, self.budget = chain, budget
        self.name = f"{chain.name}, K={budget}"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.chain.infer(feeds, self.budget)
