"""Runs you can trust: checkpoints that resume bit for bit after SIGKILL, SIGTERM or a crash,
a corrupt checkpoint skipped, changes refused, output folders that are not runs left alone,
and the record that reopens a run as it was trained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from unitune.cli import main
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.methods import WEIGHTS_FILE
from unitune.run import read_run
from unitune.train import resume
from unitune.train.callbacks import read_metrics
from unitune.train.recipe import train

pytestmark = pytest.mark.slow

STEPS, SAVE = 60, 4
# dropout on, so a resume must restore the random state to match
ARGS = ["--base-model", "tiny-llama-test", "--max-steps", str(STEPS), "--batch-size", "4",
        "--lr", "1e-2", "--no-progress", f"save_steps={SAVE}", "logging_steps=1",
        "lora.r=4", "lora.dropout=0.1", "device=cpu", "template=alpaca"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unitune.cli", *args]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, timeout=600)


def wait_for_checkpoint(proc: subprocess.Popen, partial: Path, step: int) -> None:
    manifest = partial / resume.CHECKPOINTS / f"checkpoint-{step}" / resume.MANIFEST
    deadline = time.time() + 300
    while not manifest.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_FILE))


def assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = adapter(a), adapter(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key  # bit for bit


def logged_steps(folder: Path) -> list[int]:
    (losses,) = read_metrics(folder / "metrics.jsonl", "loss")
    return [step for step, _ in losses]


@pytest.fixture(scope="module")
def data(synth_data) -> str:
    return str(synth_data["train"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, test_preset, data) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--data", data, "-o", str(out), *ARGS]) == 0
    return out


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, data, reference):
    out = tmp_path / "run"
    partial = out.with_name("run.partial")
    proc = start("train", "--data", data, "-o", str(out), *ARGS)
    wait_for_checkpoint(proc, partial, 8)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert not out.exists() and partial.is_dir()
    done = run("train", "--resume", str(partial), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert_same_adapter(out, reference)
    assert logged_steps(out) == list(range(1, STEPS + 1))  # no step logged twice or lost
    record = read_run(out)
    assert record.status == "finished" and record.metrics["steps"] == STEPS
    assert record.metrics["parallelism"] == "none"  # (one process: nothing wrapped)
    assert record.resumed_from and record.resumed_from[0].startswith("checkpoint-")
    assert not (out / resume.CHECKPOINTS).exists()


def interrupted_run(tmp_path: Path, data: str, step: int = 8,
                    sig: signal.Signals = signal.SIGTERM) -> tuple[Path, str]:
    """A run stopped by ``sig`` after its checkpoint of ``step``; (partial folder, stderr)."""
    out = tmp_path / "run"
    proc = start("train", "--data", data, "-o", str(out), *ARGS)
    partial = out.with_name("run.partial")
    wait_for_checkpoint(proc, partial, step)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    return partial, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_a_clean_checkpoint_and_a_clean_exit(tmp_path, data, reference, sig):
    partial, err = interrupted_run(tmp_path, data, sig=sig)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{sig.name}: stopped at step") and "unitune train --resume" in last
    record = read_run(partial)
    stopped = record.metrics["steps"]
    assert record.status == "interrupted" and 8 <= stopped < STEPS
    newest = resume.checkpoints(partial)[0]
    assert newest.name == f"checkpoint-{stopped}"  # saved where it stopped
    assert resume.checkpoint_problem(newest) is None
    assert len(resume.checkpoints(partial)) <= 2  # keep_checkpoints
    done = run("train", "--resume", str(partial), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert_same_adapter(tmp_path / "run", reference)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, data, reference):
    partial, _ = interrupted_run(tmp_path, data)
    newest, previous = resume.checkpoints(partial)[:2]
    weights = newest / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-7])  # a torn write
    done = run("train", "--resume", str(partial), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"skipping {newest}" in done.stdout + done.stderr
    assert read_run(tmp_path / "run").resumed_from[-1] == previous.name
    assert_same_adapter(tmp_path / "run", reference)


def test_resuming_with_changed_data_or_settings_is_refused(tmp_path, data):
    mine = tmp_path / "train.json"
    mine.write_text(Path(data).read_text())
    partial, _ = interrupted_run(tmp_path, str(mine), step=4)
    before = sorted(p.name for p in partial.rglob("*"))
    record = (partial / "run.json").read_text()
    rows = json.loads(mine.read_text())
    rows[0]["output"] += " (changed)"
    mine.write_text(json.dumps(rows))  # the same file, edited
    proc = run("train", "--resume", str(partial))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the data changed" in proc.stderr and "--force-resume" in proc.stderr
    proc = run("train", "--resume", str(partial), "lr=0.5")
    assert proc.returncode == 2 and "lr: 0.01 -> 0.5" in proc.stderr, proc.stderr
    proc = run("train", "--resume", str(partial), "--base-model", "tiny-llama")
    assert proc.returncode == 2 and "base_model: 'tiny-llama-test' -> 'tiny-llama'" \
        in proc.stderr, proc.stderr
    assert sorted(p.name for p in partial.rglob("*")) == before  # nothing touched
    assert (partial / "run.json").read_text() == record


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_a_crash_leaves_a_resumable_partial_run(tmp_path, data, reference):
    import yaml

    out = tmp_path / "run"
    partial = out.with_name("run.partial")
    cfg = TrainConfig(**crash_args(data, out))
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, log=lines.append, progress=False, callbacks=[CrashAt(10)])
    record = read_run(partial)
    assert record.status == "failed" and "simulated crash" in record.error
    assert f"resume it from checkpoint-8 with: unitune train --resume {partial}" in lines[-1]
    assert logged_steps(partial)[-1] == 9  # (step 10 crashed before it was logged)
    assert yaml.safe_load((partial / "config.yaml").read_text())["max_steps"] == STEPS
    train(cfg, log=lambda *a: None, progress=False, resume_from=True)
    assert_same_adapter(out, reference)


def test_resuming_from_an_older_checkpoint_drops_the_newer_ones(tmp_path, data, reference):
    partial, _ = interrupted_run(tmp_path, data)
    newest, older = resume.checkpoints(partial)[:2]
    done = run("train", "--resume", str(older), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"after {older.name}, which this resume trains again" in done.stdout + done.stderr
    assert_same_adapter(tmp_path / "run", reference)


def test_rerunning_without_resume_keeps_the_partial_run(tmp_path, data, capsys):
    partial, _ = interrupted_run(tmp_path, data, step=4)
    kept = sorted(p.name for p in partial.rglob("*"))
    assert main(["train", "--data", data, "-o", str(tmp_path / "run"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run (interrupted); resume it with" in err, err
    assert sorted(p.name for p in partial.rglob("*")) == kept


class FailAtSave(TrainerCallback):
    """Fails once the last checkpoint is complete, as a crash while saving the run would."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            raise OSError("disk full")


