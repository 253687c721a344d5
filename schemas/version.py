"""Versions: the package's, and ``code_version()``, the code identity every row carries.

``code_version()`` is ``"0.1.0+g<commit>"``, or ``"0.1.0+g<commit>.dirty.<source digest>"`` when the project's
source differs from the commit. It answers from the first of these that knows:

1. ``$RESLABEL_CODE_VERSION``, when a submitter sets it explicitly (e.g. through ``--runtime-env-json``);
2. git, when the code runs from a checkout (a local run);
3. the stamp ``schemas/_stamp.json``, written by ``python -m schemas.version --stamp`` (``scripts/install.sh``
   runs it) in a checkout. ``ray job submit --working-dir .`` does not upload ``.git`` but does upload the
   stamp (git ignores it through ``.git/info/exclude``, Ray reads only ``.gitignore``/``.rayignore``).
   The stamp is believed only while the source digest it recorded equals the running source's, so a
   stale stamp can never name the wrong commit;
4. otherwise ``"0.1.0+src.<digest>"``: the digest of the project's source still identifies the code.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pathlib
import subprocess
import sys
from typing import Optional

__version__ = "0.1.0"
ENV = "RESLABEL_CODE_VERSION"
ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "pipeline", "jobs")
SOURCE_SUFFIXES = (".py", ".cpp")
STAMP = pathlib.Path(__file__).resolve().parent / "_stamp.json"


def source_digest(root: pathlib.Path = ROOT) -> str:
    """sha256 (hex, 16 digits) over the relative paths and bytes of the packages' ``.py``/``.cpp`` files."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                h.update(path.relative_to(root).as_posix().encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git(root: pathlib.Path, *args: str) -> Optional[str]:
    """stdout of ``git -C root ARGS`` (stripped), or None when git or the checkout is missing."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_version(root: pathlib.Path = ROOT) -> Optional[str]:
    """``"<base>+g<commit12>"`` (``.dirty.<source digest>`` appended if the packages differ from it), else None."""
    sha = _git(root, "rev-parse", "--short=12", "HEAD")
    if not sha:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *PACKAGES)
    return f"{__version__}+g{sha}" + (f".dirty.{source_digest(root)}" if status else "")


def stamped_version(root: pathlib.Path = ROOT, stamp: pathlib.Path = STAMP) -> Optional[str]:
    """The stamp's version when its recorded source digest equals the running source's, else None."""
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if record.get("source_digest") != source_digest(root):
        return None
    return record.get("code_version")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """The code identity for rows and run records (see the module docstring for the sources)."""
    explicit = os.environ.get(ENV, "").strip()
    if explicit:
        return explicit
    return git_version() or stamped_version() or f"{__version__}+src.{source_digest()}"


def write_stamp(root: pathlib.Path = ROOT, stamp: pathlib.Path = STAMP) -> dict:
    """Record the checkout's commit and source digest in ``stamp``; have git ignore the stamp locally."""
    version = git_version(root)
    if version is None:
        raise RuntimeError(f"{root} is not a git checkout (or git is missing): nothing to stamp")
    record = {"code_version": version, "source_digest": source_digest(root)}
    stamp.write_text(json.dumps(record, indent=2) + "\n")
    exclude = root / ".git" / "info" / "exclude"
    entry = "/" + stamp.relative_to(root).as_posix()
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if entry not in lines:  # ignored by git (no untracked file), still uploaded by `ray job submit`
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join(lines + [entry]) + "\n")
    return record


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m schemas.version", description="print or stamp the code version")
    p.add_argument("--stamp", action="store_true",
                   help=f"write {STAMP.relative_to(ROOT)} from git (run before `ray job submit --working-dir .`)")
    args = p.parse_args(argv)
    if args.stamp:
        try:
            record = write_stamp()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"stamped {record['code_version']} (source {record['source_digest']}) in {STAMP}")
        return 0
    print(code_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
