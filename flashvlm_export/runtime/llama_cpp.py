"""The answer through llama.cpp: the K kept visual_embeds as a batch of embeddings, the text as tokens, greedy decoding.

llama.cpp's batch carries token ids or embeddings, not both in one entry kind (llama_batch_allocr: "all entries
in the batch must have the same content types"), so the prompt is decoded as three batches into one KV cache,
as its multimodal tool (tools/mtmd, mtmd_helper_decode_image_chunk) does: the tokens before the image, the K
rows, the tokens after it. The text goes in as token ids (looked up in the GGUF's own token_embd), every
row of every batch gets logits when asked (the CI hand-off proof compares them all).

Positions are the transformers path's (runtime/answer.llm_input), from the same one home (models/positions.py):
- LLaVA (1-D rotary, arch llama): 0 .. L-1, the K kept rows at consecutive positions, as transformers numbers
  the spliced sequence when given inputs_embeds alone;
- Qwen2.5-VL (M-RoPE, arch qwen2vl): llama.cpp takes 4 positions per embedding (section-major: pos[j*K + i],
  j = t, h, w, 0: mtmd's set_position_mrope_2d) and expands a token's one position to (p, p, p, 0) itself; the
  kept rows at the graph's (t, h, w) + the image's start, the text after at its unpruned positions, and each
  generated token at the unpruned sequence's next position (the rope delta kept). llama.cpp's causal mask for
  embeddings at one t compares (h, w) in raster order, which is the kept rows' ascending order.
- The Qwen3 generation (interleaved M-RoPE): Qwen3-VL as arch qwen3vl, Qwen3.5 as qwen35, positions as Qwen2.5-VL's.
  Qwen3-VL's DeepStack rows travel in the embedding itself: llama.cpp's qwen3vl takes rows n_embd x (1 + L) wide (the
  row, then its L DeepStack rows) and adds slice l + 1 to decoder layer l's output (llama_cpp_prompt). Qwen3.5's
  Gated DeltaNet layers carry their recurrent state from batch to batch of the one sequence, as its full-attention
  layers carry their KV cache. The bundled llama.cpp (llama-cpp-python 0.3.36, vendor/llama.cpp 0c1e570) has both
  architectures (src/models/qwen3vl.cpp, src/models/qwen35.cpp); one without them is refused in one line
  (check_llama_cpp_runs).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import input_file
from flashvlm_export.errors import FlashVLMError, MissingDependencyError, UsageError, arg, switch
from flashvlm_export.models.spec import ModelSpec

GGUF_MAGIC = b"GGUF"
INSTALL = 'pip install -e ".[llama]"'
MROPE_AXES = 4  # llama.cpp's GGML_MROPE_SECTIONS: t, h, w and a fourth (0 for a still image)
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
FLASH_ATTN_AUTO, FLASH_ATTN_DISABLED = -1, 0  # enum llama_flash_attn_type
FILE_TYPE_ALL_F32 = 0  # general.file_type of a GGUF whose weights are all fp32
_LOG: list[str] = []  # llama.cpp's warnings and errors since the last call, for one-line messages
_RMS_EPS: list[float] = []  # the RMSNorm epsilon llama.cpp reports (print_info) for each model it loads
_LOG_CALLBACK = None  # kept alive: llama.cpp holds the pointer


def import_llama_cpp():
    """llama-cpp-python's low-level bindings, with llama.cpp's own log silenced (its errors are kept for messages)."""
    global _LOG_CALLBACK
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        raise MissingDependencyError(
            f"--llm-runtime llama.cpp needs llama-cpp-python ({exc}); install it with {INSTALL}"
        ) from None
    if _LOG_CALLBACK is None:

        def keep(level, text, _user):
            if level in (3, 4):  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4)
                _LOG.append(text.decode("utf-8", "replace").strip())
            if b"f_norm_rms_eps" in text:  # "print_info: f_norm_rms_eps        = 1.0e-06"
                _RMS_EPS.append(float(text.split(b"=")[-1]))

        _LOG_CALLBACK = lib.llama_log_callback(keep)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        lib.llama_backend_init()
    return lib


def _last_error() -> str:
    """llama.cpp's last warning or error since the last call; for a failed load, its cause ("llama_model_load: error
    loading model: unknown model architecture: 'x'"), not the "failed to load model" line that follows it."""
    lines = [line for line in _LOG if line]
    _LOG.clear()
    causes = [line for line in lines if "error loading model" in line]
    return (causes or lines or ["no message"])[-1]


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    arch: str
    width: int  # {arch}.embedding_length: the LLM's hidden size, the width of the rows it takes
    file_type: int | None
    rms_eps: float | None = None  # {arch}.attention.layer_norm_rms_epsilon as the file records it
    deepstack: int = 0  # {arch}.n_deepstack_layers (qwen3vl): each image row then takes its L DeepStack rows appended
    head_dim: int | None = None  # {arch}.attention.key_length where recorded (else width / heads)
    recurrent_layers: int = 0  # linear-attention layers (qwen35's Gated DeltaNet): no KV cache, a fixed-size state
    state_bytes: int = 0  # those layers' recurrent state in llama.cpp (fp32 conv + delta-rule states), whatever the length


