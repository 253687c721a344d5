"""bench/gpu_check.py runs end to end on CPU (--device cpu --small): every section answers, nothing is timed."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.job  # runs the check's job part on a local Ray of its own
def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--small", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for name in ("parity", "precision", "throughput", "trunk", "oom", "job"):
        assert "error" not in r[name], (name, r[name])
    assert r["env"]["device"] == "cpu"
    assert set(r["parity"]) == {"voc21", "ade20k"} and r["parity"]["ade20k"]["agreement"] > 0.9
    assert r["parity"]["ade20k"]["sfr_patch_labels"]["patches"] > 0
    assert {"bf16", "fp16"} <= set(r["precision"])
    assert r["job"]["by_status"] == {"ok": r["job"]["images"]} and r["job"]["devices"]["kinds"] == {"cpu": 1}
    assert "section/metric" in proc.stdout
