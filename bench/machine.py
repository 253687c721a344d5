"""What the benchmark scripts record about the machine, and how they write their results."""
from __future__ import annotations

import json
import pathlib
from typing import List, Optional

KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # the flags that decide fp32/bf16 speed on CPUs


def key_cpu_flags() -> List[str]:
    """Which of ``KEY_FLAGS`` this CPU has ([] where /proc/cpuinfo cannot be read)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in KEY_FLAGS if f in flags]


def write_report(report: dict, out: Optional[str]) -> None:
    """Print ``report`` as JSON and, with ``out``, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(out).write_text(text + "\n")