def crash_args(data: str, out: Path) -> dict:
    return {"base_model": "tiny-llama-test", "data": [data], "output_dir": str(out),
            "max_steps": STEPS, "batch_size": 4, "lr": 1e-2, "save_steps": SAVE,
            "logging_steps": 1, "lora": {"r": 4, "dropout": 0.1}, "device": "cpu",
            "template": "alpaca"}


def test_a_failure_after_the_last_step_resumes_by_saving(tmp_path, data, reference):
    out = tmp_path / "run"
    cfg = TrainConfig(**crash_args(data, out))
    with pytest.raises(OSError, match="disk full"):
        train(cfg, log=lambda *a: None, progress=False, callbacks=[FailAtSave()])
    lines: list[str] = []
    train(cfg, log=lines.append, progress=False, resume_from=True)
    assert any(f"checkpoint-{STEPS} is the last step: saving the run" in x for x in lines)
    assert_same_adapter(out, reference)
    assert read_run(out).metrics["steps"] == STEPS


def test_a_crash_before_the_first_checkpoint_resumes_from_the_start(tmp_path, data, reference):
    out = tmp_path / "run"
    cfg = TrainConfig(**crash_args(data, out))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, log=lambda *a: None, progress=False, callbacks=[CrashAt(3)])
    lines: list[str] = []
    train(cfg, log=lines.append, progress=False, resume_from=True)
    assert any("has no valid checkpoint; training starts from step 0" in x for x in lines)
    assert logged_steps(out) == list(range(1, STEPS + 1))  # steps 1-2 are not logged twice
    assert_same_adapter(out, reference)


