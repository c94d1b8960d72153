"""The GPU benchmarks run at tiny size on the CPU, so they do not rot between GPU sessions
(no timings are checked here: the numbers live in docs/BENCHMARKS.md)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--shape", "tiny", "--device", "cpu", "--batch", "2", "--warmup", "1"]


def bench(script: str, *args: str) -> str:
    """Run a benchmark script; its standard output (it must succeed)."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def sides_and_losses(stdout: str, label: str) -> list[tuple[str, float]]:
    rows = re.findall(rf"^{label}\s+(baseline|unitune)\s+[\d,]+\s+-\s+-\s+(\d+\.\d+)",
                      stdout, re.MULTILINE)
    return [(side, float(loss)) for side, loss in rows]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--packed", "--profile"],
                                   ["--ckpt-layers", "1", "--offload", "--method", "full"]])
def test_train_throughput_runs_both_sides_at_tiny_size(extra):
    stdout = bench("train_throughput.py", *TINY, "--seq", "32", "--steps", "1", *extra)
    rows = sides_and_losses(stdout, "tiny .*?")
    assert [side for side, _ in rows] == ["baseline", "unitune"], stdout
    # same model, data and seed: the first steps' losses agree
    assert abs(rows[0][1] - rows[1][1]) < 1e-3, stdout
    if "--profile" in extra:  # where the time goes, by kind, adding up to the busy time
        shares = re.search(r"by kind: (.*)", stdout).group(1)
        total = sum(int(p) for p in re.findall(r" (\d+)%", shares))
        assert "matmul" in shares and 95 <= total <= 105, stdout


@pytest.mark.slow
def test_train_throughput_on_real_data_packs_the_same_examples_per_step(shared_data):
    """Padded batches against packed rows of the same Alpaca examples: each step holds the
    same examples on both sides, so the losses agree step by step."""
    stdout = bench("train_throughput.py", *TINY, "--seq", "256", "--steps", "2",
                   "--no-checkpointing", "--data",
                   str(shared_data / "instruct" / "alpaca_en_2k.json"), "--tokenizer-model",
                   str(shared_data / "tokenizers" / "llama2_sp.model"))
    rows = sides_and_losses(stdout, "tiny .*real data")
    assert [side for side, _ in rows] == ["baseline", "unitune"], stdout
    assert abs(rows[0][1] - rows[1][1]) < 1e-3, stdout
    assert "packing" in stdout.splitlines()[-1]


@pytest.mark.slow
def test_activation_memory_counts_less_for_unitune_than_the_baseline():
    stdout = bench("activation_memory.py", "--tokens", "16")
    rows = re.findall(r"^(baseline|baseline, autocast|unitune)\s+([\d.]+)\s+([\d.]+)",
                      stdout, re.MULTILINE)
    assert len(rows) == 6, stdout
    for i in (0, 3):  # per dropout: baseline > baseline under autocast > unitune
        kib = [float(r[2]) for r in rows[i:i + 3]]
        assert kib[0] > kib[1] > kib[2] > 0, stdout


@pytest.mark.slow
def test_distributed_smoke_trains_and_reopens_under_torchrun(test_preset):
    stdout = bench("distributed_smoke.py", "--shape", "tiny", "--device", "cpu", "--nproc",
                   "2", "--steps", "2", "--batch", "2")
    import json

    result = json.loads(stdout.splitlines()[-1])
    assert result["run"] == "ddp-lora" and result["world_size"] == 2, stdout
    assert result["parallelism"] == "MULTI_CPU: DistributedDataParallel", stdout
    assert result["steps"] == 2 and result["saved_tensors"] > 0 and "answer" in result


@pytest.mark.slow
def test_gpu_session_runs_its_parts_in_order_and_stops_one_at_its_limit(tmp_path,
                                                                        shared_data):
    """The device call's runner at tiny size: a part that ends is 'ok' (torchrun's workers
    included), the next one is stopped at its limit (all it started), each keeps its log."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "run", "--tiny",
                          "smoke", "train-rest", "--limit", "train-rest=15", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    rows = re.findall(r"^\| ([\w-]+) \| (.*?) \| (\d+) \|$", summary, re.MULTILINE)
    assert [(name, how.split(" (")[0]) for name, how, _ in rows] == [
        ("imports", "ok"), ("smoke", "ok"), ("train-rest", "cut at its limit")], summary
    assert '"run": "ddp-lora"' in (tmp_path / "smoke.log").read_text()
    assert "setting" in (tmp_path / "train-rest.log").read_text()  # the rows it got to
    assert "MISSING" not in (tmp_path / "imports.log").read_text()


def test_gpu_session_skips_a_part_the_budget_cannot_fit(tmp_path):
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "run", "--tiny",
                          "serve", "--budget", "100", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "| serve | not started: " in out.stdout, out.stdout
    assert "it needs 150 |" in (tmp_path / "summary.md").read_text()


def test_gpu_session_refuses_an_unknown_part():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "run", "--tiny",
                          "serv"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no part 'serv'; the parts are smoke" in out.stderr
