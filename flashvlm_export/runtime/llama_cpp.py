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
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import input_file
from flashvlm_export.errors import FlashVLMError, MissingDependencyError, UsageError, arg
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
    lines = [line for line in _LOG if line]
    _LOG.clear()
    return lines[-1] if lines else "no message"


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    arch: str
    width: int  # {arch}.embedding_length: the LLM's hidden size, the width of the rows it takes
    file_type: int | None
    rms_eps: float | None = None  # {arch}.attention.layer_norm_rms_epsilon as the file records it


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
    except ImportError:
        raise MissingDependencyError(f"reading a GGUF needs the gguf package; install it with {INSTALL}") from None
    except Exception as exc:  # truncated, or a GGUF without the keys an LLM has
        raise UsageError(f"{what} is not a readable GGUF LLM ({type(exc).__name__}: {exc}); pass a complete GGUF") from None
    file_type = None if file_type is None else int(file_type.contents())
    return GGUFInfo(path, arch, width, file_type, None if eps is None else float(eps.contents()))


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
    return info


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
    token_ids: list[int], spec: ModelSpec, visual_embeds, positions=None, clip_last_t: int | None = None
) -> Prompt:
    """The prompt as llama.cpp batches: tokens before the image, the K rows (K, Dl), tokens after; the positions
    runtime/answer.llm_input gives transformers (`positions`: the graph's (K, 3) (t, h, w), for M-RoPE models).
    clip_last_t: set for a Qwen2.5-VL clip (the unpruned clip's last t): its rows at the video placeholder, positioned as
    runtime/clip.clip_llm_input positions them.
    M-RoPE positions llama.cpp cannot mask as transformers does are refused (check_attention_order)."""
    import torch

    from flashvlm_export.models.positions import image_extent, sequence_positions
    from flashvlm_export.runtime.answer import image_position

    rows = np.ascontiguousarray(torch.as_tensor(visual_embeds).detach().to("cpu", torch.float32).numpy())
    k = rows.shape[0]
    clip = clip_last_t is not None
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
        """Bytes of the keys and values `length` tokens hold in the KV cache."""
        lib = self.lib
        head_dim = self.n_embd // lib.llama_model_n_head(self.model)
        per_token = 2 * lib.llama_model_n_layer(self.model) * lib.llama_model_n_head_kv(self.model) * head_dim
        return per_token * length * (4 if self.kv_type == GGML_TYPE_F32 else 2)

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
            if segment.embeds.shape[1] != self.n_embd:
                raise ValueError(f"rows {segment.embeds.shape[1]} wide for an LLM {self.n_embd} wide")
            batch.embd = ptr(segment.embeds.astype(np.float32), ctypes.c_float)
        batch.pos = ptr(segment.positions.astype(np.int32).reshape(-1), lib.llama_pos)  # section-major
        batch.n_seq_id = ptr(np.ones(n, np.int32), ctypes.c_int32)
        seq0 = (lib.llama_seq_id * 1)(0)
        keep.append(seq0)
        seq_ids = (ctypes.POINTER(lib.llama_seq_id) * n)(*([ctypes.cast(seq0, ctypes.POINTER(lib.llama_seq_id))] * n))
        keep.append(seq_ids)
        batch.seq_id = seq_ids
        outputs = np.zeros(n, np.int8)
        outputs[:] = 1 if all_logits else 0
        outputs[-1] = 1
        batch.logits = ptr(outputs, ctypes.c_int8)
        code = lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise FlashVLMError(f"llama.cpp could not decode a batch of {n} (llama_decode returned {code}): {_last_error()}")
        rows = n if all_logits else 1
        logits = lib.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(logits, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab).copy()

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
    prefill, the timed prefill (argmax included), then one token at a time at the next positions."""
    from flashvlm_export.runtime.answer import Answer

    llm.prefill(prompt)  # warm-up, not timed
    start = time.perf_counter()
    token = int(np.argmax(llm.prefill(prompt)))
    prefill_ms = (time.perf_counter() - start) * 1e3
    tokens = [token]
    while len(tokens) < max_new_tokens and token != tokenizer.eos_token_id:
        token = int(np.argmax(llm.step(token, prompt.next_position + len(tokens) - 1)))
        tokens.append(token)
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Answer(label, text, tokens, prompt.length, prefill_ms, llm.kv_bytes(prompt.length))


LLMS = ("transformers", "llama.cpp")


def check_llm_choice(llm: str, gguf: str | None, answer: bool) -> None:
    """--llm-runtime and --gguf go together: llama.cpp needs a GGUF and --answer; a GGUF without llama.cpp is a mistake."""
    from flashvlm_export.errors import switch

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
    """run's answers through llama.cpp: runs maps a key to (label, visual rows (K, Dl), the graph's (K, 3) positions);
    clip_last_t: set for the rows of a clip (run --video; the unpruned clip's last t), at the video placeholder."""
    prompts = {
        key: (label, llama_cpp_prompt(token_ids, spec, rows, kept, clip_last_t)) for key, (label, rows, kept) in runs.items()
    }
    longest = max(p.length for _, p in prompts.values())
    with LlamaCppLLM(info, n_ctx=longest + max_new_tokens) as llm:
        if None not in (llm.rms_eps, info.rms_eps) and abs(llm.rms_eps - info.rms_eps) > 1e-3 * info.rms_eps:
            log(
                f"Note: llama.cpp runs this {info.arch} GGUF with RMSNorm epsilon {llm.rms_eps:g}, not the {info.rms_eps:g} "
                "the file records (its loader does not read the key for this architecture); logits differ slightly from transformers'"
            )
        return {key: llama_cpp_answer(llm, prompt, tokenizer, max_new_tokens, label) for key, (label, prompt) in prompts.items()}
