"""Bytes → RGB uint8 image, or a status saying why not. Pillow only; never raises on bad input.

Order of checks (each failure is a ``Decoded`` with a ``schemas.Status`` value and a message):

1. ``empty``: zero bytes.
2. ``too_large`` while Pillow reads the headers, for sizes above twice its bomb limit
   ``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx unless changed). For the ``Image.open`` call the limit is raised to
   ``max_pixels`` when that is higher, so Pillow never refuses what the caller allows, and absurd sizes are
   still refused before any plugin allocates (WebP reserves its canvas while opening). Width and height
   are then unknown (None).
3. ``decode_error`` when Pillow cannot identify the bytes. If the magic bytes match a registered format,
   the message is that format's own parser error ("PNG: broken PNG file (bad header checksum in b'tEXt')",
   "TIFF: compression 12345 is not supported"); else "not a recognised image (N bytes, starts ...)".
4. ``unsupported``: a format outside ``ALLOWED_FORMATS``.
5. ``too_large``: declared width*height above ``max_pixels`` (our own message, with the size).
6. ``decode_error`` for a JPEG whose first scan holds fewer entropy-coded bytes than its blocks need
   (``jpeg_scan_shortfall``), refused before any pixel memory is allocated: libjpeg would fill the
   missing data with grey and call it a success.
7. ``decode_error`` for truncated or corrupt pixel data (Pillow's error while loading).

Success applies the EXIF orientation and converts any mode (L, P, RGBA, CMYK, I;16, …) to RGB.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import struct
import threading
import warnings
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from schemas import Status

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 64_000_000  # width * height of the declared (pre-decode) size

# Pillow re-runs its bomb check against the global limit when a TIFF allocates its pixels
# (TiffImageFile.load_prepare), so these formats load under the caller's limit too (and the module lock:
# TIFF decodes in one process run one at a time).
_BOMB_CHECKED_AT_LOAD = frozenset({"TIFF"})
_PIXEL_LIMIT_LOCK = threading.Lock()


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
    """Decode ``data`` (encoded file bytes) into RGB uint8; see the module docstring for statuses.

    ``max_pixels`` bounds the declared width*height, also above ``Image.MAX_IMAGE_PIXELS``.
    """
    if data is None or len(data) == 0:
        return Decoded(Status.EMPTY.value, error="zero bytes")
    with _pillow_pixel_limit(max_pixels):
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            return Decoded(Status.TOO_LARGE.value, error=f"declared size above max_pixels {max_pixels} "
                                                          f"(Pillow refused it while reading the headers: {e})")
        except UnidentifiedImageError:
            return Decoded(Status.DECODE_ERROR.value, error=unidentified_reason(data))
        except Exception as e:  # noqa: BLE001 - any parser failure is this image's problem
            return Decoded(Status.DECODE_ERROR.value, error=f"cannot open image: {type(e).__name__}: {e}")
    return _decode_opened(img, data, max_pixels, allowed_formats)


def decode_array(image: Optional[np.ndarray], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """An image someone else decoded (e.g. ``ray.data.read_images``' ``image`` column) → the same ``Decoded``
    as ``decode_image``, under the same rules where they still apply: ``empty`` (no pixels), ``unsupported``
    (not uint8, or not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)), ``too_large`` (H*W above ``max_pixels``,
    the same message). Gray is repeated to RGB and alpha dropped, as ``to_rgb_array`` does; the EXIF orientation
    is the other decoder's business (``read_images`` does not apply it: prefer encoded bytes)."""
    if image is None or image.size == 0:
        return Decoded(Status.EMPTY.value, error="zero pixels")
    shape = tuple(int(n) for n in image.shape)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and shape[2] in (1, 3, 4))):
        return Decoded(Status.UNSUPPORTED.value, error=f"decoded image of shape {shape} and dtype {image.dtype}: "
                                                       "expected uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    h, w = shape[:2]
    if w * h > max_pixels:
        return Decoded(Status.TOO_LARGE.value, error=f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}",
                       width=w, height=h)
    if image.ndim == 2:
        image = image[:, :, None]  # (H, W) → (H, W, 1)
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]  # (H, W, 3)
    return Decoded(Status.OK.value, image=np.ascontiguousarray(rgb), width=w, height=h)


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Raise Pillow's global ``Image.MAX_IMAGE_PIXELS`` to at least ``max_pixels`` for the block (never lower
    it; None, Pillow's "no limit", stays None) and silence its ``DecompressionBombWarning`` (sizes above
    ``max_pixels`` get a status instead). Both globals are changed under a module lock, so concurrent decodes
    never see each other's values, and are always restored."""
    with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None if saved is None else max(saved, max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_opened(img: Image.Image, data: bytes, max_pixels: int, allowed_formats: frozenset) -> Decoded:
    w, h = img.size
    if img.format not in allowed_formats:
        return Decoded(Status.UNSUPPORTED.value, error=f"format {img.format} not in {sorted(allowed_formats)}",
                       width=w, height=h)
    if w * h > max_pixels:
        return Decoded(Status.TOO_LARGE.value, error=f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}",
                       width=w, height=h)
    if img.format in ("JPEG", "MPO"):
        short = jpeg_scan_shortfall(data)
        if short is not None:
            return Decoded(Status.DECODE_ERROR.value, error=short, width=w, height=h)
    try:
        with _pillow_pixel_limit(max_pixels) if img.format in _BOMB_CHECKED_AT_LOAD else contextlib.nullcontext():
            img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb_array(img)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt pixel data
        return Decoded(Status.DECODE_ERROR.value, error=f"corrupt or truncated {img.format}: {type(e).__name__}: {e}",
                       width=w, height=h)
    return Decoded(Status.OK.value, image=rgb, width=int(rgb.shape[1]), height=int(rgb.shape[0]))