def _recurrent_state(fields, arch: str, layers: int) -> tuple[int, int]:
    """(linear-attention layers, their state bytes): llama.cpp keeps per such layer (d_conv - 1) * (d_inner + 2 * groups *
    d_state) conv values and d_state * d_inner delta-rule values, fp32 (llama-hparams.cpp n_embd_r, n_embd_s)."""

    def get(key, default=None):
        field = fields.get(f"{arch}.{key}")
        return default if field is None else field.contents()

    if get("ssm.inner_size") is None:
        return 0, 0
    flags = get("attention.recurrent_layers")
    if flags is None:
        interval = int(get("full_attention_interval", 4))
        flags = [(i + 1) % interval != 0 for i in range(layers)]
    n = sum(bool(f) for f in flags)
    d_conv, d_inner, d_state, groups = (
        int(get(k)) for k in ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.group_count")
    )
    return n, n * 4 * ((d_conv - 1) * (d_inner + 2 * groups * d_state) + d_state * d_inner)


def read_gguf(path: str | Path) -> GGUFInfo:
    """The GGUF's architecture and embedding width; a missing, unreadable or non-GGUF file is one line."""
    path = Path(path)
    what = arg("gguf", str(path))
    fix = "pass a GGUF file: convert the checkpoint's LLM with llama.cpp's convert_hf_to_gguf.py, or write a test model's with flashvlm-export gguf"
    input_file(path, what, fix)  # a folder or a FIFO is named as one
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UsageError(f"{what} cannot be read ({exc.strerror}); pass a readable GGUF file") from None
    if magic != GGUF_MAGIC:
        raise UsageError(f"{what} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); pass the LLM converted to GGUF")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
        width = int(reader.fields[f"{arch}.embedding_length"].contents())
        file_type = reader.fields.get("general.file_type")
        eps = reader.fields.get(f"{arch}.attention.layer_norm_rms_epsilon")
        deepstack = reader.fields.get(f"{arch}.n_deepstack_layers")
        key_length = reader.fields.get(f"{arch}.attention.key_length")
        recurrent, state = _recurrent_state(reader.fields, arch, int(reader.fields[f"{arch}.block_count"].contents()))
    except ImportError:
        raise MissingDependencyError(f"reading a GGUF needs the gguf package; install it with {INSTALL}") from None
    except Exception as exc:  # truncated, or a GGUF without the keys an LLM has
        raise UsageError(f"{what} is not a readable GGUF LLM ({type(exc).__name__}: {exc}); pass a complete GGUF") from None
    file_type = None if file_type is None else int(file_type.contents())
    return GGUFInfo(
        path, arch, width, file_type, None if eps is None else float(eps.contents()),
        deepstack=0 if deepstack is None else int(deepstack.contents()),
        head_dim=None if key_length is None else int(key_length.contents()), recurrent_layers=recurrent, state_bytes=state,
    )  # fmt: skip


