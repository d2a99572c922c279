"""A GGUF of a model's LLM, written with the `gguf` package: what llama.cpp loads (runtime/llama_cpp.py).

The keys and tensor names are the ones llama.cpp's own converter (convert_hf_to_gguf.py) writes for these
checkpoints: LLaVA-1.5's Llama and LLaVA-NeXT's Vicuna or Mistral as arch `llama` (q/k rows permuted from Hugging Face's rotate-half layout to
llama.cpp's interleaved rotary pairs, as LlamaModel.permute does), Qwen2.5-VL's text model as arch `qwen2vl`
(M-RoPE, `rope.dimension_sections` = mrope_section padded to 4, q/k/v biases, no permutation), Qwen3-VL's as
`qwen3vl` (conversion/qwen3vl.py Qwen3VLTextModel: q/k norms, interleaved M-RoPE, `n_deepstack_layers`) and Qwen3.5's as
`qwen35` (conversion/qwen.py Qwen3_5TextModel: Gated DeltaNet layers as attn_qkv/attn_gate/ssm_*, their V heads reordered
from grouped to tiled, A = -exp(A_log), RMSNorm weights + 1 (transformers' Qwen3_5RMSNorm scales by 1 + weight), the
gated full-attention layers' q_proj as is). The converters are llama-cpp-python 0.3.36's vendored llama.cpp (0c1e570).

Interleaved M-RoPE sections: transformers (Qwen3VLTextRotaryEmbedding.recomposition_frequencies) rotates pair i by h
when i % 3 == 1 and i < 3 * mrope_section[1], by w when i % 3 == 2 and i < 3 * mrope_section[2], else by t; llama.cpp
(ggml-cpu ops.cpp ggml_mrope_cache_init, is_imrope) by h and w the same way, by t when i % 3 == 0 and i < 3 * sections[0],
else by the 4th position, which is 0 for text tokens (llama-graph.cpp llm_graph_input_pos::set_input). The sections
written are the pairs each axis gets in transformers' rule (`interleaved_sections`): the released checkpoints'
mrope_section already ([24, 20, 20], [11, 11, 10]), [3, 3, 2] for qwen3-vl-tiny's [2, 3, 3] (8 pairs: t gets 0, 3, 6),
with which llama.cpp rotates every pair of the tiny models as transformers does.

Two sources of weights:
- a test-size model: the graph's own random LLM (runtime/answer.build_llm from the same seed), so llama.cpp
  and transformers run the same numbers (the CI hand-off proof, tests/test_llama_cpp.py);
- a full-size geometry cut to a few layers (`layers`): seeded normal(0, 0.02) weights, for timing only.

The vocabulary is the offline stand-in tokenizer's (runtime/tokenizer.py) as a byte-level BPE vocabulary
(tokenizer.ggml.model "gpt2", no merges that ever apply): the same ids for the same text, padded to the
model's vocabulary size with unused tokens. Files are written beside the target and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from flashvlm_export.artifacts.ownership import GGUF_KEY, PRODUCER
from flashvlm_export.errors import MissingDependencyError, UsageError, arg
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec

# family -> llama.cpp architecture; LLaVA-NeXT's Vicuna and Mistral are both `llama` (convert_hf_to_gguf registers
# MistralForCausalLM with LlamaModel: arch llama, q/k permuted)
DTYPES = ("f32", "f16", "q8_0")  # of the 2-D weights; norms stay f32 (as the converter writes them)
INSTALL = 'pip install -e ".[llama]"'
TIMING_STD = 0.02  # the families' initializer_range: random weights of a cut full-size model
# families converted as the Qwen3 generation (by family, not by the architecture's name: tests plant a name llama.cpp lacks)
# 2-D tensors kept fp32 in any --dtype, as the converter keeps them (conversion/base.py prepare_tensors: SSM_CONV1D;
# llama.cpp's CPU ssm_conv takes fp32 weights only, ggml-cpu ops.cpp ggml_compute_forward_ssm_conv_f32)
F32_TENSORS = ("ssm_conv1d.weight",)
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_5")  # written with attention.key_length: their head_dim is not hidden / heads
HYBRID_FAMILY = "qwen3_5"  # Gated DeltaNet + gated full attention (arch qwen35)

# Hugging Face text-model names -> GGUF names (gguf's TensorNameMap, restricted to these two families)
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
QWEN3_NAMES = {"self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
# Qwen3.5 (arch qwen35): its FFN's norm is llama.cpp's post_attention_norm; the Gated DeltaNet layers' tensors
QWEN35_NAMES = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "linear_attn.in_proj_qkv.weight": "attn_qkv.weight",
    "linear_attn.in_proj_z.weight": "attn_gate.weight",
    "linear_attn.in_proj_b.weight": "ssm_beta.weight",
    "linear_attn.in_proj_a.weight": "ssm_alpha.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
}


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError(f"writing a GGUF needs the gguf package; install it with {INSTALL}") from None
    return gguf


def text_config(spec: ModelSpec, layers: int | None = None):
    """The LLM's transformers text config (the family's full_config), cut to `layers` decoder layers if given."""
    from flashvlm_export.models.adapter import cut_layers

    return cut_layers(adapter(spec).full_config(spec), layers).text_config


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's LlamaModel.permute)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tiled_v_heads(value: np.ndarray, axis: int, k_heads: int, v_heads: int, head_dim: int) -> np.ndarray:
    """Qwen3.5's V heads along `axis` from grouped by K head (transformers' repeat_interleave: v head j reads k head
    j // (v/k)) to tiled (llama.cpp's repeat: k head j % k): conversion/qwen.py _LinearAttentionVReorderBase._reorder_v_heads."""
    if k_heads == v_heads:
        return value
    value = np.moveaxis(value, axis, 0)
    rest = value.shape[1:]
    value = value.reshape(k_heads, v_heads // k_heads, head_dim, *rest).swapaxes(0, 1).reshape(-1, *rest)
    return np.moveaxis(value, 0, axis)


def qwen35_value(rest: str, value: np.ndarray, config) -> np.ndarray:
    """A Qwen3.5 text-model tensor as conversion/qwen.py writes it (Qwen3NextModel.modify_tensors and the V reorder)."""
    if rest.endswith("norm.weight") and rest != "linear_attn.norm.weight":
        return value + 1  # Qwen3_5RMSNorm: x * (1 + weight); llama.cpp's RMSNorm: x * weight
    if not rest.startswith("linear_attn."):
        return value
    k, v = config.linear_num_key_heads, config.linear_num_value_heads
    dk, dv = config.linear_key_head_dim, config.linear_value_head_dim
    if rest == "linear_attn.A_log":
        value = -np.exp(value)
    elif rest == "linear_attn.conv1d.weight":
        value = value.reshape(value.shape[0], -1)  # (channels, 1, kernel) -> (channels, kernel)
    if rest in ("linear_attn.in_proj_qkv.weight", "linear_attn.conv1d.weight"):  # only the V rows (channels)
        qk = 2 * k * dk
        return np.concatenate([value[:qk], tiled_v_heads(value[qk:], 0, k, v, dv)])
    if rest in ("linear_attn.in_proj_z.weight",):
        return tiled_v_heads(value, 0, k, v, dv)
    if rest in ("linear_attn.in_proj_b.weight", "linear_attn.in_proj_a.weight", "linear_attn.A_log", "linear_attn.dt_bias"):
        return tiled_v_heads(value, 0, k, v, 1)
    if rest == "linear_attn.out_proj.weight":
        return tiled_v_heads(value, 1, k, v, dv)
    return value


def gguf_tensors(spec: ModelSpec, config, hf: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) from the text model's (Hugging Face name, array): `layers.0.self_attn.q_proj.weight`, `lm_head.weight`."""
    arch, hybrid = gguf_arch(spec), spec.family == HYBRID_FAMILY
    names = {**LAYER_NAMES, **QWEN3_NAMES, **(QWEN35_NAMES if hybrid else {})}
    for name, value in hf:
        if name in TOP_NAMES:
            yield TOP_NAMES[name], (value + 1 if hybrid and name == "norm.weight" else value)
            continue
        _, layer, rest = name.split(".", 2)  # layers.<i>.<rest>
        if arch == "llama" and rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.")):
            heads = config.num_attention_heads if "q_proj" in rest else config.num_key_value_heads
            value = permute_rotary(value, heads)
        elif hybrid:
            value = qwen35_value(rest, value, config)
        yield f"blk.{layer}.{names[rest]}", value


def head_dim(config) -> int:
    """The attention heads' width: the config's head_dim (Qwen3: 128 whatever the hidden size), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def interleaved_sections(mrope_section, pairs: int) -> list[int]:
    """The rotary pairs transformers' interleaved M-RoPE gives t, h and w (module docstring), as llama.cpp's sections."""
    h = [i for i in range(pairs) if i % 3 == 1 and i < 3 * mrope_section[1]]
    w = [i for i in range(pairs) if i % 3 == 2 and i < 3 * mrope_section[2]]
    return [pairs - len(h) - len(w), len(h), len(w), 0]


def llm_weights(llm) -> dict[str, np.ndarray]:
    """The text model's weights of a family LLM_CLASS model (model.language_model + lm_head), fp32, Hugging Face names."""
    state = {k: v for k, v in llm.model.language_model.state_dict().items() if "rotary_emb" not in k}
    state["lm_head.weight"] = llm.lm_head.weight
    return {k: v.detach().to("cpu").float().numpy() for k, v in state.items()}


def timing_weights(config, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Seeded normal(0, 0.02) weights in the text model's shapes (norms at their identity: 1, or 0 where the model
    scales by 1 + weight (Qwen3.5); biases 0), one at a time (a 7B geometry's would not fit in memory at once): for
    timing, not for answers. Qwen2.5-VL: q/k/v biases; the Qwen3 generation: q/k norms, heads head_dim wide; Qwen3.5:
    its layer_types' Gated DeltaNet layers (dt_bias 1, A_log 0) and gated full-attention ones (q_proj twice as tall)."""
    rng = np.random.default_rng(seed)
    d, m, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = head_dim(config)
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    qwen3, qwen35 = config.model_type.startswith("qwen3"), config.model_type.startswith("qwen3_5")
    identity = 0.0 if qwen35 else 1.0  # the RMSNorm weight that scales by 1

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * TIMING_STD).astype(np.float32)

    def norm(n):
        return np.full(n, identity, np.float32)

    yield "embed_tokens.weight", normal(v, d)
    yield "norm.weight", norm(d)
    yield "lm_head.weight", normal(v, d)
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    for i, kind in enumerate(types[: config.num_hidden_layers]):
        p = f"layers.{i}."
        yield p + "input_layernorm.weight", norm(d)
        if kind == "linear_attention":
            yield from ((p + name, value) for name, value in linear_attention_weights(config, normal))
        else:
            shapes = {"q": ((2 if qwen35 else 1) * q, d), "k": (kv, d), "v": (kv, d), "o": (d, q)}
            for x, shape in shapes.items():
                yield p + f"self_attn.{x}_proj.weight", normal(*shape)
                if x != "o" and config.model_type.startswith("qwen") and not qwen3:  # Qwen2's q/k/v carry biases
                    yield p + f"self_attn.{x}_proj.bias", np.zeros(shape[0], np.float32)
            if qwen3:
                yield p + "self_attn.q_norm.weight", norm(hd)
                yield p + "self_attn.k_norm.weight", norm(hd)
        yield p + "post_attention_layernorm.weight", norm(d)
        yield p + "mlp.gate_proj.weight", normal(m, d)
        yield p + "mlp.up_proj.weight", normal(m, d)
        yield p + "mlp.down_proj.weight", normal(d, m)


def linear_attention_weights(config, normal) -> Iterator[tuple[str, np.ndarray]]:
    """A Qwen3.5 Gated DeltaNet layer's timing weights (transformers' Qwen3_5GatedDeltaNet shapes)."""
    d, k, v = config.hidden_size, config.linear_num_key_heads, config.linear_num_value_heads
    key, value = k * config.linear_key_head_dim, v * config.linear_value_head_dim
    yield "linear_attn.in_proj_qkv.weight", normal(2 * key + value, d)
    yield "linear_attn.in_proj_z.weight", normal(value, d)
    yield "linear_attn.in_proj_b.weight", normal(v, d)
    yield "linear_attn.in_proj_a.weight", normal(v, d)
    yield "linear_attn.conv1d.weight", normal(2 * key + value, 1, config.linear_conv_kernel_dim)
    yield "linear_attn.dt_bias", np.ones(v, np.float32)
    yield "linear_attn.A_log", np.zeros(v, np.float32)
    yield "linear_attn.norm.weight", np.ones(config.linear_value_head_dim, np.float32)
    yield "linear_attn.out_proj.weight", normal(d, value)


def stand_in_vocab(spec: ModelSpec, vocab_size: int):
    """(tokens, token types, bos id, eos id): the stand-in tokenizer's byte-level vocabulary at its own ids,
    the rest of the model's vocabulary as unused tokens."""
    from flashvlm_export.runtime.tokenizer import BASE_TOKENS, UNK, stand_in_specials, stand_in_tokenizer

    gguf = import_gguf()
    tokenizer = stand_in_tokenizer(spec)
    tokens = [f"<|unused_{i}|>" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    control = set(BASE_TOKENS.values()) | set(stand_in_specials(spec).values())
    for token, index in tokenizer.get_vocab().items():
        tokens[index] = token
        types[index] = (
            gguf.TokenType.UNKNOWN if index == UNK else gguf.TokenType.CONTROL if index in control else gguf.TokenType.NORMAL
        )
    return tokens, types, tokenizer.bos_token_id, tokenizer.eos_token_id


def write_gguf(path: Path, spec: ModelSpec, config, hf, dtype: str = "f32", name: str = "") -> Path:
    """Write the GGUF of `hf` (the text model's weights by Hugging Face name: a dict, or (name, array) pairs) to
    `path`. Each tensor is converted and spooled to a temporary file as it comes (GGUFWriter use_temp_file), so
    only one is in memory at a time; the file is renamed into place when complete."""
    gguf = import_gguf()
    if dtype not in DTYPES:
        raise UsageError(f"{arg('dtype', dtype)} is not a GGUF weight type; choose one of {', '.join(DTYPES)}")
    arch = gguf_arch(spec)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[
        dtype
    ]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[
        dtype
    ]
    fd, temp = tempfile.mkstemp(prefix=".flashvlm-tmp-", suffix=".gguf", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(temp, arch, use_temp_file=True)
        writer.add_name(name or spec.name)
        writer.add_string(GGUF_KEY, PRODUCER)  # what a later --force recognises as this tool's
        writer.add_file_type(int(ftype))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        width = head_dim(config)
        if width != config.hidden_size // config.num_attention_heads or spec.family in QWEN3_FAMILIES:
            writer.add_key_length(width)
            writer.add_value_length(width)
        rotary = int(width * config.rope_parameters.get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(rotary)
        if "mrope_section" in config.rope_parameters:
            sections = list(config.rope_parameters["mrope_section"])
            if config.rope_parameters.get("mrope_interleaved"):
                sections = interleaved_sections(sections, rotary // 2)
            writer.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
        if spec.deepstack_layers:
            writer.add_num_deepstack_layers(spec.deepstack_layers)
        if spec.family == HYBRID_FAMILY:
            add_linear_attention(writer, config)
        writer.add_vocab_size(config.vocab_size)
        tokens, types, bos, eos = stand_in_vocab(spec, config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # llama.cpp's BPE loader needs a merges list; the stand-in has none, and this one can never apply
        # (its halves are whole special tokens, never two byte-level symbols of a word)
        writer.add_token_merges([f"{tokens[0]} {tokens[0]}"])
        if bos is not None:
            writer.add_bos_token_id(bos)
        writer.add_eos_token_id(eos)
        writer.add_add_bos_token(bos is not None)
        writer.add_add_eos_token(False)
        for tensor_name, value in gguf_tensors(spec, config, hf.items() if isinstance(hf, dict) else hf):
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.ndim == 1 or tensor_name.endswith(F32_TENSORS) or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, value)
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        check_llama_cpp_has(spec, arch, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def check_llama_cpp_has(spec: ModelSpec, arch: str, path) -> None:
    """Where llama-cpp-python is installed: its llama.cpp knows `arch` (its loader on the written file's keys), or the
    GGUF is refused in one line before it is put in place. Without llama-cpp-python the file is written unchecked."""
    try:
        import llama_cpp.llama_cpp  # noqa: F401
    except Exception:  # not installed, or a shared library that would not load: nothing to check against
        return
    from flashvlm_export.runtime.llama_cpp import lacks_arch, probe_load

    error = probe_load(path)
    if error is not None and "unknown model architecture" in error:
        raise UsageError(lacks_arch(spec, arch))


def add_linear_attention(writer, config) -> None:
    """Qwen3.5's Gated DeltaNet keys (conversion/qwen.py Qwen3NextModel.set_gguf_parameters) and which layers are linear
    attention (`attention.recurrent_layers`, from layer_types; the gguf package has no writer method for it)."""
    writer.add_ssm_conv_kernel(config.linear_conv_kernel_dim)
    writer.add_ssm_state_size(config.linear_key_head_dim)
    writer.add_ssm_group_count(config.linear_num_key_heads)
    writer.add_ssm_time_step_rank(config.linear_num_value_heads)
    writer.add_ssm_inner_size(config.linear_value_head_dim * config.linear_num_value_heads)
    interval = getattr(config, "full_attention_interval", None)  # what llama.cpp falls back to without the array
    if interval:
        writer.add_full_attention_interval(interval)
    writer.add_array(f"{writer.arch}.attention.recurrent_layers", [t == "linear_attention" for t in config.layer_types])


def check_out(path: Path, force: bool) -> None:
    """--out: artifacts/placement.check_new_file."""
    from flashvlm_export.artifacts.placement import check_new_file

    check_new_file(path, "out", ".gguf", force)


def write_model_gguf(
    spec: ModelSpec, out: Path, seed: int = 0, layers: int | None = None, dtype: str | None = None, force: bool = False, log=print
) -> Path:
    """The GGUF of a model's LLM: a test-size model's own random LLM (the graph's weights for `seed`), or a full-size
    geometry cut to `layers` decoder layers with seeded timing weights. dtype: f32 for a test-size model, else f16."""
    import torch

    from flashvlm_export.artifacts.timing import StepTimer

    import_gguf()
    check_out(out, force)
    test_size = not spec.hf_repo
    if dtype is None:
        dtype = "f32" if test_size else "f16"
    if dtype not in DTYPES:
        raise UsageError(f"{arg('dtype', dtype)} is not a GGUF weight type; choose one of {', '.join(DTYPES)}")
    timer = StepTimer("GGUF", log)
    if test_size:
        if layers is not None:
            raise UsageError(
                f"{arg('layers', layers)}: {spec.name}'s GGUF is its whole random LLM (the graph's); drop {arg('layers')}"
            )
        from flashvlm_export.models.adapter import get_parts
        from flashvlm_export.models.weights import WeightsSource
        from flashvlm_export.runtime.answer import build_llm

        parts = get_parts(spec, WeightsSource(seed=seed), with_embeddings=True)
        llm = build_llm(spec, parts, None, seed, torch.device("cpu"))
        config, weights, what = llm.config.text_config, llm_weights(llm), f"{spec.name}'s random LLM, seed {seed} (the graph's)"
    else:
        full = text_config(spec).num_hidden_layers
        if layers is None or not 1 <= layers <= full:
            raise UsageError(
                f"{spec.name}'s random LLM is for timing only and is cut to a few layers: pass {arg('layers', 'N')} with N in 1..{full}"
            )
        config = text_config(spec, layers)
        weights, what = (
            timing_weights(config, seed),
            f"{spec.name}'s geometry, {layers}/{full} layers, seeded timing weights (not a model)",
        )
    write_gguf(out, spec, config, weights, dtype, name=f"{spec.name} ({what})")
    timer.done(f"wrote {what}, {dtype}", out)
    return out


def gguf_arch(spec) -> str:
    """llama.cpp's architecture of the model's LLM: its family adapter's GGUF_ARCH (one home)."""
    from flashvlm_export.models.registry import adapter

    return adapter(spec).GGUF_ARCH
