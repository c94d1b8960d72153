"""The GPU benchmarks run at tiny size on the CPU, so they do not rot between GPU sessions
(no timings are checked here: the numbers live in docs/BENCHMARKS.md)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--packed"], ["--ckpt-layers", "1", "--method", "full"]])
def test_train_throughput_runs_both_sides_at_tiny_size(extra):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_throughput.py"), "--shape", "tiny", "--device",
         "cpu", "--seq", "32", "--batch", "2", "--steps", "1", "--warmup", "1", *extra],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^tiny .*?(baseline|unitune)\s+[\d,]+\s+-\s+-\s+(\d+\.\d+)",
                      out.stdout, re.MULTILINE)
    assert [side for side, _ in rows] == ["baseline", "unitune"], out.stdout
    # same model, data and seed: the first steps' losses agree
    assert abs(float(rows[0][1]) - float(rows[1][1])) < 1e-3, out.stdout