def check_gguf(path: str | Path, spec: ModelSpec, source: str) -> GGUFInfo:
    """The GGUF's LLM is the family's llama.cpp architecture and takes rows as wide as the graph's visual_embeds (Dl), or it
    is refused in one line."""
    from flashvlm_export.models.registry import adapter

    info = read_gguf(path)
    want = adapter(spec).GGUF_ARCH
    if info.arch != want:
        raise UsageError(
            f"{arg('gguf', str(path))} is a llama.cpp {info.arch!r} LLM but {source} ({spec.name}) needs a {want!r} one; "
            f"pass the GGUF of {spec.name}'s own LLM"
        )
    if info.width != spec.text_hidden:
        raise UsageError(
            f"{arg('gguf', str(path))} is an LLM {info.width} wide but {source} ({spec.name}) gives visual_embeds "
            f"{spec.text_hidden} wide; pass the GGUF of {spec.name}'s own LLM"
        )
    if info.deepstack != spec.deepstack_layers:
        raise UsageError(
            f"{arg('gguf', str(path))} is an LLM with {info.deepstack} DeepStack layers but {source} ({spec.name}) gives "
            f"{spec.deepstack_layers}; pass the GGUF of {spec.name}'s own LLM (n_deepstack_layers {spec.deepstack_layers})"
        )
    return info


def check_llama_cpp_runs(info: GGUFInfo, spec: ModelSpec) -> None:
    """Before anything is written or selected: the installed llama.cpp knows the GGUF's architecture (its loader, on the
    vocabulary and keys alone). A llama.cpp without it (an older release: no qwen3vl, no qwen35) is one line that names
    the model, what llama.cpp lacks and the fix."""
    error = probe_load(info.path)
    if error is None:
        return
    if "unknown model architecture" in error:
        raise UsageError(lacks_arch(spec, info.arch))
    raise UsageError(f"llama.cpp cannot load {arg('gguf', str(info.path))}: {error}")


def probe_load(path: str | Path) -> str | None:
    """llama.cpp's loader on the GGUF's keys and vocabulary (vocab_only: no weights read): None, or its error line."""
    lib = import_llama_cpp()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if model:
        lib.llama_model_free(model)
        return None
    return _last_error()


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return f"llama-cpp-python {version('llama_cpp_python')}"
    except Exception:  # not installed as a distribution
        return "llama-cpp-python"


def lacks_arch(spec: ModelSpec, arch: str) -> str:
    """The one line for a llama.cpp that has no architecture for the model's LLM."""
    return (
        f"{spec.name}: the installed llama.cpp ({llama_cpp_version()}) has no {arch!r} architecture, which {spec.name}'s LLM "
        f"needs; answer with the transformers LLM ({switch('answer')} without {arg('llm_runtime', 'llama.cpp')} and {arg('gguf')}), "
        f"or install a llama-cpp-python whose llama.cpp has {arch!r}"
    )


@dataclass
class Segment:
    """One llama_batch of the prompt: token ids (n,) or embedding rows (n, D), and positions (axes, n)."""

    positions: np.ndarray  # int32 (1, n) for tokens and 1-D embeddings; (4, n) for M-RoPE embeddings
    token_ids: np.ndarray | None = None  # int32 (n,)
    embeds: np.ndarray | None = None  # float32 (n, D)

    def __len__(self) -> int:
        return self.positions.shape[1]


@dataclass
class Prompt:
    segments: list[Segment]
    next_position: int  # where the first generated token goes (Qwen: the unpruned sequence's, rope delta kept)

    @property
    def length(self) -> int:
        return sum(len(s) for s in self.segments)


