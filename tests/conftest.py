"""Shared fixtures: an isolated unitune cache with the small test preset, and ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def unitune_home(tmp_path_factory):
    """Every test uses a private cache, so no test reads a user's ~/.cache/unitune."""
    home = tmp_path_factory.mktemp("unitune_home")
    old = os.environ.get("UNITUNE_HOME")
    os.environ["UNITUNE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("UNITUNE_HOME", None)
    else:
        os.environ["UNITUNE_HOME"] = old


@pytest.fixture(scope="session")
def test_preset(unitune_home) -> Path:
    """The small 'tiny-llama-test' base, built once per session."""
    from unitune.models.tiny import ensure_preset

    return ensure_preset("tiny-llama-test", log=lambda *a: None, progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; fails (not skips) when UNITUNE_REQUIRE_SHARED=1 and it is missing."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("UNITUNE_REQUIRE_SHARED") == "1":
            pytest.fail(f"UNITUNE_REQUIRE_SHARED=1 but {SHARED_DATA} does not exist")
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic suite (train/validation/test/pretrain)."""
    from unitune.data.synth import DEFAULT_FAMILIES, write_suite

    out = tmp_path_factory.mktemp("synth")
    return write_suite(out, list(DEFAULT_FAMILIES), n_train=8, n_val=2, n_test=2, n_pretrain=4,
                       seed=0)


# the marker tokens the families' own tokenizers hold as special tokens
FAMILY_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                   "[gMASK]", "sop", "<reserved_102>", "<reserved_103>", "<reserved_106>",
                   "<reserved_107>", "<eoh>", "<eoa>", "<eom>"]


@pytest.fixture(scope="session")
def family_tokenizer(test_preset):
    """The test preset's tokenizer with the families' marker tokens added as special tokens
    (each family's own tokenizer has them)."""
    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(test_preset))
    tok.add_special_tokens({"additional_special_tokens": FAMILY_SPECIALS})
    return tok


@pytest.fixture(scope="session")
def small_lora(tmp_path_factory, test_preset, synth_data):
    """Makes a small LoRA run of the test preset (20 steps on the synthetic suite) in a new
    folder named ``name``: the model the inference tests talk to."""
    from unitune.config import TrainConfig
    from unitune.train.recipe import train

    def make(name: str = "run", seed: int = 0) -> Path:
        out = tmp_path_factory.mktemp("runs") / name
        return train(TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                                 output_dir=str(out), max_steps=20, batch_size=8, lr=1e-2,
                                 seed=seed, device="cpu", template="alpaca", lora={"r": 4}),
                     log=lambda *a: None, progress=False)

    return make


@pytest.fixture(scope="session")
def chat_run(small_lora) -> Path:
    """One small LoRA run, folder name 'run', shared by the chat, predict and web tests."""
    return small_lora()


@pytest.fixture(scope="session")
def judge_model(test_preset, tmp_path_factory) -> Path:
    """A small random Llama with room for a judge prompt (the test preset has 256 tokens),
    served as the judge of the arena and the judged benchmarks."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("judge")
    tok = AutoTokenizer.from_pretrained(str(test_preset))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=4096)
                     ).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def start_server():
    """Starts `unitune serve ARGS` (on the CPU, a free port of 127.0.0.1) as users start it,
    with the serving benchmark's starter; returns (process, base url) once it answers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load",
                                                  REPO / "benchmarks" / "serve_load.py")
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)

    def start(args: list[str]):
        proc, url, _ = serve_load.start_server([*args, "--device", "cpu"], timeout_s=120)
        return proc, url

    return start


def the_error(stderr: str) -> str:
    """The error a command ended with: no traceback, one ``error:`` line and it is the last
    (what ran before it may have logged above it)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error:") for line in lines) == 1, stderr
    return lines[-1]


@pytest.fixture(scope="session")
def torchrun():
    """Runs `unitune train ARGS` as two processes under torchrun (DDP over gloo on the CPU);
    returns the finished process after checking both ended well and only the main reported."""
    import subprocess
    import sys

    def run(args: list[str]):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node", "2", "-m", "unitune.cli", "train", *args],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]  # (torchrun: every process ended well)
        assert proc.stdout.count("finished:") == 1  # only the main process reports
        assert proc.stderr.count("trainable parameters") == 1  # (the log: stderr)
        return proc

    return run
