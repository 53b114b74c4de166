"""Tests for dip_engine.io: decoding every mode, refusing bad uploads, masks, saving, padding."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dip_engine.errors import InputError
from dip_engine.io import (
    ImageInfo,
    crop,
    inspect_image,
    load_image,
    load_mask,
    pad_to_multiple,
    resize_image,
    save_image,
)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int = 32, height: int = 24) -> np.ndarray:
    """uint8 (H, W) with distinct values in both directions."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 7 + y * 3) % 256).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def assert_code(excinfo: pytest.ExceptionInfo[InputError], code: str) -> None:
    assert excinfo.value.code == code, (excinfo.value.code, excinfo.value.message)


# -- torch-free ----------------------------------------------------------------


def test_io_and_validation_import_without_torch():
    code = (
        "import sys, dip_engine.io, dip_engine.validation; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- modes -----------------------------------------------------------------------


def test_grayscale_l_stays_one_channel_with_exact_values():
    raw = gradient()
    loaded = load_image(encode(Image.fromarray(raw)))
    assert loaded.pixels.shape == (24, 32, 1)
    assert loaded.pixels.dtype == np.float32
    assert loaded.alpha is None
    np.testing.assert_array_equal(loaded.pixels[..., 0], raw.astype(np.float32) / 255)
    assert loaded.info == ImageInfo(width=32, height=24, mode="L", channels=1, has_alpha=False,
                                    bit_depth=8, format="PNG")


def test_bilevel_mode_1_loads_as_zero_or_one():
    raw = gradient() > 100
    loaded = load_image(encode(Image.fromarray(raw)))
    assert loaded.info.mode == "1"
    assert loaded.pixels.shape == (24, 32, 1)
    np.testing.assert_array_equal(loaded.pixels[..., 0], raw.astype(np.float32))


def test_la_splits_alpha_from_gray():
    gray, alpha = gradient(), 255 - gradient()
    loaded = load_image(encode(Image.fromarray(np.stack([gray, alpha], axis=-1))))
    assert loaded.info.mode == "LA" and loaded.info.has_alpha and loaded.info.channels == 1
    assert loaded.pixels.shape == (24, 32, 1)
    np.testing.assert_array_equal(loaded.pixels[..., 0], gray / np.float32(255))
    np.testing.assert_array_equal(loaded.alpha, alpha / np.float32(255))


def test_rgb_and_rgba():
    rgb = np.stack([gradient(), 255 - gradient(), np.full((24, 32), 9, np.uint8)], axis=-1)
    loaded = load_image(encode(Image.fromarray(rgb)))
    assert loaded.pixels.shape == (24, 32, 3) and loaded.alpha is None
    np.testing.assert_array_equal(loaded.pixels, rgb / np.float32(255))

    rgba = np.concatenate([rgb, gradient()[..., None]], axis=-1)
    loaded = load_image(encode(Image.fromarray(rgba)))
    assert loaded.info.has_alpha and loaded.info.channels == 3
    np.testing.assert_array_equal(loaded.pixels, rgb / np.float32(255))
    np.testing.assert_array_equal(loaded.alpha, gradient() / np.float32(255))


def test_palette_without_transparency_becomes_rgb():
    image = Image.fromarray(np.stack([gradient()] * 3, axis=-1)).convert("P", palette=Image.Palette.ADAPTIVE)
    loaded = load_image(encode(image))
    assert loaded.info.mode == "P" and loaded.info.channels == 3 and not loaded.info.has_alpha
    assert loaded.pixels.shape == (24, 32, 3) and loaded.alpha is None
    expected = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(loaded.pixels, expected)


def test_palette_with_transparency_keeps_alpha():
    image = Image.new("P", (20, 18))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 10, 18))  # left half index 1 (blue), right half index 0 (red)
    loaded = load_image(encode(image, transparency=0))
    assert loaded.info.has_alpha and loaded.info.channels == 3
    assert loaded.alpha is not None and loaded.alpha.shape == (18, 20)
    assert (loaded.alpha[:, :10] == 1).all() and (loaded.alpha[:, 10:] == 0).all()
    np.testing.assert_array_equal(loaded.pixels[0, 0], [0, 0, 1])


def test_cmyk_jpeg_becomes_three_channels():
    loaded = load_image(encode(Image.new("CMYK", (24, 20), (0, 255, 0, 0)), "JPEG"))
    assert loaded.info.mode == "CMYK" and loaded.info.format == "JPEG"
    assert loaded.pixels.shape == (20, 24, 3) and loaded.alpha is None
    # Magenta: red and blue high, green low.
    np.testing.assert_allclose(loaded.pixels[10, 12], [1, 0, 1], atol=0.05)


