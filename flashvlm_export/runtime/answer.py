"""The answer: K visual embeddings spliced where the model's image tokens stand, then greedy decoding.

Both families (transformers' LlavaModel, Qwen2_5_VLModel) replace each of the prompt's N image tokens by
one row of P(X), in order (masked_scatter). Pruning keeps K rows in ascending token order, so the spliced
input is the same sequence with K image rows instead of N; with K = N it is exactly the model's own.
A model with 3-axis rotary positions (Qwen2.5-VL, ModelSpec.has_positions) also gets position ids
(3, 1, L): the kept tokens at the (t, h, w) positions the graph returns, the text at its unpruned
positions (models/positions.py), and each generated token at the position the unpruned sequence would
give it (its rope delta kept). LLaVA keeps transformers' 1-D positions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.export.graphs import TORCH_DTYPES
from flashvlm_export.export.options import LLM_DTYPE_NAMES
from flashvlm_export.models.positions import image_extent, sequence_positions
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec

RANDOM_LLM_MAX_BYTES = 4 * 1024**3  # a random-weight LLM is built in RAM, fp32; only test-size models fit
LLM_DTYPES = TORCH_DTYPES  # the LLM takes the names the encoder does (auto aside)
MEMORY_HEADROOM = 1.10  # weights plus 10%: the prefill's activations, the KV cache and the logits
MEMORY_MARGIN = 1024**3  # plus 1 GiB: the allocator, the selection's session and the Python process around it


@dataclass
class Answer:
    label: str  # "pruned K=64" or "full N=576"
    text: str
    token_ids: list[int]  # the generated ids (with random weights the text may decode to nothing readable)
    prompt_tokens: int  # sequence length of the prefill
    prefill_ms: float  # time to first token: one forward over the whole prompt, argmax included
    kv_bytes: int  # the KV cache after the prefill
    decode_ms: float = 0.0  # the tokens after the first, one forward each (the warm-up and the prefill not counted)


def check_llm_dtype(name: str) -> str:
    if name not in LLM_DTYPE_NAMES:
        raise UsageError(f"{arg('llm_dtype', name)} is not an LLM dtype; choose one of {', '.join(LLM_DTYPE_NAMES)}")
    return name


def llm_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the LLM is loaded in. auto: bf16 on a CUDA GPU that has it (fp32's range, half the bytes), else fp16
    on CUDA; fp32 on the CPU, where most processors have no native fp16/bf16 matrix units (torch emulates them,
    several times slower than fp32) and where K >= N is proven equal to transformers' own forward."""
    if check_llm_dtype(name) != "auto":
        return LLM_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in LLM_DTYPES.items() if d == dtype)


def llm_parameters(spec: ModelSpec, checkpoint: str | None, layers: int | None = None) -> int:
    """Parameters of the whole model (the family's LLM_CLASS), counted without allocating any: a checkpoint's
    safetensors headers, or the random-weight model built on the meta device (its LLM cut to `layers`, if given)."""
    if checkpoint is None:
        from flashvlm_export.models.adapter import cut_layers

        family = adapter(spec)
        with torch.device("meta"):
            model = family.LLM_CLASS()(cut_layers(family.full_config(spec), layers))
        return sum(p.numel() for p in model.parameters())
    from safetensors import safe_open

    count = 0
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                count += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
        except Exception as exc:  # SafetensorError: truncated, not safetensors, bad header
            raise UsageError(
                f"{file} is not a readable safetensors file ({type(exc).__name__}); pass a complete {_family_name(spec)} checkpoint"
            ) from None
    return count


