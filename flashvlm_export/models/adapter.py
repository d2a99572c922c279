"""What every model family's adapter provides (in the manner of Optimum's per-model export configs).

A family is a module of models/ named by ModelSpec.family (models/llava.py, models/qwen2_5_vl.py); the
registry imports it on first use. It provides:

- `NAME`: how messages name the family's checkpoints ("LLaVA-1.5");
- `MODEL_TYPE`: the config.json `model_type` of its checkpoints (another family's checkpoint is refused);
- `random_parts(spec, seed, with_embeddings)` and `load_parts(spec, path, with_embeddings)`: the parts the
  export needs (a `Parts`, below), seeded random or from a local checkpoint or the HF cache;
- `full_config(spec)` and `LLM_CLASS`: the whole model's transformers config and class (the answer);
- `chat_prompt(question)`: the prompt with the image placeholder, as the checkpoint's processor lays it out;
- `IMAGE_MEAN`, `IMAGE_STD`, `RESIZE`, `IMAGE_PROCESSOR()`, `processor_pixels(output, spec)`: how a photo
  becomes pixel_values (1, 3, H, W) (runtime/image.py), through the checkpoint's own image processor class;
- `IMAGE_PLACEHOLDER`, `BOS_TOKEN`, `EOS_TOKEN`: the prompt's image token and the tokenizer's ends (the offline
  stand-in tokenizer, runtime/tokenizer.py, follows them);
- `adopt_parts(model, parts)`: a random-weight LLM_CLASS model takes the graph's parts (runtime/answer.py).
  Where the LLM places visual tokens by (t, h, w) positions (ModelSpec.has_positions), the spliced input's
  position ids come from models/positions.py.

A `Parts` has `spec`, `config`, `source` (WeightsSource), `embed_tokens` (when asked for), and
`encoder(dtype)`: the module pixel_values (B, 3, H, W) -> (X, a, P(X)), fp32 out at any precision, that the
graphs export; and `reference_features(pixel_values)`: the same three from transformers' own modules, the
parity reference (docs/ALGORITHM.md "Batches and other models" says what X, a, P(X) are per family).
"""

from __future__ import annotations

from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.weights import WeightsSource


def get_parts(spec: ModelSpec, source: WeightsSource, with_embeddings: bool = False):
    family = adapter(spec)
    if source.random:
        return family.random_parts(spec, source.seed, with_embeddings)
    return family.load_parts(spec, source.path, with_embeddings)


def get_parts_logged(spec: ModelSpec, source: WeightsSource, log=print, with_embeddings: bool = False, what: str = ""):
    """get_parts, opened and timed in a line each: "Model: loaded llava15-tiny (random weights, seed 0) 0.4s"; a
    full-size checkpoint can take minutes, so in between the time elapsed (progress.py: a line every 30 s in a log)."""
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.progress import progress

    timer = StepTimer("Model", log)
    with progress(f"Model: loading {spec.name}{what}", log=log):
        parts = get_parts(spec, source, with_embeddings)
    timer.done(f"loaded {spec.name}{what} ({parts.source})")
    return parts


def random_embeddings(text_config):
    """The LLM's input embeddings with the family's own init (normal, std initializer_range): for random weights."""
    from torch import nn

    embed = nn.Embedding(text_config.vocab_size, text_config.hidden_size, padding_idx=getattr(text_config, "pad_token_id", None))
    nn.init.normal_(embed.weight, std=getattr(text_config, "initializer_range", 0.02))
    return embed


def frozen(parts):
    """Every module of the parts in eval mode without gradients."""
    for module in vars(parts).values():
        if hasattr(module, "requires_grad_"):
            module.eval().requires_grad_(False)
    return parts


def cut_layers(config, layers: int | None):
    """A copy of the whole model's config with its LLM cut to the first `layers` decoder layers (None: the config
    itself): the random LLM that times a full-size geometry (eval --llm-layers, gguf --layers). Qwen3.5's layer_types
    (linear / full attention) are cut alike."""
    if layers is None:
        return config
    import copy

    config = copy.deepcopy(config)
    text = config.text_config
    text.num_hidden_layers = layers
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:layers]
    return config
