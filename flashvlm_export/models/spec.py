"""What a model spec holds: the geometry and names each model declares once in models/zoo/."""

from __future__ import annotations

from dataclasses import dataclass, field

from flashvlm_export.errors import UsageError


@dataclass(frozen=True)
class DecoderGeometry:
    """The LLM the selected visual tokens feed: what the budget saves (bench's cost calculator, prefill)."""

    name: str
    layers: int
    hidden: int  # d
    intermediate: int  # SwiGLU width m
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0  # attention head width; 0: hidden / heads (Qwen3 declares its own, 128 or 256)
    # Qwen3.5's hybrid decoder: this many of the layers are linear attention (Gated DeltaNet), the rest full attention
    linear_layers: int = 0
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_head_dim: int = 0  # key and value head width of the linear-attention layers
    linear_conv_kernel: int = 0  # their depthwise causal convolution's width (Qwen3.5: 4)
    attention_output_gate: bool = False  # full attention's sigmoid output gate: q_proj 2x wide (Qwen3.5's attn_output_gate)

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def attention_layers(self) -> int:
        """Layers of softmax attention over the whole prefix (the rest are linear attention: Qwen3.5)."""
        return self.layers - self.linear_layers

    def llama_config(self) -> dict:
        """transformers LlamaConfig keyword arguments for this geometry."""
        return dict(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
        )


FAMILIES = (
    "llava",
    "qwen2_5_vl",
    "llava_next",
    "qwen3_vl",
    "qwen3_5",
)  # the adapter modules of models/ (registry.py imports them)
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")  # native-resolution towers with video and 3-axis rotary positions


