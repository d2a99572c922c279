"""The text side: a LLaVA-1.5 chat prompt -> text_embeds (1, T_max, Dl) and text_mask (1, T_max).

T holds the LLM input embeddings of every non-image token of the prompt as the chat template lays
it out (BOS, system prompt, "USER:", question, "ASSISTANT:"). A prompt longer than T_max is an
error, never a silent truncation.
"""

from __future__ import annotations

import torch

from flashvlm_export.errors import UsageError

LLAVA15_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: <image>\n{question} ASSISTANT:"
)


def prompt_token_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the chat prompt (BOS included), as LLaVA-1.5's processor tokenises it."""
    return list(tokenizer(LLAVA15_TEMPLATE.format(question=question)).input_ids)


def text_inputs(
    embed_tokens: torch.nn.Module, token_ids: list[int], t_max: int, image_token_index: int, batch: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the non-image tokens, zero-padded to t_max, and the mask of the real rows.

    Shapes (batch, t_max, Dl) and (batch, t_max): the same prompt for every image of a graph exported
    with --batch; build one call per prompt and torch.cat them for different prompts.
    """
    if batch < 1:
        raise UsageError(f"batch={batch} must be >= 1 (the graph's static batch)")
    ids = [i for i in token_ids if i != image_token_index]
    if len(ids) > t_max:
        raise UsageError(
            f"the prompt has {len(ids)} text tokens but the graph takes T_max={t_max}; "
            f"shorten the question or re-export with --t-max {len(ids)} or more"
        )
    with torch.no_grad():
        rows = embed_tokens(torch.tensor(ids, dtype=torch.long)) if ids else torch.zeros(0, embed_tokens.embedding_dim)
    embeds = torch.zeros(1, t_max, embed_tokens.embedding_dim, dtype=torch.float32)
    mask = torch.zeros(1, t_max, dtype=torch.bool)
    embeds[0, : len(ids)] = rows.to(torch.float32)
    mask[0, : len(ids)] = True
    return embeds.expand(batch, -1, -1).clone(), mask.expand(batch, -1).clone()
