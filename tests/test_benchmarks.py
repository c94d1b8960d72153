"""The GPU benchmarks run at tiny size on the CPU, so they do not rot between GPU sessions
(no timings are checked here: the numbers live in docs/BENCHMARKS.md)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--packed", "--profile"],
                                   ["--ckpt-layers", "1", "--offload", "--method", "full"]])
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
    if "--profile" in extra:  # where the time goes, by kind, adding up to the busy time
        shares = re.search(r"by kind: (.*)", out.stdout).group(1)
        total = sum(int(p) for p in re.findall(r" (\d+)%", shares))
        assert "matmul" in shares and 95 <= total <= 105, out.stdout


@pytest.mark.slow
def test_train_throughput_on_real_data_packs_the_same_examples_per_step(shared_data):
    """Padded batches against packed rows of the same Alpaca examples: each step holds the
    same examples on both sides, so the losses agree step by step."""
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_throughput.py"), "--shape", "tiny", "--device",
         "cpu", "--seq", "256", "--batch", "2", "--steps", "2", "--warmup", "1",
         "--no-checkpointing", "--data", str(shared_data / "instruct" / "alpaca_en_2k.json"),
         "--tokenizer-model", str(shared_data / "tokenizers" / "llama2_sp.model")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^tiny .*real data\s+(baseline|unitune)\s+[\d,]+\s+-\s+-\s+(\d+\.\d+)",
                      out.stdout, re.MULTILINE)
    assert [side for side, _ in rows] == ["baseline", "unitune"], out.stdout
    assert abs(float(rows[0][1]) - float(rows[1][1])) < 1e-3, out.stdout
    assert "packing" in out.stdout.splitlines()[-1]
