"""The text side: a chat prompt -> text_embeds (1, T_max, Dl) and text_mask (1, T_max).

T holds the LLM input embeddings of the prompt's tokens as the model's chat template lays it out
(the family adapter's `chat_prompt`): every non-image token by default, or with text_scope
"before-image" only those before the image (the authors' Qwen port). A prompt longer than T_max is
an error, never a silent truncation.
"""

from __future__ import annotations

import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec


def prompt_token_ids(tokenizer, question: str, spec: ModelSpec) -> list[int]:
    """Token ids of the model's chat prompt (BOS included where the tokenizer adds one), one image placeholder."""
    prompt = spec.chat_template.format(question=question) if spec.chat_template else adapter(spec).chat_prompt(question)
    return list(tokenizer(prompt).input_ids)


def text_token_ids(token_ids: list[int], image_token_index: int, scope: str = "all") -> list[int]:
    """The tokens whose embeddings form T: every non-image token, or ("before-image") those before the first one."""
    if scope == "before-image" and image_token_index in token_ids:
        token_ids = token_ids[: token_ids.index(image_token_index)]
    return [i for i in token_ids if i != image_token_index]


def text_inputs(
    embed_tokens: torch.nn.Module,
    token_ids: list[int],
    t_max: int,
    image_token_index: int,
    batch: int = 1,
    scope: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of T's tokens (text_token_ids), zero-padded to t_max, and the mask of the real rows.

    Shapes (batch, t_max, Dl) and (batch, t_max): the same prompt for every image of a graph exported
    with --batch; build one call per prompt and torch.cat them for different prompts.
    """
    if batch < 1:
        raise UsageError(f"batch={batch} must be >= 1 (the graph's static batch)")
    ids = text_token_ids(token_ids, image_token_index, scope)
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
