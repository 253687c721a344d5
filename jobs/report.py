"""QA report of a labeling run: one static ``DIR/index.html`` with its pictures beside it, no server.

    python -m jobs.report out/runs/<run_id> --out qa/<run_id> [--n 8] [--seed 0] [--allow-partial]

What it shows, all from the run itself (one streaming pass over the rows, O(n) memory for the pictures):
the run's summary and provenance, status counts (``_SUCCESS.json``), the share of labelled pixels per class
and the segment scores (histograms drawn with matplotlib), overlays of the ``--n`` images with the lowest
confidence (area-weighted mean segment score) and of ``--n`` random ones (seeded), a table of the rows that
failed (image, status, message), and how long each stage took. Opens from disk in any browser.
"""
from __future__ import annotations

import argparse
import heapq
import html
import json
import os
import random
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jobs import storage
from pipeline.labels.reader import UNLABELED, Run, RunNotCommitted, label_map, open_run

SCORE_BINS = np.linspace(0.0, 1.0, 21)  # segment-score histogram: 20 bins of 0.05
MAX_ERROR_ROWS = 1000  # failed rows listed in the table (the count above it is exact)


class RunScan:
    """What one pass over the rows collects: per-class pixels and segment scores, the images to draw, errors."""

    def __init__(self, num_classes: int, n: int, seed: int):
        self.pixels = np.zeros(num_classes, dtype=np.int64)  # labelled pixels per class (stored areas)
        self.score_hist = np.zeros((num_classes, len(SCORE_BINS) - 1), dtype=np.int64)  # segments per score bin
        self.segments = np.zeros(num_classes, dtype=np.int64)
        self.ignored = 0  # pixels in ignore regions (runs labelled with --ignore-below)
        self.rows = 0
        self.by_status: Dict[str, int] = {}
        self.errors: List[Dict[str, Any]] = []
        self.lowest: List[Tuple[float, int, Dict]] = []  # max-heap by confidence (negated), size n
        self.sample: List[Dict] = []  # reservoir sample of ok rows, size n
        self.ok_seen = 0
        self.n, self.rng = n, random.Random(seed)

    def add(self, row: Dict[str, Any]) -> None:
        self.rows += 1
        status = row["status"]
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status != "ok":
            if len(self.errors) < MAX_ERROR_ROWS:
                self.errors.append({k: row[k] for k in ("image_id", "source_uri", "status", "error")})
            return
        segs = row["segments"]
        area = 0
        weighted = 0.0
        for s in segs:
            c = s["category_id"]
            if 0 <= c < len(self.pixels):
                self.pixels[c] += s["area"]
                self.segments[c] += 1
                b = min(int(np.searchsorted(SCORE_BINS, s["score"], side="right")) - 1, len(SCORE_BINS) - 2)
                self.score_hist[c, max(b, 0)] += 1
            area += s["area"]
            weighted += s["score"] * s["area"]
        if row.get("ignore"):
            from pipeline.labels.rle import rle_area

            self.ignored += rle_area(row["ignore"])
        confidence = weighted / area if area else 0.0
        self.ok_seen += 1
        item = (-confidence, self.ok_seen, row)
        if len(self.lowest) < self.n:
            heapq.heappush(self.lowest, item)
        elif self.n and item > self.lowest[0]:
            heapq.heapreplace(self.lowest, item)
        if len(self.sample) < self.n:
            self.sample.append(row)
        else:
            j = self.rng.randrange(self.ok_seen)
            if j < self.n:
                self.sample[j] = row

    def lowest_rows(self) -> List[Tuple[float, Dict]]:
        """The ``n`` least confident ok rows, least confident first: (confidence, row)."""
        return [(-c, row) for c, _, row in sorted(self.lowest, key=lambda t: (-t[0], t[1]))]


def scan(run: Run, n: int, seed: int) -> RunScan:
    out = RunScan(len(run.categories), n, seed)
    columns = ["image_id", "source_uri", "width", "height", "status", "error", "segments"]
    if "ignore" in run.dataset().schema.names:
        columns.append("ignore")
    for row in run.rows(columns=columns):
        out.add(row)
    return out


