"""Reading and writing images for Deep Image Prior.

Uploads are untrusted: every reader refuses oversized images before decoding
them, decodes fully (so truncation is caught here rather than mid-run) and turns
every Pillow failure into an :class:`~dip_engine.errors.InputError`.

Pixels are float32 ``(H, W, C)`` arrays in ``[0, 1]`` with ``C = 1`` (grayscale)
or ``3`` (colour). Transparency is returned apart from the colour channels,
because DIP restores colour and keeps the alpha channel as it was.

Torch-free (numpy and Pillow only) so that the web API can inspect uploads
without loading PyTorch.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dip_engine.errors import InputError

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]
ResizeMethod = Literal["bicubic", "lanczos", "bilinear"]

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# The containers Pillow may open: photo and lossless formats whose opener reads only the header.
# Others (ICO and ICNS embed a PNG that their opener decodes at once; PSD, EPS, ...) are refused
# before any of their data is decoded. (Pillow's JPEG opener also reads the MPO files of phone cameras.)
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "PPM", "GIF")
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
}
# ITU-R BT.601 luma, the weights Pillow's own convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageInfo:
    """What an image is, as DIP will see it.

    Attributes:
        width, height: Size in pixels after the EXIF orientation is applied.
        mode: Pillow mode after the EXIF transpose (``"L"``, ``"RGBA"``, ``"P"``...).
        channels: Colour channels that DIP restores: 1 (grayscale) or 3 (colour).
        has_alpha: Whether a transparency channel is kept apart.
        bit_depth: 8, or 16 for sources with more than 8 bits per sample
            (``I;16*``, ``I`` and ``F`` modes).
        format: Pillow format name (``"PNG"``, ``"JPEG"``...).
    """

    width: int
    height: int
    mode: str
    channels: int
    has_alpha: bool
    bit_depth: int
    format: str


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels: ``pixels`` float32 ``(H, W, C)`` and ``alpha`` float32 ``(H, W)``, both in [0, 1]."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    info: ImageInfo


def inspect_image(
    source: ImageSource, *, max_pixels: int | None = None, min_size: int = 16
) -> ImageInfo:
    """Decode an image fully and describe it, without keeping the pixels.

    Args:
        source: Encoded bytes, a file path or a binary stream.
        max_pixels: Refuse images with more than this many pixels, before decoding.
        min_size: Refuse images whose width or height is below this.

    Raises:
        InputError: ``invalid_image``, ``image_too_large`` or ``image_too_small``.
    """
    return _read_image(source, max_pixels=max_pixels, min_size=min_size)[1]


def load_image(
    source: ImageSource, *, max_pixels: int | None = None, min_size: int = 16
) -> LoadedImage:
    """Decode an image into float32 pixels in [0, 1] and a separate alpha channel.

    Grayscale stays one channel, every other mode becomes RGB; 16-bit sources
    are scaled by 1/65535, ``F`` images are taken as already in [0, 1] (clipped).
    Arguments and errors as :func:`inspect_image`.
    """
    image, info = _read_image(source, max_pixels=max_pixels, min_size=min_size)
    with _pillow_errors("image"):
        pixels, alpha = _to_arrays(image, info)
    return LoadedImage(pixels=pixels, alpha=alpha, info=info)


def load_mask(source: ImageSource, *, size: tuple[int, int]) -> np.ndarray:
    """Read an inpainting mask: bool ``(H, W)``, True where the pixel is known.

    White means known. Any mode is reduced to its luminance (alpha is ignored)
    and thresholded at half: a value >= 0.5 is known.

    Args:
        source: Encoded bytes, a file path or a binary stream.
        size: ``(width, height)`` of the image the mask belongs to.

    Raises:
        InputError: ``invalid_image`` (unreadable mask) or ``mask_size_mismatch``.
    """
    width, height = _check_size_pair(size, "size")

    def mismatch(w: int, h: int) -> InputError:
        return InputError(
            "mask_size_mismatch", f"mask is {w}x{h} px but the image is {width}x{height} px"
        )

    def check_header(w: int, h: int) -> None:
        # The EXIF orientation may still swap the sides; the pixel count cannot
        # change, and refusing on it keeps an oversized mask from being decoded.
        if w * h != width * height:
            raise mismatch(w, h)

    image, info = _read_image(source, what="mask", check_header=check_header)
    if (info.width, info.height) != (width, height):
        raise mismatch(info.width, info.height)
    with _pillow_errors("mask"):
        pixels, _ = _to_arrays(image, info)
    luminance = pixels[..., 0] if info.channels == 1 else pixels @ _LUMA
    return luminance >= 0.5


def load_kernel(source: ImageSource, *, max_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a blur kernel image: float32 ``(h, w)``, non-negative, normalised to sum 1.

    A grayscale image, or a colour one whose channels are equal; brighter is
    more weight. The kernel is a convolution kernel: its centre is pixel
    ``((h - 1) // 2, (w - 1) // 2)``.

    Args:
        source: Encoded bytes, a file path or a binary stream.
        max_size: ``(width, height)`` the kernel may not exceed (the image's).

    Raises:
        InputError: ``invalid_image`` (unreadable), ``invalid_kernel`` (colour,
            all black) or ``kernel_too_large``.
    """
    def too_large(width: int, height: int) -> InputError:
        return InputError("kernel_too_large", f"kernel is {width}x{height} px, larger than the "
                          f"{max_size[0]}x{max_size[1]} px image")  # type: ignore[index]

    def check_header(width: int, height: int) -> None:
        # Before decoding (the EXIF orientation may still swap the sides, not the count).
        if max_size is not None and width * height > max_size[0] * max_size[1]:
            raise too_large(width, height)

    image, info = _read_image(source, what="kernel", min_size=1, check_header=check_header)
    if max_size is not None and (info.width > max_size[0] or info.height > max_size[1]):
        raise too_large(info.width, info.height)
    with _pillow_errors("kernel"):
        pixels, _ = _to_arrays(image, info)
    if pixels.shape[-1] != 1 and not (np.allclose(pixels[..., 0], pixels[..., 1], atol=1 / 255)
                                      and np.allclose(pixels[..., 0], pixels[..., 2], atol=1 / 255)):
        raise InputError("invalid_kernel", "kernel must be a 2-D (grayscale) image, got one whose colour "
                         "channels differ")
    kernel = pixels[..., 0].astype(np.float64)
    total = kernel.sum()
    if not total > 0:
        raise InputError("invalid_kernel", "kernel is all black: it has no weight to blur with")
    return (kernel / total).astype(np.float32)