def _cgroup_free() -> int | None:
    """What this process's cgroup (v2) still lets it allocate; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (CUDA: the driver's free memory; CPU: MemAvailable and the
    cgroup limit); None where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    have = [x for x in (*found, _cgroup_free()) if x is not None]
    return min(have) if have else None


def parameter_count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"


def _gb(n: int | float) -> str:
    return f"{n / 1024**3:.1f} GB"


def check_llm_fits(params: int, dtype: torch.dtype, device: torch.device, random_weights: bool) -> None:
    """One line, before anything is loaded, when the LLM cannot fit. A checkpoint is read into host memory in
    `dtype` then moved to the device (transformers' device_map needs accelerate); random weights are built in fp32
    on the host, then cast."""
    name = dtype_name(dtype)
    host_dtype = torch.float32 if random_weights else dtype
    needs = [(torch.device("cpu"), params * host_dtype.itemsize)]
    if device.type != "cpu":
        needs.append((device, params * dtype.itemsize))
    for where, weights in needs:
        need = weights * MEMORY_HEADROOM + MEMORY_MARGIN
        have = available_memory(where)
        if have is None or need <= have:
            continue
        fixes = [f"pass {arg('llm_dtype', 'bf16')} or {arg('llm_dtype', 'fp16')} (half of fp32)"] if name == "fp32" else []
        fixes.append(
            "free GPU memory or use a larger GPU" if where.type == "cuda" else "free memory or use a larger machine or a GPU"
        )
        raise UsageError(
            f"the LLM ({parameter_count(params)} parameters) needs about {_gb(need)} in {name} on {where.type} "
            f"but {_gb(have)} is available; {', or '.join(fixes)}"
        )


def check_random_llm_fits(spec: ModelSpec, weights: str = "random weights", layers: int | None = None) -> None:
    """An answer with random weights builds the whole LLM in RAM; only a test-size model fits. A full-size one cut to a
    few `layers` (eval --llm-layers) is asked for on purpose: check_llm_fits bounds it by the memory there is.

    `weights` names where the random weights came from: the flag the user passed, or the graph that records them.
    """
    if layers is not None:
        return
    size = llm_parameters(spec, None) * 4
    if size > RANDOM_LLM_MAX_BYTES:
        raise UsageError(
            f"{switch('answer')} with {weights} would build {spec.name}'s whole LLM in memory "
            f"(~{size / 1024**3:.0f} GB fp32); use a {_tiny_name(spec)} graph for a random-weight answer, "
            f"or a graph exported from a real checkpoint ({arg('model_path')})"
        )


def build_llm(
    spec: ModelSpec,
    parts,
    checkpoint: str | None,
    seed: int | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    layers: int | None = None,
):
    """The family's LLM_CLASS in `dtype`: from the local checkpoint, or seeded random around the graph's parts (its LLM
    cut to `layers` decoder layers, if given: a full-size geometry for timing, eval --llm-layers)."""
    family = adapter(spec)
    cls = family.LLM_CLASS()
    if checkpoint is not None:
        try:
            model = cls.from_pretrained(checkpoint, dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise UsageError(
                f"cannot load the LLM of {checkpoint} ({type(exc).__name__}); pass a complete {_family_name(spec)} checkpoint"
            ) from None
        return model.to(device).eval()
    check_random_llm_fits(spec, layers=layers)
    from flashvlm_export.models.adapter import cut_layers

    torch.manual_seed(seed)  # the LLM layers: seeded; the vision tower, projector and embeddings are the graph's
    model = cls(cut_layers(parts.config, layers))  # fp32: the same random model in every dtype, rounded
    family.adopt_parts(model, parts)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _family_name(spec: ModelSpec) -> str:
    """How messages name a checkpoint of the spec's family ("LLaVA-1.5", "Qwen2.5-VL")."""
    return adapter(spec).NAME


def _tiny_name(spec: ModelSpec) -> str:
    """The family's test-size model, which a random-weight answer fits."""
    from flashvlm_export.models.registry import MODELS

    tiny = [name for name, s in MODELS.items() if s.family == spec.family and not s.hf_repo]
    return tiny[0] if tiny else "test-size"


def image_position(token_ids: list[int], image_token_index: int, placeholder: str = "<image>") -> int:
    positions = [i for i, t in enumerate(token_ids) if t == image_token_index]
    if len(positions) != 1:
        raise UsageError(
            f"the prompt holds {len(positions)} image tokens; the model's prompt takes exactly one: remove {placeholder!r} from {arg('question')}"
        )
    return positions[0]


def expand_image_token(token_ids: list[int], image_token_index: int, n: int) -> list[int]:
    """What the model's processor feeds it: the one image token repeated n times."""
    p = image_position(token_ids, image_token_index)
    return token_ids[:p] + [image_token_index] * n + token_ids[p + 1 :]


@torch.no_grad()
def splice(
    embed_tokens: torch.nn.Module, token_ids: list[int], image_token_index: int, visual_embeds: torch.Tensor
) -> torch.Tensor:
    """(1, S, Dl): the prompt's text embeddings with visual_embeds (K, Dl) where the image token stands."""
    image_position(token_ids, image_token_index)
    return splice_rows(embed_tokens, token_ids, image_token_index, [visual_embeds.shape[0]], visual_embeds)[0]


def splice_rows(embed_tokens, token_ids: list[int], token: int, counts: list[int], rows: torch.Tensor):
    """The prompt's text embeddings with the i-th occurrence of `token` replaced by the next counts[i] of `rows`
    (K, Dl) (one placeholder: an image; one per frame group: a Qwen3-generation clip). Returns (1, L, Dl) and the
    (L,) bool mask of the spliced rows. The one splice of every transformers answer path."""
    device = embed_tokens.weight.device
    if token_ids.count(token) != len(counts) or sum(counts) != rows.shape[0]:
        raise ValueError(
            f"{token_ids.count(token)} placeholders for {len(counts)} groups of rows ({sum(counts)} of {rows.shape[0]})"
        )
    text = embed_tokens(torch.tensor([t for t in token_ids if t != token], dtype=torch.long, device=device))
    rows = rows.to(device=device, dtype=text.dtype)
    pieces, mask, used, at, group = [], [], 0, 0, 0
    for token_id in token_ids:
        if token_id == token:
            count = counts[group]
            pieces.append(rows[used : used + count])
            mask += [True] * count
            used, group = used + count, group + 1
        else:
            pieces.append(text[at : at + 1])
            mask.append(False)
            at += 1
    return torch.cat(pieces)[None], torch.tensor(mask, device=device)


@dataclass
class AnswerRun:
    """One answer `run` asks for ("pruned", and "full" with --compare-full): what either LLM runtime is fed."""

    label: str  # "pruned K=64", "full N=256"
    rows: torch.Tensor  # (K, Dl) visual rows (LLaVA-NeXT: laid out as its LLM takes them)
    positions: torch.Tensor | None = None  # (K, 3) the graph's (t, h, w), for models placed by 3-axis positions
    deepstack: torch.Tensor | None = None  # (L, K, Dl) Qwen3-VL's DeepStack rows
    indices: np.ndarray | None = None  # (K,) the kept tokens: a Qwen3-generation clip places rows by frame group


@dataclass
class LLMInput:
    """The prefill's input: inputs_embeds (1, L, Dl) and, for a 3-axis rotary model, position_ids (3, 1, L)
    and the position of the first generated token (the unpruned sequence's: its rope delta kept)."""

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor | None = None
    next_position: int | None = None
    prefill: dict | None = None  # more arguments of the prefill's forward (DeepStack rows: deepstack_prefill)


def check_deepstack(spec: ModelSpec, deepstack, k: int, width: int) -> None:
    """The DeepStack rows a Qwen3-VL hand-off needs with its K rows of `width`: (L, K, width); both LLM runtimes check."""
    want = (spec.deepstack_layers, k, width)
    if deepstack is None or tuple(deepstack.shape) != want:
        got = None if deepstack is None else tuple(deepstack.shape)
        raise ValueError(f"{spec.name} needs (L, K, Dl) = {want} DeepStack rows, got {got}")


def deepstack_prefill(
    embed_tokens, embeds: torch.Tensor, visual: torch.Tensor, token: int, visual_embeds, deepstack, spec: ModelSpec, video=False
):
    """A Qwen3-VL prefill through transformers' own DeepStack path: the spliced rows become the placeholder token's
    embedding again, and `mm_encoder_outputs` hands the model the K rows and their DeepStack rows (L, K, Dl), which its
    forward scatters into the placeholder positions (masked_scatter) and adds to the outputs of its first L decoder
    layers at the same positions, as it does with its own vision tower's outputs. `embeds` (1, L, Dl) holds the K rows
    where `visual` (L,) bool is set; `token`: the placeholder's id. Returns (inputs_embeds, prefill)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    k = visual_embeds.shape[0]
    check_deepstack(spec, deepstack, k, visual_embeds.shape[1])
    device = embeds.device
    placeholder = embed_tokens(torch.full((k,), token, dtype=torch.long, device=device)).to(embeds.dtype)
    embeds = embeds.clone()
    embeds[0, visual.to(device)] = placeholder
    rows = torch.as_tensor(visual_embeds).to(device)
    features = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(rows,), deepstack_features=[(torch.as_tensor(d).to(device),) for d in deepstack]
    )
    return embeds, {"mm_encoder_outputs": {"video" if video else "image": features}}


def llm_input(
    embed_tokens: torch.nn.Module,
    token_ids: list[int],
    spec: ModelSpec,
    visual_embeds: torch.Tensor,
    positions=None,
    deepstack=None,
) -> LLMInput:
    """visual_embeds (K, Dl) spliced at the image token; with spec.has_positions, `positions` (K, 3) (the graph's
    (t, h, w) of each kept row, relative to the image's start) placed as the unpruned sequence places them; with
    DeepStack (Qwen3-VL), `deepstack` (L, K, Dl): the kept rows' DeepStack rows (deepstack_prefill)."""
    before = image_position(token_ids, spec.image_token_index)  # exactly one image placeholder, or one line
    embeds, visual = splice_rows(embed_tokens, token_ids, spec.image_token_index, [visual_embeds.shape[0]], visual_embeds)
    if not spec.has_positions:
        return LLMInput(embeds)
    if positions is None or tuple(positions.shape) != (visual_embeds.shape[0], 3):
        raise ValueError(f"{spec.name} needs (K, 3) positions for its K = {visual_embeds.shape[0]} visual rows")
    after = len(token_ids) - before - 1
    extent = image_extent(spec)
    ids = sequence_positions(before, torch.as_tensor(positions), after, extent)[:, None].to(embeds.device)
    prefill = None
    if spec.deepstack_layers:
        embeds, prefill = deepstack_prefill(embed_tokens, embeds, visual, spec.image_token_index, visual_embeds, deepstack, spec)
    return LLMInput(embeds, ids, before + extent + after, prefill)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_cache_bytes(cache) -> int:
    """Bytes of every state tensor a transformers Cache holds (one entry of cache.layers per layer): the keys and values
    of attention layers, and a linear-attention layer's (Qwen3.5's Gated DeltaNet) convolution and recurrent states,
    which keep their size whatever the prompt's length."""

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from tensors(v)

    names = ("keys", "values", "conv_states", "recurrent_states")
    return sum(
        t.numel() * t.element_size() for layer in cache.layers for name in names for t in tensors(getattr(layer, name, None))
    )


@torch.no_grad()
def greedy_answer(model, prompt: LLMInput | torch.Tensor, tokenizer, max_new_tokens: int, label: str) -> Answer:
    """Greedy decoding through the model's forward; the first forward (the prefill) is timed on its own, after an untimed
    warm-up forward of the same input, and the rest of the decoding apart (Answer.decode_ms).

    With position ids (a 3-axis rotary model) every forward gets them explicitly: the prompt's, then the i-th
    generated token at next_position + i on all three axes (the model's own rope-delta bookkeeping is not used).
    """
    if isinstance(prompt, torch.Tensor):
        prompt = LLMInput(prompt)
    inputs_embeds = prompt.inputs_embeds
    device = inputs_embeds.device

    def at(offset: int) -> dict:
        if prompt.position_ids is None:
            return {}
        return {"position_ids": torch.full((3, 1, 1), prompt.next_position + offset, dtype=torch.long, device=device)}

    first = {} if prompt.position_ids is None else {"position_ids": prompt.position_ids}
    first.update(prompt.prefill or {})
    # the logits of the last position only, as a serving runtime computes them (llama.cpp here, OpenVINO GenAI): over
    # the whole prompt, the LM head's (L, vocab) product is a third of a 2-layer full-size prefill
    first["logits_to_keep"] = 1
    model(inputs_embeds=inputs_embeds, use_cache=True, **first)  # warm-up, not timed
    _sync(device)
    start = time.perf_counter()
    out = model(inputs_embeds=inputs_embeds, use_cache=True, **first)
    token = int(out.logits[0, -1].argmax())
    _sync(device)
    prefill_ms = (time.perf_counter() - start) * 1e3
    # transformers 5.24 names the KV cache `cache` (argument and output); `past_key_values` is its deprecated alias
    kv = kv_cache_bytes(out.cache)
    cache, tokens = out.cache, [token]
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and token != tokenizer.eos_token_id:
        out = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True, **at(len(tokens) - 1))
        cache, token = out.cache, int(out.logits[0, -1].argmax())
        tokens.append(token)
    _sync(device)
    decode_ms = (time.perf_counter() - start) * 1e3
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Answer(label, text, tokens, inputs_embeds.shape[1], prefill_ms, kv, decode_ms)