def unidentified_reason(data: bytes) -> str:
    """Why Pillow could not identify ``data``: the error of the first registered format whose magic bytes
    match (``Image.OPEN[fmt]``'s accept function on the first 16 bytes, as ``Image.open`` does), raised by
    that format's own parser; "not a recognised image (N bytes, starts ...)" when no format matches."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            matched = accept is not None and accept(prefix)
            if not matched or isinstance(matched, str):  # a str is Pillow's "needs a plugin" warning
                continue
            factory(io.BytesIO(data), "")
        except Exception as e:  # noqa: BLE001 - the format's own parser error is the answer
            return f"{fmt}: {_parser_error(fmt, data, e)}"
    return f"not a recognised image ({len(data)} bytes, starts {data[:8]!r})"


def _parser_error(fmt: str, data: bytes, error: Exception) -> str:
    if fmt == "TIFF":
        code = tiff_compression(data)
        if code is not None and code not in TiffImagePlugin.COMPRESSION_INFO:
            return f"compression {code} is not supported"  # Pillow's own message is the bare number
    return str(error) or type(error).__name__


def tiff_compression(data: bytes) -> Optional[int]:
    """Tag 259 (Compression) of the first image directory of TIFF or BigTIFF ``data``; None if absent or
    the header/directory is unreadable."""
    endian = {b"II": "<", b"MM": ">"}.get(data[:2])
    if endian is None or len(data) < 16:
        return None
    magic = struct.unpack_from(endian + "H", data, 2)[0]
    if magic == 42:  # classic: u32 offsets, u16 entry count, 12-byte entries with a 4-byte value field
        ifd, count_fmt, entry_fmt, entry_size = struct.unpack_from(endian + "I", data, 4)[0], "H", "HHI", 12
    elif magic == 43:  # BigTIFF: u64 offsets, u64 entry count, 20-byte entries with an 8-byte value field
        ifd, count_fmt, entry_fmt, entry_size = struct.unpack_from(endian + "Q", data, 8)[0], "Q", "HHQ", 20
    else:
        return None
    count_size = struct.calcsize(endian + count_fmt)
    if ifd + count_size > len(data):
        return None
    count = struct.unpack_from(endian + count_fmt, data, ifd)[0]
    value_at = struct.calcsize(endian + entry_fmt)
    for i in range(min(count, (len(data) - ifd - count_size) // entry_size)):
        entry = ifd + count_size + i * entry_size
        tag, kind, _count = struct.unpack_from(endian + entry_fmt, data, entry)
        if tag == 259:
            value_fmt = {3: "H", 4: "I"}.get(kind)  # SHORT or LONG
            return None if value_fmt is None else struct.unpack_from(endian + value_fmt, data, entry + value_at)[0]
    return None


# --- JPEG: does the first scan hold enough entropy-coded data for its blocks? --------------------------------

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length field
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 (not DHT, JPG, DAC)
_JPEG_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})  # baseline, extended sequential
_JPEG_PROGRESSIVE_HUFFMAN = 0xC2


@dataclasses.dataclass(frozen=True)
class JpegFrame:
    """A JPEG SOF segment: ``marker`` is the SOFn byte (0xC0-0xCF), sizes in pixels, ``sampling`` maps a
    component id to its (horizontal, vertical) sampling factors (1-4)."""

    marker: int
    width: int
    height: int
    sampling: Dict[int, Tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class JpegScan:
    """A JPEG SOS segment: the scan's component ids, spectral selection ``ss``..``se`` and the offset of
    its first entropy-coded byte in the file."""

    components: Tuple[int, ...]
    ss: int
    se: int
    data_start: int


def jpeg_scan_shortfall(data: bytes) -> Optional[str]:
    """Why JPEG ``data`` cannot hold its pixels, or None (enough data, or nothing this check can tell).

    Lower bound on the first scan's entropy-coded bytes: every Huffman-coded block takes at least 2 bits in a
    sequential scan (a DC code and an EOB or AC code, each at least 1 bit) and at least 1 bit in a progressive
    DC-first scan (Ss = Se = 0). Other scans (progressive AC, where one EOB run may cover many blocks),
    lossless, hierarchical and arithmetic-coded frames have no useful bound and are not checked. The data is
    counted up to the next marker other than RSTn, stuffed FF00 bytes and restart markers included, so the
    count is never below the true one. Anything the parser does not understand gives None: libjpeg decides.
    """
    first = jpeg_first_scan(data)
    if first is None:
        return None
    frame, scan = first
    bits = _min_bits_per_block(frame.marker, scan)
    blocks = jpeg_scan_blocks(frame, scan.components)
    need = -(-blocks * bits // 8)
    held = _entropy_bytes(data, scan.data_start, need)
    if held >= need:
        return None
    return f"JPEG pixel data truncated: the first scan holds {held} bytes, its {blocks} blocks need at least {need}"


def jpeg_first_scan(data: bytes) -> Optional[Tuple[JpegFrame, JpegScan]]:
    """The frame header and first scan header of JPEG ``data``, read marker by marker from SOI; None for
    anything unexpected (no SOI, a byte that is not a marker, a segment running past the end, EOI or a
    second SOF before the first SOS, a malformed SOF/SOS)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0x00, 0xD8, 0xD9):
            return None
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end < pos + 4 or end > len(data):
            return None
        body = data[pos + 4:end]
        if marker in _JPEG_SOF:
            if frame is not None:
                return None
            frame = _parse_sof(marker, body)
            if frame is None:
                return None
        elif marker == 0xDA:
            scan = None if frame is None else _parse_sos(body, frame, end)
            return None if scan is None else (frame, scan)
        pos = end
    return None


