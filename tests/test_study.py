"""Studies: a 2 methods x 2 data mixes grid trains and evaluates from one command, writes its
tables and pictures, and a rerun does only what is missing; bad study files are one-line
errors; `unitune eval compare` puts finished results side by side."""

from __future__ import annotations

import json

import pytest
import yaml

from unitune.cli import main


@pytest.fixture(scope="module")
def study_file(synth_data, test_preset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    spec = {"output_dir": str(folder / "out"),
            "train": {"base_model": "tiny-llama-test", "max_steps": 2, "logging_steps": 1},
            "grid": {"method": ["lora", "ia3"],
                     "data": {"main": [str(synth_data["train"])],
                              "more": [str(synth_data["train"]),
                                       str(synth_data["validation"])]}},
            "eval": {"test": str(synth_data["test"]), "max_new_tokens": 4}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_study_runs_from_one_command_and_resumes(study_file, capsys):
    out = study_file.parent / "out"
    assert main(["study", str(study_file), "--no-progress"]) == 0
    report = json.loads((out / "study.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["lora.main", "lora.more", "ia3.main",
                                                   "ia3.more"]
    assert report["headline"] == "exact_match"
    for row in report["runs"]:
        assert 0 <= row["exact_match"] <= 1 and row["trainable_%"] > 0
        assert any(k.startswith("em/") for k in row)
    md = (out / "study.md").read_text()
    assert "by method (rows) and data (columns)" in md and "| lora | " in md
    assert (out / "study_loss.png").stat().st_size > 1000
    assert (out / "study_scores.png").stat().st_size > 1000
    capsys.readouterr()

    (out / "results" / "ia3.more.json").unlink()  # a rerun redoes only what is missing
    assert main(["study", str(study_file), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count(": done") == 3 and "ia3.more: evaluating" in err
    assert "ia3.more: training" not in err

    table = out / "cmp"
    assert main(["eval", "compare", str(out / "runs" / "lora.main"),
                 str(out / "runs" / "ia3.main"), "-o", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "| metric | lora.main | ia3.main |" in printed and "**" in printed
    assert json.loads(table.with_suffix(".json").read_text()).keys() == {"lora.main",
                                                                          "ia3.main"}
    assert main(["eval", "compare", str(out)]) == 2
    assert "a study; its report is" in capsys.readouterr().err


def test_bad_study_files_are_one_line_errors(study_file, tmp_path, capsys):
    spec = yaml.safe_load(study_file.read_text())
    cases = [({"gird": spec["grid"]}, "gird: Extra inputs are not permitted (did you mean "
                                      "'grid'?)"),
             ({"grid": {**spec["grid"], "method": ["lora", "lorra"]}},
              "grid point lorra.main: train/grid: config key 'method': unknown method"),
             ({"grid": {"lr": []}}, "grid.lr: no values"),
             ({"grid": {**spec["grid"], "method": ["lora", "lora"]}},
              "two grid points are both named 'lora.main'"),
             ({"eval": {"benchmarks": {"tasks": "mmlu", "data_dir": ".", "shot": 1}}},
              "eval.benchmarks: shot: unknown key (did you mean 'shots'?)"),
             ({"eval": {"benchmarks": {"tasks": "mmluu", "data_dir": "."}}},
              "did you mean 'mmlu'")]
    for change, message in cases:
        bad = {**spec, **change}
        if "gird" in change:
            bad.pop("grid")
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        assert main(["study", str(path), "--dry-run"]) == 2, change
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["study", str(study_file), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("lora.main\t")
