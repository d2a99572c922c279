"""A user's picture (runtime/photo.py): every mode Pillow opens reaches the model as an image viewer shows it; a
picture too large, a folder or a FIFO is one line; a photo stretched to the graph's square is said so.

Each expected picture is computed here with numpy from the samples the test wrote (the 16-bit PNGs by a PNG
writer in this file, not Pillow's), never by the code under test.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from flashvlm_export.errors import UsageError, cli_spelling
from flashvlm_export.models.registry import get_spec
from flashvlm_export.runtime.photo import read_image

from conftest import expect_one_line

WHITE = 255


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, samples: np.ndarray, color_type: int, extra: bytes = b"", size: tuple[int, int] | None = None):
    """A 16-bit PNG (PNG spec: big-endian samples, filter 0 per row): grey 0, RGB 2, grey+alpha 4, RGBA 6.
    `size` (width, height) overrides the header's, for a header-only file."""
    h, w = samples.shape[:2]
    rows = samples.astype(">u2").reshape(h, -1).tobytes()
    stride = len(rows) // h
    data = b"".join(b"\0" + rows[i * stride : (i + 1) * stride] for i in range(h))
    width, height = size or (w, h)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    body = _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over opaque white (transformers' convert_to_rgb, its numpy form), rounded."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb.astype(np.float64) * a + WHITE * (1 - a))


def grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def loaded(path) -> np.ndarray:
    return np.asarray(read_image(path)).astype(np.int64)


RNG = np.random.default_rng(31)
SHAPE = (6, 9)  # (height, width): not square, so a transposed picture would show


# ---------------------------------------------------------------- 16-bit, written by this file's PNG writer


def test_a_16_bit_grey_png_keeps_its_high_byte_where_pillows_convert_turns_it_white(tmp_path):
    """The issue's case: mode I;16. 0..65535 -> v >> 8 (docs/RUN.md); exact: integer shifts."""
    samples = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    samples[0, :4] = (0, 257, 65280, 65535)  # black, 1, 255 (replicated 8-bit values map back exactly), white
    path = write_png16(tmp_path / "grey16.png", samples, 0)
    with Image.open(path) as image:
        assert image.mode == "I;16" and np.asarray(image.convert("RGB"))[samples >= 255].min() == WHITE  # old: blank
    assert np.array_equal(loaded(path), grey3(samples >> 8))
    assert loaded(path)[0, :4, 0].tolist() == [0, 1, 255, 255]


def test_a_48_bit_rgb_png_maps_like_every_16_bit_picture(tmp_path):
    samples = RNG.integers(0, 65536, (*SHAPE, 3), dtype=np.uint16)
    assert np.array_equal(loaded(write_png16(tmp_path / "rgb48.png", samples, 2)), samples >> 8)


@pytest.mark.parametrize("color_type, bands", [(4, 2), (6, 4)], ids=["grey+alpha 32-bit", "RGBA 64-bit"])
def test_16_bit_transparency_is_composited_on_white(tmp_path, color_type, bands):
    """Within 1: Pillow's alpha_composite is fixed-point, the expectation float then rounded."""
    samples = RNG.integers(0, 65536, (*SHAPE, bands), dtype=np.uint16)
    samples[0, 0, -1], samples[0, 1, -1] = 0, 65535  # one clear pixel (white), one opaque (its colour)
    colour = samples[..., :-1] >> 8
    expected = on_white(colour if bands == 4 else grey3(colour[..., 0]), samples[..., -1] >> 8)
    got = loaded(write_png16(tmp_path / "alpha16.png", samples, color_type))
    assert np.abs(got - expected).max() <= 1
    assert got[0, 0].tolist() == [WHITE] * 3


def test_a_transparent_grey_level_of_a_16_bit_png_is_white(tmp_path):
    """tRNS on a 16-bit grey PNG: the pixels of that level are transparent (composited on white), the others v >> 8."""
    samples = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    clear = int(samples[2, 3])
    path = write_png16(tmp_path / "trns16.png", samples, 0, _chunk(b"tRNS", struct.pack(">H", clear)))
    expected = grey3(np.where(samples == clear, WHITE, samples >> 8))
    assert np.array_equal(loaded(path), expected)


# ---------------------------------------------------------------- the other modes, written by Pillow from known samples


def _u8(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _palette_case():
    palette = _u8((256, 3))
    index = _u8(SHAPE)
    clear = int(index[1, 1])
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    rgb = palette[index].astype(np.float64)
    return image, {"transparency": clear}, np.where((index == clear)[..., None], WHITE, rgb), 0


def _mode_cases():
    """mode -> (the picture, save options, the expected RGB from the samples, tolerance)."""
    bits = RNG.integers(0, 2, SHAPE).astype(bool)
    grey, la, rgba, cmyk, ycc = _u8(SHAPE), _u8((*SHAPE, 2)), _u8((*SHAPE, 4)), _u8((*SHAPE, 4)), _u8((*SHAPE, 3))
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    luma, cb, cr = (ycc[..., i].astype(np.float64) - (0, 128, 128)[i] for i in range(3))
    # 8-bit steps: min..max stretches put step m at exactly m (steps of an exactly representable size)
    steps = RNG.integers(0, 256, SHAPE)
    steps[0, 0], steps[0, 1] = 0, 255
    return {
        "1": (Image.fromarray(bits), {}, grey3(np.where(bits, WHITE, 0)), 0),
        "L": (Image.fromarray(grey, "L"), {}, grey3(grey), 0),
        "LA": (Image.fromarray(la, "LA"), {}, on_white(grey3(la[..., 0]), la[..., 1]), 1),
        "P": _palette_case(),
        "RGBA": (Image.fromarray(rgba, "RGBA"), {}, on_white(rgba[..., :3], rgba[..., 3]), 1),
        # no ICC profile: the naive inversion every viewer falls back to, R = (255 - C)(255 - K) / 255
        "CMYK": (Image.fromarray(cmyk, "CMYK"), {}, np.round(np.stack([(255 - v) * (255 - k) / 255 for v in (c, m, y)], -1)), 1),
        # JFIF's full-range YCbCr -> RGB (ITU-T T.871), Pillow's fixed point within 1
        "YCbCr": (
            Image.fromarray(ycc, "YCbCr"),
            {},
            np.clip(np.round(np.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], -1)), 0, 255),
            1,
        ),
        "I 16-bit": (Image.fromarray((steps * 257).astype(np.int32), "I"), {}, grey3(steps), 0),
        "I 32-bit": (Image.fromarray((steps * 1000 - 1000).astype(np.int32), "I"), {}, grey3(steps), 0),
        "F in 0..1": (Image.fromarray((steps / 255).astype(np.float32), "F"), {}, grey3(steps), 0),
        "F any range": (Image.fromarray((steps * 2.0 - 7.5).astype(np.float32), "F"), {}, grey3(steps), 0),
    }


