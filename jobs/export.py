"""Export a committed labeling run as COCO annotations JSON and/or PNG label maps.

    python -m jobs.export RUN_URI --coco OUT.json                 # pycocotools-loadable annotations
    python -m jobs.export RUN_URI --png OUT_PREFIX [--name-by source_stem]   # mmseg-style label PNGs

RUN_URI is a run directory (local or s3://.../runs/<run_id>); outputs are local paths or URIs.
Runs without ``_SUCCESS.json`` are refused unless ``--allow-partial``. Runs in-process (no Ray):
both exports stream the Parquet parts batch by batch.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pipeline.labels.export import write_coco, write_label_pngs
from pipeline.labels.reader import UNLABELED, RunNotCommitted, open_run


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory: OUTPUT/runs/<run_id> (local path or s3://...)")
    p.add_argument("--coco", metavar="OUT_JSON", help="write COCO annotations JSON here")
    p.add_argument("--png", metavar="OUT_PREFIX", help="write one label PNG per image under this prefix")
    p.add_argument("--name-by", choices=("image_id", "source_stem"), default="image_id",
                   help="PNG file names from the image id or from the source file's stem (mmseg pairing)")
    p.add_argument("--fill-excluded", action="store_true",
                   help="PNG: pixels of the class the job dropped (background) get its index instead of 255")
    p.add_argument("--categories", nargs="+", help="keep only these class names in the COCO export")
    p.add_argument("--min-score", type=float, help="drop segments scoring below this (COCO export)")
    p.add_argument("--allow-partial", action="store_true", help="export a run that has no _SUCCESS.json")
    args = p.parse_args(argv)
    if not (args.coco or args.png):
        p.error("nothing to do: give --coco OUT_JSON and/or --png OUT_PREFIX")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run = open_run(args.run, allow_partial=args.allow_partial)
    except (RunNotCommitted, FileNotFoundError) as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 2
    if args.coco:
        filters = {"categories": args.categories, "min_score": args.min_score}
        write_coco(run, args.coco, **{k: v for k, v in filters.items() if v is not None})
        print(f"wrote COCO annotations: {args.coco}")
    if args.png:
        fill = run.background_fill() if args.fill_excluded else UNLABELED
        files = write_label_pngs(run, args.png, name_by=args.name_by, fill=fill)
        print(f"wrote {len(files)} label PNGs + label_maps.json under {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
