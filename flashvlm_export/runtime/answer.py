"""The answer: K visual embeddings spliced where LLaVA's image tokens stand, then greedy decoding.

LLaVA (transformers' LlavaModel) replaces each of the prompt's N image tokens by one row of
P(X), in order (masked_scatter). Pruning keeps K rows in ascending token order, so the spliced
input is the same sequence with K image rows instead of N; with K = N it is exactly LLaVA's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.models.spec import ModelSpec

RANDOM_LLM_MAX_BYTES = 4 * 1024**3  # a random-weight LLM is built in RAM, fp32; only test-size models fit


@dataclass
class Answer:
    label: str  # "pruned K=64" or "full N=576"
    text: str
    token_ids: list[int]  # the generated ids (with random weights the text may decode to nothing readable)
    prompt_tokens: int  # sequence length of the prefill
    prefill_ms: float  # time to first token: one forward over the whole prompt, argmax included
    kv_bytes: int  # the KV cache after the prefill


def _llm_bytes(config) -> int:
    text = config.text_config
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    return 4 * (layers * (4 * h * h + 3 * h * text.intermediate_size) + 2 * vocab * h)


def check_random_llm_fits(spec: ModelSpec, weights: str = "random weights") -> None:
    """--answer with random weights builds the whole LLM in RAM; only a test-size model fits.

    `weights` names where the random weights came from: the flag the user passed, or the graph that records them.
    """
    size = _llm_bytes(spec.llava_config())
    if size > RANDOM_LLM_MAX_BYTES:
        raise UsageError(
            f"--answer with {weights} would build {spec.name}'s whole LLM in memory (~{size / 1024**3:.0f} GB fp32); "
            "use a llava15-tiny graph for a random-weight answer, or a graph exported from a real checkpoint (--model-path)"
        )


def build_llm(spec: ModelSpec, parts, checkpoint: str | None, seed: int | None, device: torch.device):
    """LlavaForConditionalGeneration: from the local checkpoint, or seeded random around the graph's parts."""
    from transformers import LlavaForConditionalGeneration

    if checkpoint is not None:
        try:
            model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, local_files_only=True)
        except Exception as exc:
            raise UsageError(
                f"cannot load the LLM of {checkpoint} ({type(exc).__name__}); pass a complete LLaVA-1.5 checkpoint"
            ) from None
        return model.to(device).eval()
    check_random_llm_fits(spec)
    torch.manual_seed(seed)  # the LLM layers: seeded; the vision tower, projector and embeddings are the graph's
    model = LlavaForConditionalGeneration(parts.config)
    model.model.vision_tower.load_state_dict(parts.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(parts.projector.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(parts.embed_tokens.state_dict())
    return model.to(device).eval().requires_grad_(False)


def image_position(token_ids: list[int], image_token_index: int) -> int:
    positions = [i for i, t in enumerate(token_ids) if t == image_token_index]
    if len(positions) != 1:
        raise UsageError(
            f"the prompt holds {len(positions)} image tokens; LLaVA-1.5's prompt takes exactly one: remove '<image>' from --question"
        )
    return positions[0]


def expand_image_token(token_ids: list[int], image_token_index: int, n: int) -> list[int]:
    """What LLaVA's processor feeds the model: the one <image> repeated n times."""
    p = image_position(token_ids, image_token_index)
    return token_ids[:p] + [image_token_index] * n + token_ids[p + 1 :]


@torch.no_grad()
def splice(
    embed_tokens: torch.nn.Module, token_ids: list[int], image_token_index: int, visual_embeds: torch.Tensor
) -> torch.Tensor:
    """(1, S, Dl): the prompt's text embeddings with visual_embeds (K, Dl) where <image> stands."""
    p = image_position(token_ids, image_token_index)
    device = embed_tokens.weight.device
    before = embed_tokens(torch.tensor(token_ids[:p], dtype=torch.long, device=device))
    after = embed_tokens(torch.tensor(token_ids[p + 1 :], dtype=torch.long, device=device))
    rows = visual_embeds.to(device=device, dtype=before.dtype)
    return torch.cat([before, rows, after])[None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_cache_bytes(cache) -> int:
    """Bytes of every key and value tensor the cache holds."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values) if t is not None)
    return sum(t.numel() * t.element_size() for pair in cache for t in pair[:2])  # legacy tuple of (k, v)


@torch.no_grad()
def greedy_answer(model, inputs_embeds: torch.Tensor, tokenizer, max_new_tokens: int, label: str) -> Answer:
    """Greedy decoding through the model's forward; the first forward (the prefill) is timed on its own."""
    device = inputs_embeds.device
    model(inputs_embeds=inputs_embeds, use_cache=True)  # warm-up, not timed
    _sync(device)
    start = time.perf_counter()
    out = model(inputs_embeds=inputs_embeds, use_cache=True)
    token = int(out.logits[0, -1].argmax())
    _sync(device)
    prefill_ms = (time.perf_counter() - start) * 1e3
    kv = kv_cache_bytes(out.past_key_values)
    past, tokens = out.past_key_values, [token]
    while len(tokens) < max_new_tokens and token != tokenizer.eos_token_id:
        out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=past, use_cache=True)
        past, token = out.past_key_values, int(out.logits[0, -1].argmax())
        tokens.append(token)
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Answer(label, text, tokens, inputs_embeds.shape[1], prefill_ms, kv)
