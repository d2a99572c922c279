"""A video clip -> pixel_values_videos (1, F, 3, S, S), as Qwen2.5-VL's video processor makes them for the graph's side S.

Decoding is PyAV's (FFmpeg inside the wheel; no ffmpeg binary, no subprocess). What follows mirrors transformers
5.24's Qwen2VLVideoProcessor with `do_sample_frames=True`, which needs torchvision; this module does not (the
equality is tests/test_video_clip.py: live where torchvision is importable, else against the processor's pinned output):
- Sampling (Qwen2VLVideoProcessor.sample_frames with num_frames=F): `torch.arange(0, total, total / F).int()`, F
  frames spread evenly over the clip; here as exact integers, floor(i * total / F), the same values for every
  total < 3000 and F <= 64 (checked). The float arange sometimes yields F + 1 indices (17 frames sampled to 14 give
  15, so the processor makes one more temporal group); the graph's F is fixed, so the first F are taken. `total` and the source fps are what transformers' PyAV reader takes:
  the stream's frame count and its average rate. With `fps`, frame i is the one shown at i / fps seconds
  (the first F of them); Qwen's own fps mode spreads its frames over the whole clip instead, but its frame
  count follows the clip's length, and the graph's F is fixed.
- Resize (BaseVideoProcessor -> torchvision's resize_image on CPU): the uint8 frames, (F, 3, H, W), go through
  `interpolate(mode="bicubic", align_corners=False, antialias=True)` in uint8 (torchvision's native CPU path for
  bicubic) straight to S x S: the graph is static, so a clip is stretched as a photo is (runtime/image.py). For a
  square clip this is the processor's own output with size {"shortest_edge": S*S, "longest_edge": S*S}. A clip
  already S x S is not resized (torchvision returns it as it is).
- Rescale and normalise (TorchvisionBackend.rescale_and_normalize, fused): mean and std times 1/rescale_factor
  as float32 tensors, then `frames.float().sub_(mean).div_(std)` per channel.
- fps passed on: Qwen2_5_VLProcessor sets second_per_grid_ts = temporal_patch_size / sampled_fps, where
  VideoMetadata.sampled_fps = len(indices) / total * source fps. `PreparedClip.effective_fps` is that number for
  even sampling, and the requested fps with `fps`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.artifact_paths import input_file, not_a_folder
from flashvlm_export.artifacts.ownership import PRODUCER, VIDEO_KEY, check_replaceable
from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.models import qwen2_5_vl
from flashvlm_export.models.zoo.qwen2_5_vl import QWEN25_VL_7B

TEMPORAL_PATCH = QWEN25_VL_7B.temporal_patch  # Qwen2.5-VL's (every size's): frames 2g and 2g+1 form temporal group g
BICUBIC = 3  # PILImageResampling.BICUBIC, the processor's resample
STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe")
VIDEO_HINT = "pass a video file (mp4, mkv, avi, webm, ...)"
# Demo clip containers: suffix -> (FFmpeg muxer, encoders in order of preference; mpeg4 is in every FFmpeg build)
CONTAINERS = {".mp4": ("mp4", ("libx264", "mpeg4")), ".mkv": ("matroska", ("libx264", "ffv1")), ".avi": ("avi", ("mpeg4",))}
DEMO_FPS = 8


@dataclass
class PreparedClip:
    pixel_values: torch.Tensor  # (1, F, 3, S, S) fp32, normalised, frames in time order
    shown: np.ndarray  # (F, S, S, 3) uint8: the resized frames the model sees, for the strip
    indices: list[int]  # (F,) the sampled frames' positions in the decoded stream
    timestamps: list[float]  # (F,) seconds: each sampled frame's presentation time
    source_fps: float  # the stream's average frame rate
    effective_fps: float  # what Qwen's processor passes on as fps: second_per_grid_t = TEMPORAL_PATCH / effective_fps
    total_frames: int  # frames in the clip (the stream's count)
    processor: str  # which settings normalised it
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the decoded frames, before the stretch to S x S


def _settings(model_dir: Path | None, family=qwen2_5_vl) -> tuple[dict, str]:
    """mean, std, rescale_factor and resample: a checkpoint's video (else image) processor config, else the family's
    defaults (Qwen2.5-VL's CLIP mean and std; the Qwen3 generation's 0.5)."""
    settings = dict(
        image_mean=list(family.IMAGE_MEAN), image_std=list(family.IMAGE_STD), rescale_factor=1 / 255, resample=BICUBIC
    )
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        config = Path(model_dir) / name if model_dir is not None else None
        if config is not None and config.is_file():
            stored = json.loads(config.read_text())
            settings.update({key: stored[key] for key in settings if key in stored})
            if settings["resample"] != BICUBIC:
                raise UsageError(
                    f"{config} asks for resample {settings['resample']}; {family.NAME}'s video processor resizes bicubic (3)"
                )
            return settings, str(config)
    return settings, f"{family.VIDEO_PROCESSOR_NAME} defaults"


def _open(path: Path):
    """The container and its first video stream; a missing, unreadable, still-image or stream-less file is a one-line error."""
    import av

    input_file(path, arg("video", str(path)), VIDEO_HINT)  # a folder or a FIFO is named as one
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise UsageError(
            f"{arg('video', str(path))} is not a video FFmpeg can read ({type(exc).__name__}); {VIDEO_HINT}"
        ) from None
    if container.format.name in STILL_FORMATS:
        container.close()
        raise UsageError(f"{arg('video', str(path))} is a still image ({container.format.name}), not a video; {VIDEO_HINT}")
    if not container.streams.video:
        container.close()
        raise UsageError(f"{arg('video', str(path))} has no video stream; {VIDEO_HINT}")
    return container, container.streams.video[0]


def _count(path: Path) -> int:
    """Frames in a stream whose container does not say: decode and count."""
    container, stream = _open(path)
    with container:
        return sum(1 for _ in container.decode(stream))


def frame_size(path: Path) -> tuple[int, int]:
    """(width, height) of the clip's frames, from its first video stream's header."""
    container, stream = _open(path)
    with container:
        return int(stream.width), int(stream.height)


def even_indices(total: int, frames: int) -> list[int]:
    """Qwen2VLVideoProcessor.sample_frames' uniform rule in integers: floor(i * total / F) for i < F."""
    return [i * total // frames for i in range(frames)]


def spread_indices(total: int, frames: int) -> list[int]:
    """Qwen3VLVideoProcessor.sample_frames' rule given num_frames: np.linspace(0, total - 1, F).round(), the first and
    the last frame included (its own line)."""
    return np.linspace(0, total - 1, frames).round().astype(int).tolist()


def fps_indices(total: int, source_fps: Fraction, fps: Fraction) -> list[int]:
    """Every frame shown at i / fps seconds from the start (exact rational arithmetic): floor(i * source_fps / fps)."""
    available = math.ceil(total * fps / source_fps)  # i with floor(i * source_fps / fps) < total
    return [math.floor(i * source_fps / fps) for i in range(available)]


def _sample(
    path: Path, total: int, source_fps: Fraction, frames: int, fps: float | None, spread: bool = False
) -> tuple[list[int], float]:
    name = arg("video", str(path))
    if total < frames:
        raise UsageError(
            f"{name} has {total} frames but the graph takes {frames} ({arg('frames', frames)} at export); use a longer clip or export fewer frames"
        )
    if fps is None:
        return (spread_indices if spread else even_indices)(total, frames), frames / total * float(source_fps)
    wanted = Fraction(str(fps))
    if not wanted > 0:
        raise UsageError(f"{arg('fps', fps)} is not a positive rate; pass frames per second such as 2 or 0.5")
    if wanted > source_fps:
        raise UsageError(
            f"{arg('fps', fps)} is above the clip's {float(source_fps):g} fps ({name}); pass at most {float(source_fps):g}"
        )
    indices = fps_indices(total, source_fps, wanted)
    if len(indices) < frames:
        seconds = total / float(source_fps)
        least = math.ceil(frames * float(source_fps) / total * 1000) / 1000  # rounded up: it does sample F frames
        raise UsageError(
            f"{arg('fps', fps)} samples {len(indices)} frames from {name} ({seconds:.2f} s) but the export takes "
            f"{frames}; pass {arg('fps')} at least {least:g}, or leave it out to sample evenly"
        )
    return indices[:frames], float(wanted)


def _decode(path: Path, indices: list[int]) -> tuple[np.ndarray, list[float]]:
    """The frames at `indices` (ascending) as (F, H, W, 3) RGB uint8, and their presentation times."""
    container, stream = _open(path)
    wanted = set(indices)
    frames, times, seen = {}, {}, 0
    with container:
        for i, frame in enumerate(container.decode(stream)):
            seen = i + 1
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
                times[i] = float(frame.time) if frame.time is not None else i / float(stream.average_rate)
            if i >= indices[-1]:
                break
    if len(frames) < len(wanted):
        raise UsageError(
            f"{arg('video', str(path))} decodes to {seen} frames, fewer than its header says; re-encode the clip or use another one"
        )
    return np.stack([frames[i] for i in indices]), [times[i] for i in indices]


def resize_frames(frames: torch.Tensor, size) -> torch.Tensor:
    """(F, 3, H, W) uint8 -> (F, 3, S, S) uint8 (size S, or (S_h, S_w) for a non-square graph), torchvision's resize_image
    path for bicubic uint8 on CPU."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(frames.shape[-2:]) == shape:
        return frames
    return torch.nn.functional.interpolate(frames, size=list(shape), mode="bicubic", align_corners=False, antialias=True)


def normalize_frames(frames: torch.Tensor, settings: dict) -> torch.Tensor:
    """(F, 3, S, S) uint8 -> fp32: TorchvisionBackend's fused rescale and normalise, the same float32 operations."""
    scale = 1.0 / settings["rescale_factor"]
    mean = (torch.tensor(settings["image_mean"]) * scale).view(-1, 1, 1)
    std = (torch.tensor(settings["image_std"]) * scale).view(-1, 1, 1)
    return frames.to(torch.float32).sub_(mean).div_(std)


def read_clip(
    path: str | Path, frames: int, size, fps: float | None = None, model_dir: str | Path | None = None, family=qwen2_5_vl
) -> PreparedClip:
    """Decode `path`, sample `frames` frames (evenly, or at `fps` from the start), make them the family's pixels at
    S = `size` (or (height, width) for a non-square graph; Qwen2.5-VL's by default; a family adapter with SPREAD_FRAMES samples as Qwen3VLVideoProcessor does).

    Bad input (a missing file, one FFmpeg cannot read, a still image, too few frames, an odd `frames`, an `fps`
    that samples fewer than `frames`) is a UsageError naming the value and the fix.
    """
    if frames < TEMPORAL_PATCH or frames % TEMPORAL_PATCH:
        raise UsageError(
            f"{arg('frames', frames)} is not a positive even count; {family.NAME} pairs frames into temporal groups of {TEMPORAL_PATCH}: pass 2, 4, 8, ..."
        )
    if min((size, size) if isinstance(size, int) else size) <= 0:
        raise UsageError(f"{arg('size', size)} is not a positive side in pixels; pass the graph's image size (e.g. 448)")
    path = Path(path)
    settings, processor = _settings(Path(model_dir) if model_dir is not None else None, family)
    container, stream = _open(path)
    with container:
        total, rate = int(stream.frames), stream.average_rate
    if not rate:
        raise UsageError(f"{arg('video', str(path))} has no frame rate in its header; re-encode it (e.g. to mp4)")
    total = total or _count(path)
    indices, effective = _sample(path, total, Fraction(rate), frames, fps, getattr(family, "SPREAD_FRAMES", False))
    decoded, times = _decode(path, indices)  # (F, H, W, 3)
    video = torch.from_numpy(decoded).permute(0, 3, 1, 2).contiguous()  # (F, 3, H, W), as the processor lays it out
    resized = resize_frames(video, size)  # (F, 3, S, S) uint8
    pixels = normalize_frames(resized, settings)[None]  # (1, F, 3, S, S)
    shown = resized.permute(0, 2, 3, 1).contiguous().numpy()
    width, height = decoded.shape[2], decoded.shape[1]
    return PreparedClip(pixels, shown, indices, times, float(rate), effective, total, processor, (width, height))


def demo_frames(frames: int = 16, size=448) -> np.ndarray:
    """(F, H, W, 3) uint8 (size: a side, or (H, W)): a red ball rolling left to right over a tiled floor; a green box
    appears in the second half."""
    height, width = (size, size) if isinstance(size, int) else size
    y, x = np.mgrid[0:height, 0:width] * (min(height, width) / np.array([height, width]))[:, None, None]
    size = min(height, width)
    tile = max(size // 8, 1)
    checker = ((y // tile + x // tile) % 2).astype(np.float64)
    background = np.stack([120 + 40 * checker + 40 * y / size, 110 + 30 * checker, 90 + 50 * x / size], axis=-1)
    radius = size / 10
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        picture = background.copy()
        cx = radius + (size - 2 * radius) * f / max(frames - 1, 1)
        cy = size * 0.55 + size * 0.12 * math.sin(math.pi * f / max(frames - 1, 1))
        picture[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = (220, 30, 40)
        if f >= frames // 2:  # the box: a question about "the second half" has somewhere to look
            top, left, side = int(size * 0.12), int(size * 0.62), int(size * 0.22)
            picture[(y >= top) & (y < top + side) & (x >= left) & (x < left + side)] = (40, 170, 70)
        out[f] = picture.round().astype(np.uint8)
    return out


def _encoder(suffix: str) -> tuple[str, str]:
    import av

    muxer, encoders = CONTAINERS[suffix]
    for name in encoders:
        try:
            av.codec.Codec(name, "w")
            return muxer, name
        except (av.error.FFmpegError, ValueError):
            continue
    raise UsageError(f"PyAV's FFmpeg has none of the encoders {', '.join(encoders)} for {suffix}; write .avi (mpeg4) instead")


def write_clip(path: str | Path, frames: np.ndarray, fps: int | Fraction = DEMO_FPS, force: bool = False) -> Path:
    """(F, H, W, 3) uint8 frames -> a video file (.mp4, .mkv or .avi), written to a temporary name and renamed."""
    import av

    path = Path(path)
    not_a_folder(path, arg("demo_video", str(path)), "demo.mp4")
    if path.suffix.lower() not in CONTAINERS:
        raise UsageError(f"{arg('demo_video', str(path))} has an unknown container; end the name with {', '.join(CONTAINERS)}")
    if path.exists() and not force:
        raise UsageError(f"{arg('demo_video', str(path))} exists; pass {switch('force')} to replace it, or another name")
    check_replaceable(path, f"use it as {arg('video', str(path))}, or choose another {arg('demo_video')}")
    if not path.parent.is_dir():
        raise UsageError(f"{arg('demo_video', str(path))}: folder {path.parent} does not exist; create it first")
    muxer, codec = _encoder(path.suffix.lower())
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with av.open(str(temporary), mode="w", format=muxer) as container:
            container.metadata[VIDEO_KEY] = PRODUCER  # what a later --force recognises as this tool's
            stream = container.add_stream(codec, rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            for picture in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_demo_clip(path: str | Path, frames: int = 16, size=448, force: bool = False, fps: float = DEMO_FPS) -> Path:
    """The synthetic clip (demo_frames; size a side or (H, W)) at `fps` (DEMO_FPS by default); refuses an existing file
    unless `force`; never leaves a partial file."""
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if frames < 1 or min(sides) < 16 or any(s % 2 for s in sides) or not fps > 0:
        raise UsageError(
            f"a demo clip needs frames >= 1, an even size >= 16 and fps > 0, not frames={frames}, size={size}, fps={fps}"
        )
    return write_clip(path, demo_frames(frames, size), Fraction(str(fps)), force)
