"""A Hugging Face Qwen2.5-VL checkpoint folder for the OpenVINO GenAI peer benchmark (issue 35): the qwen2.5-vl-7b
geometry of our registry, the full vision tower, the LLM cut to --layers decoder layers, seeded random weights.

    PYTHONPATH=. .venv/bin/python scripts/peer_checkpoint.py --out /work/peer-scratch/qwen7b-L2 [--layers 2] [--seed 0]

Writes config.json + *.safetensors (bf16 by default, --dtype float16 for the OpenVINO peer's fp16 IR: the ~2.2 B parameters of the 2-layer cut are 8.9 GB in fp32;
both tools read them back as fp32, so they see the same weights), generation_config.json, our offline stand-in
tokenizer in HF format with Qwen's chat template, and a processor whose min_pixels = max_pixels = 448 * 448, so a
448x448 photo gives 32x32 patches -> 16x16 = 256 merged tokens. Refuses an existing folder unless --force.
Run in the project's venv; the OpenVINO side (scripts/openvino_genai_peer.py) runs in its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from flashvlm_export.models.qwen2_5_vl import full_config
from flashvlm_export.models.registry import get_spec
from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

SIDE = 448
PIXELS = SIDE * SIDE

# Qwen2.5-VL-7B-Instruct's chat template (its chat_template.json): an image part becomes
# <|vision_start|><|image_pad|><|vision_end|>; a plain-string content (what OpenVINO GenAI passes, having put the
# image tags in the text itself) is copied as it is.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write (keep it outside git)")
    p.add_argument("--model", default="qwen2.5-vl-7b", help="registry spec (default: qwen2.5-vl-7b)")
    p.add_argument("--layers", type=int, default=2, help="LLM decoder layers kept (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the random weights (default: 0)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="float16",
        help="weights on disk (default float16: what the peer's fp16 IR holds exactly; bench_openvino_genai.py checks the pair)",
    )
    p.add_argument(
        "--tie-embeddings",
        action="store_true",
        help="lm_head shares embed_tokens (152064 x 3584, 2.2 GB in fp32 fewer to convert; the vision tower and the "
        "prefill's compute are unchanged)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    return p.parse_args(argv)


def cut_config(model: str, layers: int, tie: bool = False):
    spec = get_spec(model)
    if not 1 <= layers <= spec.text["num_hidden_layers"]:
        raise SystemExit(f"--layers must be in 1..{spec.text['num_hidden_layers']} for {spec.name}")
    spec = dataclasses.replace(spec, text=dict(spec.text, num_hidden_layers=layers))
    config = full_config(spec)
    if tie:
        config.tie_word_embeddings = True
        config.get_text_config().tie_word_embeddings = True
    return spec, config


def save_processor(out: Path, spec) -> None:
    """preprocessor_config.json of Qwen2VLImageProcessor with min_pixels = max_pixels = 448 * 448, in both spellings
    (min_pixels/max_pixels, which OpenVINO GenAI reads first, and size.shortest_edge/longest_edge). No processor
    object: transformers 5.24 fails to build Qwen2_5_VLProcessor without torchvision (VIDEO_PROCESSOR_MAPPING)."""
    from transformers import Qwen2VLImageProcessor

    geometry = dict(patch_size=spec.patch_size, merge_size=spec.merge, temporal_patch_size=spec.vision["temporal_patch_size"])
    Qwen2VLImageProcessor(size={"shortest_edge": PIXELS, "longest_edge": PIXELS}, **geometry).save_pretrained(out)
    path = out / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    pre.update(
        image_processor_type="Qwen2VLImageProcessor",
        processor_class="Qwen2_5_VLProcessor",
        min_pixels=PIXELS,
        max_pixels=PIXELS,
        size={"shortest_edge": PIXELS, "longest_edge": PIXELS},
        **geometry,
    )
    path.write_text(json.dumps(pre, indent=2) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if out.exists():
        if not args.force:
            print(f"peer_checkpoint: {out} exists; pass --force to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    spec, config = cut_config(args.model, args.layers, args.tie_embeddings)
    from transformers import Qwen2_5_VLForConditionalGeneration

    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the disk dtype: a 2-layer fp32 model would hold 8.9 GB at once
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.config.torch_dtype = dtype
    params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True)
    model.save_pretrained(out, max_shard_size="2GB")
    model.generation_config.save_pretrained(out)
    del model
    tokenizer = stand_in_tokenizer(spec)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    save_processor(out, spec)
    summary = dict(
        out=str(out),
        model=spec.name,
        layers=args.layers,
        tied_embeddings=args.tie_embeddings,
        seed=args.seed,
        dtype=args.dtype,
        params=params,
        image=f"{SIDE}x{SIDE} -> {spec.n_tokens} tokens",
        seconds=round(time.perf_counter() - t0, 1),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
