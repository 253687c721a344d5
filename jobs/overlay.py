"""Look at labels: a contact sheet of a run, or segment one picture and see its overlay.

    python -m jobs.overlay --run out/runs/<run_id> --out sheet.png [--n 16 --cols 4 --thumb 256]
    python -m jobs.overlay --image cat.jpg --preset voc21 --weights ViT-B-16.pt --out cat.png \
        [--vocabulary my_classes.txt]

The sheet samples ``--n`` ok images (seeded), reads their pixels from ``source_uri`` (or ``--images DIR``),
paints the masks and adds a legend with each class's pixel share over the whole run. The one-image
mode runs the segmenter in-process (no Ray). Both write a PNG.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from typing import List, Optional

import numpy as np

from jobs import options
from pipeline.labels.dataset import LabeledImageDataset, load_rgb
from pipeline.labels.overlay import banner, contact_sheet, is_random_weights, overlay_image
from pipeline.labels.reader import UNLABELED, RunNotCommitted, class_pixel_totals, open_run

DEFAULT_TEXT_CACHE = "~/.cache/reslabel/text_embeddings"  # a vocabulary is encoded once, then read back


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.overlay", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (local or s3://); draws a contact sheet")
    src.add_argument("--image", help="one image file/URI to segment and overlay")
    p.add_argument("--out", required=True, help="output PNG path or URI")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity")
    g = p.add_argument_group("contact sheet (--run)")
    g.add_argument("--n", type=int, default=16, help="number of sampled images")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cols", type=int, default=4)
    g.add_argument("--thumb", type=int, default=256, help="cell size in pixels")
    g.add_argument("--images", help="read pixels from DIR/<basename of source_uri> instead of source_uri")
    g.add_argument("--fill-excluded", action="store_true", help="paint the class the job dropped (background)")
    g.add_argument("--allow-partial", action="store_true")
    options.add_segmenter_options(p, preset_default="voc21", preset_help=" (--image)")
    options.add_model_options(p)
    p.add_argument("--text-cache", default=DEFAULT_TEXT_CACHE,
                   help="--image: directory/URI caching text embeddings per vocabulary ('none' disables)")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.image and not options.has_weights(args):
        p.error("--image needs --weights PATH, --pretrained TAG or --random-weights")
    return args


def sheet(args: argparse.Namespace):
    """Sample ``args.n`` ok rows and draw the contact sheet (PIL image)."""
    run = open_run(args.run, allow_partial=args.allow_partial)
    ids = [r["image_id"] for r in run.rows(status="ok", columns=["image_id"])]
    chosen = sorted(random.Random(args.seed).sample(ids, min(args.n, len(ids))))
    fill = run.background_fill() if args.fill_excluded else UNLABELED
    dset = LabeledImageDataset(run, images=args.images, fill=fill, image_ids=chosen)
    items = []
    for i in range(len(dset)):
        image, labels = dset[i]
        name = dset.row(i)["source_uri"].rstrip("/").rsplit("/", 1)[-1]
        items.append((image.numpy(), labels.numpy(), name))
    totals = class_pixel_totals(run, fill=fill).astype(np.float64)
    share = totals / totals.sum() if totals.sum() else totals
    picture = contact_sheet(items, run.categories, cols=args.cols, thumb=args.thumb, alpha=args.alpha, share=share,
                            legend_title="class   pixel share (whole run)")
    digest = ((run.manifest or {}).get("provenance") or {}).get("weights_digest")
    if digest is None:  # a partial run: the rows say
        digest = next(iter(run.rows(columns=["weights_digest"])), {}).get("weights_digest")
    return banner(picture) if is_random_weights(digest) else picture


def one_image(args: argparse.Namespace):
    """Segment ``args.image`` in-process and draw its overlay (PIL image)."""
    from pipeline.segmenter import Segmenter

    cfg = options.segmenter_config(args)
    mc = options.model_config(args)
    cache = None if args.text_cache in (None, "", "none") else os.path.expanduser(args.text_cache)
    seg = Segmenter.build(cfg, mc, text_cache=cache)
    image = load_rgb(args.image)
    result = seg.segment([image], names=[args.image])[0]
    title = f"{args.image.rsplit('/', 1)[-1]}  ({cfg.preset}, {cfg.method}/{cfg.base})"
    picture = overlay_image(image, result.labels, seg.class_names, alpha=args.alpha, title=title)
    return banner(picture) if mc.random_init else picture


def main(argv: Optional[List[str]] = None) -> int:
    from pipeline.io import uri as uris
    args = parse_args(argv)
    try:
        picture = sheet(args) if args.run else one_image(args)
    except (RunNotCommitted, FileNotFoundError, ValueError) as e:
        print(f"overlay failed: {e}", file=sys.stderr)
        return 2
    with uris.open_write(args.out) as f:
        picture.save(f, format="PNG")
    print(f"wrote {args.out} ({picture.width}x{picture.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
