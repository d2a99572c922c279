"""A GGUF of a model's LLM, written with the `gguf` package: what llama.cpp loads (runtime/llama_cpp.py).

The keys and tensor names are the ones llama.cpp's own converter (convert_hf_to_gguf.py) writes for these
checkpoints: LLaVA-1.5's Llama and LLaVA-NeXT's Vicuna or Mistral as arch `llama` (q/k rows permuted from Hugging Face's rotate-half layout to
llama.cpp's interleaved rotary pairs, as LlamaModel.permute does), Qwen2.5-VL's text model as arch `qwen2vl`
(M-RoPE, `rope.dimension_sections` = mrope_section padded to 4, q/k/v biases, no permutation).

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


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError(f"writing a GGUF needs the gguf package; install it with {INSTALL}") from None
    return gguf


def text_config(spec: ModelSpec, layers: int | None = None):
    """The LLM's transformers text config (the family's full_config), cut to `layers` decoder layers if given."""
    config = adapter(spec).full_config(spec).text_config
    if layers is not None:
        config.num_hidden_layers = layers
    return config


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's LlamaModel.permute)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(spec: ModelSpec, config, hf: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) from the text model's (Hugging Face name, array): `layers.0.self_attn.q_proj.weight`, `lm_head.weight`."""
    permute = gguf_arch(spec) == "llama"
    for name, value in hf:
        if name in TOP_NAMES:
            yield TOP_NAMES[name], value
            continue
        _, layer, rest = name.split(".", 2)  # layers.<i>.<rest>
        if permute and rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.")):
            heads = config.num_attention_heads if "q_proj" in rest else config.num_key_value_heads
            value = permute_rotary(value, heads)
        yield f"blk.{layer}.{LAYER_NAMES[rest]}", value


def llm_weights(llm) -> dict[str, np.ndarray]:
    """The text model's weights of a family LLM_CLASS model (model.language_model + lm_head), fp32, Hugging Face names."""
    state = {k: v for k, v in llm.model.language_model.state_dict().items() if "rotary_emb" not in k}
    state["lm_head.weight"] = llm.lm_head.weight
    return {k: v.detach().to("cpu").float().numpy() for k, v in state.items()}


def timing_weights(config, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Seeded normal(0, 0.02) weights in the text model's shapes (norms 1, biases 0), one at a time (a 7B geometry's
    would not fit in memory at once): for timing, not for answers."""
    rng = np.random.default_rng(seed)
    d, m, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * TIMING_STD).astype(np.float32)

    yield "embed_tokens.weight", normal(v, d)
    yield "norm.weight", np.ones(d, np.float32)
    yield "lm_head.weight", normal(v, d)
    shapes = {"q": (d, d), "k": (kv, d), "v": (kv, d), "o": (d, d)}
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        yield p + "input_layernorm.weight", np.ones(d, np.float32)
        for x, shape in shapes.items():
            yield p + f"self_attn.{x}_proj.weight", normal(*shape)
            if x != "o" and config.model_type.startswith("qwen"):  # Qwen2's q/k/v carry biases
                yield p + f"self_attn.{x}_proj.bias", np.zeros(shape[0], np.float32)
        yield p + "post_attention_layernorm.weight", np.ones(d, np.float32)
        yield p + "mlp.gate_proj.weight", normal(m, d)
        yield p + "mlp.up_proj.weight", normal(m, d)
        yield p + "mlp.down_proj.weight", normal(d, m)


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
    head_dim = config.hidden_size // config.num_attention_heads
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
        writer.add_rope_dimension_count(head_dim)
        if "mrope_section" in config.rope_parameters:
            sections = list(config.rope_parameters["mrope_section"])
            writer.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
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
            if value.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, value)
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


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
