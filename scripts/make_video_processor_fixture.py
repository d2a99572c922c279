#!/usr/bin/env python3
"""Regenerate tests/fixtures/qwen_video_processor.npz: transformers' Qwen2VLVideoProcessor on two small clips.

    python scripts/make_video_processor_fixture.py [--out tests/fixtures/qwen_video_processor.npz]

Run it where torchvision imports (the processor needs it; the project's venv has none). The fixture of 2026-12-06 was
made in a separate venv with torch 2.13.0+cpu, torchvision 0.28.0 (PyPI's wheel, built for CUDA: its C ops
cannot load beside a CPU torch, and only the two operator names its import registers are declared below; the
resize the processor uses is torch's interpolate and needs no C op), transformers 5.24.0, av 18.1.0, numpy 2.4.6.

Per case the file holds the encoded clip's bytes (so every machine decodes the same stream: no encoder runs in
the test), the processor's sampled frame indices, its `pixel_values_videos` (t*h*w, C*T*P*P) float32 and its
`video_grid_thw`. The versions it was made with are stored beside them. Only the clip is made with the project's
code (demo_frames, write_clip); sampling, decoding and pixels are transformers', PyAV's and torchvision's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

FRAMES, SIDE, TOTAL, FPS = 4, 56, 10, 8  # 10 frames sampled to 4 ([0, 2, 5, 7]): a stride the off-by-one fault must break
CASES = {"square": (80, 80), "wide": (60, 80)}  # source (height, width); wide is stretched to SIDE x SIDE


def _torchvision_without_c_ops():
    """Import torchvision where its C extension cannot load: declare the two ops its import registers fakes for."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_without_c_ops.library = library  # kept alive for the session
        import torchvision  # noqa: F401


def _decoded(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def processor_case(path: Path) -> dict:
    """The processor's indices and pixels for the clip at `path`, as tests/test_video_clip.py's live comparison runs it."""
    import torch
    from transformers import Qwen2VLVideoProcessor
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.image_utils import SizeDict
    from transformers.video_utils import VideoMetadata

    processor = Qwen2VLVideoProcessor()
    indices = [int(i) for i in processor.sample_frames(VideoMetadata(total_num_frames=TOTAL, fps=float(FPS)), num_frames=FRAMES)]
    frames = _decoded(path)[indices]  # (F, H, W, 3)
    options = dict(do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    if frames.shape[1] == frames.shape[2]:
        out = processor(videos=[frames], size={"shortest_edge": SIDE * SIDE, "longest_edge": SIDE * SIDE}, **options)
    else:  # the processor cannot stretch: its own resize op to S x S first, then the processor without resizing
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        stretched = TorchvisionBackend.resize(processor, video, SizeDict(height=SIDE, width=SIDE), resample=processor.resample)
        out = processor(videos=[stretched.permute(0, 2, 3, 1).numpy()], do_resize=False, **options)
    return dict(
        indices=np.array(indices, dtype=np.int64),
        pixel_values_videos=out["pixel_values_videos"].numpy(),
        video_grid_thw=out["video_grid_thw"].numpy(),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tests/fixtures/qwen_video_processor.npz", help="where to write the fixture")
    args = p.parse_args()
    _torchvision_without_c_ops()
    import av
    import torch
    import torchvision
    import transformers

    from flashvlm_export.runtime.video import demo_frames, write_clip

    arrays = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (height, width) in CASES.items():
            clip = write_clip(Path(folder) / f"{name}.mp4", demo_frames(TOTAL, max(height, width))[:, :height, :width], fps=FPS)
            arrays[f"{name}_clip"] = np.frombuffer(clip.read_bytes(), dtype=np.uint8)
            arrays.update({f"{name}_{key}": value for key, value in processor_case(clip).items()})
    versions = dict(
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        transformers=transformers.__version__,
        av=av.__version__,
        numpy=np.__version__,
    )
    settings = dict(frames=FRAMES, side=SIDE, total=TOTAL, fps=FPS)
    np.savez_compressed(args.out, versions=json.dumps(versions), settings=json.dumps(settings), **arrays)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes) with {versions}")


if __name__ == "__main__":
    main()