MODES = list(_mode_cases())


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_pillow_opens_reaches_the_model_as_a_viewer_shows_it(tmp_path, mode):
    """Exact where the rule is integer or lands on integers (1, L, P, I, F); within 1 where Pillow works in fixed
    point (compositing, CMYK, YCbCr). PNG, or TIFF for the modes PNG cannot hold, keeps each mode as written."""
    image, options, expected, tolerance = _mode_cases()[mode]
    path = tmp_path / ("picture.png" if image.mode in ("1", "L", "LA", "P", "RGBA") else "picture.tif")
    image.save(path, **options)
    with Image.open(path) as reopened:
        assert reopened.mode == image.mode  # the mode under test is the one read back
    got = loaded(path)
    assert got.shape == (*SHAPE, 3) and np.abs(got - expected).max() <= tolerance, np.abs(got - expected).max()


def test_a_float_picture_with_nan_shows_it_black_and_a_flat_one_black(tmp_path):
    values = np.linspace(0, 1, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    values[3, 3] = np.nan
    Image.fromarray(values, "F").save(tmp_path / "nan.tif")
    assert loaded(tmp_path / "nan.tif")[3, 3].tolist() == [0, 0, 0]
    Image.fromarray(np.full(SHAPE, 42.0, dtype=np.float32), "F").save(tmp_path / "flat.tif")
    assert loaded(tmp_path / "flat.tif").max() == 0


# ---------------------------------------------------------------- EXIF orientation

# Exif 2.32, tag 274: how the stored rows must be turned to show the picture upright
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored about the main diagonal
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # mirrored about the other diagonal
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", list(ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _u8((*SHAPE, 3))
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(stored).save(tmp_path / "oriented.png", exif=exif)
    assert np.array_equal(loaded(tmp_path / "oriented.png"), ORIENTED[orientation](stored))


def test_exif_orientation_applies_to_a_16_bit_picture_too(tmp_path):
    samples = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    exif = Image.Exif()
    exif[274] = 6
    image = Image.fromarray(samples)
    assert image.mode == "I;16"
    image.save(tmp_path / "oriented16.png", exif=exif)
    assert np.array_equal(loaded(tmp_path / "oriented16.png"), np.rot90(grey3(samples >> 8), -1))


def write_tiff_grey(path, data: bytes, width: int, height: int, bits: int, photometric: int = 1):
    """A one-band, one-strip, uncompressed little-endian TIFF (TIFF 6.0: header, the strip, then the IFD)."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, photometric), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, len(data))]  # fmt: skip
    entries = b"".join(struct.pack("<HHI", tag, kind, 1) + struct.pack("<I" if kind == 4 else "<Hxx", v) for tag, kind, v in tags)
    ifd = struct.pack("<H", len(tags)) + entries + b"\0" * 4
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd)
    return path


def test_a_12_bit_tiff_keeps_its_high_8_bits_not_16(tmp_path):
    """Pillow opens a 12-bit TIFF as I;16 holding 0..4095; v >> 8 of that was a near-black picture. Exact: integer
    shifts of the samples packed here (two 12-bit samples in three bytes, most significant bit first; each row
    starts on a byte, TIFF 6.0)."""
    samples = RNG.integers(0, 4096, SHAPE)
    samples[0, :2] = (0, 4095)
    padded = np.pad(samples, ((0, 0), (0, SHAPE[1] % 2)))  # an odd row: a zero sample, its half byte cut below
    a, b = padded[:, ::2], padded[:, 1::2]
    rows = np.stack([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255], -1).astype(np.uint8).reshape(SHAPE[0], -1)
    packed = rows[:, : (SHAPE[1] * 12 + 7) // 8].tobytes()
    path = write_tiff_grey(tmp_path / "grey12.tif", packed, SHAPE[1], SHAPE[0], 12)
    with Image.open(path) as image:
        assert image.mode == "I;16" and np.asarray(image).max() == 4095  # the case: 12 bits in a 16-bit mode
    assert np.array_equal(loaded(path), grey3(samples >> 4))


def test_a_16_bit_white_is_zero_tiff_is_inverted_as_pillow_inverts_its_8_bit_kin(tmp_path):
    """PhotometricInterpretation 0: 0 is white. Pillow inverts an 8-bit one itself (the independent check of the
    rule) but not a 16-bit one; exact: integer arithmetic."""
    samples = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    path = write_tiff_grey(tmp_path / "wiz16.tif", samples.astype("<u2").tobytes(), SHAPE[1], SHAPE[0], 16, photometric=0)
    assert np.array_equal(loaded(path), grey3((65535 - samples) >> 8))
    eight = (samples >> 8).astype(np.uint8)
    path8 = write_tiff_grey(tmp_path / "wiz8.tif", eight.tobytes(), SHAPE[1], SHAPE[0], 8, photometric=0)
    with Image.open(path8) as image:
        assert np.array_equal(np.asarray(image), 255 - eight)  # Pillow's own reading of the same rule
    assert np.array_equal(loaded(path8), grey3(255 - eight))


def test_a_palette_with_an_alpha_per_entry_is_composited_on_white(tmp_path):
    """tRNS as bytes (an alpha for each palette entry, not one clear index): within 1, Pillow's fixed point."""
    palette, alpha = _u8((4, 3)), np.array([0, 90, 200, 255], dtype=np.uint8)
    index = RNG.integers(0, 4, SHAPE).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "alpha.png", transparency=alpha.tobytes())
    got = loaded(tmp_path / "alpha.png")
    assert np.abs(got - on_white(palette[index], alpha[index])).max() <= 1
    assert (got[index == 0] == WHITE).all()


