"""RoPE scaling: written into the config's own RoPE fields through transformers' implementations,
recorded in the run and used by every reopen and merge; perplexity at 4x the trained context
with and without scaling from the CLI; bad factors and double scaling are one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import the_error

from unitune.cli import main


@pytest.fixture(scope="module")
def short_base(test_preset, tmp_path_factory):
    """A tiny random Llama that knows 32 positions, with the test preset's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("short")
    tok = AutoTokenizer.from_pretrained(str(test_preset))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=32,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_scaling_is_written_through_the_config_s_rope_fields(short_base):
    from unitune.errors import UserError
    from unitune.models.loading import model_config
    from unitune.models.rope import apply

    for kind in ("linear", "dynamic", "yarn"):
        config = model_config(str(short_base))
        theta = config.rope_parameters["rope_theta"]
        patch = apply(config, {"type": kind, "factor": 4})
        assert config.rope_parameters["rope_type"] == kind
        assert config.rope_parameters["factor"] == 4 and config.rope_parameters[
            "rope_theta"] == theta  # the base's own theta is kept
        assert patch["original_max_position_embeddings"] == 32
        assert config.max_position_embeddings == (32 if kind == "dynamic" else 128)
        with pytest.raises(UserError, match="already scales its RoPE"):
            apply(config, {"type": "linear", "factor": 2})
    with pytest.raises(UserError, match="a factor below 1 shrinks the context"):
        apply(model_config(str(short_base)), {"type": "linear", "factor": 0.5})


@pytest.mark.slow
def test_a_scaled_run_records_and_reopens_its_scaling(short_base, synth_data, tmp_path,
                                                     capsys):
    from unitune.run import open_model, read_run

    args = ["train", f"base_model={short_base}", f"data={synth_data['train']}",
            "max_steps=2", "max_length=128", "rope_scaling.type=yarn", "rope_scaling.factor=4",
            "--device", "cpu", "--no-progress", "-o", str(tmp_path / "run")]
    assert main(args) == 0, capsys.readouterr().err
    assert read_run(tmp_path / "run").model_patches["rope_scaling"] == {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    model, _, _ = open_model(str(tmp_path / "run"), device="cpu")
    assert model.config.rope_parameters["rope_type"] == "yarn"
    assert main(["merge", str(tmp_path / "run"), "-o", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert merged["rope_parameters"]["rope_type"] == "yarn"
    assert merged["rope_parameters"]["factor"] == 4
    bad = [*args[:-1], str(tmp_path / "bad")]
    bad[bad.index("rope_scaling.factor=4")] = "rope_scaling.factor=0.5"
    capsys.readouterr()  # (the runs above logged)
    assert main(bad) == 2
    assert "a factor below 1 shrinks the context" in the_error(capsys.readouterr().err)


@pytest.mark.slow
def test_perplexity_at_four_times_the_context_with_and_without_scaling(short_base, tmp_path,
                                                                       capsys):
    text = tmp_path / "long.jsonl"
    text.write_text(json.dumps({"text": "count a b c = 3 max 1 7 2 = 7 sort 3 1 2 = 1 2 3 "
                                        * 20}) + "\n")
    scores = {}
    for rope in (None, "linear:4", "dynamic:4", "yarn:4"):
        args = ["eval", str(short_base), "--perplexity", str(text), "--window", "128",
                "--stride", "128", "--device", "cpu"]
        assert main(args + (["--rope", rope] if rope else [])) == 0
        out, err = capsys.readouterr()
        assert ("run past the 32 positions" in err) == (rope is None), err
        result = json.loads(out)
        assert result["rope"] == rope and result["perplexity"] > 1
        scores[rope] = result["perplexity"]
    assert len(set(scores.values())) == 4  # each scaling changes the positions the model sees
    assert main(["eval", str(short_base), "--perplexity", str(text), "--rope", "cubic:4"]) == 2
    assert "expected TYPE:FACTOR" in capsys.readouterr().err
    assert main(["generate", str(short_base), "count a b c =", "--rope", "yarn:4",
                 "--max-new-tokens", "3", "--device", "cpu"]) == 0  # every engine command


@pytest.mark.parametrize("rope", ["linear", "dynamic", "yarn"])
def test_inference_with_rope_takes_the_stretched_context(short_base, rope):
    """`generate` / `serve` / `chat --rope T:4` take prompts up to 4 x the positions (dynamic
    NTK keeps max_position_embeddings as its original length: the factor is applied here)."""
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding

    with Engine(str(short_base), device="cpu", rope_scaling={"type": rope, "factor": 4.0},
                log=lambda *a: None) as engine:
        assert engine.context == 128
        job = engine.generate(Request(engine.base_id, "", Decoding(max_new_tokens=4),
                                      prompt_ids=[5] * 100, ignore_eos=True))
        assert len(job.seqs[0].tokens) == 4
