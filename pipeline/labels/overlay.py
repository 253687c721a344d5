"""Coloured-mask overlays: one image with a legend, and a contact sheet of many (numpy + Pillow).

Colours come from ``palette`` (deterministic per class index, shared with the PNG export).
Pixels whose label is outside ``[0, C)`` (255 = no segment) are left uncoloured.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BG = (255, 255, 255)
INK = (20, 20, 20)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: golden-ratio hue steps, alternating saturation/value bands."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = (0.85, 0.55, 0.95)[i % 3]
        v = (0.95, 0.75, 0.6)[(i // 3) % 3]
        out[i] = np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return out


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (falls back to the bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def blend(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5,
          edges: bool = True) -> np.ndarray:
    """Paint class colours over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int class indices; values outside ``[0, len(colors))`` are not painted.
        colors: (C, 3) uint8.
        alpha: mask opacity in [0, 1].
        edges: lighten class boundaries (60 % white), so adjacent regions stay apart.
    Returns:
        (H, W, 3) uint8.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    out = image.astype(np.float32)
    valid = (labels >= 0) & (labels < len(colors))
    col = colors[np.where(valid, labels, 0)].astype(np.float32)
    out[valid] = (1 - alpha) * out[valid] + alpha * col[valid]
    if edges:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        out[edge] = 0.4 * out[edge] + 0.6 * 255.0
    return out.round().astype(np.uint8)


def pixel_share(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(C,) float64 fraction of labelled pixels per class over all given (H, W) maps (sums to 1 or 0)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for lab in labels:
        v = lab[(lab >= 0) & (lab < num_classes)].astype(np.int64)
        counts += np.bincount(v, minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def legend(class_names: Sequence[str], colors: np.ndarray, share: np.ndarray, width: int = 300,
           max_rows: int = 40, title: str = "class   pixel share") -> Image.Image:
    """A legend panel: swatch, class name, a bar proportional to the pixel share and its percentage.

    Only classes with a non-zero share are listed, largest first (at most ``max_rows``).
    """
    f, row_h = font(13), 20
    order = [i for i in np.argsort(-share, kind="stable") if share[i] > 0][:max_rows]
    panel = Image.new("RGB", (width, 28 + row_h * max(len(order), 1) + 8), BG)
    d = ImageDraw.Draw(panel)
    d.text((8, 6), title, fill=INK, font=f)
    bar_x0, bar_w = 150, width - 150 - 52
    for r, i in enumerate(order):
        y = 28 + r * row_h
        c = tuple(int(v) for v in colors[i])
        d.rectangle([8, y + 2, 22, y + 16], fill=c, outline=INK)
        d.text((28, y + 2), _clip(class_names[i], 16), fill=INK, font=f)
        d.rectangle([bar_x0, y + 4, bar_x0 + max(1, int(bar_w * share[i] / share[order[0]])), y + 14], fill=c)
        d.text((width - 48, y + 2), f"{100 * share[i]:.1f}%", fill=INK, font=f)
    if not order:
        d.text((8, 30), "(no labelled pixels)", fill=INK, font=f)
    return panel


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """Place two panels next to each other on a white canvas (top-aligned)."""
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), BG)
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def overlay_image(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
                  title: Optional[str] = None) -> Image.Image:
    """One image: blended masks at full resolution, legend with this image's pixel shares on the right.

    Output size: (W + 300) x max(H + title bar, legend height) pixels.
    """
    colors = palette(len(class_names))
    body = Image.fromarray(blend(image, labels, colors, alpha))
    if title:
        body = _caption(body, title)
    return side_by_side(body, legend(class_names, colors, pixel_share([labels], len(class_names))))


def _caption(im: Image.Image, text: str, max_chars: int = 60) -> Image.Image:
    out = Image.new("RGB", (im.width, im.height + 20), BG)
    out.paste(im, (0, 0))
    ImageDraw.Draw(out).text((4, im.height + 3), _clip(text, max_chars), fill=INK, font=font(12))
    return out


def thumbnail(image: np.ndarray, size: int) -> Tuple[Image.Image, Tuple[int, int]]:
    """Fit an (H, W, 3) array into ``size`` x ``size`` keeping aspect; returns the image and its (w, h)."""
    im = Image.fromarray(image)
    scale = size / max(im.width, im.height)
    wh = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(wh, Image.Resampling.BILINEAR), wh


def contact_sheet(items: Sequence[Tuple[np.ndarray, np.ndarray, str]], class_names: Sequence[str],
                  cols: int = 4, thumb: int = 256, alpha: float = 0.5,
                  share: Optional[np.ndarray] = None, legend_title: str = "class   pixel share") -> Image.Image:
    """A grid of overlays with captions and one legend.

    Args:
        items: ``(image (H, W, 3) uint8, labels (H, W), caption)`` per cell.
        share: (C,) pixel share for the legend (e.g. over the whole run); default: over ``items``.
    Returns:
        RGB image, ``cols * thumb + 300`` wide; each cell is ``thumb`` x ``thumb + 20`` px.
    """
    colors = palette(len(class_names))
    rows = max(1, -(-len(items) // cols))
    grid = Image.new("RGB", (cols * thumb, rows * (thumb + 20)), BG)
    for k, (image, labels, caption) in enumerate(items):
        cell, (w, h) = thumbnail(blend(image, labels, colors, alpha), thumb)
        x, y = (k % cols) * thumb, (k // cols) * (thumb + 20)
        grid.paste(_caption(cell, caption, max_chars=thumb // 7), (x + (thumb - w) // 2, y))
    if share is None:
        share = pixel_share([lab for _, lab, _ in items], len(class_names))
    return side_by_side(grid, legend(class_names, colors, share, title=legend_title))



RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS (smoke test): these labels are meaningless"
BANNER_BG = (200, 0, 0)


def is_random_weights(weights_digest: Optional[str]) -> bool:
    """Whether rows/provenance name random CLIP weights (``--random-weights`` writes ``random:...``)."""
    return bool(weights_digest) and str(weights_digest).startswith("random:")


def banner(im: Image.Image, text: str = RANDOM_WEIGHTS_BANNER) -> Image.Image:
    """``im`` under a red strip with white ``text`` (at least 28 px high, text ~2 % of the width, >= 14 px), so a
    picture of a smoke-test run cannot be taken for real labels."""
    size = max(14, im.width // 50)
    strip = Image.new("RGB", (im.width, size + 14), BANNER_BG)
    ImageDraw.Draw(strip).text((8, 7), text, fill=(255, 255, 255), font=font(size))
    out = Image.new("RGB", (im.width, im.height + strip.height), BG)
    out.paste(strip, (0, 0))
    out.paste(im.convert("RGB"), (0, strip.height))
    return out
