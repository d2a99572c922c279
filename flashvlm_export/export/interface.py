"""The graph interface: every input and output of every graph kind, with shape and dtype, in one place.

Export, parity, the runtime and bench read names, shapes and dtypes from here (in the manner of
Optimum's OnnxConfig). A graph kind is the full pipeline, the selector core (with step 12's gather: the selector graph of a
split export and every --selector-only graph), or the encoder of a split export (pixels to X, a,
P(X)). Each has the shipped outputs and the verification outputs, the extra tensors a verification
build exposes (F and G, and the scores s and q of steps 5 and 6; for the pipeline also X, a and
P(X); ALGORITHM.md "Parity"). The encoder's outputs are X, a and P(X) themselves: it has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXEL_VALUES = "pixel_values"  # (B, 3, H, W); a clip graph's (B, F, 3, H, W)
VISION_FEATURES = "vision_features"  # X (B, N, Dv)
CLS_ATTENTION = "cls_attention"  # a (B, N)
PROJECTED_FEATURES = "projected_features"  # P(X) (B, N, Dl)
DEEPSTACK_FEATURES = "deepstack_features"  # (B, L, N, Dl): each DeepStack layer's row per token (Qwen3-VL only)
TEXT_EMBEDS = "text_embeds"  # T (B, T_max, Dl)
TEXT_MASK = "text_mask"  # (B, T_max) bool
BUDGET = "budget"  # (B,) int64: each image's K, an input of a budget-range graph only (KMIN <= K <= KMAX)
INDICES = "indices"  # (B, K) int64 ascending
VISUAL_EMBEDS = "visual_embeds"  # P(X)[indices] (B, K, Dl)
POSITIONS = "positions"  # (B, K, 3) int64 (t, h, w) of each kept token from the image's start (3-axis rotary models)
DEEPSTACK_EMBEDS = "deepstack_embeds"  # (B, L, K, Dl): the kept tokens' DeepStack rows (Qwen3-VL only)
KEPT = "kept"  # (B,) int64: tokens each image kept, an output of a budget-range graph only
TEXT_RELEVANCE = "text_relevance"  # s (B, N), step 5
SHARPENED_SCORES = "sharpened_scores"  # q (B, N), step 6: before step 7's top-p gate
FUSED_SCORES = "fused_scores"  # F (B, N), step 8
GRAM = "gram"  # G (B, N, N), step 10; a per-group clip graph's (B, N, n): each token against its own group; a model
# cut into crops (LLaVA-NeXT): each crop's, (B, crops, N/crops, N/crops)

FEATURES = (VISION_FEATURES, CLS_ATTENTION, PROJECTED_FEATURES)
ENCODER_OUTPUTS = (*FEATURES, DEEPSTACK_FEATURES)  # every tensor an encoder may return (DeepStack: Qwen3-VL only)


def encoder_outputs_among(names) -> tuple[str, ...]:
    """The encoder outputs among `names`, in interface order: what a split's encoder writes and its selectors read (X, a,
    P(X), and deepstack_features where the model has DeepStack). The one rule of every chain (ONNX Runtime, TensorRT,
    Triton)."""
    return tuple(name for name in ENCODER_OUTPUTS if name in names)


SELECTOR_INPUTS = (*FEATURES, TEXT_EMBEDS, TEXT_MASK)
PIPELINE_INPUTS = (PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: type  # numpy scalar type: np.float32, np.bool_ or np.int64

    @property
    def onnx_type(self) -> int:
        from onnx import helper

        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))


@dataclass(frozen=True)
class GraphInterface:
    kind: str  # "full", "selector" or "encoder"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]  # what the shipped graph returns
    verification: tuple[TensorSpec, ...]  # extra outputs of the verification build (empty when K >= N)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def verification_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.verification)

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.inputs + self.outputs + self.verification:
            if spec.name == name:
                return spec
        raise KeyError(name)


GRAPH_KINDS = ("full", "selector", "encoder")


def graph_interface(
    kind: str,
    batch: int,
    n_tokens: int,
    budget: int,
    t_max: int,
    vision_hidden: int,
    text_hidden: int,
    image_shape: tuple[int, int],
    positions: bool = False,
    budget_min: int | None = None,
    frames: int | None = None,
    gram_width: int | None = None,
    crops: int = 1,
    deepstack: int = 0,
) -> GraphInterface:
    """The interface of one graph; `budget >= n_tokens` keeps every token and decides nothing.

    The encoder kind ignores budget and t_max (it sees neither the text nor K). positions=True: the selected
    outputs also hold the kept tokens' (t, h, w) rotary positions (models/positions.py). budget_min: a budget-range
    graph (budget_min..budget): it also takes `budget` (B,) and returns `kept` (B,); its indices, visual_embeds
    and positions are padded to K = budget (-1 indices and positions, zero rows after each image's kept ones).
    image_shape: (H, W) of pixel_values. frames: a clip graph: pixel_values (B, F, 3, H, W), N the clip's tokens (selector/clip.py); gram_width: the columns
    of its Gram (a group's n under the per-group rule).
    crops > 1 (LLaVA-NeXT): pixel_values (B, crops, 3, S, S); the N tokens are the crops' crop-major, and G is per crop.
    deepstack = L > 0 (Qwen3-VL): the features also hold `deepstack_features` (B, L, N, Dl) after P(X), and the selected
    outputs `deepstack_embeds` (B, L, K, Dl) after the positions (a range graph's padded rows zero).
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}")
    b, n, k = batch, n_tokens, min(budget, n_tokens)
    f32 = np.float32
    features = (
        TensorSpec(VISION_FEATURES, (b, n, vision_hidden), f32),
        TensorSpec(CLS_ATTENTION, (b, n), f32),
        TensorSpec(PROJECTED_FEATURES, (b, n, text_hidden), f32),
    )
    if deepstack:
        features += (TensorSpec(DEEPSTACK_FEATURES, (b, deepstack, n, text_hidden), f32),)
    stack = (frames,) if frames is not None else (crops,) if crops > 1 else ()  # a clip's frames or a photo's crops
    pixels = TensorSpec(PIXEL_VALUES, (b, *stack, 3, *image_shape), f32)
    gram = (b, crops, n // crops, n // crops) if crops > 1 else (b, n, gram_width or n)
    if kind == "encoder":
        return GraphInterface(kind, (pixels,), features, ())
    text = (TensorSpec(TEXT_EMBEDS, (b, t_max, text_hidden), f32), TensorSpec(TEXT_MASK, (b, t_max), np.bool_))
    selected = (TensorSpec(INDICES, (b, k), np.int64), TensorSpec(VISUAL_EMBEDS, (b, k, text_hidden), f32))
    if positions:
        selected += (TensorSpec(POSITIONS, (b, k, 3), np.int64),)
    if deepstack:
        selected += (TensorSpec(DEEPSTACK_EMBEDS, (b, deepstack, k, text_hidden), f32),)
    if budget_min is not None:
        text += (TensorSpec(BUDGET, (b,), np.int64),)
        selected += (TensorSpec(KEPT, (b,), np.int64),)
    decisions = (
        ()
        if budget >= n_tokens and budget_min is None
        else (
            TensorSpec(TEXT_RELEVANCE, (b, n), f32),
            TensorSpec(SHARPENED_SCORES, (b, n), f32),
            TensorSpec(FUSED_SCORES, (b, n), f32),
            TensorSpec(GRAM, gram, f32),
        )
    )
    if kind == "selector":
        return GraphInterface(kind, features + text, selected, decisions)
    return GraphInterface(kind, (pixels,) + text, selected, decisions + features)
