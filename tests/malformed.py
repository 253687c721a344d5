"""A corpus of malformed and unusual inputs for the reliability tests: each kind is small bytes plus the
status the job must give it. Pure Pillow/numpy/zlib, no network, deterministic.

``corpus()`` → ``{file name: Case}``; ``manifest_extras`` are kinds that exist only in a manifest (a
duplicate URI, a listed object that does not exist). A non-UTF-8 file name cannot be written in a
manifest (CSV/JSONL are text), so it is tested with a directory input (``NON_UTF8_NAME``).
"""
from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from typing import Dict

import numpy as np
from PIL import Image

MAX_PIXELS = 1_000_000  # the corpus job's --max-pixels (the bomb declares far more)
NON_UTF8_NAME = b"caf\xe9-\xff\xfe.jpg"  # Latin-1 bytes: not valid UTF-8 on a POSIX file system


@dataclasses.dataclass(frozen=True)
class Case:
    data: bytes
    status: str  # the one status the job must give this input
    note: str  # what the kind is, for the README figures


def _photo(name: str = "chelsea", size=(64, 48)) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).resize(size)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~60-byte PNG whose header declares ``width`` x ``height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _jpeg_segment(jpg: bytes, marker: int) -> int:
    """Offset of the first ``FF marker`` segment of ``jpg``, walking the segment lengths from SOI."""
    pos = 2
    while jpg[pos + 1] != marker:
        pos += 2 + struct.unpack(">H", jpg[pos + 2:pos + 4])[0]
    return pos


def header_only_jpeg(width: int, height: int, scan_data: bytes = b"", sof: int = 0xC0) -> bytes:
    """A baseline 4:2:0 JPEG whose intact headers declare ``width`` x ``height`` and whose first scan holds
    only ``scan_data`` before EOI (libjpeg fills the missing blocks with grey). ``sof`` replaces the SOF0
    marker byte (e.g. 0xC9 arithmetic, 0xC3 lossless). About 600 bytes plus ``scan_data``."""
    jpg = _save(Image.new("RGB", (16, 16), (90, 120, 200)), "JPEG", quality=10)
    at = _jpeg_segment(jpg, 0xC0)  # FF C0, length, precision, height, width
    jpg = jpg[:at + 1] + bytes([sof]) + jpg[at + 2:at + 5] + struct.pack(">HH", height, width) + jpg[at + 9:]
    sos = _jpeg_segment(jpg, 0xDA)
    data_start = sos + 2 + struct.unpack(">H", jpg[sos + 2:sos + 4])[0]
    return jpg[:data_start] + scan_data + b"\xff\xd9"