def test_overwrite_never_touches_a_users_old_folder(tmp_path, data, reference):
    import shutil

    out = tmp_path / "chat"
    shutil.copytree(reference, out)
    backup = tmp_path / "chat.old"
    backup.mkdir()
    (backup / "notes.txt").write_text("mine")
    assert main(["train", "--data", data, "-o", str(out), "--overwrite",
                 "--base-model", "tiny-llama-test", "--max-steps", "1", "--no-progress",
                 "device=cpu"]) == 0
    assert (backup / "notes.txt").read_text() == "mine"
    assert read_run(out).metrics["steps"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_run_that_runs_model_code_needs_the_users_consent(reference, tmp_path, capsys):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(reference, folder)
    info = json.loads((folder / "run.json").read_text())
    info["trust_remote_code"] = True
    (folder / "run.json").write_text(json.dumps(info))
    assert main(["generate", str(folder), "hi", "--max-new-tokens", "2"]) == 2
    assert "pass --trust-remote-code if you trust it" in capsys.readouterr().err
    assert main(["generate", str(folder), "hi", "--max-new-tokens", "2",
                 "--trust-remote-code"]) == 0


def test_bottleneck_adapters_keep_their_modules_to_save(tmp_path, test_preset, data):
    from unitune.run import open_model

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                self.logits = model(input_ids=torch.tensor([[5, 9, 13, 7]])).logits

    cap = Capture()
    out = tmp_path / "run"
    train(TrainConfig(base_model="tiny-llama-test", data=[data], output_dir=str(out),
                      method="adapter_seq", modules_to_save=["embed_tokens"], max_steps=3,
                      batch_size=4, lr=5e-2, device="cpu", template="alpaca"),
          log=lambda *a: None, progress=False, callbacks=[cap])
    assert any("embed_tokens" in k for k in adapter(out))
    model, _, _ = open_model(out, device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=torch.tensor([[5, 9, 13, 7]])).logits,
                              cap.logits, atol=1e-6)