def test_16_bit_png_values_are_exact():
    raw = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    raw[0, 0], raw[0, 1] = 0, 65535
    loaded = load_image(encode(Image.fromarray(raw)))
    assert loaded.info.bit_depth == 16 and loaded.info.channels == 1
    assert loaded.info.mode.startswith("I;16")
    assert loaded.pixels.shape == (30, 40, 1)
    np.testing.assert_array_equal(loaded.pixels[..., 0], raw.astype(np.float32) / np.float32(65535))
    assert loaded.pixels[0, 0, 0] == 0 and loaded.pixels[0, 1, 0] == 1
    # Not quantised to 8 bits: neighbouring 16-bit values stay distinct.
    assert len(np.unique(loaded.pixels)) == raw.size


def test_32_bit_int_and_float_tiffs():
    ints = load_image(encode(Image.new("I", (20, 16), 70000), "TIFF"))
    assert ints.info.mode == "I" and ints.info.bit_depth == 16
    assert ints.pixels.shape == (16, 20, 1) and ints.pixels.max() == 1.0  # clipped

    floats = np.linspace(-0.5, 1.5, 20 * 16, dtype=np.float32).reshape(16, 20)
    loaded = load_image(encode(Image.fromarray(floats), "TIFF"))
    assert loaded.info.mode == "F"
    np.testing.assert_array_equal(loaded.pixels[..., 0], np.clip(floats, 0, 1))


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif, quality=95)

    info = inspect_image(data)
    assert (info.width, info.height) == (20, 40)
    loaded = load_image(data)
    assert loaded.pixels.shape == (40, 20, 3)
    # After a clockwise turn the left band is on top.
    assert loaded.pixels[2, 10, 2] > 0.6 and loaded.pixels[-2, 10, 0] > 0.6


def test_inspect_matches_load_and_accepts_paths_and_streams(tmp_path):
    data = encode(Image.fromarray(gradient()))
    path = tmp_path / "in.png"
    path.write_bytes(data)
    expected = load_image(data).info
    assert inspect_image(path) == expected
    assert inspect_image(str(path)) == expected
    assert inspect_image(io.BytesIO(data)) == expected


# -- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image"),
    ],
)
def test_empty_and_non_image_bytes_are_invalid(data, fragment):
    for reader in (inspect_image, load_image):
        with pytest.raises(InputError, match=fragment) as excinfo:
            reader(data)
        assert_code(excinfo, "invalid_image")


def ico_around(png: bytes) -> bytes:
    """An ICO file whose one entry is ``png`` (ICO entries may be whole PNG files)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def ico_bomb(side: int = 13000) -> bytes:
    """Under a megabyte of ICO around a side x side RGBA PNG of zeros, which Pillow's ICO opener
    decodes inside ``Image.open`` (about 680 MB at 13000). Compressed row by row, so that making
    it costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(1 + 4 * side)  # filter byte + RGBA
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return ico_around(png)


def test_an_ico_bomb_is_refused_before_anything_is_decoded():
    import resource

    bomb = ico_bomb()
    assert len(bomb) < 1_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    started = time.monotonic()
    for reader in (inspect_image, load_image):
        with pytest.raises(InputError, match="not a recognised image") as excinfo:
            reader(bomb)
        assert_code(excinfo, "invalid_image")
    assert time.monotonic() - started < 1.0  # decoding takes seconds
    # Decoding it would have raised the peak by hundreds of MB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000


def test_formats_outside_the_allowlist_are_refused_even_when_small():
    small_ico = encode(Image.fromarray(gradient(16, 16)).convert("RGB"), "ICO")
    with pytest.raises(InputError, match="accepted: PNG, JPEG") as excinfo:
        load_image(small_ico)
    assert_code(excinfo, "invalid_image")
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "PPM", "GIF"):
        assert load_image(encode(Image.fromarray(gradient(16, 16)).convert("RGB"), fmt)).info.width == 16


def test_an_image_between_pillows_limit_and_twice_it_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as a server runs: the refusal must not depend on the caller's filters
        with pytest.raises(InputError) as excinfo:
            load_image(encode(Image.fromarray(gradient(40, 40))))
    assert_code(excinfo, "image_too_large")


