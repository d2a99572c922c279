"""Clips in (runtime/video.py): PyAV decoding, Qwen2.5-VL's frame sampling and pixels, the demo clip, the strip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from flashvlm_export.errors import UsageError, cli_spelling
from flashvlm_export.models import qwen2_5_vl
from flashvlm_export.runtime import video
from flashvlm_export.runtime.heatmap import DROPPED_DIM
from flashvlm_export.runtime.strip import KEPT_RGB, clip_strip, strip_cell_origin
from flashvlm_export.runtime.video import demo_frames, even_indices, read_clip, write_clip, write_demo_clip

from ci_skips import unavailable_here

pytest.importorskip("av", reason="PyAV (the `av` package) decodes and writes clips")

STEP = 12  # grey level per frame index in the indexed clip: far above H.264's rounding at crf 18
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
NO_TORCHVISION = unavailable_here(
    "transformers' Qwen2VLVideoProcessor imports torchvision, which is not installed (the registry's wheel is a CUDA build; "
    "scripts/make_video_processor_fixture.py runs it beside a CPU torch); test_read_clip_equals_pinned_... compares instead"
)


@pytest.fixture(scope="module")
def indexed_clip(tmp_path_factory):
    """20 frames at 10 fps, frame i a uniform grey of i * STEP: a decoded frame says which frame it was."""
    frames = np.stack([np.full((64, 64, 3), i * STEP, dtype=np.uint8) for i in range(20)])
    return write_clip(tmp_path_factory.mktemp("clips") / "indexed.mp4", frames, fps=10)


def frame_numbers(shown: np.ndarray) -> list[int]:
    return [int(round(float(frame.mean()) / STEP)) for frame in shown]


def unpatchify_video(flat: torch.Tensor, grid_thw, temporal: int = 2, patch: int = 14, merge: int = 2) -> torch.Tensor:
    """Qwen2VLVideoProcessor.patchify's inverse: (t*h*w, C*T*P*P) -> (1, t*T, C, h*P, w*P)."""
    t, h, w = (int(x) for x in grid_thw)
    x = flat.reshape(1, t, h // merge, w // merge, merge, merge, 3, temporal, patch, patch)
    x = x.permute(0, 1, 7, 6, 2, 4, 8, 3, 5, 9)  # patchify's permute (0, 1, 4, 7, 5, 8, 3, 2, 6, 9), undone
    return x.reshape(1, t * temporal, 3, h * patch, w * patch)


def decoded(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.skipif(not HAS_TORCHVISION, reason=NO_TORCHVISION)
@pytest.mark.parametrize("height,width", [(320, 320), (240, 320)])
def test_read_clip_equals_transformers_video_processor(tmp_path, height, width):
    """Same frames and bitwise-equal pixels: the same torch uint8 resize and float32 normalise, elementwise, on this CPU.

    Square: the processor resizes by itself (size = S*S pixels). Not square: the processor cannot stretch, so its own
    resize op (TorchvisionBackend.resize to S x S) runs first and then the processor with do_resize=False.
    """
    from transformers import Qwen2VLVideoProcessor
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.image_utils import SizeDict
    from transformers.video_utils import VideoMetadata

    side, count = 224, 8
    clip = write_clip(tmp_path / "clip.mp4", demo_frames(18, 320)[:, :height, :width], fps=8)
    ours = read_clip(clip, count, side)
    processor = Qwen2VLVideoProcessor()
    indices = processor.sample_frames(VideoMetadata(total_num_frames=18, fps=8.0), num_frames=count)
    assert ours.indices == [int(i) for i in indices]
    frames = decoded(clip)[ours.indices]  # (F, H, W, 3)
    options = dict(do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    if height == width:
        out = processor(videos=[frames], size={"shortest_edge": side * side, "longest_edge": side * side}, **options)
    else:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        stretched = TorchvisionBackend.resize(processor, video, SizeDict(height=side, width=side), resample=processor.resample)
        out = processor(videos=[stretched.permute(0, 2, 3, 1).numpy()], do_resize=False, **options)
    theirs = unpatchify_video(out["pixel_values_videos"], out["video_grid_thw"][0])
    assert theirs.shape == ours.pixel_values.shape == (1, count, 3, side, side)
    assert torch.equal(theirs, ours.pixel_values)


FIXTURE = Path(__file__).parent / "fixtures" / "qwen_video_processor.npz"  # scripts/make_video_processor_fixture.py


def _pinned_cases(folder: Path) -> dict:
    """The fixture's clips written back to files, with the processor's indices, settings and pixels (1, F, 3, S, S)."""
    import json

    stored = np.load(FIXTURE)
    settings = json.loads(str(stored["settings"]))
    cases = {}
    for name in ("square", "wide"):
        clip = folder / f"{name}.mp4"
        clip.write_bytes(stored[f"{name}_clip"].tobytes())
        pixels = unpatchify_video(torch.from_numpy(stored[f"{name}_pixel_values_videos"]), stored[f"{name}_video_grid_thw"][0])
        cases[name] = (clip, [int(i) for i in stored[f"{name}_indices"]], pixels)
    return settings, cases


def _levels(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """|ours - theirs| in uint8 grey levels: a normalised value is (level / 255 - mean) / std per channel."""
    std = torch.tensor(qwen2_5_vl.IMAGE_STD).view(1, 1, 3, 1, 1)
    return (ours - theirs).abs() * std * 255


def _pinned_verdict(folder: Path) -> list[str]:
    """What differs between read_clip and the pinned processor output: [] on a match.

    Indices exact (integers). Pixels within ONE_LEVEL per element and MEAN_LEVEL on average: the clip's bytes are
    pinned and H.264 decodes bit-exactly, but the rgb24 conversion (swscale) and torch's uint8 antialiased bicubic
    resize have per-CPU kernels (x86 SIMD; a generic one elsewhere); each rounds to whole levels, so another CPU may
    put a pixel one level off. Where the fixture was made (and on this machine) the difference is 0.
    """
    settings, cases = _pinned_cases(folder)
    wrong = []
    for name, (clip, indices, theirs) in cases.items():
        ours = read_clip(clip, settings["frames"], settings["side"])
        if ours.indices != indices:
            wrong.append(f"{name}: frames {ours.indices}, the processor's {indices}")
            continue
        levels = _levels(ours.pixel_values, theirs)
        if levels.max() > ONE_LEVEL or levels.mean() > MEAN_LEVEL:
            wrong.append(f"{name}: pixels off by up to {levels.max():.2f} levels (mean {levels.mean():.3f})")
    return wrong


ONE_LEVEL = 1 + 1e-3  # one uint8 level, plus float32 rounding of the normalised value (~1e-5 level)
MEAN_LEVEL = 0.25  # a kernel that rounds differently moves some pixels (0.12 levels on average, planted below), not all


def test_read_clip_equals_pinned_qwen_video_processor_output(tmp_path):
    """read_clip on the fixture's clips against Qwen2VLVideoProcessor's output pinned where torchvision imported.

    Runs without torchvision (the live comparison above needs it). Square: the processor resized by itself; wide
    (60 x 80): its own resize op stretched the frames first, as for the live test.
    """
    assert _pinned_verdict(tmp_path) == []


def _shifted_sampling(total, frames):
    return [min(i + 1, total - 1) for i in even_indices(total, frames)]


def _resize(**options):
    def resize(frames, size):
        return torch.nn.functional.interpolate(frames, size=[size, size], align_corners=False, **options)

    return resize


def _float_resize(frames, size):
    """The same bicubic antialiased resize computed in float and rounded: another kernel's rounding."""
    resized = torch.nn.functional.interpolate(
        frames.float(), size=[size, size], mode="bicubic", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


_RESIZE, _NORMALIZE = video.resize_frames, video.normalize_frames  # the real ones, for faults built on them
PINNED_FAULTS = {
    "frames shifted by one": ("even_indices", _shifted_sampling, "frames [1, 3, 6, 8]"),
    "bilinear resize": ("resize_frames", _resize(mode="bilinear", antialias=True), "pixels off"),
    "no antialias": ("resize_frames", _resize(mode="bicubic", antialias=False), "pixels off"),
    "one level brighter": (
        "resize_frames",
        lambda frames, size: (_RESIZE(frames, size).int() + 1).clamp(0, 255).to(torch.uint8),
        "pixels off",
    ),
    "channels BGR": ("normalize_frames", lambda frames, settings: _NORMALIZE(frames.flip(1), settings), "pixels off"),
    "ImageNet mean and std": (
        "normalize_frames",
        lambda frames, settings: _NORMALIZE(
            frames, {**settings, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
        ),
        "pixels off",
    ),
}


@pytest.mark.parametrize("fault", list(PINNED_FAULTS))
def test_pinned_processor_comparison_catches_a_planted_fault(fault, tmp_path, monkeypatch):
    name, replacement, fragment = PINNED_FAULTS[fault]
    monkeypatch.setattr(video, name, replacement)
    wrong = _pinned_verdict(tmp_path)
    assert len(wrong) == 2 and all(fragment in line for line in wrong), wrong


def test_pinned_processor_tolerance_admits_another_kernels_rounding(tmp_path, monkeypatch):
    """The tolerance is not tighter than its reason: the float kernel's rounding (some pixels one level off) passes."""
    monkeypatch.setattr(video, "resize_frames", _float_resize)
    settings, cases = _pinned_cases(tmp_path)
    clip, _, theirs = cases["square"]
    levels = _levels(read_clip(clip, settings["frames"], settings["side"]).pixel_values, theirs)
    assert (levels > 0.5).any() and _pinned_verdict(tmp_path) == []


def test_qwen_mean_and_std_are_transformers_video_defaults():
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # Qwen2VLVideoProcessor's image_mean/std

    assert tuple(qwen2_5_vl.IMAGE_MEAN) == tuple(OPENAI_CLIP_MEAN)
    assert tuple(qwen2_5_vl.IMAGE_STD) == tuple(OPENAI_CLIP_STD)


def test_even_sampling_picks_qwens_frame_indices(indexed_clip):
    clip = read_clip(indexed_clip, 6, 56)
    assert clip.indices == [0, 3, 6, 10, 13, 16] == even_indices(20, 6)
    assert frame_numbers(clip.shown) == clip.indices  # the decoded frames are those frames, in time order
    assert clip.timestamps == pytest.approx([i / 10 for i in clip.indices])
    assert (clip.source_fps, clip.effective_fps, clip.total_frames) == (10.0, pytest.approx(6 / 20 * 10), 20)


def test_even_indices_are_qwens_float_arange_values_but_always_f_of_them():
    for total, frames in [(20, 6), (18, 8), (300, 32), (17, 14), (49, 44)]:
        qwen = [int(i) for i in torch.arange(0, total, total / frames).int()]  # Qwen2VLVideoProcessor.sample_frames
        assert even_indices(total, frames) == qwen[:frames]
    assert len(torch.arange(0, 17, 17 / 14)) == 15 and len(even_indices(17, 14)) == 14  # the float arange's extra index


def test_fps_sampling_takes_frames_at_one_over_fps_from_the_start(indexed_clip):
    clip = read_clip(indexed_clip, 4, 56, fps=2.5)
    assert clip.indices == [0, 4, 8, 12]
    assert frame_numbers(clip.shown) == [0, 4, 8, 12]
    assert clip.timestamps == pytest.approx([0.0, 0.4, 0.8, 1.2])
    assert clip.effective_fps == 2.5


def test_pixels_are_normalised_frames_at_the_export_size(indexed_clip):
    clip = read_clip(indexed_clip, 2, 56)
    mean = torch.tensor(qwen2_5_vl.IMAGE_MEAN)[:, None, None]
    std = torch.tensor(qwen2_5_vl.IMAGE_STD)[:, None, None]
    expected = (torch.from_numpy(clip.shown).permute(0, 3, 1, 2).double() / 255 - mean) / std
    assert clip.pixel_values.dtype == torch.float32 and clip.shown.shape == (2, 56, 56, 3)
    assert torch.allclose(clip.pixel_values[0].double(), expected, atol=1e-5)  # float32 against float64 rounding


def test_a_checkpoints_processor_config_sets_mean_and_std(indexed_clip, tmp_path):
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}')
    clip = read_clip(indexed_clip, 2, 56, model_dir=tmp_path)
    assert clip.processor.endswith("preprocessor_config.json")
    expected = torch.from_numpy(clip.shown).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(clip.pixel_values[0], expected, atol=1e-6)


def _truncated(folder, source):
    path = folder / "truncated.mp4"
    path.write_bytes(source.read_bytes()[:200])
    return path


BAD_INPUTS = {
    "missing": (lambda d, c: d / "nope.mp4", {}, "does not exist"),
    "text": (lambda d, c: (d / "notes.mp4").write_text("hello\n") and d / "notes.mp4", {}, "not a video FFmpeg can read"),
    "png": (
        lambda d, c: __import__("PIL.Image").Image.new("RGB", (8, 8)).save(d / "still.png") or d / "still.png",
        {},
        "still image",
    ),
    "truncated": (lambda d, c: _truncated(d, c), {}, "not a video FFmpeg can read"),
    "too few frames": (lambda d, c: c, {"frames": 22}, "has 20 frames but the graph takes 22"),
    "fps too low": (lambda d, c: c, {"frames": 4, "fps": 1}, "samples 2 frames"),
    "fps above the clip's": (lambda d, c: c, {"fps": 30}, "above"),
    "fps zero": (lambda d, c: c, {"fps": 0}, "not a positive rate"),
    "odd frames": (lambda d, c: c, {"frames": 7}, "even"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_clip_input_is_one_line_usage_error(case, indexed_clip, tmp_path):
    make, options, fragment = BAD_INPUTS[case]
    path = make(tmp_path, indexed_clip)
    before = sorted(p.name for p in tmp_path.iterdir())
    with cli_spelling(), pytest.raises(UsageError) as caught:
        read_clip(path, **{"frames": 4, "size": 56, **options})
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message and fragment in message, message
    assert "--" in message  # names the flag (--video, --frames or --fps)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_demo_clip_refuses_overwrite_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = write_demo_clip(tmp_path / "demo.mp4", frames=4, size=64)
    data = path.read_bytes()
    with pytest.raises(UsageError, match="exists"):
        write_demo_clip(path, frames=6, size=64)
    assert path.read_bytes() == data
    write_demo_clip(path, frames=6, size=64, force=True)
    assert read_clip(path, 6, 64).total_frames == 6

    import av

    def broken(*args, **kwargs):
        raise RuntimeError("planted encoder failure")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", broken)
    with pytest.raises(RuntimeError, match="planted"):
        write_demo_clip(tmp_path / "other.mp4", frames=4, size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.mp4"]


def test_demo_clip_is_deterministic_and_has_a_late_object():
    frames = demo_frames(8, 64)
    assert np.array_equal(frames, demo_frames(8, 64))
    green = [(np.all(f == (40, 170, 70), axis=-1)).sum() for f in frames]
    assert all(g == 0 for g in green[:4]) and all(g > 0 for g in green[4:])
    red_x = [np.nonzero(np.all(f == (220, 30, 40), axis=-1))[1].mean() for f in frames]
    assert red_x == sorted(red_x)  # the ball moves left to right


def test_strip_outlines_kept_cells_and_dims_dropped_ones():
    colour = np.array([200, 100, 50], dtype=np.uint8)
    frames = np.broadcast_to(colour, (4, 64, 64, 3)).copy()  # 2 temporal groups, 4 x 4 tokens of 16 px
    kept = [[0, 5], [15]]
    picture = np.asarray(clip_strip(frames, kept, grid_side=4, timestamps=[0.0, 0.1, 0.2, 0.3], columns=1))
    dim = tuple(int(v) for v in np.round(colour * DROPPED_DIM))
    for group, token, is_kept in [(0, 5, True), (0, 1, False), (1, 15, True), (1, 5, False)]:
        x, y = strip_cell_origin(group, token, grid_side=4, side=64, groups=2, columns=1)
        assert tuple(picture[y + 8, x + 8]) == (tuple(colour) if is_kept else dim)
        assert tuple(picture[y, x + 8]) == (KEPT_RGB if is_kept else dim)
    with pytest.raises(ValueError, match="temporal groups"):
        clip_strip(frames[:3], kept, grid_side=4)


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_demo_clip_in_other_containers_reads_back(tmp_path, suffix):
    """Matroska does not store a frame count (read_clip counts by decoding); AVI holds MPEG-4 Part 2."""
    clip = read_clip(write_demo_clip(tmp_path / f"demo{suffix}", frames=6, size=64), 4, 56)
    assert clip.total_frames == 6 and clip.indices == [0, 1, 3, 4] and clip.source_fps == 8.0
