"""Bytes → RGB uint8 image, or a status saying why not. Pillow only; never raises on bad input.

Order of checks (each failure is a ``Decoded`` with a ``schemas.Status`` value and a message):
empty bytes → not an image → a format we refuse → declared pixels above the guard → truncated or corrupt
pixel data. Success applies the EXIF orientation and converts any mode (L, P, RGBA, CMYK, I;16, …)
to RGB.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import Status

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 64_000_000  # width * height of the declared (pre-decode) size


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Outcome of decoding one image.

    ``image`` is (H, W, 3) uint8 RGB after EXIF orientation, or None unless ``status == "ok"``.
    ``width``/``height`` are pixels after orientation (known for too_large/unsupported too, else None).
    """

    status: str
    image: Optional[np.ndarray] = None
    error: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None


def decode_image(data: Optional[bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
                 allowed_formats: frozenset = ALLOWED_FORMATS) -> Decoded:
    """Decode ``data`` (encoded file bytes) into RGB uint8; see the module docstring for statuses."""
    if data is None or len(data) == 0:
        return Decoded(Status.EMPTY.value, error="zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            return Decoded(Status.TOO_LARGE.value, error=f"declared size too large: {e}")
        except UnidentifiedImageError:
            return Decoded(Status.DECODE_ERROR.value, error=f"not a recognised image ({len(data)} bytes, starts {data[:8]!r})")
        except Exception as e:  # noqa: BLE001 - any parser failure is this image's problem
            return Decoded(Status.DECODE_ERROR.value, error=f"cannot open image: {type(e).__name__}: {e}")
        return _decode_opened(img, max_pixels, allowed_formats)


def _decode_opened(img: Image.Image, max_pixels: int, allowed_formats: frozenset) -> Decoded:
    w, h = img.size
    if img.format not in allowed_formats:
        return Decoded(Status.UNSUPPORTED.value, error=f"format {img.format} not in {sorted(allowed_formats)}", width=w, height=h)
    if w * h > max_pixels:
        return Decoded(Status.TOO_LARGE.value, error=f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}", width=w, height=h)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb_array(img)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt pixel data
        return Decoded(Status.DECODE_ERROR.value, error=f"corrupt or truncated {img.format}: {type(e).__name__}: {e}", width=w, height=h)
    return Decoded(Status.OK.value, image=rgb, width=int(rgb.shape[1]), height=int(rgb.shape[0]))


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → (H, W, 3) uint8 RGB. High bit depth is scaled to 8 bits, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 16-bit range → 8-bit
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
