"""code_version: the commit from git, from the install-time stamp when there is no .git (what `ray job submit
--working-dir .` uploads), never from a stale stamp, and the source digest when nothing else knows."""
from __future__ import annotations

import importlib.metadata
import json
import pathlib
import shutil
import subprocess
import sys

from schemas import version
from tests.crash_helpers import REPO


def _copy_project(dest: pathlib.Path) -> pathlib.Path:
    for pkg in version.PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "_stamp.json"))
    shutil.copy(REPO / ".gitignore", dest / ".gitignore")
    return dest


def _git(root: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit_all(root: pathlib.Path) -> str:
    """``git init`` + commit everything at ``root``; the commit's 12-digit short sha."""
    _git(root, "init", "-q")
    for args in (("add", "."), ("commit", "-qm", "x")):
        _git(root, "-c", "user.email=t@t", "-c", "user.name=t", *args)
    return _git(root, "rev-parse", "--short=12", "HEAD")


def _code_version_in(root: pathlib.Path, env_extra=None) -> str:
    """code_version() as a fresh interpreter running the copy at ``root`` computes it."""
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}
    done = subprocess.run([sys.executable, "-c", "from schemas.version import code_version; print(code_version())"],
                          cwd=root, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_stamp_carries_the_commit_where_there_is_no_git(tmp_path):
    checkout = _copy_project(tmp_path / "checkout")
    sha = _commit_all(checkout)
    assert _code_version_in(checkout) == f"{version.__version__}+g{sha}"

    done = subprocess.run([sys.executable, "schemas/version.py", "--stamp"], cwd=checkout, capture_output=True,
                          text=True, check=True)  # python3 alone, as the README's cluster recipe runs it
    assert f"+g{sha}" in done.stdout
    assert "/schemas/_stamp.json" in (checkout / ".git" / "info" / "exclude").read_text().splitlines()
    assert _git(checkout, "status", "--porcelain") == ""  # git ignores the stamp: no untracked file

    uploaded = tmp_path / "uploaded"  # what `ray job submit --working-dir .` ships: the files, no .git
    shutil.copytree(checkout, uploaded, ignore=shutil.ignore_patterns(".git"))
    assert _code_version_in(uploaded) == f"{version.__version__}+g{sha}"

    (uploaded / "pipeline" / "decode.py").write_text("# changed after stamping\n")
    stale = _code_version_in(uploaded)  # the stamp no longer describes this source: never claim its commit
    assert stale == f"{version.__version__}+src.{version.source_digest(uploaded)}" and sha not in stale


def test_dirty_checkout_names_its_source(tmp_path):
    checkout = _copy_project(tmp_path / "c")
    sha = _commit_all(checkout)
    with open(checkout / "jobs" / "label.py", "a") as f:
        f.write("\n# local edit\n")
    assert _code_version_in(checkout) == f"{version.__version__}+g{sha}.dirty.{version.source_digest(checkout)}"


def test_explicit_version_wins_and_no_source_of_truth_falls_back_to_digest(tmp_path):
    bare = _copy_project(tmp_path / "bare")
    assert _code_version_in(bare) == f"{version.__version__}+src.{version.source_digest(bare)}"
    assert _code_version_in(bare, {version.ENV: "1.2.3+build7"}) == "1.2.3+build7"
    done = subprocess.run([sys.executable, "schemas/version.py", "--stamp"], cwd=bare, capture_output=True, text=True)
    assert done.returncode == 2 and "not a git checkout" in done.stderr


def test_stamp_is_believed_only_for_its_digest(tmp_path):
    root = _copy_project(tmp_path / "p")
    stamp = root / "schemas" / "_stamp.json"
    stamp.write_text(json.dumps({"code_version": "0.1.0+gabc", "source_digest": version.source_digest(root)}))
    assert version.stamped_version(root, stamp) == "0.1.0+gabc"
    stamp.write_text(json.dumps({"code_version": "0.1.0+gabc", "source_digest": "0" * 16}))
    assert version.stamped_version(root, stamp) is None
    stamp.write_text("{broken")
    assert version.stamped_version(root, stamp) is None


def test_package_version_is_the_one_in_schemas():
    assert importlib.metadata.version("reslabel") == version.__version__
