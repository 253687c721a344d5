"""pipeline.io.decode: every kind of bad input becomes a status, good input becomes RGB uint8."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from pipeline.io.decode import JpegFrame, decode_image, jpeg_scan_blocks, jpeg_scan_shortfall, tiff_compression
from schemas import Status
from tests.malformed import bad_crc_png, bomb_png, header_only_jpeg, unknown_compression_tiff

DEFAULT_PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS


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


# --- JPEG whose first scan cannot hold its blocks: refused before any pixel memory -------------------------

def _noise(h: int, w: int, mode: str = "RGB") -> Image.Image:
    a = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB").convert(mode)


def _mpo() -> bytes:
    buf = io.BytesIO()
    _noise(24, 32).save(buf, "MPO", save_all=True, append_images=[_noise(24, 32, "RGB").rotate(90)])
    return buf.getvalue()


GOOD_JPEGS = {  # name → (bytes, (height, width)); constant colours with optimize=True meet the bound exactly
    "baseline-420": (_encode(_noise(37, 53), "JPEG"), (37, 53)),
    "444": (_encode(_noise(37, 53), "JPEG", subsampling=0), (37, 53)),
    "422": (_encode(_noise(37, 53), "JPEG", subsampling=1), (37, 53)),
    "progressive": (_encode(_noise(37, 53), "JPEG", progressive=True), (37, 53)),
    "optimize": (_encode(_noise(37, 53), "JPEG", optimize=True), (37, 53)),
    "progressive-optimize": (_encode(_noise(37, 53), "JPEG", progressive=True, optimize=True), (37, 53)),
    "restart-blocks": (_encode(_noise(37, 53), "JPEG", restart_marker_blocks=1), (37, 53)),
    "restart-rows": (_encode(_noise(37, 53), "JPEG", restart_marker_rows=1, optimize=True), (37, 53)),
    "grayscale": (_encode(_noise(37, 53, "L"), "JPEG"), (37, 53)),
    "grayscale-progressive": (_encode(_noise(37, 53, "L"), "JPEG", progressive=True), (37, 53)),
    "cmyk": (_encode(_noise(37, 53, "CMYK"), "JPEG"), (37, 53)),
    "1x1": (_encode(Image.new("RGB", (1, 1), (9, 8, 7)), "JPEG"), (1, 1)),
    "8x8-gray": (_encode(Image.new("L", (8, 8), 3), "JPEG", optimize=True), (8, 8)),
    "constant-optimize-420": (_encode(Image.new("RGB", (1500, 1000)), "JPEG", optimize=True), (1000, 1500)),
    "constant-optimize-444": (_encode(Image.new("RGB", (999, 1001)), "JPEG", optimize=True, subsampling=0),
                              (1001, 999)),
    "constant-progressive-cmyk": (_encode(Image.new("CMYK", (1001, 777)), "JPEG", progressive=True, optimize=True),
                                  (777, 1001)),
    "large-restart": (_encode(Image.new("RGB", (3000, 2000), (200, 30, 30)), "JPEG", optimize=True,
                              restart_marker_blocks=3), (2000, 3000)),
    "mpo": (_mpo(), (24, 32)),
}


@pytest.mark.parametrize("name", sorted(GOOD_JPEGS))
def test_real_jpegs_still_decode(name):
    data, shape = GOOD_JPEGS[name]
    assert jpeg_scan_shortfall(data) is None
    d = decode_image(data)
    assert d.status == "ok", d.error
    assert d.image.shape == (*shape, 3)


@pytest.mark.parametrize("kept", [0, 12, 100])
def test_header_only_jpeg_is_decode_error(kept):
    d = decode_image(header_only_jpeg(8000, 8000, b"\x5a" * kept), max_pixels=100_000_000)
    assert d.status == Status.DECODE_ERROR.value and d.image is None and (d.width, d.height) == (8000, 8000)
    assert d.error == (f"JPEG pixel data truncated: the first scan holds {kept} bytes, "
                       f"its 1500000 blocks need at least 375000")


def test_truncated_scan_with_restart_markers_and_stuffing():
    """RSTn markers and stuffed FF00 bytes inside the scan count as data; the next other marker ends it."""
    data = header_only_jpeg(64, 64, b"\x12\xff\x00\x34\xff\xd0\x56")  # 7 bytes; 64x64 4:2:0 = 16 MCUs x 6 blocks
    assert jpeg_scan_shortfall(data) == ("JPEG pixel data truncated: the first scan holds 7 bytes, "
                                         "its 96 blocks need at least 24")
    assert jpeg_scan_shortfall(header_only_jpeg(64, 64, b"\xff\x00" * 12)) is None  # 24 bytes: the bound, not more


def test_bound_follows_the_scan_kind():
    """Sequential: 2 bits per block; progressive DC-first: 1 bit; progressive AC, lossless and arithmetic-coded
    frames are not checked."""
    assert "need at least 375000" in jpeg_scan_shortfall(header_only_jpeg(8000, 8000))
    progressive_dc = header_only_jpeg(8000, 8000, sof=0xC2)  # the SOS says Ss=0, Se=63: patch to a DC scan
    sos = progressive_dc.rindex(b"\xff\xda")
    dc_first = progressive_dc[:sos + 11] + b"\x00\x00" + progressive_dc[sos + 13:]
    assert "need at least 187500" in jpeg_scan_shortfall(dc_first)
    ac_first = progressive_dc[:sos + 11] + b"\x01\x3f" + progressive_dc[sos + 13:]
    assert jpeg_scan_shortfall(ac_first) is None
    for sof in (0xC3, 0xC9, 0xCA, 0xCB):  # lossless, arithmetic sequential/progressive/lossless
        assert jpeg_scan_shortfall(header_only_jpeg(8000, 8000, sof=sof)) is None


def test_block_counts_interleaved_and_single_component():
    """Hand-counted from ITU-T T.81 A.2: 4:2:0 (Y 2x2, Cb/Cr 1x1)."""
    frame = JpegFrame(0xC0, width=17, height=9, sampling={1: (2, 2), 2: (1, 1), 3: (1, 1)})
    assert jpeg_scan_blocks(frame, (1, 2, 3)) == 2 * 1 * 6  # MCUs of 16x16 pixels, 6 blocks each
    assert jpeg_scan_blocks(frame, (1,)) == 3 * 2  # Y is 17x9 pixels
    assert jpeg_scan_blocks(frame, (2,)) == 2 * 1  # Cb is ceil(17/2) x ceil(9/2) = 9x5 pixels
    assert jpeg_scan_blocks(frame, (2, 3)) == 2 * 1 * 2  # interleaved chroma: still MCUs of the frame
    big = JpegFrame(0xC0, width=8000, height=8000, sampling={1: (2, 2), 2: (1, 1), 3: (1, 1)})
    assert jpeg_scan_blocks(big, (1, 2, 3)) == 1_500_000 and jpeg_scan_blocks(big, (1,)) == 1_000_000


def test_parser_never_raises_on_damaged_jpegs():
    """Every prefix and 500 random single-byte changes of a real progressive JPEG: a message or None, never
    an exception; the intact file is not refused."""
    data = _encode(_noise(20, 30), "JPEG", progressive=True, restart_marker_blocks=2)
    assert jpeg_scan_shortfall(data) is None
    rng = np.random.default_rng(0)
    damaged = [data[:n] for n in range(1, len(data))]
    for at, value in zip(rng.integers(0, len(data), 500), rng.integers(0, 256, 500)):
        damaged.append(data[:at] + bytes([value]) + data[at + 1:])
    for bad in damaged:
        assert jpeg_scan_shortfall(bad) is None or jpeg_scan_shortfall(bad).startswith("JPEG pixel data truncated")
        assert decode_image(bad).status in ("ok", "decode_error")


# --- max_pixels above Pillow's own bomb limit ----------------------------------------------------------------

def test_max_pixels_above_pillows_limit_is_honoured():
    bomb = bomb_png(15000, 15000)  # 225 Mpx declared: above Pillow's 2 x 89.5 Mpx
    d = decode_image(bomb, max_pixels=300_000_000)
    assert d.status == Status.DECODE_ERROR.value and "truncated" in d.error, d.error
    d = decode_image(bomb, max_pixels=200_000_000)
    assert d.status == Status.TOO_LARGE.value and (d.width, d.height) == (15000, 15000)
    assert d.error == "15000x15000 = 225000000 pixels > max_pixels 200000000"
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_PILLOW_LIMIT


def test_max_pixels_applies_when_a_tiff_allocates():
    """Pillow checks its global limit again when a TIFF allocates its pixels: the caller's limit must hold
    there too (here the data is missing, so the honest answer is 'truncated', not a bomb error)."""
    d = decode_image(_tiff_declaring(15000, 15000), max_pixels=300_000_000)
    assert d.status == Status.DECODE_ERROR.value and "truncated" in d.error and "Bomb" not in d.error, d.error
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_PILLOW_LIMIT


def test_pillow_limit_restored_under_concurrent_decodes():
    """Threads decoding with different limits, switching as often as the interpreter allows: every result
    follows its own max_pixels and Pillow's global is left as it was."""
    import sys
    import threading

    bomb, results = bomb_png(15000, 15000), []  # 225 Mpx declared

    def work(max_pixels: int) -> None:
        for _ in range(200):
            results.append((max_pixels, decode_image(bomb, max_pixels=max_pixels).error))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = [threading.Thread(target=work, args=(m,)) for m in (100_000_000, 150_000_000, 200_000_000)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_PILLOW_LIMIT
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    expected = {100_000_000: "declared size above max_pixels 100000000 (Pillow refused it while reading the "
                             "headers: Image size (225000000 pixels) exceeds limit of 200000000 pixels",
                150_000_000: "15000x15000 = 225000000 pixels > max_pixels 150000000",
                200_000_000: "15000x15000 = 225000000 pixels > max_pixels 200000000"}
    assert len(results) == 600 and all(err.startswith(expected[m]) for m, err in results)


def _tiff_declaring(width: int, height: int) -> bytes:
    """An 8x8 grayscale TIFF whose size tags (and its one strip's length) say ``width`` x ``height``."""
    import struct

    tif = bytearray(_encode(Image.new("L", (8, 8)), "TIFF"))
    ifd = struct.unpack("<I", tif[4:8])[0]
    values = {256: width, 257: height, 278: height, 279: width * height}
    for i in range(struct.unpack("<H", tif[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", tif[entry:entry + 4])
        if tag in values:
            tif[entry + 8:entry + 12] = struct.pack("<I" if kind == 4 else "<HH", *(
                (values[tag],) if kind == 4 else (values[tag], 0)))
    return bytes(tif)


# --- peak memory of the refused inputs, measured in a fresh interpreter ----------------------------------------

_PEAK_RSS_CHILD = """
import json, resource, sys
from pipeline.io.decode import decode_image

def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

base, out = peak_bytes(), []
for path, max_pixels in json.loads(sys.argv[1]):
    with open(path, "rb") as f:
        d = decode_image(f.read(), max_pixels=max_pixels)
    out.append([d.status, d.error, peak_bytes() - base])
print(json.dumps(out))
"""


def test_refused_inputs_never_touch_full_size_memory(tmp_path):
    """Peak RSS growth of a fresh interpreter while decoding: the brief's 8000x8000 JPEG (192 MB of pixels,
    today filled with grey), the same headers built from a 16x16 file, and 225 Mpx PNG/TIFF headers decoded
    under max_pixels 300 M (675 MB / 225 MB of pixels). Each must stay far below its image size."""
    import json
    import pathlib
    import subprocess
    import sys

    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(buf, "JPEG", quality=10)
    jpg = buf.getvalue()
    sos = jpg.index(b"\xff\xda")
    real = jpg[:sos + 2 + int.from_bytes(jpg[sos + 2:sos + 4], "big") + 40] + b"\xff\xd9"
    cases = [(real, 100_000_000, "decode_error"), (header_only_jpeg(8000, 8000), 100_000_000, "decode_error"),
             (bomb_png(15000, 15000), 300_000_000, "decode_error"),
             (_tiff_declaring(15000, 15000), 300_000_000, "decode_error")]
    jobs = []
    for i, (data, max_pixels, _) in enumerate(cases):
        (tmp_path / f"{i}.bin").write_bytes(data)
        jobs.append([str(tmp_path / f"{i}.bin"), max_pixels])
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, json.dumps(jobs)], cwd=root, capture_output=True,
                          text=True, timeout=120, check=True)
    got = json.loads(proc.stdout)
    assert [s for s, _, _ in got] == [c[2] for c in cases], got
    assert "the first scan holds 40 bytes" in got[0][1]
    assert max(growth for _, _, growth in got) < 32 * 2**20, got  # cumulative peak growth after each case


# --- files Pillow cannot identify although their magic bytes match a format ---------------------------------

@pytest.mark.parametrize("data,error", [
    (bad_crc_png(b"tEXt"), "PNG: broken PNG file (bad header checksum in b'tEXt')"),
    (bad_crc_png(b"IHDR"), "PNG: broken PNG file (bad header checksum in b'IHDR')"),
    (unknown_compression_tiff(12345), "TIFF: compression 12345 is not supported"),
    (b"II*\x00" + b"\x00" * 60, "TIFF: no more images in TIFF file"),
    (b"hello, I am a text file\n", "not a recognised image (24 bytes, starts b'hello, I')"),
])
def test_unidentified_file_says_what_is_wrong(data, error):
    d = decode_image(data)
    assert d.status == Status.DECODE_ERROR.value and d.error == error


def _classic_tiff(endian: str, compression_kind: int, compression: int) -> bytes:
    """A hand-built TIFF header and one-entry IFD holding only tag 259 (SHORT=3 or LONG=4)."""
    import struct

    magic = b"II" if endian == "<" else b"MM"
    value = struct.pack(endian + ("HH" if compression_kind == 3 else "I"), *(
        (compression, 0) if compression_kind == 3 else (compression,)))
    return (magic + struct.pack(endian + "HI", 42, 8) + struct.pack(endian + "H", 1)
            + struct.pack(endian + "HHI", 259, compression_kind, 1) + value + b"\x00" * 4)


def test_tiff_compression_tag():
    assert tiff_compression(unknown_compression_tiff(54321)) == 54321
    assert tiff_compression(_encode(Image.new("L", (4, 4)), "TIFF", compression="tiff_lzw")) == 5
    assert tiff_compression(_encode(Image.new("L", (4, 4)), "TIFF", big_tiff=True)) == 1
    assert tiff_compression(_classic_tiff(">", 3, 12345)) == 12345
    assert tiff_compression(_classic_tiff(">", 4, 70000)) == 70000
    assert tiff_compression(_classic_tiff("<", 3, 8)) == 8
    whole, entry_end = _classic_tiff("<", 3, 8), 8 + 2 + 12  # header, entry count, the entry
    assert [tiff_compression(whole[:n]) for n in range(entry_end)] == [None] * entry_end  # cut short
    assert tiff_compression(whole[:entry_end]) == 8
    assert tiff_compression(b"II\x2a\x00\xff\xff\xff\x7f" + b"\x00" * 12) is None  # IFD past the end
    assert tiff_compression(b"\x89PNG\r\n\x1a\n" + b"\x00" * 12) is None
