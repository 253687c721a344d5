"""QA report of a labeling run: one static ``DIR/index.html`` with its pictures beside it, no server.

    python -m jobs.report out/runs/<run_id> --out qa/<run_id> [--n 8] [--seed 0] [--allow-partial]

What it shows, all from the run itself (one streaming pass over the rows, O(n + classes x per_class) memory
for the pictures): a red banner when the run used random weights; the run's summary, options (preset,
--instances, --ignore-below and the ignored share) and provenance; status counts (``_SUCCESS.json``); the share
of labelled pixels per class (chart and table, largest first) and the segment scores (histograms drawn with
matplotlib); overlays of the ``--n`` least confident images (the row's ``confidence``: the mean probability of
the class each pixel got, defined for all-background images too), of the ``--per-class`` least confident
images of each class, and of ``--n`` random ones (seeded), each named by its source file with the image id on
hover and in a copyable line, with an HTML legend and ignored pixels hatched grey; the rows that failed; how
long each stage took. Sections with nothing to show are left out. Opens from disk in any browser.
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
from pipeline.labels.review import row_confidence

SCORE_BINS = np.linspace(0.0, 1.0, 21)  # segment-score histogram: 20 bins of 0.05
MAX_ERROR_ROWS = 1000  # failed rows listed in the table (the count above it is exact)


def source_name(source_uri: str) -> str:
    """What a reviewer calls an image: its file name, or a container member's key (``shard.tar#key.jpg``)."""
    base = source_uri.rstrip("/").rsplit("/", 1)[-1]
    return base.split("#", 1)[1] if "#" in base else base


class _Lowest:
    """The ``n`` items with the smallest key seen so far (a bounded max-heap); ties keep the earlier one."""

    def __init__(self, n: int):
        self.n, self.heap = n, []  # (-key, -order, row)

    def add(self, key: float, order: int, row: Dict) -> None:
        item = (-key, -order, row)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, item)
        elif self.n and item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def sorted(self) -> List[Tuple[float, Dict]]:
        return [(-k, row) for k, _, row in sorted(self.heap, key=lambda t: (-t[0], -t[1]))]


class RunScan:
    """What one pass over the rows collects: per-class pixels and segment scores, the images to draw, errors."""

    def __init__(self, num_classes: int, n: int, seed: int, per_class: int = 0):
        self.pixels = np.zeros(num_classes, dtype=np.int64)  # labelled pixels per class (stored areas)
        self.score_hist = np.zeros((num_classes, len(SCORE_BINS) - 1), dtype=np.int64)  # segments per score bin
        self.segments = np.zeros(num_classes, dtype=np.int64)
        self.images = np.zeros(num_classes, dtype=np.int64)  # ok images with a segment of the class
        self.class_image_pixels = np.zeros(num_classes, dtype=np.int64)  # all pixels of those images
        self.class_ignored = np.zeros(num_classes, dtype=np.int64)  # ignored pixels of those images
        self.ignored = 0  # pixels in ignore regions (runs labelled with --ignore-below)
        self.ok_pixels = 0
        self.rows = 0
        self.unranked = 0  # ok rows without a confidence (runs before schema 2.2, no segments)
        self.by_status: Dict[str, int] = {}
        self.errors: List[Dict[str, Any]] = []
        self.lowest = _Lowest(n)
        self.per_class = [_Lowest(per_class) for _ in range(num_classes)]
        self.sample: List[Dict] = []  # reservoir sample of ok rows, size n
        self.ok_seen = 0
        self.weights_digest: Optional[str] = None
        self.n, self.rng = n, random.Random(seed)

    def add(self, row: Dict[str, Any]) -> None:
        from pipeline.labels.rle import rle_area

        self.rows += 1
        self.weights_digest = self.weights_digest or row.get("weights_digest")
        status = row["status"]
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status != "ok":
            if len(self.errors) < MAX_ERROR_ROWS:
                self.errors.append({k: row[k] for k in ("image_id", "source_uri", "status", "error")})
            return
        size = int(row["width"] or 0) * int(row["height"] or 0)
        ignored = rle_area(row["ignore"]) if row.get("ignore") else 0
        row["_ignored_share"] = ignored / size if size else 0.0
        self.ignored += ignored
        self.ok_pixels += size
        present = set()
        for s in row["segments"]:
            c = s["category_id"]
            if 0 <= c < len(self.pixels):
                self.pixels[c] += s["area"]
                self.segments[c] += 1
                b = min(int(np.searchsorted(SCORE_BINS, s["score"], side="right")) - 1, len(SCORE_BINS) - 2)
                self.score_hist[c, max(b, 0)] += 1
                present.add(c)
        for c in present:
            self.images[c] += 1
            self.class_image_pixels[c] += size
            self.class_ignored[c] += ignored
        self.ok_seen += 1
        confidence = row_confidence(row)
        if confidence is None:
            self.unranked += 1
        else:
            row["_confidence"] = confidence
            self.lowest.add(confidence, self.ok_seen, row)
            for c in present:
                self.per_class[c].add(confidence, self.ok_seen, row)
        if len(self.sample) < self.n:
            self.sample.append(row)
        else:
            j = self.rng.randrange(self.ok_seen)
            if j < self.n:
                self.sample[j] = row

    def lowest_rows(self) -> List[Tuple[float, Dict]]:
        """The ``n`` least confident ok rows, least confident first: (confidence, row)."""
        return self.lowest.sorted()