def llama_cpp_prompt(
    token_ids: list[int],
    spec: ModelSpec,
    visual_embeds,
    positions=None,
    clip_last_t: int | None = None,
    deepstack=None,
    indices=None,
) -> Prompt:
    """The prompt as llama.cpp batches: tokens before the image, the K rows (K, Dl), tokens after; the positions
    runtime/answer.llm_input gives transformers (`positions`: the graph's (K, 3) (t, h, w), for M-RoPE models).
    clip_last_t: set for a Qwen2.5-VL clip (the unpruned clip's last t): its rows at the video placeholder, positioned as
    runtime/clip.clip_llm_input positions them.
    deepstack (Qwen3-VL): the kept rows' DeepStack rows (L, K, Dl); llama.cpp's qwen3vl takes each image row n_embd x
    (1 + L) wide, the row then its L DeepStack rows (src/models/qwen3vl.cpp: after decoder layer il < L it adds the input's
    slice il + 1 to every row's output; a text token's slices are zeros, llama-graph.cpp build_inp_embd pads them).
    A clip of the Qwen3 generation (timestamped frame groups): `indices` (K,), the kept tokens, put each group's rows at
    its own placeholder, between the timestamps, at runtime/clip.timestamped_positions' positions (the rule
    transformers gets from clip_llm_input).
    M-RoPE positions llama.cpp cannot mask as transformers does are refused (check_attention_order)."""
    import torch

    from flashvlm_export.models.positions import image_extent, sequence_positions
    from flashvlm_export.runtime.answer import image_position

    rows = np.ascontiguousarray(torch.as_tensor(visual_embeds).detach().to("cpu", torch.float32).numpy())
    k = rows.shape[0]
    clip = clip_last_t is not None
    if spec.deepstack_layers:
        from flashvlm_export.runtime.answer import check_deepstack

        check_deepstack(spec, deepstack, k, rows.shape[1])
        layers = torch.as_tensor(deepstack).detach().to("cpu", torch.float32).numpy()
        rows = np.ascontiguousarray(np.concatenate([rows, *layers], axis=1))  # (K, Dl * (1 + L)): row, then layer 0, 1, ...
    if clip and spec.timestamped_frames:
        return timestamped_prompt(token_ids, spec, rows, positions, indices)
    if clip:
        from flashvlm_export.runtime.clip import clip_position_ids, video_token_index

        p = image_position(token_ids, video_token_index(spec), "<|video_pad|>")
        ids, next_position = clip_position_ids(token_ids, spec, positions, k, last_t=clip_last_t)
        ids = ids.numpy().astype(np.int32)
    else:
        p = image_position(token_ids, spec.image_token_index)
    before, after = token_ids[:p], token_ids[p + 1 :]
    if clip or spec.has_positions:
        if not clip:
            if positions is None or tuple(positions.shape) != (k, 3):
                raise ValueError(f"{spec.name} needs (K, 3) positions for its K = {k} visual rows")
            extent = image_extent(spec)
            ids = sequence_positions(p, torch.as_tensor(positions), len(after), extent).numpy().astype(np.int32)  # (3, L)
            next_position = p + extent + len(after)
        text = np.concatenate([ids[:, :p], ids[:, p + k :]], axis=1)
        if not (text == text[:1]).all():
            raise ValueError("text positions differ between axes; llama.cpp gives a token one position on every axis")
        image = np.concatenate([ids[:, p : p + k], np.zeros((MROPE_AXES - 3, k), np.int32)])
        head, tail = ids[:1, :p], ids[:1, p + k :]
        check_attention_order(ids, p, k, "clip" if clip else "image")
    else:
        ids = np.arange(p + k + len(after), dtype=np.int32)[None]
        head, image, tail, next_position = ids[:, :p], ids[:, p : p + k], ids[:, p + k :], ids.shape[1]
    segments = [
        Segment(head, token_ids=np.asarray(before, np.int32)),
        Segment(image, embeds=rows),
        Segment(tail, token_ids=np.asarray(after, np.int32)),
    ]
    return Prompt([s for s in segments if len(s)], next_position)