@dataclass(frozen=True)
class ModelSpec:
    """A model's geometry and names, declared once (models/zoo/<model>.py); its family's adapter does the rest.

    N = (height / (patch_size * merge)) x (width / (patch_size * merge)) visual tokens in raster order (image_shape); `vision_hidden` is the width of
    the X the Gram of step 10 is taken on (CLIP's hidden size for LLaVA; for Qwen2.5-VL the merger's output, so
    Dv = Dl), `text_hidden` that of T and P(X).
    """

    name: str  # the --model value
    family: str  # one of FAMILIES: which adapter builds, loads and answers with it
    hf_repo: str  # Hugging Face id, looked up in the local cache only ("" for test-size models)
    image_size: int  # input pixels of the image's height, and its width unless image_width is set (square: the default)
    patch_size: int  # ViT patch side
    vision_hidden: int  # Dv, width of the vision features X
    text_hidden: int  # Dl, width of the LLM embeddings (and of P(X))
    t_max: int  # default padded text rows of the static graph
    merge: int = 1  # spatial merge: one visual token per merge x merge patches (Qwen2.5-VL: 2)
    image_size_step: int | None = None  # other sizes allowed: multiples of this (Qwen2.5-VL: 28); None: fixed
    vision_feature_layer: int = -2  # LLaVA: the hidden_states index fed to the projector
    vision: dict = field(default_factory=dict)  # vision config overrides (the family's config class)
    text: dict = field(default_factory=dict)  # text config overrides
    image_token_index: int = 32000
    special_tokens: dict = field(default_factory=dict)  # token -> id of the offline stand-in tokenizer (test models)
    gate: str = "llava"  # the default query gate of step 3 (selector/config.py GATES)
    image_budget: int = 128  # --budget's default for one image (one crop, one frame group) at the declared size: K=128 of 576
    decoder: DecoderGeometry | None = None  # the LLM's geometry, for bench's cost calculator
    tie_word_embeddings: bool = False  # the LLM's lm_head shares embed_tokens' weights (Qwen2.5-VL-3B)
    description: str = ""
    declared_image_size: int = 0  # the declared side (set from image_size); at_image_size keeps it
    # LLaVA-NeXT (anyres): the base image plus a grid of image_size crops, each an image of its own to the selector
    pinpoints: tuple[tuple[int, int], ...] = ()  # the checkpoint's image_grid_pinpoints, (height, width) px
    grid: tuple[int, int] | None = None  # (rows, columns) of crops fixed at export (--grid); None: one image, no crops
    chat_template: str = ""  # the chat prompt with {question}, where the checkpoint's differs from its family's
    declared_grid: tuple[int, int] | None = None  # the declared grid (set from grid); at_grid keeps it
    image_width: int = 0  # a non-square input's width in pixels (a Qwen shape HxW: --image-size 364x504); 0: square

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: unknown family {self.family!r}")
        if not self.declared_image_size:
            object.__setattr__(self, "declared_image_size", self.image_size)
        if self.declared_grid is None and self.grid is not None:
            object.__setattr__(self, "declared_grid", self.grid)

    @property
    def token_stride(self) -> int:
        """Pixels per visual token side: patch x merge (14 for LLaVA, 28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the input image in pixels: the one home of the graph's pixel shape."""
        return self.image_size, self.image_width or self.image_size

    @property
    def square(self) -> bool:
        return self.image_shape[0] == self.image_shape[1]

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of visual tokens per image, raster order (a square image: grid_side x grid_side)."""
        height, width = self.image_shape
        return height // self.token_stride, width // self.token_stride

    @property
    def grid_side(self) -> int:
        """Visual tokens per side of a square image (a non-square shape has token_grid's rows and columns)."""
        rows, cols = self.token_grid
        if rows != cols:
            raise ValueError(f"{self.label} is {rows}x{cols} tokens, not square: read token_grid")
        return rows

    @property
    def shape_text(self) -> str:
        """The image shape as --image-size takes it: 448, or 364x504 (height x width) when not square."""
        height, width = self.image_shape
        return str(height) if height == width else f"{height}x{width}"

    @property
    def crops(self) -> int:
        """Images the vision tower sees per photo: 1, or the base image plus the grid's crops (LLaVA-NeXT 2x2: 5)."""
        return 1 if self.grid is None else 1 + self.grid[0] * self.grid[1]

    @property
    def crop_tokens(self) -> int:
        """Visual tokens per crop (per image when there are no crops)."""
        rows, cols = self.token_grid
        return rows * cols

    @property
    def n_tokens(self) -> int:
        """Visual tokens per photo: every crop's, crop-major (base first, then the grid row by row)."""
        return self.crops * self.crop_tokens

    @property
    def label(self) -> str:
        """The model's name in artifact names: the --model name, with the side when not the default (qwen2.5-vl-7b-476px)."""
        declared = (self.declared_image_size, self.declared_image_size)
        name = self.name if self.image_shape == declared else f"{self.name}-{self.shape_text}px"
        return name if self.grid == self.declared_grid else f"{name}-{self.grid[0]}x{self.grid[1]}"

    def selector_config(self, **settings):
        """A SelectorConfig with this model's defaults (its gate: `norm` for Qwen2.5-VL, `llava` for LLaVA) under the
        settings given; what the CLI builds from its flags, and what a Python caller should build for a model."""
        from flashvlm_export.selector.config import MODEL_DEFAULTS, SelectorConfig

        defaults = {name: getattr(self, name) for name in MODEL_DEFAULTS}
        return SelectorConfig(**{**defaults, **settings})

    def default_budget(self, tokens: int | None = None, images: int | None = None) -> int:
        """--budget's default for `tokens` visual tokens made of `images` equal images (crops, a clip's frame groups;
        default: this spec's N and crops): each keeps image_budget's share of a declared-size image's tokens, rounded
        down and at least MIN_BUDGET (at most all), so the total divides evenly by `images`. LLaVA-NeXT 2x2:
        5 x 128 = 640, the paper's."""
        from flashvlm_export.selector.schedule import MIN_BUDGET

        tokens = self.n_tokens if tokens is None else tokens
        images = self.crops if images is None else images
        declared = (self.declared_image_size // self.token_stride) ** 2
        per_image = tokens // images
        return images * min(per_image, max(MIN_BUDGET, self.image_budget * per_image // declared))

    @property
    def vision_sequence(self) -> int:
        """Rows the vision tower attends over per image: the patches (merge^2 per token), plus CLIP's CLS for LLaVA."""
        return self.crop_tokens * self.merge**2 + (1 if self.family in ("llava", "llava_next") else 0)

    @property
    def has_video(self) -> bool:
        """Whether the family encodes clips (export --video): the Qwen towers' temporal groups of two frames."""
        return self.family in QWEN_FAMILIES

    @property
    def temporal_patch(self) -> int:
        """Frames per temporal group of a clip (the vision config's temporal_patch_size: 2 for Qwen2.5-VL); 0 for a
        model without a video path. The one home of this number: a clip of F frames has F / temporal_patch groups."""
        return int(self.vision.get("temporal_patch_size", 0)) if self.has_video else 0

    @property
    def has_positions(self) -> bool:
        """Whether the LLM places visual tokens by (t, h, w) rotary positions, which the graphs then return."""
        return self.family in QWEN_FAMILIES

    @property
    def deepstack_layers(self) -> int:
        """L: the vision tower's DeepStack layers (Qwen3-VL: 3), each a feature row per merged token added to the LLM's
        first L decoder layers; the graphs then also return `deepstack_embeds` (B, L, K, Dl). 0 for every other model."""
        return len(self.vision.get("deepstack_visual_indexes", ())) if self.family == "qwen3_vl" else 0

    @property
    def timestamped_frames(self) -> bool:
        """Whether a clip's frame groups are separated by timestamp text (`<t seconds>` before each group's
        vision_start: the Qwen3 generation), each group then placed as an image of its own; else (Qwen2.5-VL) by
        the temporal rotary axis alone."""
        return self.family in ("qwen3_vl", "qwen3_5")

    def pinpoint_grid(self, number: int) -> tuple[int, int]:
        """The grid (rows, columns) of the checkpoint's pinpoint `number`."""
        height, width = self.pinpoints[number]
        return height // self.image_size, width // self.image_size

    def at_grid(self, text: str | None, flag: str = "--grid") -> ModelSpec:
        """This spec at another grid of crops ("ROWSxCOLS"), one the checkpoint lists; anything else is a one-line error."""
        from dataclasses import replace

        if text is None:
            return self
        if not self.pinpoints:
            raise UsageError(f"{flag} {text}: {self.name} takes one {self.image_size} px image, no grid of crops; drop {flag}")
        grids = [self.pinpoint_grid(i) for i in range(len(self.pinpoints))]
        listed = ", ".join(f"{r}x{c}" for r, c in grids)
        rows, sep, cols = str(text).lower().partition("x")
        if not (sep and rows.isdigit() and cols.isdigit()) or (int(rows), int(cols)) not in grids:
            raise UsageError(f"{flag} {text} is not a grid {self.name}'s checkpoint lists; use one of {listed} (ROWSxCOLS)")
        return replace(self, grid=(int(rows), int(cols)))

    def at_image_size(self, size, flag: str = "--image-size") -> ModelSpec:
        """This spec at another image shape, if the family allows it: a side (448), "HxW" ("364x504") or (H, W); a
        shape it cannot take is a one-line error naming the nearest it can."""
        from dataclasses import replace

        if size is None:
            return self
        height, width = parse_shape(size, flag)
        if (height, width) == self.image_shape:
            return self
        text = str(height) if height == width else f"{height}x{width}"
        if self.image_size_step is None:
            raise UsageError(
                f"{flag} {text} does not fit {self.name}: it takes {self.image_size}x{self.image_size} images "
                f"(N={self.n_tokens} tokens); resize the image or drop {flag}"
            )
        from flashvlm_export.selector.static import TOPK_LIMIT as limit  # N is bounded by TensorRT's TopK

        step = self.image_size_step
        for i, side in enumerate((height, width)):
            if side < 2 * step or side % step:
                low = side // step * step if side >= 2 * step else 2 * step
                if height == width:
                    what, fixes = "", (str(low), str(low + step))
                else:
                    what = f" ({('height', 'width')[i]} {side})"
                    fixes = tuple(f"{v}x{width}" if i == 0 else f"{height}x{v}" for v in (low, low + step))
                raise UsageError(
                    f"{flag} {text}{what} is not a multiple of {step} of at least {2 * step} ({self.name}: "
                    f"{self.patch_size} px patches, {self.merge}x{self.merge} merged); use {flag} {fixes[0]} or {fixes[1]}"
                )
        resized = replace(self, image_size=height, image_width=0 if height == width else width)
        if resized.n_tokens > limit:
            rows, cols = resized.token_grid
            scale = (limit / resized.n_tokens) ** 0.5
            fit_rows, fit_cols = max(2, int(rows * scale)), max(2, int(cols * scale))
            while fit_rows * fit_cols > limit:  # the 2-token floor of a very long side
                fit_cols -= 1
            fit = f"{fit_rows * step}x{fit_cols * step}" if height != width else str(int(limit**0.5) * step)
            raise UsageError(
                f"{flag} {text} gives N={resized.n_tokens} visual tokens ({rows}x{cols}), over TensorRT's TopK limit {limit}; "
                f"use {flag} {fit} or less"
            )
        return resized


def parse_shape(size, flag: str = "--image-size") -> tuple[int, int]:
    """(height, width) from a side (448), "HxW" ("364x504") or a pair; anything else is a one-line error."""
    if isinstance(size, tuple) and len(size) == 2 and all(type(v) is int for v in size):
        return size
    if type(size) is int:
        return size, size
    text = str(size).strip().lower()
    height, sep, width = text.partition("x")
    if text.isdigit():
        return int(text), int(text)
    if sep and height.isdigit() and width.isdigit():
        return int(height), int(width)
    raise UsageError(f"{flag} {size!r} is not a side or HEIGHTxWIDTH in pixels; pass e.g. {flag} 448 or {flag} 364x504")