def scan(run: Run, n: int, seed: int, per_class: int = 0) -> RunScan:
    out = RunScan(len(run.categories), n, seed, per_class)
    columns = ["image_id", "source_uri", "width", "height", "status", "error", "segments", "ignore", "confidence",
               "weights_digest"]
    if run.legacy:
        columns = [c for c in columns if c not in ("ignore", "confidence")]
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


def _plot_pixel_share(names: Sequence[str], pixels: np.ndarray, path: str) -> List[Tuple[int, str, float]]:
    """Horizontal bar chart of each present class's share of the labelled pixels, largest on top; returns
    (class id, name, share %) largest first (the order of the chart and of the class table)."""
    plt = _pyplot()
    total = int(pixels.sum())
    order = [int(i) for i in np.argsort(-pixels, kind="stable") if pixels[i] > 0]
    shares = [(i, names[i], 100.0 * pixels[i] / total) for i in order]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(shares), 1) + 1.2))
    ax.barh([s[1] for s in shares][::-1], [s[2] for s in shares][::-1], color="#4c72b0")
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


IGNORED_GREY = (128, 128, 128)


def hatch_ignored(picture: np.ndarray, ignore: np.ndarray, period: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 with the ignore region (H, W) bool drawn as grey diagonal hatching over a darkened image,
    unlike unlabelled pixels (left as they are)."""
    out = picture.copy()
    h, w = ignore.shape
    yy, xx = np.mgrid[0:h, 0:w]
    stripe = ((xx + yy) % period) < max(1, period // 3)
    out[ignore] = (out[ignore] * 0.45).astype(np.uint8)
    out[ignore & stripe] = IGNORED_GREY
    return out


def _overlay(run: Run, row: Dict, path: str, images: Optional[str], thumb: int) -> Optional[str]:
    """Write the row's overlay (image + masks, ignore region hatched; no burned-in text) as a PNG; None, or the
    reason when the image cannot be read."""
    from PIL import Image

    from pipeline.labels.dataset import image_location, load_rgb
    from pipeline.labels.overlay import blend, palette
    from pipeline.labels.reader import ignore_mask

    uri = image_location(row["source_uri"], images)
    try:
        image = load_rgb(uri)
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    labels = label_map(row, UNLABELED)
    picture = blend(image, labels, palette(len(run.categories)))
    if row.get("ignore"):
        picture = hatch_ignored(picture, ignore_mask(row))
    im = Image.fromarray(picture)
    im.thumbnail((thumb, thumb))  # keeps the aspect ratio; never enlarges
    im.save(path, format="PNG")
    return None


# ---- the page -----------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _swatch(rgb: Sequence[int]) -> str:
    return f'<span class="sw" style="background:rgb({int(rgb[0])},{int(rgb[1])},{int(rgb[2])})"></span>'


def _legend(row: Dict, names: Sequence[str], colors: np.ndarray) -> str:
    """An HTML legend of one image: its classes by share of the image's pixels, then the ignored share."""
    size = max(int(row["width"] or 0) * int(row["height"] or 0), 1)
    area: Dict[int, int] = {}
    for s in row["segments"]:
        area[s["category_id"]] = area.get(s["category_id"], 0) + int(s["area"])
    items = []
    for c, a in sorted(area.items(), key=lambda t: -t[1]):
        known = 0 <= c < len(names)
        items.append(f"<li>{_swatch(colors[c]) if known else ''}{html.escape(names[c] if known else str(c))}"
                     f' <span class="pct">{100.0 * a / size:.1f}%</span></li>')
    if row.get("_ignored_share"):
        items.append(f'<li><span class="sw ign"></span>ignored <span class="pct">{100.0 * row["_ignored_share"]:.1f}%'
                     "</span></li>")
    return '<ul class="legend">' + "".join(items) + "</ul>"


def _figure(src: str, row: Dict, problem: Optional[str], names: Sequence[str], colors: np.ndarray) -> str:
    name = source_name(row["source_uri"])
    tip = f"image_id {row['image_id']}\n{row['source_uri']}"
    conf = row.get("_confidence")
    facts = [] if conf is None else [f"confidence {conf:.3f}"]
    if row.get("_ignored_share"):
        facts.append(f"ignored {100.0 * row['_ignored_share']:.1f}%")
    caption = (f'<figcaption><b title="{html.escape(tip)}">{html.escape(name)}</b>'
               + (f" <span class=\"facts\">{html.escape(', '.join(facts))}</span>" if facts else "")
               + f'<br><code class="id" title="image_id (select to copy)">{html.escape(row["image_id"])}</code>'
               + "</figcaption>")
    if problem:
        return (f'<figure class="missing" data-image-id="{html.escape(row["image_id"])}">{caption}'
                f"<p>image not readable ({html.escape(problem)})</p></figure>")
    return (f'<figure data-image-id="{html.escape(row["image_id"])}"><img src="{html.escape(src)}" '
            f'alt="{html.escape(name)}" title="{html.escape(tip)}">{caption}{_legend(row, names, colors)}</figure>')


CSS = """body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:400px}figure img{width:100%;height:auto;display:block;image-rendering:pixelated}
figcaption{font-size:13px;margin:4px 0}
figcaption b{word-break:break-all}.facts{color:#555}code.id{font-size:11px;color:#666;user-select:all}
.missing{color:#a00}.legend{list-style:none;padding:0;margin:2px 0;font-size:12px;columns:2}
.legend li{margin:1px 0}.sw{display:inline-block;width:12px;height:12px;border:1px solid #333;margin-right:4px;
vertical-align:middle}.sw.ign{background:repeating-linear-gradient(45deg,#808080 0 2px,#333 2px 6px)}
.pct{color:#555}.banner{background:#c00;color:#fff;font-weight:bold;padding:10px 14px;font-size:18px;
position:sticky;top:0;z-index:9}.warn{background:#fff3cd;border:1px solid #e0b000;padding:8px}
details{margin:6px 0}summary{cursor:pointer;font-weight:bold}"""


def _run_options(manifest: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """The job options that change rows, and the preset, from ``_SUCCESS.json``'s config."""
    config = manifest.get("config") or {}
    job, seg = config.get("job") or {}, config.get("segmenter") or {}
    out: List[Tuple[str, Any]] = []
    if job:
        out += [("preset", job.get("preset", "")), ("--background", job.get("background", "")),
                ("--instances", bool(job.get("instances"))),
                ("--ignore-below", "off" if job.get("ignore_below") is None else job["ignore_below"])]
        if job.get("instances"):
            out.append(("--min-instance-area", job.get("min_instance_area", 0)))
        if job.get("overrides"):
            out.append(("--set", json.dumps(job["overrides"], sort_keys=True)))
        if job.get("vocabulary"):
            out.append(("--vocabulary", job["vocabulary"]))
    for key in ("prob_thd", "area_thd"):
        if key in seg:
            out.append((f"segmenter {key}", seg[key]))
    return out


def build(run: Run, out_dir: str, n: int = 8, seed: int = 0, images: Optional[str] = None,
          thumb: int = 400, per_class: int = 3) -> Dict[str, Any]:
    """Write ``out_dir/index.html`` and its pictures; returns the numbers shown (for tests and callers)."""
    from pipeline.labels.overlay import RANDOM_WEIGHTS_BANNER, is_random_weights, palette

    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    names = run.categories
    colors = palette(len(names))
    s = scan(run, n, seed, per_class)
    manifest = run.manifest or {}
    by_status = manifest.get("by_status") or s.by_status
    prov = manifest.get("provenance") or {}
    random_weights = is_random_weights(prov.get("weights_digest") or s.weights_digest)
    shares = _plot_pixel_share(names, s.pixels, os.path.join(out_dir, "img", "pixel_share.png")) if s.pixels.any() \
        else []
    if s.score_hist.any():
        _plot_scores(names, s.score_hist, os.path.join(out_dir, "img", "scores.png"))
    drawn: Dict[str, Tuple[str, Optional[str]]] = {}  # image_id → (src, problem): each image drawn once

    def figure(row: Dict) -> str:
        if row["image_id"] not in drawn:
            src = f"img/overlay-{len(drawn):04d}.png"
            drawn[row["image_id"]] = (src, _overlay(run, row, os.path.join(out_dir, src), images, thumb))
        src, problem = drawn[row["image_id"]]
        return _figure(src, row, problem, names, colors)

    lowest = [figure(row) for _, row in s.lowest_rows()]
    sample = [figure(row) for row in s.sample]
    by_class = []
    for c, name, _ in shares:
        rows = s.per_class[c].sorted()
        if rows:
            figs = "".join(figure(row) for _, row in rows)
            by_class.append(f'<details class="class" data-class="{html.escape(name)}"><summary>{_swatch(colors[c])}'
                            f"{html.escape(name)}: {len(rows)} least confident of {int(s.images[c])} images</summary>"
                            f'<div class="grid">{figs}</div></details>')
    summary = [("run", manifest.get("run_id", run.path.rsplit("/", 1)[-1])), ("uri", run.uri),
               ("committed", run.committed), ("rows", manifest.get("rows", s.rows)),
               ("schema version", run.schema_version), ("job_hash", manifest.get("job_hash", "")),
               ("segmenter_hash", manifest.get("segmenter_hash") or ""), ("created", manifest.get("created_at", ""))]
    summary += _run_options(manifest)
    summary += [(k, v) for k, v in prov.items() if k not in ("job_hash", "segmenter_hash")]
    ignore_below = ((manifest.get("config") or {}).get("job") or {}).get("ignore_below")
    ignored_share = s.ignored / s.ok_pixels if s.ok_pixels else 0.0
    warnings = list(manifest.get("warnings") or [])
    if s.ignored or ignore_below is not None:
        summary.append(("ignored pixels (--ignore-below" + (f" {ignore_below})" if ignore_below is not None else ")"),
                        f"{s.ignored} of {s.ok_pixels} ({100.0 * ignored_share:.1f}%)"))
    attempt = manifest.get("attempt") or {}
    stages = manifest.get("stage_seconds_summed") or {}
    failed = sum(v for k, v in by_status.items() if k != "ok")
    errors_note = (f"{failed} rows failed"
                   + (f"; the first {MAX_ERROR_ROWS} are listed" if len(s.errors) == MAX_ERROR_ROWS else ""))
    class_rows = [(i, name, int(s.pixels[i]), f"{share:.2f}", int(s.segments[i]), int(s.images[i]),
                   f"{100.0 * s.class_ignored[i] / max(int(s.class_image_pixels[i]), 1):.1f}")
                  for i, name, share in shares]
    class_rows += [(i, names[i], 0, "0.00", int(s.segments[i]), int(s.images[i]), "0.0")
                   for i in range(len(names)) if s.segments[i] and not s.pixels[i]]
    title = html.escape(str(summary[0][1]))
    sections = []
    if random_weights:
        sections.append(f'<div class="banner" id="random-weights">{html.escape(RANDOM_WEIGHTS_BANNER)} '
                        f"(weights {html.escape(str(prov.get('weights_digest') or s.weights_digest))})</div>")
    sections += [f"<h1>QA report: {title}</h1>"]
    sections += [f'<p class="warn">warning: {html.escape(w)}</p>' for w in warnings]
    sections += ["<h2>Summary and provenance</h2>", _table(["field", "value"], summary, "summary"),
                 "<h2>Rows by status</h2>", _table(["status", "rows"], sorted(by_status.items()), "status")]
    if shares:
        sections += ["<h2>Classes</h2>", '<img src="img/pixel_share.png" alt="pixel share per class">',
                     _table(["id", "class", "pixels", "share %", "segments", "images",
                             "ignored % of its images' pixels"], class_rows, "classes")]
    if s.score_hist.any():
        sections += ["<h2>Segment scores</h2>", '<img src="img/scores.png" alt="segment score histograms">']
    legend_note = ("<p>Colours: one per class (legend under each picture, shares of that image's pixels). "
                   + ("Grey hatching: ignored pixels (probability below --ignore-below "
                      f"{ignore_below}), in no segment. " if ignore_below is not None or s.ignored else "")
                   + "Uncoloured: no segment (e.g. the background class left out).</p>")
    if lowest:
        sections += [f"<h2>Least confident ({len(lowest)})</h2>",
                     "<p>Ranked by the image's confidence: the mean, over all its pixels, of the probability of the "
                     "class each pixel got (background included)"
                     + (f"; {s.unranked} images of an older run without a confidence are not ranked" if s.unranked
                        else "") + ".</p>", legend_note, '<div class="grid">' + "".join(lowest) + "</div>"]
    if by_class:
        sections += [f"<h2>Least confident per class ({per_class} each)</h2>",
                     "<p>For each class (largest share first), the least confident images that contain it.</p>",
                     "".join(by_class)]
    if sample:
        sections += [f"<h2>Random sample ({len(sample)}, seed {seed})</h2>", '<div class="grid">' + "".join(sample)
                     + "</div>"]
    if failed or s.errors:
        sections += [f"<h2>Errors</h2><p>{html.escape(errors_note)}</p>",
                     _table(["image", "source", "status", "message"],
                            [(e["image_id"], e["source_uri"], e["status"], e["error"]) for e in s.errors], "errors")]
    if stages or attempt:
        sections.append("<h2>Stage timings</h2>")
        if stages:
            sections.append(_table(["stage", "seconds (summed over images)"],
                                   [(k, round(v, 3)) for k, v in stages.items()], "stages"))
        if attempt:
            sections.append(_table(["attempt", "value"], sorted(attempt.items()), "attempt"))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>reslabel QA {title}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>' + "\n".join(sections)
            + "</body></html>\n")
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(page)
    return dict(by_status=by_status, shares=[(name, share) for _, name, share in shares], pixels=s.pixels.tolist(),
                rows=s.rows, errors=len(s.errors), stages=stages, random_weights=random_weights,
                lowest=[r["image_id"] for _, r in s.lowest_rows()], sample=[r["image_id"] for r in s.sample],
                per_class={names[c]: [r["image_id"] for _, r in s.per_class[c].sorted()] for c, _, _ in shares},
                ignored_share=ignored_share, pictures=sorted(src for src, problem in drawn.values() if not problem))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run directory: OUTPUT/runs/<run_id> (local path or s3://...)")
    p.add_argument("--out", required=True, help="local directory for index.html and its pictures")
    p.add_argument("--n", type=int, default=8, help="images in each of the two overlay galleries")
    p.add_argument("--per-class", type=int, default=3,
                   help="the N least confident images of each class (a collapsible section per class; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random gallery")
    p.add_argument("--images", help="read pixels from DIR/<basename of source_uri> instead of source_uri")
    p.add_argument("--thumb", type=int, default=400, help="largest side of an overlay picture, in pixels")
    p.add_argument("--allow-partial", action="store_true", help="report on a run without _SUCCESS.json")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    args = p.parse_args(argv)
    if args.n < 0 or args.per_class < 0 or args.thumb < 32:
        p.error("--n and --per-class must be >= 0 and --thumb >= 32")
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
    numbers = build(run, args.out, n=args.n, seed=args.seed, images=args.images, thumb=args.thumb,
                    per_class=args.per_class)
    print(f"wrote {os.path.join(args.out, 'index.html')} ({numbers['rows']} rows, "
          f"{json.dumps(numbers['by_status'], sort_keys=True)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
