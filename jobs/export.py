"""Export a committed labeling run as COCO annotations JSON and/or PNG label maps.

    python -m jobs.export RUN_URI --coco OUT.json                 # pycocotools-loadable annotations
    python -m jobs.export RUN_URI --png OUT_PREFIX [--name-by auto]          # mmseg-style label PNGs
    python -m jobs.export RUN_URI --review 50 --review-out review/tasks.json [--review-per-class 5]
                                                                  # Label Studio tasks of the least confident

RUN_URI is a run directory (local or s3://.../runs/<run_id>); outputs are local paths or URIs.
Runs without ``_SUCCESS.json`` are refused unless ``--allow-partial``. Runs in-process (no Ray):
both exports stream the Parquet parts batch by batch.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pipeline.labels.export import NAME_BY, write_coco, write_label_pngs
from pipeline.labels.reader import UNLABELED, RunNotCommitted, open_run


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory: OUTPUT/runs/<run_id> (local path or s3://...)")
    p.add_argument("--coco", metavar="OUT_JSON", help="write COCO annotations JSON here")
    p.add_argument("--png", metavar="OUT_PREFIX", help="write one label PNG per image under this prefix")
    p.add_argument("--name-by", choices=NAME_BY, default="auto",
                   help="PNG file names: auto (default) = the source file's stem where unique (mmseg pairing), "
                        "<stem>-<image id> for a stem shared by several sources; source_stem (a shared stem is "
                        "an error); image_id")
    p.add_argument("--fill-excluded", action="store_true",
                   help="PNG: pixels of the class the job dropped (background) get its index instead of 255")
    p.add_argument("--categories", nargs="+", help="keep only these class names in the COCO export")
    p.add_argument("--min-score", type=float, help="drop segments scoring below this (COCO export)")
    p.add_argument("--allow-partial", action="store_true", help="export a run that has no _SUCCESS.json")
    r = p.add_argument_group("review queue (Label Studio tasks with the labels as predictions)")
    r.add_argument("--review", type=int, metavar="N", help="the N least confident images")
    r.add_argument("--review-per-class", type=int, default=0, metavar="K",
                   help="also the K least confident images containing each class")
    r.add_argument("--review-out", metavar="TASKS_JSON",
                   help="where the tasks go (label_config.xml is written beside it)")
    r.add_argument("--review-image-url", default="{source_uri}", metavar="TEMPLATE",
                   help="the image URL Label Studio loads: {source_uri}, {name} (file name) and {image_id} are "
                        "filled in, e.g. '/data/local-files/?d=photos/{name}' (default: {source_uri})")
    args = p.parse_args(argv)
    if args.review is not None and (args.review < 0 or args.review_per_class < 0 or not args.review_out):
        p.error("--review N needs N >= 0, --review-per-class K >= 0 and --review-out TASKS_JSON")
    if not (args.coco or args.png or args.review is not None):
        p.error("nothing to do: give --coco OUT_JSON, --png OUT_PREFIX and/or --review N --review-out TASKS_JSON")
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
    if args.review is not None:
        from pipeline.labels.review import write_review

        def url(row: dict) -> str:
            name = row["source_uri"].rstrip("/").rsplit("/", 1)[-1].split("#")[-1]
            return args.review_image_url.format(source_uri=row["source_uri"], name=name, image_id=row["image_id"])

        done = write_review(run, args.review_out, n=args.review, per_class=args.review_per_class, image_url=url)
        print(f"wrote {done['tasks']} Label Studio tasks to {done['tasks_uri']} (labeling config: "
              f"{done['config_uri']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