def test_truncated_png_is_invalid():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise))
    with pytest.raises(InputError, match="truncated or corrupt") as excinfo:
        inspect_image(data[: len(data) // 2])
    assert_code(excinfo, "invalid_image")


def test_missing_and_empty_files_are_invalid(tmp_path):
    with pytest.raises(InputError, match="cannot read image file") as excinfo:
        load_image(tmp_path / "absent.png")
    assert_code(excinfo, "invalid_image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty") as excinfo:
        load_image(tmp_path / "empty.png")
    assert_code(excinfo, "invalid_image")


def test_max_pixels_is_checked_before_decoding():
    data = encode(Image.fromarray(gradient(32, 24)))
    assert inspect_image(data, max_pixels=32 * 24).width == 32
    with pytest.raises(InputError, match="32x24 px") as excinfo:
        load_image(data, max_pixels=32 * 24 - 1)
    assert_code(excinfo, "image_too_large")
    # A header without any pixel data: refused on size, not as truncated.
    with pytest.raises(InputError) as excinfo:
        inspect_image(png_header_only(5000, 5000), max_pixels=10_000_000)
    assert_code(excinfo, "image_too_large")


def test_pillow_decompression_bomb_limits_become_too_large():
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    side = int(limit**0.5) + 100  # between Pillow's limit and twice it: Pillow only warns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(InputError, match="decompression-bomb") as excinfo:
            inspect_image(png_header_only(side, side))
    assert_code(excinfo, "image_too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InputError) as excinfo:
            inspect_image(png_header_only(side, side))
    assert_code(excinfo, "image_too_large")
    with pytest.raises(InputError) as excinfo:  # above twice the limit: Pillow raises
        inspect_image(png_header_only(2 * side, 2 * side))
    assert_code(excinfo, "image_too_large")
    assert Image.MAX_IMAGE_PIXELS == limit


def test_too_small_names_the_size():
    data = encode(Image.new("L", (12, 40)))
    with pytest.raises(InputError, match="image is 12x40 px; the minimum is 16 px per side") as excinfo:
        load_image(data)
    assert_code(excinfo, "image_too_small")
    assert inspect_image(data, min_size=12).width == 12


# -- masks -----------------------------------------------------------------------


def test_mask_threshold_is_half_and_white_is_known():
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(4, axis=0)
    mask = load_mask(encode(Image.fromarray(values)), size=(4, 4))
    assert mask.dtype == np.bool_ and mask.shape == (4, 4)
    np.testing.assert_array_equal(mask[0], [False, False, True, True])


@pytest.mark.parametrize("mode", ["1", "RGB", "RGBA", "P", "I;16"])
def test_mask_accepts_any_mode(mode):
    known = np.zeros((20, 30), dtype=bool)
    known[:, 10:] = True
    gray = Image.fromarray(known.astype(np.uint8) * 255)
    if mode == "I;16":
        image = Image.fromarray(known.astype(np.uint16) * 65535)
    elif mode == "RGBA":
        image = gray.convert("RGBA")
        image.putalpha(0)  # alpha is ignored
    else:
        image = gray.convert(mode)
    np.testing.assert_array_equal(load_mask(encode(image), size=(30, 20)), known)


def test_mask_uses_luminance_of_colour():
    # Pure green is bright (0.587), pure blue dark (0.114).
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (0, 255, 0))
    image.putpixel((1, 0), (0, 0, 255))
    np.testing.assert_array_equal(load_mask(encode(image), size=(2, 1)), [[True, False]])


def test_mask_size_mismatch():
    data = encode(Image.new("L", (100, 80), 255))
    with pytest.raises(InputError, match="mask is 100x80 px but the image is 64x64 px") as excinfo:
        load_mask(data, size=(64, 64))
    assert_code(excinfo, "mask_size_mismatch")
    # Same pixel count, different shape: caught after decoding.
    with pytest.raises(InputError, match="mask is 100x80 px but the image is 80x100 px") as excinfo:
        load_mask(data, size=(80, 100))
    assert_code(excinfo, "mask_size_mismatch")


def test_unreadable_mask_mentions_mask():
    with pytest.raises(InputError, match="mask") as excinfo:
        load_mask(b"garbage", size=(4, 4))
    assert_code(excinfo, "invalid_image")


# -- saving ------------------------------------------------------------------------


def test_save_load_round_trip_rgba_within_one_level(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.random((21, 17, 3), dtype=np.float32)
    alpha = rng.random((21, 17), dtype=np.float32)
    path = save_image(tmp_path / "deep" / "dir" / "out.png", pixels, alpha=alpha)
    assert path == tmp_path / "deep" / "dir" / "out.png"
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind
    loaded = load_image(path, min_size=1)
    assert loaded.info.mode == "RGBA" and loaded.info.format == "PNG"
    assert np.abs(loaded.pixels - pixels).max() <= 0.5 / 255 + 1e-6
    assert np.abs(loaded.alpha - alpha).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    ("shape", "with_alpha", "mode"),
    [((8, 9), False, "L"), ((8, 9, 1), False, "L"), ((8, 9, 1), True, "LA"),
     ((8, 9, 3), False, "RGB"), ((8, 9, 3), True, "RGBA")],
)
def test_save_modes_and_clipping(tmp_path, shape, with_alpha, mode):
    pixels = np.full(shape, 0.5, dtype=np.float32)
    pixels[0, 0] = -3.0
    pixels[0, 1] = 7.0
    alpha = np.ones(shape[:2], dtype=np.float32) if with_alpha else None
    path = save_image(tmp_path / "x.png", pixels, alpha=alpha)
    with Image.open(path) as image:
        assert image.mode == mode and image.size == (9, 8)
        array = np.asarray(image)
    gray = array if array.ndim == 2 else array[..., 0]
    assert gray[0, 0] == 0 and gray[0, 1] == 255 and gray[1, 1] == 128


def test_save_overwrites_and_refuses_bad_shapes(tmp_path):
    target = tmp_path / "out.png"
    save_image(target, np.zeros((4, 4)))
    save_image(target, np.ones((4, 4)))
    assert np.asarray(Image.open(target)).min() == 255
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        save_image(target, np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="alpha"):
        save_image(target, np.zeros((4, 4, 3)), alpha=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="finite"):
        save_image(target, np.full((4, 4), np.nan))


# -- padding, cropping, resizing ---------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 4])
def test_pad_crop_round_trip_odd_size(channels):
    shape = (61, 97) if channels is None else (61, 97, channels)
    array = np.random.default_rng(2).random(shape, dtype=np.float32)
    padded = pad_to_multiple(array, 32)
    assert padded.shape[:2] == (64, 128) and padded.shape[2:] == array.shape[2:]
    np.testing.assert_array_equal(crop(padded, 61, 97), array)
    # Reflection without repeating the edge pixel.
    np.testing.assert_array_equal(padded[61, :97], array[59])
    np.testing.assert_array_equal(padded[:61, 97], array[:, 95])


@pytest.mark.parametrize("multiple", [32, 64])
def test_pad_larger_than_the_image(multiple):
    array = np.arange(17 * 16, dtype=np.float32).reshape(17, 16)
    padded = pad_to_multiple(array, multiple)
    assert padded.shape == (multiple, multiple)
    assert set(np.unique(padded)) <= set(np.unique(array))  # only reflected values
    np.testing.assert_array_equal(crop(padded, 17, 16), array)


def test_pad_is_a_no_op_on_multiples_and_validates():
    array = np.zeros((32, 64, 3))
    assert pad_to_multiple(array, 32).shape == (32, 64, 3)
    with pytest.raises(ValueError, match="0"):
        pad_to_multiple(array, 0)
    with pytest.raises(ValueError, match="65"):
        crop(array, 32, 65)


def test_resize_keeps_float_precision_and_layout():
    y, x = np.mgrid[0:24, 0:32]
    smooth = (0.4 + 0.001 * x + 0.0005 * y).astype(np.float32)  # spans far less than one 8-bit level per pixel
    up = resize_image(smooth, size=(64, 48), method="bicubic")
    assert up.shape == (48, 64) and up.dtype == np.float32
    assert len(np.unique(up)) > 100  # 8-bit quantisation would leave a handful of values
    assert abs(float(up.mean()) - float(smooth.mean())) < 1e-3

    colour = np.stack([smooth, 1 - smooth, smooth * 0.5], axis=-1)
    for method in ("bicubic", "lanczos", "bilinear"):
        down = resize_image(colour, size=(16, 12), method=method)
        assert down.shape == (12, 16, 3)
        assert 0 <= down.min() and down.max() <= 1
        np.testing.assert_allclose(down.mean(axis=(0, 1)), colour.mean(axis=(0, 1)), atol=2e-3)
    with pytest.raises(ValueError, match="nearest"):
        resize_image(smooth, size=(8, 8), method="nearest")
