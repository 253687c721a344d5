"""pipeline.decode: every kind of bad input becomes a status, good input becomes RGB uint8."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import decode_image
from schemas import Status


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 20, w: int = 30) -> Image.Image:
    a = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    return Image.fromarray(a, "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_to_rgb(fmt):
    d = decode_image(_encode(_rgb(), fmt))
    assert d.status == "ok" and d.error is None
    assert d.image.dtype == np.uint8 and d.image.shape == (20, 30, 3)
    assert (d.width, d.height) == (30, 20)


def test_png_is_lossless():
    img = _rgb()
    assert np.array_equal(decode_image(_encode(img, "PNG")).image, np.asarray(img))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1", "LA", "I;16"])
def test_any_mode_becomes_rgb(mode):
    if mode == "I;16":  # 16-bit grayscale PNG
        img = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    else:
        img = _rgb().convert(mode)
    d = decode_image(_encode(img, "JPEG" if mode == "CMYK" else "PNG"))
    assert d.status == "ok", d.error
    assert d.image.shape == (20, 30, 3) and d.image.dtype == np.uint8


def test_sixteen_bit_scaled_not_clipped():
    a = np.full((4, 4), 65535, dtype=np.uint16)
    d = decode_image(_encode(Image.fromarray(a), "PNG"))
    assert d.status == "ok" and d.image.max() == 255 and d.image.min() == 255


def test_exif_orientation_applied():
    img = _rgb(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    d = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert d.status == "ok" and d.image.shape == (30, 20, 3) and (d.width, d.height) == (20, 30)


@pytest.mark.parametrize("data,status", [
    (b"", Status.EMPTY), (None, Status.EMPTY), (b"hello, I am a text file\n", Status.DECODE_ERROR),
])
def test_bad_bytes(data, status):
    d = decode_image(data)
    assert d.status == status.value and d.image is None and d.error


def test_truncated_jpeg_is_decode_error():
    data = _encode(_rgb(64, 64), "JPEG")
    d = decode_image(data[: len(data) // 2])
    assert d.status == Status.DECODE_ERROR.value and "truncated" in d.error.lower() or "corrupt" in d.error.lower()


def test_too_large_checked_before_decoding():
    data = _encode(Image.new("L", (3000, 3000)), "PNG")
    d = decode_image(data, max_pixels=1_000_000)
    assert d.status == Status.TOO_LARGE.value and (d.width, d.height) == (3000, 3000) and "max_pixels" in d.error


def test_unsupported_format():
    d = decode_image(_encode(_rgb(), "GIF"))
    assert d.status == Status.UNSUPPORTED.value and "GIF" in d.error


def test_one_pixel_ok():
    d = decode_image(_encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert d.status == "ok" and d.image.tolist() == [[[1, 2, 3]]]