# ---- pictures -----------------------------------------------------------------------------------------------
def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_pixel_share(names: Sequence[str], pixels: np.ndarray, path: str) -> List[Tuple[str, float]]:
    """Horizontal bar chart of each present class's share of the labelled pixels; returns (name, share %)."""
    plt = _pyplot()
    total = int(pixels.sum())
    order = [int(i) for i in np.argsort(-pixels, kind="stable") if pixels[i] > 0]
    shares = [(names[i], 100.0 * pixels[i] / total) for i in order]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(shares), 1) + 1.2))
    ax.barh([s[0] for s in shares][::-1], [s[1] for s in shares][::-1], color="#4c72b0")
    ax.set_xlabel("share of labelled pixels (%)")
    ax.set_title("pixels per class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return shares


def _plot_scores(names: Sequence[str], hist: np.ndarray, path: str, top: int = 6) -> None:
    """Histogram of all segment scores, and of the ``top`` classes with the most segments."""
    plt = _pyplot()
    centers = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    width = SCORE_BINS[1] - SCORE_BINS[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].bar(centers, hist.sum(axis=0), width=width * 0.9, color="#55a868")
    axes[0].set_title("segment scores (all classes)")
    busiest = [int(i) for i in np.argsort(-hist.sum(axis=1), kind="stable")[:top] if hist[i].sum() > 0]
    for c in busiest:
        axes[1].step(centers, hist[c], where="mid", label=names[c])
    axes[1].set_title(f"segment scores, {len(busiest)} classes with most segments")
    if busiest:
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("score (mean class probability inside the segment)")
        ax.set_ylabel("segments")
        ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _overlay(run: Run, row: Dict, path: str, caption: str, images: Optional[str], thumb: int) -> Optional[str]:
    """Write the row's overlay (image + label map + legend) as a PNG; None (and the reason) when the image
    cannot be read."""
    from pipeline.labels.dataset import image_location, load_rgb
    from pipeline.labels.overlay import overlay_image

    uri = image_location(row["source_uri"], images)
    try:
        image = load_rgb(uri)
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    labels = label_map(row, UNLABELED)
    picture = overlay_image(image, labels, run.categories, title=caption)
    picture.thumbnail((thumb, thumb))  # keeps the aspect ratio; never enlarges
    picture.save(path, format="PNG")
    return None


# ---- the page -----------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figures(items: List[Tuple[str, str, Optional[str]]]) -> str:
    out = []
    for src, caption, problem in items:
        if problem:
            out.append(f'<figure class="missing"><figcaption>{html.escape(caption)}: image not readable '
                       f'({html.escape(problem)})</figcaption></figure>')
        else:
            out.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                       f'<figcaption>{html.escape(caption)}</figcaption></figure>')
    return '<div class="grid">' + "".join(out) + "</div>"


CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:400px}figure img{max-width:400px}figcaption{font-size:12px}.missing{color:#a00}"""


def build(run: Run, out_dir: str, n: int = 8, seed: int = 0, images: Optional[str] = None,
          thumb: int = 400) -> Dict[str, Any]:
    """Write ``out_dir/index.html`` and its pictures; returns the numbers shown (for tests and callers)."""
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    names = run.categories
    s = scan(run, n, seed)
    manifest = run.manifest or {}
    by_status = manifest.get("by_status") or s.by_status
    shares = _plot_pixel_share(names, s.pixels, os.path.join(out_dir, "img", "pixel_share.png"))
    _plot_scores(names, s.score_hist, os.path.join(out_dir, "img", "scores.png"))
    lowest = []
    for k, (conf, row) in enumerate(s.lowest_rows()):
        src = f"img/lowest-{k:03d}.png"
        caption = f"{row['image_id']} (confidence {conf:.3f})"
        lowest.append((src, caption, _overlay(run, row, os.path.join(out_dir, src), caption, images, thumb)))
    sample = []
    for k, row in enumerate(s.sample):
        src = f"img/random-{k:03d}.png"
        sample.append((src, row["image_id"], _overlay(run, row, os.path.join(out_dir, src), row["image_id"], images,
                                                      thumb)))
    prov = manifest.get("provenance") or {}
    summary = [("run", manifest.get("run_id", run.path.rsplit("/", 1)[-1])), ("uri", run.uri),
               ("committed", run.committed), ("rows", manifest.get("rows", s.rows)),
               ("schema version", run.schema_version), ("job_hash", manifest.get("job_hash", "")),
               ("segmenter_hash", manifest.get("segmenter_hash") or ""), ("created", manifest.get("created_at", ""))]
    summary += [(k, v) for k, v in prov.items() if k not in ("job_hash", "segmenter_hash")]
    if s.ignored:
        summary.append(("ignored pixels (--ignore-below)", s.ignored))
    attempt = manifest.get("attempt") or {}
    stages = manifest.get("stage_seconds_summed") or {}
    errors_note = (f"{sum(v for k, v in by_status.items() if k != 'ok')} rows failed"
                   + (f"; the first {MAX_ERROR_ROWS} are listed" if len(s.errors) == MAX_ERROR_ROWS else ""))
    per_class = [(i, names[i], int(s.pixels[i]), f"{100.0 * s.pixels[i] / max(int(s.pixels.sum()), 1):.2f}",
                  int(s.segments[i])) for i in range(len(names)) if s.pixels[i] or s.segments[i]]
    sections = [
        f"<h1>QA report: {html.escape(str(summary[0][1]))}</h1>",
        "<h2>Summary and provenance</h2>", _table(["field", "value"], summary, "summary"),
        "<h2>Rows by status</h2>", _table(["status", "rows"], sorted(by_status.items()), "status"),
        "<h2>Classes</h2>", '<img src="img/pixel_share.png" alt="pixel share per class">',
        _table(["id", "class", "pixels", "share %", "segments"], per_class, "classes"),
        "<h2>Segment scores</h2>", '<img src="img/scores.png" alt="segment score histograms">',
        f"<h2>Lowest confidence ({len(lowest)})</h2>", _figures(lowest),
        f"<h2>Random sample ({len(sample)}, seed {seed})</h2>", _figures(sample),
        f"<h2>Errors</h2><p>{html.escape(errors_note)}</p>",
        _table(["image", "source", "status", "message"],
               [(e["image_id"], e["source_uri"], e["status"], e["error"]) for e in s.errors], "errors"),
        "<h2>Stage timings</h2>",
        _table(["stage", "seconds (summed over images)"], [(k, round(v, 3)) for k, v in stages.items()], "stages"),
        _table(["attempt", "value"], sorted(attempt.items()), "attempt"),
    ]
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>reslabel QA {html.escape(str(summary[0][1]))}'
            f"</title><style>{CSS}</style></head><body>" + "\n".join(sections) + "</body></html>\n")
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(page)
    return dict(by_status=by_status, shares=shares, pixels=s.pixels.tolist(), rows=s.rows, errors=len(s.errors),
                stages=stages, lowest=[r["image_id"] for _, r in s.lowest_rows()],
                sample=[r["image_id"] for r in s.sample])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run directory: OUTPUT/runs/<run_id> (local path or s3://...)")
    p.add_argument("--out", required=True, help="local directory for index.html and its pictures")
    p.add_argument("--n", type=int, default=8, help="images in each of the two overlay galleries")
    p.add_argument("--seed", type=int, default=0, help="seed of the random gallery")
    p.add_argument("--images", help="read pixels from DIR/<basename of source_uri> instead of source_uri")
    p.add_argument("--thumb", type=int, default=400, help="largest side of an overlay picture, in pixels")
    p.add_argument("--allow-partial", action="store_true", help="report on a run without _SUCCESS.json")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    args = p.parse_args(argv)
    if args.n < 0 or args.thumb < 32:
        p.error("--n must be >= 0 and --thumb >= 32")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from jobs import cluster

    if cluster.Submission.from_env().under_job and not os.path.isabs(os.path.expanduser(args.out)):
        print(f"error: --out {args.out!r} is a relative path: under `ray job submit` it lands in Ray's temporary "
              "copy of --working-dir, which Ray deletes after the job; give an absolute path", file=sys.stderr)
        return 2
    storage.apply_endpoint(args.s3_endpoint)
    try:
        run = open_run(args.run, allow_partial=args.allow_partial)
    except (RunNotCommitted, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    numbers = build(run, args.out, n=args.n, seed=args.seed, images=args.images, thumb=args.thumb)
    print(f"wrote {os.path.join(args.out, 'index.html')} ({numbers['rows']} rows, "
          f"{json.dumps(numbers['by_status'], sort_keys=True)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