def timestamped_prompt(token_ids: list[int], spec: ModelSpec, rows: np.ndarray, positions, indices) -> Prompt:
    """A Qwen3-generation clip as llama.cpp batches: the text runs (timestamps included) and each frame group's kept
    rows (K_g, Dl * (1 + L)) at its placeholder, at runtime/clip.timestamped_positions' positions."""
    import torch

    from flashvlm_export.runtime.clip import timestamped_positions, video_token_index

    k = rows.shape[0]
    if indices is None or len(indices) != k or positions is None or tuple(positions.shape) != (k, 3):
        raise ValueError(f"{spec.name} needs the K = {k} kept indices and (K, 3) positions to place a clip's rows")
    group_of = torch.as_tensor(np.asarray(indices)) // spec.n_tokens
    ids, next_position = timestamped_positions(token_ids, spec, group_of, positions)
    ids = ids.numpy().astype(np.int32)
    check_attention_order(ids, 0, 0, "clip")  # every (t, h, w) rises along the prompt: llama.cpp's mask is causal
    video = video_token_index(spec)
    segments, text, at, used, g = [], [], 0, 0, 0
    for token in [*token_ids, None]:
        if token is not None and token != video:
            text.append(token)
            continue
        if text:  # the text run before this placeholder (or the prompt's end): one position on every axis
            segments.append(Segment(ids[:1, at : at + len(text)], token_ids=np.asarray(text, np.int32)))
            at, text = at + len(text), []
        if token is None:
            break
        count = int((group_of == g).sum())
        image = np.concatenate([ids[:, at : at + count], np.zeros((MROPE_AXES - 3, count), np.int32)])
        segments.append(Segment(image, embeds=np.ascontiguousarray(rows[used : used + count])))
        at, used, g = at + count, used + count, g + 1
    return Prompt([s for s in segments if len(s)], next_position)


def check_attention_order(ids: np.ndarray, p: int, k: int, what: str = "image") -> None:
    """llama.cpp masks by position, not by place in the sequence: under M-RoPE a row sees the cells whose first
    position (t) is lower, or equal with (h, w) not after its own in raster order (llama-kv-cache.cpp
    set_input_kq_mask, llama_kv_cell_ext::is_2d_gt); a token batch must start past every t in the cache
    (llama_batch_allocr: "X < Y"), and t may not decrease within a batch ("positions are decreasing"). That is transformers' causal mask only when the prompt's (t, h, w) rise strictly
    along it and the text after the rows starts past their last t. ids: the prompt's (3, L) positions, the rows at
    p .. p+k-1. A clip whose frame groups share a t (sampled fast) or reach past the text's start (slow) is refused."""
    keys = ids.T.astype(np.int64)  # (L, 3): t, h, w, compared in that order
    rising = (keys[1:, 0] > keys[:-1, 0]) | (
        (keys[1:, 0] == keys[:-1, 0])
        & ((keys[1:, 1] > keys[:-1, 1]) | ((keys[1:, 1] == keys[:-1, 1]) & (keys[1:, 2] > keys[:-1, 2])))
    )
    bad = np.flatnonzero(~rising)
    if p + k < ids.shape[1] and k and ids[0, p + k] <= ids[0, p : p + k].max():
        bad = np.append(bad, p + k - 1)
    if bad.size:
        i = int(bad[0])
        fix = (
            "sample the clip at another --fps (frame groups at distinct t, all below the text's start)"
            if what == "clip"
            else "re-export the graph"
        )
        raise UsageError(
            f"llama.cpp masks attention by M-RoPE position, and this {what}'s positions do not rise along the prompt "
            f"((t, h, w) {tuple(int(x) for x in keys[i])} then {tuple(int(x) for x in keys[i + 1])}): its mask would not be "
            f"the model's; {fix}, or answer with --llm-runtime transformers"
        )