def bad_crc_png(chunk: bytes = b"tEXt") -> bytes:
    """A 16x16 PNG with a tEXt chunk, the CRC of its first ``chunk`` flipped (Pillow cannot identify it)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a text chunk")
    png = bytearray(_save(Image.new("RGB", (16, 16), (10, 200, 30)), "PNG", pnginfo=info))
    pos = 8
    while png[pos + 4:pos + 8] != chunk:
        pos += 12 + struct.unpack(">I", png[pos:pos + 4])[0]
    crc_at = pos + 8 + struct.unpack(">I", png[pos:pos + 4])[0]
    png[crc_at] ^= 0xFF
    return bytes(png)


def unknown_compression_tiff(code: int = 12345) -> bytes:
    """An 8x8 little-endian TIFF whose Compression tag (259) says ``code``."""
    tif = bytearray(_save(Image.new("L", (8, 8), 77), "TIFF"))
    ifd = struct.unpack("<I", tif[4:8])[0]
    for i in range(struct.unpack("<H", tif[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", tif[entry:entry + 2])[0] == 259:
            tif[entry + 8:entry + 10] = struct.pack("<H", code)  # SHORT value, left-justified
            return bytes(tif)
    raise AssertionError("Pillow wrote no Compression tag")


def corrupt_exif_jpeg() -> bytes:
    """A valid JPEG whose APP1 Exif segment holds a TIFF header pointing its IFD far past the end."""
    jpg = _save(_photo("coffee"), "JPEG")
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\xde\xad\xbe\xef" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpg[:2] + app1 + jpg[2:]  # right after SOI


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """64x40 stored pixels with no symmetry (red top, blue bottom, green right third), so the tiny random
    model's labels differ between the two rotations; shown as 40x64 after the EXIF rotation."""
    a = np.zeros((40, 64, 3), np.uint8)
    a[:20], a[20:], a[:, 40:] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_with_transparency() -> bytes:
    img = _photo("astronaut", (48, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def corpus() -> Dict[str, Case]:
    """file name → Case. Names are plain ASCII; the bytes are what matters (e.g. text under .jpg)."""
    good_jpg = _save(_photo("astronaut", (64, 48)), "JPEG")
    good_png = _save(_photo("coffee", (64, 48)), "PNG")
    rgba = _photo("chelsea", (48, 48)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((48, 48)))
    gray16 = Image.fromarray(np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16))
    return {
        "control.jpg": Case(good_jpg, "ok", "control: a plain RGB JPEG"),
        "zero-byte.jpg": Case(b"", "empty", "zero-byte file"),
        "truncated.jpg": Case(good_jpg[: len(good_jpg) // 3], "decode_error", "truncated JPEG"),
        "truncated.png": Case(good_png[: len(good_png) // 2], "decode_error", "truncated PNG"),
        "text.jpg": Case(b"this is a plain text file, not a JPEG\n" * 3, "decode_error", "text file named .jpg"),
        "error-page.jpg": Case(b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head>"
                               b"<body><h1>Forbidden</h1></body></html>\n", "decode_error",
                               "HTML error page named .jpg"),
        "cmyk.jpg": Case(_save(_photo("coffee").convert("CMYK"), "JPEG"), "ok", "CMYK JPEG"),
        "gray16.png": Case(_save(gray16, "PNG"), "ok", "16-bit grayscale PNG"),
        "gray.jpg": Case(_save(_photo("astronaut").convert("L"), "JPEG"), "ok", "8-bit grayscale JPEG"),
        "palette-transparent.png": Case(_palette_with_transparency(), "ok", "palette PNG with transparency"),
        "rgba.png": Case(_save(rgba, "PNG"), "ok", "RGBA PNG with a varying alpha"),
        "animated.gif": Case(_animated_gif(), "unsupported", "animated GIF (format refused)"),
        "exif-rotated.jpg": Case(exif_rotated_jpeg(6), "ok", "EXIF orientation 6 (labels follow the rotated pixels)"),
        "one-pixel.png": Case(_save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok", "1x1 image"),
        "extreme-aspect.png": Case(_save(Image.new("RGB", (10000, 8), (30, 90, 200)), "PNG"), "too_small",
                                   "extreme aspect ratio 10000x8"),
        "bomb.png": Case(bomb_png(), "too_large", "decompression bomb: 100000x100000 declared in a tiny PNG"),
        "corrupt-exif.jpg": Case(corrupt_exif_jpeg(), "ok", "corrupt EXIF block (pixels are fine)"),
        "unsupported.ico": Case(_save(_photo("coffee", (32, 32)), "ICO"), "unsupported", "unsupported format (ICO)"),
        "mislabelled-png.jpg": Case(good_png, "ok", "PNG bytes under a .jpg name"),
        "psd-like.tif": Case(b"II*\x00" + b"\x00" * 60, "decode_error", "TIFF header with no image directory"),
        "header-only.jpg": Case(header_only_jpeg(1000, 1000), "decode_error",
                                "JPEG headers declaring 1000x1000, no pixel data before EOI (refused before decoding)"),
        "bad-crc.png": Case(bad_crc_png(), "decode_error", "PNG with a bad tEXt chunk CRC"),
        "unknown-compression.tif": Case(unknown_compression_tiff(), "decode_error",
                                        "TIFF with compression 12345 (unknown to Pillow)"),
    }


def manifest_extras() -> Dict[str, str]:
    """Kinds that live in the manifest itself: name → expected status of its single row."""
    return {"duplicate URI (control.jpg listed twice)": "ok", "missing object listed in the manifest": "read_error"}