@pytest.mark.parametrize("suffix", ["gif", "png", "webp", "tif"], ids=["GIF", "APNG", "WebP", "TIFF pages"])
def test_an_animation_or_a_multi_page_file_is_read_as_its_first_frame(tmp_path, suffix):
    frames = [_u8((*SHAPE, 3)) for _ in range(3)]
    if suffix == "gif":  # GIF holds 256 colours: frames of few grey levels survive it exactly
        frames = [grey3(np.full(SHAPE, 40 * (i + 1), dtype=np.uint8)) for i in range(3)]
    pictures = [Image.fromarray(f) for f in frames]
    path = tmp_path / f"frames.{suffix}"
    pictures[0].save(path, save_all=True, append_images=pictures[1:], **({"lossless": True} if suffix == "webp" else {}))
    with Image.open(path) as image:
        assert getattr(image, "n_frames", 1) == 3  # the file does hold the three frames
    assert np.array_equal(loaded(path), frames[0])


def test_a_1_bit_picture_with_an_exif_rotation_is_turned(tmp_path):
    bits = RNG.integers(0, 2, SHAPE).astype(bool)
    exif = Image.Exif()
    exif[274] = 8
    Image.fromarray(bits).save(tmp_path / "bits.tif", exif=exif)
    with Image.open(tmp_path / "bits.tif") as image:
        assert image.mode == "1" and image.getexif()[274] == 8
    assert np.array_equal(loaded(tmp_path / "bits.tif"), np.rot90(grey3(np.where(bits, WHITE, 0)), 1))


