"""The checkpoint's tokenizer, or an offline stand-in for random weights.

With --random-weights nothing can be downloaded, so a byte-level tokenizer is built in code: <unk> 0,
<s> 1, </s> 2, the 256 bytes at ids 3..258, and the model's special tokens kept whole (the spec's
special_tokens, e.g. Qwen's <|im_start|> and <|image_pad|>; LLaVA's "<image>" at image_token_index).
BOS and EOS are the family's (models/adapter.py): LLaVA's Llama tokenizer adds <s> and ends at </s>;
Qwen's adds no BOS and a chat turn ends at <|im_end|>. It fits the tiny models' vocabulary (1000) and
the real ones. Its ids mean nothing to a trained LLM: answers from random weights are noise either way.
"""

from __future__ import annotations

from pathlib import Path

from flashvlm_export.errors import UsageError
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec

UNK, BOS, EOS = 0, 1, 2
FIRST_BYTE_ID = 3
BASE_TOKENS = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}


def stand_in_specials(spec: ModelSpec) -> dict[str, int]:
    """The special tokens the stand-in keeps whole: the spec's, else the family's image placeholder alone."""
    return dict(spec.special_tokens) or {adapter(spec).IMAGE_PLACEHOLDER: spec.image_token_index}


def stand_in_tokenizer(spec: ModelSpec):
    """A transformers fast tokenizer: (BOS where the family's adds one) + one token per UTF-8 byte, special tokens whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    family = adapter(spec)
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    byte_chars = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = dict(BASE_TOKENS)
    vocab.update({ch: FIRST_BYTE_ID + i for i, ch in enumerate(byte_chars)})
    specials = stand_in_specials(spec)
    ids = list(specials.values())
    for token, index in specials.items():
        if index < FIRST_BYTE_ID + len(byte_chars) or index >= spec.text["vocab_size"] or ids.count(index) > 1:
            raise UsageError(f"{spec.name}: special token {token} ({index}) collides with the stand-in tokenizer's ids")
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    bos = family.BOS_TOKEN
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    extra = list(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=family.EOS_TOKEN, unk_token="<unk>", extra_special_tokens=extra
    )
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _byte_of(ch: str) -> int:
    """GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the rest to 256 + k."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def load_tokenizer(spec: ModelSpec, model_dir: Path | None):
    """(tokenizer, description): the checkpoint's own from its directory, else the stand-in."""
    if model_dir is None:
        return stand_in_tokenizer(spec), "stand-in byte-level tokenizer (random weights: answers are noise)"
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise UsageError(
            f"cannot load the tokenizer of {model_dir} ({type(exc).__name__}); the checkpoint needs its tokenizer files"
        ) from None
    return tokenizer, f"{model_dir} tokenizer"
