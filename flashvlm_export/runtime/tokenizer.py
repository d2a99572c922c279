"""The checkpoint's tokenizer, or an offline stand-in for random weights.

With --random-weights nothing can be downloaded, so a byte-level tokenizer is built in code:
Llama's special ids (<unk> 0, <s> 1, </s> 2), the 256 bytes at ids 3..258, and "<image>" at the
spec's image_token_index. It fits the tiny model's vocabulary (1000) and the real one (32064).
Its ids mean nothing to a trained LLM: answers from random weights are noise either way.
"""

from __future__ import annotations

from pathlib import Path

from flashvlm_export.errors import UsageError
from flashvlm_export.models.spec import ModelSpec

UNK, BOS, EOS = 0, 1, 2
FIRST_BYTE_ID = 3


def stand_in_tokenizer(spec: ModelSpec):
    """A transformers fast tokenizer: BOS + one token per UTF-8 byte, "<image>" kept whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    byte_chars = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}
    vocab.update({ch: FIRST_BYTE_ID + i for i, ch in enumerate(byte_chars)})
    vocab["<image>"] = spec.image_token_index
    if spec.image_token_index < FIRST_BYTE_ID + len(byte_chars) or spec.image_token_index >= spec.text["vocab_size"]:
        raise UsageError(f"{spec.name}: image token {spec.image_token_index} collides with the stand-in tokenizer's ids")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", extra_special_tokens=["<image>"]
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
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