@pytest.mark.parametrize("suffix", ["png", "jpg", "gif", "bmp", "tif"])
def test_a_truncated_picture_is_refused_in_one_line_that_says_so(tmp_path, suffix):
    """Not a picture half decoded: Pillow's reason ('image file is truncated') is in the line."""
    Image.fromarray(_u8((64, 64, 3)) if suffix != "gif" else _u8((64, 64))).save(tmp_path / f"whole.{suffix}")
    data = (tmp_path / f"whole.{suffix}").read_bytes()
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with cli_spelling(), pytest.raises(UsageError) as caught:
        read_image(path)
    message = str(caught.value)
    assert f"--image {path} is not an image Pillow can read" in message, message
    assert "truncated" in message.split(str(path), 1)[1], message  # Pillow's reason, not the test's folder name
    assert "\n" not in message


def test_pillows_own_check_turned_off_means_no_limit(tmp_path, monkeypatch):
    """PIL.Image.MAX_IMAGE_PIXELS = None is Pillow's documented switch: a program that set it is not refused every
    picture (a limit of 0)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    picture = _u8((*SHAPE, 3))
    Image.fromarray(picture).save(tmp_path / "small.png")
    assert np.array_equal(loaded(tmp_path / "small.png"), picture)
    with pytest.raises(UsageError, match="over the limit of 53 "):
        read_image(tmp_path / "small.png", max_pixels=53)  # an explicit limit still holds


# ---------------------------------------------------------------- too many pixels


def test_a_huge_png_is_refused_in_one_line_before_it_is_decoded(tmp_path):
    """The issue's case: a 20000 x 20000 PNG (only its header is read: the file holds one row)."""
    path = write_png16(tmp_path / "huge.png", np.zeros((1, 1), dtype=np.uint16), 0, size=(20000, 20000))
    with cli_spelling(), pytest.raises(UsageError) as caught:
        read_image(path)
    message = str(caught.value)
    limit = Image.MAX_IMAGE_PIXELS
    assert "\n" not in message and "20000x20000 = 400,000,000 pixels" in message, message
    assert f"limit of {limit:,}" in message and "--max-image-pixels 400000000" in message, message


