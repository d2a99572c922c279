"""Upper bounds of the shape flags, derived from this machine's memory and the installed exporters.

An export materialises example inputs and traces every intermediate of the graph; parity keeps its
corpus in memory. A value past these bounds would allocate until the machine runs out of memory, so
it is refused up front with the bound and the reason. The estimates are deliberately coarse (a few
float32 copies of the largest tensors per image) and only guard against absurd values.
"""

from __future__ import annotations

import os

from flashvlm_export.errors import UsageError

FLOAT = 4  # bytes of float32
LIVE_COPIES = 8  # tensors of one size alive at once while tracing (inputs, scores, sorted copies, grads off)


def memory_bytes() -> int:
    """Physical memory of this machine (the cgroup limit when one is lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def bytes_per_image(spec, n_tokens: int, t_max: int, selector_only: bool) -> int:
    """Coarse working set of one image of the graph: selector tensors, plus the encoder's for the full graph."""
    selector = n_tokens * (spec.vision_hidden + spec.text_hidden + n_tokens + t_max) + t_max * spec.text_hidden
    if selector_only:
        return LIVE_COPIES * FLOAT * selector
    seq = spec.vision_sequence
    heads = int(spec.vision.get("num_attention_heads", spec.vision.get("num_heads", 16)))
    width = int(spec.vision.get("hidden_size", spec.vision_hidden))
    inner = int(spec.vision.get("intermediate_size", 4 * width))
    # images through the encoder: a photo's crops (LLaVA-NeXT), or a clip's temporal groups (N = groups x the image's N)
    images = getattr(spec, "crops", 1) * max(1, n_tokens // spec.n_tokens)
    encoder = images * (3 * spec.image_shape[0] * spec.image_shape[1] + heads * seq * seq + seq * (width + inner))
    return LIVE_COPIES * FLOAT * (selector + encoder)


def _largest_side(spec, memory: int) -> str:
    """The fix for an image side too large to trace: the largest side the family allows that fits."""
    from dataclasses import replace

    step = spec.image_size_step
    if not step:
        return f"{spec.name} takes {spec.image_size} px only"
    if not spec.square:  # both sides scaled down together, a step at a time
        rows, cols = spec.token_grid
        for scale in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
            h, w = max(2, int(rows * scale)), max(2, int(cols * scale))
            smaller = replace(spec, image_size=h * spec.token_stride, image_width=w * spec.token_stride)
            if bytes_per_image(smaller, h * w, 0, False) <= memory:
                return f"use --image-size {smaller.shape_text} or less"
        return "use a machine with more memory"
    side = spec.image_size - step
    while (
        side >= 2 * step
        and bytes_per_image(replace(spec, image_size=side, image_width=0), (side // spec.token_stride) ** 2, 0, False) > memory
    ):
        side -= step
    return f"use --image-size {side} or less" if side >= 2 * step else "use a machine with more memory"


def check_shape_fits(spec, n_tokens: int, t_max: int, batch: int, selector_only: bool) -> None:
    """--t-max and --batch: refuse a graph whose working set cannot fit in this machine's memory."""
    memory = memory_bytes()
    per_image = bytes_per_image(spec, n_tokens, t_max, selector_only)
    if per_image * batch <= memory:
        return
    why = f"about {_gib(per_image * batch)} to trace, more than this machine's {_gib(memory)} of memory"
    image_alone = bytes_per_image(spec, n_tokens, 0, selector_only)
    groups = n_tokens // spec.n_tokens if not selector_only and spec.temporal_patch else 1  # a clip's temporal groups
    if groups > 1 and image_alone > memory and bytes_per_image(spec, spec.n_tokens, t_max, False) <= memory:
        fits = next((g for g in range(groups - 1, 0, -1) if bytes_per_image(spec, g * spec.n_tokens, t_max, False) <= memory), 1)
        raise UsageError(
            f"--frames {groups * spec.temporal_patch} needs {why}; use --frames {fits * spec.temporal_patch} or less, "
            "or a smaller --image-size"
        )
    if image_alone > memory and not selector_only:  # the image side, not the text, is what does not fit
        raise UsageError(f"--image-size {spec.shape_text} needs {why}; {_largest_side(spec, memory)}")
    if per_image > memory:
        row = bytes_per_image(spec, n_tokens, t_max, selector_only) - bytes_per_image(spec, n_tokens, 0, selector_only)
        base = per_image - row
        bound = max(1, (memory - base) * t_max // max(row, 1))
        raise UsageError(f"--t-max {t_max} needs {why}; use --t-max {bound} or less (a prompt needs ~45-130 rows)")
    raise UsageError(f"--batch {batch} needs {why}; use --batch {memory // per_image} or less")


def check_repeats_fit(repeats: int, cases_per_repeat: int, spec, n_tokens: int, t_max: int, batch: int, selector_only: bool):
    """parity --repeats: the corpus (cases x batch images of float32 inputs) must fit in memory, twice (saved JSON)."""
    inputs = n_tokens * (spec.vision_hidden + spec.text_hidden + 1) + t_max * (spec.text_hidden + 1)
    if not selector_only:
        inputs = 3 * spec.image_shape[0] * spec.image_shape[1] + t_max * (spec.text_hidden + 1)
    per_repeat = 2 * FLOAT * inputs * batch * cases_per_repeat
    memory = memory_bytes() // 2  # the rest is for the models and the backends
    if repeats * per_repeat > memory:
        raise UsageError(
            f"--repeats {repeats} holds about {_gib(repeats * per_repeat)} of parity inputs, more than half of this "
            f"machine's {_gib(2 * memory)} of memory; use --repeats {max(1, memory // per_repeat)} or less"
        )


def max_opset(exporter: str) -> tuple[int, str]:
    """Highest opset the installed torch exporter and onnx can write, and the reason."""
    import onnx
    import torch.onnx._constants as constants

    torch_max = constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET if exporter == "torchscript" else constants.ONNX_MAX_OPSET
    onnx_max = onnx.defs.onnx_opset_version()
    if torch_max <= onnx_max:
        return torch_max, f"the installed torch's {exporter} exporter writes at most opset {torch_max}"
    return onnx_max, f"the installed onnx {onnx.__version__} knows at most opset {onnx_max}"


# Calibrating and quantizing an encoder (export/quantize.py, ONNX Runtime's quantize_static) holds several copies of the
# fp32 graph (shape inference, the augmented calibration model, the quantized model) and the pictures' intermediate
# tensors: measured peak 12.4 GB for llava15's 1.2 GB of encoder weights on 64 pictures (about 10x); qwen2.5-vl-7b's
# 2.7 GB was killed for memory on a 24 GB machine with 4 pictures.
QUANTIZE_MEMORY_FACTOR = 10


def check_quantization_fits(weight_bytes: int, precision: str, model: str) -> None:
    """--precision int8/fp8: refuse in one line, before ONNX Runtime starts, an encoder too large to quantize here."""
    memory = memory_bytes()
    need = QUANTIZE_MEMORY_FACTOR * weight_bytes
    if need > memory:
        raise UsageError(
            f"--precision {precision} for {model} needs about {_gib(need)} to calibrate and quantize its encoder "
            f"({QUANTIZE_MEMORY_FACTOR}x its {_gib(weight_bytes)} of fp32 weights, as measured), more than this machine's "
            f"{_gib(memory)}; quantize on a machine with more memory, or export --precision fp16 here"
        )