class LlamaCppLLM:
    """A GGUF LLM in llama.cpp (CPU, or whatever backend llama-cpp-python was built with): one sequence, one context."""

    def __init__(self, info: GGUFInfo, n_ctx: int, threads: int | None = None, fp32: bool | None = None):
        lib = self.lib = import_llama_cpp()
        self.info = info
        params = lib.llama_model_default_params()
        _RMS_EPS.clear()
        self.model = lib.llama_model_load_from_file(str(info.path).encode(), params)
        if not self.model:
            raise UsageError(f"llama.cpp cannot load {arg('gguf', str(info.path))}: {_last_error()}")
        # what llama.cpp runs, which is not always what the file says: llama-cpp-python 0.3.36's qwen2vl loader
        # reads no attention.layer_norm_rms_epsilon (its load_arch_hparams reads only the rope sections) and runs 0
        self.rms_eps = _RMS_EPS[-1] if _RMS_EPS else None
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.n_embd = lib.llama_model_n_embd(self.model)
        self.n_embd_inp = lib.llama_model_n_embd_inp(self.model)  # qwen3vl: n_embd x (1 + n_deepstack_layers)
        # llama.cpp's qwen3vl adds the DeepStack slice to decoder layer il's output when il < L, also in the last layer,
        # whose rows it has already cut to the batch's outputs (src/models/qwen3vl.cpp: ggml_get_rows at il == n_layer - 1,
        # then ggml_add with all n_tokens rows of the slice): unless every row is an output, that add's shapes differ and
        # ggml aborts the process. It happens only where L reaches the last layer (qwen3-vl-tiny: 3 layers, L = 3; the
        # released models have 28+ layers, L = 3): there every row of every batch is an output.
        self.every_row = info.deepstack >= lib.llama_model_n_layer(self.model)
        threads = threads or len(os.sched_getaffinity(0))
        # An fp32 GGUF runs fp32 end to end: an fp32 KV cache and no flash attention, whose CPU kernel rounds (measured
        # on the tiny models: 7e-3 of the largest logit with it, 4e-7 without). Others: llama.cpp's defaults
        # (f16 KV cache, flash attention where the backend has it).
        if fp32 is None:
            fp32 = info.file_type == FILE_TYPE_ALL_F32
        self.kv_type = GGML_TYPE_F32 if fp32 else GGML_TYPE_F16
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.type_k = cparams.type_v = self.kv_type
        cparams.flash_attn_type = FLASH_ATTN_DISABLED if fp32 else FLASH_ATTN_AUTO
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise FlashVLMError(f"llama.cpp cannot make a context of {n_ctx} tokens for {info.path}: {_last_error()}")
        self.threads = threads

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def kv_bytes(self, length: int) -> int:
        """Bytes of the keys and values `length` tokens hold in the KV cache, and of a hybrid model's recurrent state
        (its linear-attention layers hold no keys and values: a fixed-size state instead), as transformers' side counts."""
        lib = self.lib
        head_dim = self.info.head_dim or self.n_embd // lib.llama_model_n_head(self.model)
        layers = lib.llama_model_n_layer(self.model) - self.info.recurrent_layers
        per_token = 2 * layers * lib.llama_model_n_head_kv(self.model) * head_dim
        return per_token * length * (4 if self.kv_type == GGML_TYPE_F32 else 2) + self.info.state_bytes

    def _decode(self, segment: Segment, all_logits: bool) -> np.ndarray:
        """One llama_decode of the segment; the logits of its rows (all, or the last), (rows, n_vocab) float32."""
        lib, n = self.lib, len(segment)
        batch = lib.llama_batch()
        batch.n_tokens = n
        keep = []  # the arrays the batch points into, alive until llama_decode returns

        def ptr(array, ctype):
            array = np.ascontiguousarray(array)
            keep.append(array)
            return array.ctypes.data_as(ctypes.POINTER(ctype))

        if segment.token_ids is not None:
            batch.token = ptr(segment.token_ids.astype(np.int32), lib.llama_token)
        else:
            if segment.embeds.shape[1] != self.n_embd_inp:
                raise ValueError(f"rows {segment.embeds.shape[1]} wide for an LLM that takes rows {self.n_embd_inp} wide")
            batch.embd = ptr(segment.embeds.astype(np.float32), ctypes.c_float)
        batch.pos = ptr(segment.positions.astype(np.int32).reshape(-1), lib.llama_pos)  # section-major
        batch.n_seq_id = ptr(np.ones(n, np.int32), ctypes.c_int32)
        seq0 = (lib.llama_seq_id * 1)(0)
        keep.append(seq0)
        seq_ids = (ctypes.POINTER(lib.llama_seq_id) * n)(*([ctypes.cast(seq0, ctypes.POINTER(lib.llama_seq_id))] * n))
        keep.append(seq_ids)
        batch.seq_id = seq_ids
        every = all_logits or self.every_row
        outputs = np.zeros(n, np.int8)
        outputs[:] = 1 if every else 0
        outputs[-1] = 1
        batch.logits = ptr(outputs, ctypes.c_int8)
        code = lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise FlashVLMError(f"llama.cpp could not decode a batch of {n} (llama_decode returned {code}): {_last_error()}")
        rows = n if every else 1
        logits = lib.llama_get_logits(self.ctx)
        logits = np.ctypeslib.as_array(logits, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab)
        return (logits if all_logits else logits[-1:]).copy()

    def prefill(self, prompt: Prompt, all_logits: bool = False) -> np.ndarray:
        """A fresh KV cache, then the prompt's batches in order: the logits of every row (L, V) or of the last (V,)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        out = [self._decode(s, all_logits) for s in prompt.segments]
        return np.concatenate(out) if all_logits else out[-1][-1]

    def step(self, token: int, position: int) -> np.ndarray:
        """One generated token at `position` (every axis), after the prompt in the KV cache: its logits (V,)."""
        segment = Segment(np.array([[position]], np.int32), token_ids=np.array([token], np.int32))
        return self._decode(segment, all_logits=False)[-1]


def llama_cpp_answer(llm: LlamaCppLLM, prompt: Prompt, tokenizer, max_new_tokens: int, label: str):
    """Greedy decoding through llama.cpp, as runtime/answer.greedy_answer does through transformers: a warm-up
    prefill, the timed prefill (argmax included), then one token at a time at the next positions (timed apart)."""
    from flashvlm_export.runtime.answer import Answer

    llm.prefill(prompt)  # warm-up, not timed
    start = time.perf_counter()
    token = int(np.argmax(llm.prefill(prompt)))
    prefill_ms = (time.perf_counter() - start) * 1e3
    tokens = [token]
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and token != tokenizer.eos_token_id:
        token = int(np.argmax(llm.step(token, prompt.next_position + len(tokens) - 1)))
        tokens.append(token)
    decode_ms = (time.perf_counter() - start) * 1e3
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Answer(label, text, tokens, prompt.length, prefill_ms, llm.kv_bytes(prompt.length), decode_ms)


LLMS = ("transformers", "llama.cpp")


def check_llm_choice(llm: str, gguf: str | None, answer: bool) -> None:
    """--llm-runtime and --gguf go together: llama.cpp needs a GGUF and --answer; a GGUF without llama.cpp is a mistake."""
    if llm not in LLMS:
        raise UsageError(f"{arg('llm_runtime', llm)} is not an LLM runtime; choose one of {', '.join(LLMS)}")
    if llm == "llama.cpp" and gguf is None:
        raise UsageError(
            f"{arg('llm_runtime', 'llama.cpp')} needs {arg('gguf', 'FILE')}: the LLM as GGUF (flashvlm-export gguf writes a test model's)"
        )
    if llm != "llama.cpp" and gguf is not None:
        raise UsageError(f"{arg('gguf')} is the LLM for {arg('llm_runtime', 'llama.cpp')}; add it, or drop {arg('gguf')}")
    if llm == "llama.cpp" and not answer:
        raise UsageError(
            f"{arg('llm_runtime', 'llama.cpp')} answers the question: add {switch('answer')} (or {switch('compare_full')})"
        )


def answers(
    info: GGUFInfo,
    spec: ModelSpec,
    token_ids: list[int],
    runs: dict,
    tokenizer,
    max_new_tokens: int,
    log=print,
    clip_last_t: int | None = None,
) -> dict:
    """run's answers through llama.cpp: runs maps a key to its runtime/answer.AnswerRun (rows, positions, DeepStack rows,
    a clip's kept indices); clip_last_t: set for the rows of a clip (run --video; the unpruned clip's last t)."""
    prompts = {
        key: (run.label, llama_cpp_prompt(token_ids, spec, run.rows, run.positions, clip_last_t, run.deepstack, run.indices))
        for key, run in runs.items()
    }
    longest = max(p.length for _, p in prompts.values())
    with LlamaCppLLM(info, n_ctx=longest + max_new_tokens) as llm:
        if None not in (llm.rms_eps, info.rms_eps) and abs(llm.rms_eps - info.rms_eps) > 1e-3 * info.rms_eps:
            log(
                f"Note: llama.cpp runs this {info.arch} GGUF with RMSNorm epsilon {llm.rms_eps:g}, not the {info.rms_eps:g} "
                "the file records (its loader does not read the key for this architecture); logits differ slightly from transformers'"
            )
        return {key: llama_cpp_answer(llm, prompt, tokenizer, max_new_tokens, label) for key, (label, prompt) in prompts.items()}