@pytest.mark.parametrize("factor", [1.5, 3], ids=["between Pillow's warning and its error", "past Pillow's error"])
def test_the_pixel_limit_is_pillows_by_default_and_the_option_raises_it_without_pillows_warning(tmp_path, monkeypatch, factor):
    """Pillow's limit lowered to 1000 px stands for its real one: a picture `factor` times past it is refused by
    default, and read with no warning (nor Pillow's error) when the option allows its size."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    width = int(1000 * factor) // 10
    picture = _u8((10, width, 3))
    Image.fromarray(picture).save(tmp_path / "big.png")
    with pytest.raises(UsageError, match=rf"{width}x10 = {10 * width:,} pixels, over the limit of 1,000 "):
        read_image(tmp_path / "big.png")
    with pytest.raises(UsageError, match=r"over the limit of [\d,]+ \(the max_image_pixels= given\)"):
        read_image(tmp_path / "big.png", max_pixels=10 * width - 1)  # the user's limit is named as theirs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        assert np.array_equal(np.asarray(read_image(tmp_path / "big.png", max_pixels=10 * width)), picture)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's own setting is as it was


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_a_pixel_limit_that_is_not_a_count_is_refused(tmp_path, bad):
    Image.new("RGB", (4, 4)).save(tmp_path / "small.png")
    with pytest.raises(UsageError, match="max_image_pixels"):
        read_image(tmp_path / "small.png", max_pixels=bad)


# ---------------------------------------------------------------- a folder, a FIFO: named as such


def _not_a_file(tmp_path, kind):
    path = tmp_path / f"input.{kind}"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    return path


def _read_clip(path):
    from flashvlm_export.runtime.video import read_clip

    read_clip(path, frames=2, size=28)


def _read_gguf(path):
    from flashvlm_export.runtime.llama_cpp import read_gguf

    read_gguf(path)


READERS = {"--image": read_image, "--video": _read_clip, "--gguf": _read_gguf}


@pytest.mark.parametrize("kind, said", [("folder", "is a folder, not a regular file"), ("fifo", "is a FIFO")])
@pytest.mark.parametrize("flag", list(READERS))
def test_a_folder_or_fifo_given_as_an_input_file_is_named_so_not_called_missing(tmp_path, flag, kind, said):
    if flag == "--video":
        pytest.importorskip("av")
    path = _not_a_file(tmp_path, kind)
    with cli_spelling(), pytest.raises(UsageError) as caught:
        READERS[flag](path)
    message = str(caught.value)
    assert f"{flag} {path} {said}" in message and "does not exist" not in message and "\n" not in message, message
    assert "file" in message.split(";", 1)[1]  # what to pass instead: a file


# ---------------------------------------------------------------- a photo or clip stretched to the graph's square


@pytest.mark.parametrize("source", ["--video", "--demo-video", "--demo-image"])
def test_a_pixel_limit_without_a_users_picture_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, source):
    """--max-image-pixels bounds an --image; with a clip or the demo picture it is refused, not silently ignored (the
    demo picture was once written, then refused as '--image ... is over the limit')."""
    target = tmp_path / ("demo.png" if source == "--demo-image" else "clip.mp4")
    argv = ["run", "--graph", str(tmp_path / "g.onnx"), "--question", "q", source, str(target), "--max-image-pixels", "10"]
    expect_one_line(capsys, argv, "--max-image-pixels 10 limits the size of a picture passed with --image FILE")
    assert not target.exists()


def test_a_qwen_photo_of_another_aspect_is_said_to_be_stretched_and_a_square_one_is_not(tmp_path):
    from flashvlm_export.runtime.image import demo_picture, prepare_image

    qwen = get_spec("qwen2.5-vl-tiny")
    side = qwen.image_size
    demo_picture(200).save(tmp_path / "wide.png")  # 200 x 150
    demo_picture(200).resize((150, 150)).save(tmp_path / "square.png")
    note = prepare_image(tmp_path / "wide.png", qwen).note
    assert "200x150 px" in note and f"{side}x{side}" in note and "stretched" in note and "\n" not in note, note
    assert prepare_image(tmp_path / "square.png", qwen).note == ""
    assert prepare_image(tmp_path / "wide.png", get_spec("llava15-tiny")).note == ""  # CLIP crops, as its processor does


def test_a_clip_of_another_aspect_reports_its_frame_size_for_the_stretch_note(tmp_path):
    pytest.importorskip("av")
    from flashvlm_export.runtime.image import stretch_note
    from flashvlm_export.runtime.video import read_clip, write_clip

    path = write_clip(tmp_path / "wide.mp4", np.zeros((4, 48, 64, 3), dtype=np.uint8), fps=4)
    clip = read_clip(path, frames=2, size=28)
    assert clip.frame_size == (64, 48)
    qwen = get_spec("qwen2.5-vl-tiny")
    assert "the clip is 64x48 px" in stretch_note(qwen, *clip.frame_size, what="clip")


def _writers():
    from flashvlm_export.artifacts.placement import check_new_file
    from flashvlm_export.runtime import clip_run
    from flashvlm_export.runtime.api import write_demo_image

    def clip(path, force):
        pytest.importorskip("av")
        from flashvlm_export.runtime.video import write_clip

        write_clip(path, np.zeros((2, 16, 16, 3), dtype=np.uint8), force=force)

    return {  # flag -> (a folder's name, what writes or checks it)
        "--heatmap": ("kept.png", lambda p, force: check_new_file(p, "heatmap", ".png", force)),
        "--out": ("llm.gguf", lambda p, force: check_new_file(p, "out", ".gguf", force)),
        "--demo-image": ("demo.png", lambda p, force: write_demo_image(str(p), force, log=lambda _: None)),
        "--demo-video": ("demo.mp4", clip),
        "--demo-video ": ("demo.mkv", clip_run._check_demo_clip),  # run's check before anything is loaded
        "--heatmap ": ("strip.png", clip_run._check_strip),  # a clip's strip
    }


@pytest.mark.parametrize("force", [False, True], ids=["without --force", "with --force"])
@pytest.mark.parametrize("flag", list(_writers()))
def test_a_folder_where_a_file_is_to_be_written_is_named_so_with_or_without_force(tmp_path, flag, force):
    """Not 'already exists; pass --force' (and then a traceback when --force tries to replace the folder)."""
    name, write = _writers()[flag]
    folder = tmp_path / name
    (folder / "inside").mkdir(parents=True)
    with cli_spelling(), pytest.raises(UsageError) as caught:
        write(folder, force)
    message = str(caught.value)
    assert f"{flag.strip()} {folder} is a folder, not a file" in message and "\n" not in message, message
    assert (folder / "inside").is_dir()  # the folder is as it was