@pytest.mark.parametrize("args,expected", [
    (["--resume", "{tmp}/nowhere"], "no such folder"),
    (["--resume", "{tmp}/foreign"], "not a unitune run or checkpoint"),
    (["--resume", "{ref}"], "the run is finished; there is nothing to resume"),
    (["{data_arg}", "-o", "{tmp}/fresh", "--resume"], "nothing to resume: no unfinished run"),
    # an override after --resume stays an override (not a folder named 'device=cpu')
    (["{data_arg}", "-o", "{tmp}/fresh", "--resume", "device=cpu"],
     "nothing to resume: no unfinished run"),
    (["--resume", "{tmp}/run.yaml"], "nothing to resume: no unfinished run"),  # its config
])
def test_bad_resume_targets_are_one_line_errors(tmp_path, data, reference, capsys, args,
                                                expected):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "run.yaml").write_text(f"data: [{data}]\noutput_dir: {tmp_path}/fresh\n")
    args = [a.format(tmp=tmp_path, ref=reference, data_arg=f"--data={data}") for a in args]
    assert main(["train", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tmp_path, data, reference,
                                                           capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for command in (["train", "--data", data, "-o", str(mine), "--overwrite", *ARGS],
                    ["merge", str(reference), "-o", str(mine), "--overwrite"],
                    ["compose", f"0.5*{reference} + 0.5*{reference}", "-o", str(mine),
                     "--overwrite"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "is not a unitune run; refusing to replace it" in err, err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not mine.with_name("mine.partial").exists()


def test_world_size_that_does_not_divide_the_batch(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--data", data, "-o", str(tmp_path / "o"),
                 "--base-model", "tiny-llama-test", "--batch-size", "3"]) == 2
    assert "batch_size=3 cannot be split over 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "o.partial").exists()


def test_torchrun_two_processes_match_one_process(tmp_path, test_preset, data, torchrun):
    """DDP over gloo: the same global batch gives the same losses, artefacts written once."""
    args = ["--data", data, "--base-model", "tiny-llama-test", "--max-steps", "6",
            "--batch-size", "4", "--lr", "1e-2", "--no-progress", "logging_steps=1",
            "lora.r=4", "lora.dropout=0", "device=cpu", "template=alpaca", "save_steps=3"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(["train", *args, "-o", str(single)]) == 0
    torchrun([*args, "-o", str(double)])

    def losses(folder):
        return read_metrics(folder / "metrics.jsonl", "loss")[0]

    one, two = losses(single), losses(double)
    assert [s for s, _ in two] == [1, 2, 3, 4, 5, 6]  # each step logged once
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], abs=1e-4)
    assert len(list((double / "tb").iterdir())) == 1
    record = read_run(double)
    assert record.world_size == 2 and record.status == "finished"
    wa, wb = adapter(single), adapter(double)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-4), key


def test_accelerate_launch_runs_it_unchanged(tmp_path, test_preset, data):
    """accelerate's launcher (multi-process on the CPU: its torchrun path, gloo)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", "0", "-m", "unitune.cli", "train", "--data", data, "-o",
         str(out), "--base-model", "tiny-llama-test", "--max-steps", "2", "--batch-size", "4",
         "device=cpu", "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_run(out)
    assert record.world_size == 2 and record.status == "finished"
    assert record.metrics["steps"] == 2


def test_a_qlora_run_reopens_quantized_or_not_at_all_on_a_cpu(reference, tmp_path, capsys):
    """The record says which base a run trained on: a 4-bit run is not silently evaluated on
    a 16-bit base; merging (which uses the 16-bit base) still works."""
    import shutil

    qrun = tmp_path / "qrun"
    shutil.copytree(reference, qrun)
    info = json.loads((qrun / "run.json").read_text())
    info.update(method="qlora", quantization="4bit")
    (qrun / "run.json").write_text(json.dumps(info))
    assert main(["generate", str(qrun), "hi", "--device", "cpu"]) == 2
    assert "trained on a 4bit base (qlora)" in capsys.readouterr().err
    assert main(["merge", str(qrun), "-o", str(tmp_path / "merged")]) == 0
    assert read_run(tmp_path / "merged").sources["method"] == "qlora"


def test_fresh_machine_data_preview_builds_only_a_tokenizer(tmp_path, synth_data):
    env = {**os.environ, "UNITUNE_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cli("data", "preview", str(synth_data["train"]), "-n", "1"),
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "home" / "tokenizers" / "tiny-llama" / "tokenizer.json").exists()
    assert not (tmp_path / "home" / "models").exists()  # no model was built or trained


def test_prepared_data_is_reused_by_content(tmp_path, test_preset, data):
    mine = tmp_path / "mine.json"  # content no other test trained on
    rows = json.loads(Path(data).read_text())
    mine.write_text(json.dumps(rows[::-1]))
    base = {"base_model": "tiny-llama-test", "data": [str(mine)], "max_steps": 1,
            "batch_size": 4,
            "device": "cpu", "template": "alpaca", "lora": {"r": 4}}
    logs: list[list[str]] = []
    for i, extra in enumerate(({}, {"lr": 1e-3}, {"max_length": 64})):
        lines: list[str] = []
        train(TrainConfig(**base, **extra, output_dir=str(tmp_path / f"r{i}")),
              log=lines.append, progress=False)
        logs.append(lines)
    reused = [any("reusing the prepared data" in line for line in lines) for lines in logs]
    assert reused == [False, True, False]  # the learning rate does not change the data
    keys = [read_run(tmp_path / f"r{i}").data_fingerprint for i in range(3)]
    assert keys[0] == keys[1] != keys[2]


def test_fsdp_and_deepspeed_are_refused_on_a_cpu(tmp_path, data, capsys):
    for flag in ("fsdp=true", "deepspeed=zero3"):
        assert main(["train", "--data", data, "-o", str(tmp_path / "o"), flag,
                     "--base-model", "tiny-llama-test", "device=cpu"]) == 2
        err = capsys.readouterr().err
        assert "needs" in err and err.count("\n") == 1, err


def test_warmup_fraction_and_evaluation_before_the_first_epoch(tmp_path, test_preset,
                                                               synth_data):
    out = tmp_path / "run"
    train(TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                      validation_data=[str(synth_data["validation"])], output_dir=str(out),
                      max_steps=4, batch_size=4, lr=1e-2, warmup=0.5, logging_steps=1,
                      lr_scheduler="constant_with_warmup", device="cpu", template="alpaca"),
          log=lambda *a: None, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["learning_rate"] for r in rows if "learning_rate" in r]
    assert lrs == pytest.approx([0, 5e-3, 1e-2, 1e-2])  # two warm-up steps of four
    evals = [r["step"] for r in rows if "eval_loss" in r]
    assert evals == [4]  # evaluated although 4 steps are less than one epoch, and only once
    assert read_run(out).metrics["eval_loss"] is not None


def test_progress_bar_shows_no_loss_before_the_first_log():
    from transformers import TrainerControl, TrainerState

    from unitune.train.callbacks import ProgressCallback

    bar = ProgressCallback(disable=False)
    state = TrainerState(max_steps=3)
    bar.on_train_begin(None, state, TrainerControl())
    state.global_step = 1
    bar.on_step_end(None, state, TrainerControl())
    assert "loss" not in bar.bar.postfix and "nan" not in bar.bar.postfix
    bar.on_log(None, state, TrainerControl(), logs={"loss": 1.5})
    bar.on_step_end(None, state, TrainerControl())
    assert "loss=1.5000" in bar.bar.postfix
    bar.on_train_end(None, state, TrainerControl())


def test_progress_bar_counts_a_resumed_run_s_tokens_from_the_resume(monkeypatch):
    """tokens/s after a resume: the tokens trained since, not since step 0 (which showed
    ~400,000 tokens/s on a CPU)."""
    from transformers import TrainerControl, TrainerState

    from unitune.train import callbacks

    clock = iter([100.0, 102.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    bar = callbacks.ProgressCallback(disable=True)
    state = TrainerState(max_steps=10, global_step=5, num_input_tokens_seen=1_000_000)
    bar.on_train_begin(None, state, TrainerControl())
    state.global_step, state.num_input_tokens_seen = 6, 1_000_500
    bar.on_step_end(None, state, TrainerControl())
    assert bar.bar.postfix == "tok_s=250"  # 500 tokens in 2 s


def test_the_package_exports_its_api():
    import unitune

    assert callable(unitune.finetune) and callable(unitune.open_model)
    assert callable(unitune.compose_adapters) and callable(unitune.merge)
    assert unitune.TrainConfig.__name__ == "TrainConfig"
    for name in unitune.__all__:  # every advertised name resolves
        assert getattr(unitune, name) is not None, name
    with pytest.raises(AttributeError):
        unitune.not_a_name  # noqa: B018
    from unitune import methods

    with pytest.raises(UserError, match="unknown method 'lorra'"):
        methods.get("lorra")


def test_adalora_resumes_bit_for_bit_with_its_rank_allocator(tmp_path, data):
    """AdaLoRA's importance estimates and rank pattern live outside the weights: a checkpoint
    carries them, so a resumed run prunes the same ranks as an uninterrupted one (and its
    fully trained modules come back too)."""
    def cfg(out: Path) -> TrainConfig:
        return TrainConfig(**{**crash_args(data, out), "max_steps": 16, "save_steps": 2,
                              "method": "adalora", "modules_to_save": ["lm_head"], "adalora": {
                                  "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 4,
                                  "delta_t": 1}})

    reference = train(cfg(tmp_path / "reference"), log=lambda *a: None, progress=False)
    for crash in (7, 14):  # while ranks are pruned, and after the final pattern is fixed
        out = tmp_path / f"run{crash}"
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg(out), log=lambda *a: None, progress=False, callbacks=[CrashAt(crash)])
        train(cfg(out), log=lambda *a: None, progress=False, resume_from=True)
        assert_same_adapter(out, reference)
        assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"] == \
            json.loads((reference / "adapter_config.json").read_text())["rank_pattern"]
