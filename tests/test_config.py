import pytest

from unitune.config import TrainConfig, build_config, parse_override
from unitune.errors import UserError

BASE = ["data=a.json", "output_dir=out"]


def test_overrides_flags_and_file_merge_in_order(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("data: [x.json]\noutput_dir: o\nlr: 0.1\nlora:\n  r: 4\n")
    cfg = build_config(TrainConfig, str(cfg_file), ["lr=1e-4", "lora.alpha=8"], {"lora.r": 2})
    assert cfg.lr == pytest.approx(1e-4)
    assert cfg.lora.r == 2 and cfg.lora.alpha == 8
    assert [d.path for d in cfg.data] == ["x.json"]


def test_comma_separated_data_and_mixing_entries(tmp_path):
    cfg = build_config(TrainConfig, None, ["data=a.json,b.jsonl", "output_dir=o"], {})
    assert [d.path for d in cfg.data] == ["a.json", "b.jsonl"]
    f = tmp_path / "mix.yaml"
    f.write_text("output_dir: o\ndata:\n  - alpaca\n  - {path: belle_cn, weight: 0.5}\n"
                 "  - {path: x.json, count: 100, format: sharegpt}\n")
    cfg = build_config(TrainConfig, str(f), [], {})
    assert [(d.path, d.weight, d.count, d.format) for d in cfg.data] == [
        ("alpaca", None, None, None), ("belle_cn", 0.5, None, None),
        ("x.json", None, 100, "sharegpt")]
    with pytest.raises(UserError, match="unknown config key 'data.0.wieght'"):
        f.write_text("output_dir: o\ndata:\n  - {path: a, wieght: 1}\n")
        build_config(TrainConfig, str(f), [], {})


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError) as err:
        build_config(TrainConfig, None, [*BASE, "lerning_rate=1"], {})
    assert "unknown config key 'lerning_rate' (did you mean 'lr'?)" in str(err.value)
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        build_config(TrainConfig, None, [*BASE, "epoch=1"], {})
    # other tools' names for our keys (the HF Trainer's, LLaMA-Factory's)
    for theirs, ours in (("learning_rate", "lr"), ("per_device_train_batch_size", "batch_size"),
                         ("cutoff_len", "max_length"), ("lora_target", "lora.target_modules")):
        with pytest.raises(UserError, match=f"'{theirs}' \\(did you mean '{ours}'\\?\\)"):
            build_config(TrainConfig, None, [*BASE, f"{theirs}=1"], {})
    with pytest.raises(UserError) as err:
        build_config(TrainConfig, None, [*BASE, "zzz_unknown=1"], {})
    assert str(err.value).endswith("unknown config key 'zzz_unknown'")


def test_unknown_nested_key_suggests_the_dotted_name():
    with pytest.raises(UserError, match="unknown config key 'lora.rank'.*did you mean 'lora.r'"):
        build_config(TrainConfig, None, [*BASE, "lora.rank=4"], {})


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(UserError) as err:
        build_config(TrainConfig, None, [*BASE, "lr=fast"], {})
    msg = str(err.value)
    assert "'lr'" in msg and "'fast'" in msg and "number" in msg


def test_out_of_range_and_choice_errors():
    with pytest.raises(UserError, match="lora.r.*greater than 0"):
        build_config(TrainConfig, None, [*BASE, "lora.r=0"], {})
    with pytest.raises(UserError, match="dtype.*'fp32'"):
        build_config(TrainConfig, None, [*BASE, "dtype=float99"], {})


def test_missing_required_key():
    with pytest.raises(UserError, match="required config key 'output_dir'"):
        build_config(TrainConfig, None, ["data=a.json"], {})


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [a.json]\noutput_dir: o\nlr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        build_config(TrainConfig, str(bad), [], {})


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        build_config(TrainConfig, "nope.yaml", [], {})


def test_override_values_are_typed():
    assert parse_override("lr=1e-4") == (["lr"], 1e-4)
    assert parse_override("lora.target_modules=[q_proj,v_proj]") == (
        ["lora", "target_modules"], ["q_proj", "v_proj"])
    with pytest.raises(UserError, match="key=value"):
        parse_override("lr")