def _parse_sof(marker: int, body: bytes) -> Optional[JpegFrame]:
    """SOF body: precision, height, width (u16 each), Nf, then Nf x (id, H<<4 | V, quant table)."""
    if len(body) < 6 or len(body) != 6 + 3 * body[5] or body[5] == 0:
        return None
    height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
    sampling = {}
    for i in range(body[5]):
        cid, hv = body[6 + 3 * i], body[7 + 3 * i]
        h, v = hv >> 4, hv & 0x0F
        if cid in sampling or not (1 <= h <= 4 and 1 <= v <= 4):
            return None
        sampling[cid] = (h, v)
    return JpegFrame(marker, width, height, sampling)


def _parse_sos(body: bytes, frame: JpegFrame, data_start: int) -> Optional[JpegScan]:
    """SOS body: Ns, then Ns x (component id, tables), Ss, Se, Ah<<4 | Al."""
    if not body or not 1 <= body[0] <= 4 or len(body) != 4 + 2 * body[0]:
        return None
    n = body[0]
    components = tuple(body[1:1 + 2 * n:2])
    if len(set(components)) != n or any(c not in frame.sampling for c in components):
        return None
    return JpegScan(components, body[1 + 2 * n], body[2 + 2 * n], data_start)


def _min_bits_per_block(sof_marker: int, scan: JpegScan) -> int:
    if sof_marker in _JPEG_SEQUENTIAL_HUFFMAN:
        return 2
    if sof_marker == _JPEG_PROGRESSIVE_HUFFMAN and scan.ss == 0 and scan.se == 0:
        return 1
    return 0


def jpeg_scan_blocks(frame: JpegFrame, components: Tuple[int, ...]) -> int:
    """8x8 blocks a scan of ``components`` codes: MCUs x sum(H*V) when interleaved; for a single-component
    scan, ceil(component width / 8) x ceil(component height / 8), the component being
    ceil(width * H / Hmax) x ceil(height * V / Vmax) pixels (ITU-T T.81 A.1.1, A.2)."""
    hmax = max(h for h, _ in frame.sampling.values())
    vmax = max(v for _, v in frame.sampling.values())
    if len(components) == 1:
        h, v = frame.sampling[components[0]]
        return _ceil_div(_ceil_div(frame.width * h, hmax), 8) * _ceil_div(_ceil_div(frame.height * v, vmax), 8)
    mcus = _ceil_div(frame.width, 8 * hmax) * _ceil_div(frame.height, 8 * vmax)
    return mcus * sum(h * v for h, v in (frame.sampling[c] for c in components))


def _entropy_bytes(data: bytes, start: int, limit: int) -> int:
    """Bytes from ``start`` up to the next marker other than RSTn (FF00 and RSTn count as data), at most
    ``limit``: the scan stops reading once the bound is met."""
    stop = min(len(data), start + limit)
    pos = start
    while True:
        ff = data.find(b"\xff", pos, stop)
        if ff < 0 or ff + 1 >= len(data):
            return stop - start
        if data[ff + 1] != 0x00 and not 0xD0 <= data[ff + 1] <= 0xD7:
            return ff - start
        pos = ff + 2


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