def save_image(path: str | os.PathLike[str], pixels: np.ndarray, *,
               alpha: np.ndarray | None = None) -> Path:
    """Write float pixels in [0, 1] (clipped) as an 8-bit PNG, atomically.

    Args:
        path: Destination; missing parent directories are created.
        pixels: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` floats.
        alpha: Optional ``(H, W)`` floats in [0, 1]; gives an LA or RGBA PNG.

    Returns:
        The destination path.
    """
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"pixels must be (H, W), (H, W, 1) or (H, W, 3), got shape {np.shape(pixels)}")
    planes = [array] if array.ndim == 2 else [array[..., c] for c in range(3)]
    if alpha is not None:
        alpha_array = np.asarray(alpha, dtype=np.float32)
        if alpha_array.shape != array.shape[:2]:
            raise ValueError(
                f"alpha must have shape {array.shape[:2]} to match the pixels, got {alpha_array.shape}"
            )
        planes.append(alpha_array)
    stacked = np.stack(planes, axis=-1)
    if not np.isfinite(stacked).all():
        raise ValueError("pixels and alpha must be finite (found NaN or infinity)")
    quantised = np.rint(np.clip(stacked, 0.0, 1.0) * 255.0).astype(np.uint8)
    if quantised.shape[2] == 1:
        quantised = quantised[..., 0]
    image = Image.fromarray(quantised)  # L, LA, RGB or RGBA from the last axis

    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is an atomic rename: readers (the API
    # serving results) never see a half-written file.
    fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; results are meant to be read
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return destination


def pad_to_multiple(array: np.ndarray, multiple: int, *, minimum: int = 0) -> np.ndarray:
    """Reflect-pad an ``(H, W)`` or ``(H, W, C)`` array on the bottom and right.

    H and W become the next multiples of ``multiple`` that are at least
    ``minimum``. The pad may exceed the image size (numpy then reflects
    repeatedly). :func:`crop` undoes it.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be (H, W) or (H, W, C), got shape {array.shape}")
    height, width = array.shape[:2]
    floor = -(-minimum // multiple) * multiple
    pad = [(0, max(-height % multiple, floor - height)), (0, max(-width % multiple, floor - width))]
    pad += [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="reflect")


def crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The top-left ``height x width`` window of an ``(H, W[, C])`` array (a view)."""
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be (H, W) or (H, W, C), got shape {array.shape}")
    for name, value, limit in (("height", height, array.shape[0]), ("width", width, array.shape[1])):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ValueError(f"{name} must be an int in 1..{limit}, got {value!r}")
    return array[:height, :width]


def resize_image(pixels: np.ndarray, *, size: tuple[int, int],
                 method: ResizeMethod = "bicubic") -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` float pixels to ``size = (width, height)``.

    Each channel is resampled by Pillow in 32-bit float mode, so nothing is
    quantised to 8 bits. The result is clipped to [0, 1] (bicubic and Lanczos
    overshoot at edges) and keeps the input's layout.
    """
    if method not in _RESAMPLE:
        raise ValueError(f"method must be one of {', '.join(_RESAMPLE)}, got {method!r}")
    width, height = _check_size_pair(size, "size")
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ValueError(f"pixels must be (H, W) or (H, W, C), got shape {array.shape}")
    planes = array[..., None] if array.ndim == 2 else array
    resized = np.stack(
        [
            np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c])).resize(
                (width, height), resample=_RESAMPLE[method]))
            for c in range(planes.shape[2])
        ],
        axis=-1,
    )
    resized = np.clip(resized, 0.0, 1.0).astype(np.float32)
    return resized[..., 0] if array.ndim == 2 else resized


# -- decoding -----------------------------------------------------------------


def _read_image(
    source: ImageSource,
    *,
    what: str = "image",
    max_pixels: int | None = None,
    min_size: int = 1,
    check_header: Callable[[int, int], None] | None = None,
) -> tuple[Image.Image, ImageInfo]:
    """Open, size-check, fully decode and EXIF-transpose ``source``."""
    if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive int, got {min_size!r}")

    with _open_stream(source, what) as stream, _pillow_errors(what), warnings.catch_warnings():
        # Pillow only warns about an image between its pixel limit and twice it: refuse it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.init()  # registers the openers past the five Pillow loads first (TIFF, WebP)
        with Image.open(stream, formats=IMAGE_FORMATS) as opened:
            width, height = opened.size
            pixel_count = width * height
            pillow_limit = Image.MAX_IMAGE_PIXELS
            # Checked on the header alone, before a single pixel is decoded.
            if max_pixels is not None and pixel_count > max_pixels:
                raise InputError(
                    "image_too_large",
                    f"{what} is {width}x{height} px ({pixel_count} pixels); the maximum is {max_pixels} pixels",
                )
            if pillow_limit is not None and pixel_count > pillow_limit:
                # Pillow only warns between its limit and twice it; refuse here too.
                raise InputError(
                    "image_too_large",
                    f"{what} is {width}x{height} px ({pixel_count} pixels), above Pillow's "
                    f"decompression-bomb limit of {pillow_limit} pixels",
                )
            if check_header is not None:
                check_header(width, height)
            image_format = opened.format or "unknown"
            opened.load()  # full decode: truncated or corrupt data fails here
            image = ImageOps.exif_transpose(opened)  # a copy, independent of the stream

    if image.width < min_size or image.height < min_size:
        raise InputError(
            "image_too_small",
            f"{what} is {image.width}x{image.height} px; the minimum is {min_size} px per side",
        )
    high_depth = image.mode in _HIGH_DEPTH_MODES
    info = ImageInfo(
        width=image.width,
        height=image.height,
        mode=image.mode,
        channels=1 if image.mode in _GRAY_MODES else 3,
        # A tRNS colour on a 16-bit grayscale PNG is dropped: Pillow cannot
        # convert those modes to LA without losing the extra bits.
        has_alpha=not high_depth and image.has_transparency_data,
        bit_depth=16 if high_depth else 8,
        format=image_format,
    )
    return image, info


def _to_arrays(image: Image.Image, info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """Float32 ``(H, W, C)`` pixels and optional ``(H, W)`` alpha, in [0, 1]."""
    if info.bit_depth == 16:
        raw = np.asarray(image)
        if image.mode == "F":
            scaled = np.nan_to_num(raw.astype(np.float32), nan=0.0)
        else:
            scaled = raw.astype(np.float32) / 65535.0
        return np.clip(scaled, 0.0, 1.0)[..., None], None

    target = {(1, False): "L", (1, True): "LA", (3, False): "RGB", (3, True): "RGBA"}[
        (info.channels, info.has_alpha)
    ]
    converted = image if image.mode == target else image.convert(target)
    array = np.asarray(converted, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    if info.has_alpha:
        return np.ascontiguousarray(array[..., :-1]), np.ascontiguousarray(array[..., -1])
    return array, None


@contextmanager
def _open_stream(source: ImageSource, what: str) -> Iterator[BinaryIO]:
    """A binary stream over ``source``; file-system errors become ``invalid_image``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InputError("invalid_image", f"{what} is empty (0 bytes)")
        yield io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        try:
            handle = open(source, "rb")
        except OSError as exc:
            raise InputError(
                "invalid_image", f"cannot read {what} file {os.fspath(source)!r}: {exc.strerror or exc}"
            ) from exc
        with handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise InputError("invalid_image", f"{what} file {os.fspath(source)!r} is empty (0 bytes)")
            yield handle
    elif hasattr(source, "read"):
        yield source
    else:
        raise TypeError(f"{what} source must be bytes, a path or a binary stream, got {type(source).__name__}")


@contextmanager
def _pillow_errors(what: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile data into an :class:`InputError`."""
    try:
        yield
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only when warnings are errors.
        raise InputError("image_too_large", f"{what} is above Pillow's decompression-bomb limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError("invalid_image", f"{what} is not a recognised image file (accepted: "
                         f"{', '.join(IMAGE_FORMATS)})") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise InputError("invalid_image", f"{what} is truncated or corrupt: {exc}") from exc


def _check_size_pair(size: tuple[int, int], name: str) -> tuple[int, int]:
    if (
        not isinstance(size, tuple)
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ValueError(f"{name} must be a (width, height) tuple of positive ints, got {size!r}")
    return size
