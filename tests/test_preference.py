"""The stages after SFT on TRL: reward modelling, DPO (and its loss variants), KTO, GRPO and
RLOO; their data (pairs, unpaired feedback, prompts) encoded like SFT data; runs that save,
reopen, resume and evaluate; and the one-line errors for bad preference input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import the_error
from safetensors.torch import load_file
from transformers import TrainerCallback

from unitune.cli import main
from unitune.config import TrainConfig
from unitune.data.encode import IGNORE, encode_rows
from unitune.data.preference import encode_preferences, prompt_rows
from unitune.data.readers import read_records
from unitune.data.schema import Conversation, PreferencePair, Prompt, Turn
from unitune.data.store import Records
from unitune.data.templates import get_template
from unitune.errors import UserError
from unitune.run import open_model, read_run
from unitune.train import stages
from unitune.train.recipe import train
from unitune.train.rewards import check_rewards, load_rewards

QUIET = {"log": lambda *a: None, "progress": False}
TINY = {"base_model": "tiny-llama-test", "device": "cpu", "template": "alpaca",
        "lora": {"r": 4, "dropout": 0.0}, "batch_size": 4, "lr": 1e-3, "logging_steps": 1}


def write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# --- data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt",
     "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
    {"instruction": "hi", "input": "", "chosen": "a", "rejected": "b"},
    {"prompt": "hi", "chosen": "a", "rejected": "b"},
    {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant",
     "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
])
def test_preference_pairs_are_read_in_every_common_layout(tmp_path, record):
    (pair,) = read_records(str(write(tmp_path / "p.json", [record])))
    assert isinstance(pair, PreferencePair)
    assert (pair.prompt.turns[-1].content, pair.chosen, pair.rejected) == ("hi", "a", "b")


@pytest.mark.parametrize("record, problem", [
    ({"prompt": "hi", "chosen": "same", "rejected": " same "}, "chosen and rejected are the "
     "same answer"),
    ({"prompt": "hi", "chosen": "a", "rejected": ""}, "rejected: expected a non-empty"),
    ({"instruction": "hi", "chosen": "a", "rejected": 3}, "rejected: expected a non-empty"),
])
def test_bad_preference_records_name_the_record_and_field(tmp_path, record, problem):
    path = write(tmp_path / "p.json", [{"prompt": "ok", "chosen": "a", "rejected": "b"},
                                       record])
    with pytest.raises(UserError, match=f"{path}:1: .*{problem}"):
        read_records(str(path))


@pytest.mark.parametrize("record, system", [
    ({"prompt": "hi", "answer": "3"}, ""),
    ({"prompt": "hi", "answer": None, "solution": "3"}, ""),  # (a hub row: every column)
    ({"prompt": "hi", "system": "Be brief.", "solution": 3, "level": "easy"}, "Be brief."),
    ({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
      "ground_truth": "3"}, "Be brief."),
])
def test_prompts_alone_are_read_with_their_reference_answer(tmp_path, record, system):
    from unitune.data.mixing import dedupe
    from unitune.data.readers import to_json

    path = write(tmp_path / "p.json", [record, record])
    prompt, twin = read_records(str(path))
    assert isinstance(prompt, Prompt) and prompt.where == f"{path}:1"
    assert (prompt.prompt.turns, prompt.prompt.system, prompt.reference) == \
        ((Turn("user", "hi"),), system, "3")
    stored = Records.from_list([prompt, twin])
    assert list(stored) == [prompt, twin] and len(dedupe(stored)[0]) == 1
    again = read_records(str(write(tmp_path / "q.json", [to_json(prompt, "prompt")])))
    assert again[0].prompt.messages() == prompt.prompt.messages()
    assert again[0].reference == "3"


@pytest.mark.parametrize("record, problem", [
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]},
     "prompt: must end with a user turn"),
    ({"prompt": "hi", "answer": ["3"]}, "answer: expected the reference answer as a string"),
    ({"prompt": ""}, "turns\\[0\\].content: empty user message"),
])
def test_bad_prompt_records_name_the_record_and_field(tmp_path, record, problem):
    path = write(tmp_path / "p.json", [{"prompt": "ok"}, record])
    with pytest.raises(UserError, match=f"{path}:1: .*{problem}"):
        read_records(str(path))


def test_rl_prompts_from_prompt_records_carry_their_reference(tmp_path, family_tokenizer):
    tok, template = family_tokenizer, get_template("alpaca")
    prompt = Prompt(Conversation((Turn("user", "Count the letters.", "c a t"),)), "3")
    rows, _ = prompt_rows(Records.from_list([prompt]), tok, template, 128, tmp_path / "r.arrow")
    assert rows[0]["prompt"] == template.render_prompt(prompt.prompt, tok)
    assert rows[0]["answer"] == "3"


def pairs_table(pairs: list[PreferencePair]) -> Records:
    return Records.from_list(pairs)


def test_pairs_encode_like_sft_with_a_shared_prompt(tmp_path, family_tokenizer):
    tok, template = family_tokenizer, get_template("alpaca")
    prompt = Conversation((Turn("user", "Count the letters.", "c a t"),))
    rows, report = encode_preferences(pairs_table([PreferencePair(prompt, "3", "three")]), tok,
                                      template, 256, "pairs", tmp_path / "p.arrow")
    (row,) = rows
    # the same ids as instruction tuning on prompt + answer, split where the reply starts
    for answer, key in (("3", "chosen_ids"), ("three", "rejected_ids")):
        (sft,) = encode_rows([prompt.with_reply(answer)], tok, template, 256, "last")
        trained = [i for i, label in enumerate(sft["labels"]) if label != IGNORE]
        assert row["prompt_ids"] + row[key] == sft["input_ids"][:trained[-1] + 1]
        assert len(row["prompt_ids"]) <= trained[0]
    assert report.kept == 1
    seqs, _ = encode_preferences(pairs_table([PreferencePair(prompt, "3", "three")]), tok,
                                 template, 256, "sequences", tmp_path / "s.arrow")
    assert seqs[0]["chosen_ids"] == row["prompt_ids"] + row["chosen_ids"]


def test_long_prompts_are_cut_from_the_left_and_long_replies_drop_the_pair(tmp_path,
                                                                           family_tokenizer):
    tok, template = family_tokenizer, get_template("alpaca")
    long_prompt = Conversation((Turn("user", "word " * 200),))
    pairs = [PreferencePair(long_prompt, "yes", "no"),
             PreferencePair(Conversation((Turn("user", "hi"),)), "a " * 300, "b")]
    rows, report = encode_preferences(pairs_table(pairs), tok, template, 64, "pairs",
                                      tmp_path / "p.arrow")
    assert report.kept == 1 and report.prompt_truncated == 1 and sum(report.dropped.values())
    (row,) = rows
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 64
    assert row["prompt_ids"][0] == tok.bos_token_id  # (BOS kept)
    assert tok.decode(row["chosen_ids"]).strip().startswith("yes")


def test_pairs_cut_differently_share_one_prompt_window(tmp_path, family_tokenizer):
    """A long reply leaves less room for the prompt than a short one: both answers then take
    the shorter prompt window, and no prompt token becomes part of an answer."""
    tok, template = family_tokenizer, get_template("alpaca")
    prompt = Conversation((Turn("user", "word " * 60),))
    pair = PreferencePair(prompt, "long answer " * 12, "short")
    rows, report = encode_preferences(pairs_table([pair]), tok, template, 96, "pairs",
                                      tmp_path / "p.arrow")
    (row,) = rows
    assert report.prompt_truncated == 1
    assert tok.decode(row["chosen_ids"]).strip().startswith("long answer")
    assert tok.decode(row["rejected_ids"]).strip().startswith("short")
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 96


def test_trl_and_alpaca_layouts_of_feedback_and_pairs(tmp_path):
    kto = write(tmp_path / "kto.json", [{"prompt": "hi", "completion": "hello", "label": True}])
    (conv,) = read_records(str(kto))
    assert conv.meta["label"] is True
    history = write(tmp_path / "h.json", [{"instruction": "and now?", "history": [["hi", "yo"]],
                                           "chosen": "a", "rejected": "b"}])
    (pair,) = read_records(str(history))
    assert [t.content for t in pair.prompt.turns] == ["hi", "yo", "and now?"]


def test_unpaired_feedback_from_pairs_and_labelled_conversations(tmp_path, family_tokenizer):
    tok, template = family_tokenizer, get_template("alpaca")
    prompt = Conversation((Turn("user", "hi"),))
    good = Conversation.single("hi", "hello", meta={"label": True})
    bad = Conversation.single("hi", "go away", meta={"kto_tag": False})
    rows, report = encode_preferences(
        Records.from_list([PreferencePair(prompt, "hello", "go away"), good, bad]), tok,
        template, 128, "unpaired", tmp_path / "u.arrow")
    # desirable first: KTO's KL term pairs each answer with the next row's prompt
    assert [r["label"] for r in rows] == [True, True, False, False]
    assert rows[0]["completion_ids"] == rows[1]["completion_ids"]
    unlabelled = Conversation.single("hi", "hello", source="f.json", line=3)
    with pytest.raises(UserError, match="f.json:3: label: missing"):
        encode_preferences(Records.from_list([unlabelled]), tok, template, 128, "unpaired",
                           tmp_path / "x.arrow")


def test_rl_prompts_render_as_the_engine_renders_them(tmp_path, family_tokenizer):
    tok, template = family_tokenizer, get_template("alpaca")
    conv = Conversation.single("Count the letters.", "3", "c a t")
    rows, _ = prompt_rows(Records.from_list([conv]), tok, template, 128, tmp_path / "r.arrow")
    assert rows[0]["prompt"] == template.render_prompt(conv.prompt(), tok)
    assert rows[0]["answer"] == "3"
    assert json.loads(rows[0]["messages"]) == conv.prompt().messages()


# --- the stages, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(small_lora) -> Path:
    return small_lora("sft")


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, sft_run, synth_data) -> Path:
    out = tmp_path_factory.mktemp("rm") / "rm"
    return train(TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage="rm",
                             data=[str(synth_data["preference_train"])],
                             validation_data=[str(synth_data["preference_validation"])],
                             output_dir=str(out), max_steps=4), **QUIET)



@pytest.mark.slow
def test_reward_model_run_reopens_and_scores_as_it_evaluated(rm_run, synth_data, capsys):
    record = read_run(rm_run)
    assert record.kind == "rm" and record.status == "finished"
    logged = record.metrics["stage"]
    assert 0 <= logged["eval_accuracy"] <= 1
    # `unitune eval --preference` on the validation pairs: the accuracy training logged
    assert main(["eval", str(rm_run), "--preference", str(synth_data["preference_validation"]),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"preference accuracy (reward model): {logged['eval_accuracy']:.1%}" in out
    # the PEFT adapter holds the new scoring head
    assert any("score" in k for k in load_file(str(rm_run / "adapter_model.safetensors")))


@pytest.mark.slow
def test_a_reward_model_does_not_generate(rm_run, capsys):
    assert main(["generate", str(rm_run), "hi", "--device", "cpu"]) == 2
    assert "a reward model (stage=rm) scores answers and does not generate" in \
        capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("losses", [["sigmoid"], ["ipo"], ["sigmoid_norm", "sft"]])
def test_dpo_from_an_sft_run_improves_the_preference_and_reopens(tmp_path, sft_run, rm_run,
                                                                  synth_data, losses, capsys):
    out = tmp_path / "dpo"
    cfg = TrainConfig(**{**TINY, "base_model": str(sft_run), "lr": 1e-2}, stage="dpo",
                      data=[str(synth_data["preference_train"])], output_dir=str(out),
                      max_steps=6, dpo={"loss_type": losses})
    train(cfg, **QUIET)
    record = read_run(out)
    assert record.kind == "dpo" and record.base_model_path == str(sft_run.resolve())
    assert "rewards/accuracies" in record.metrics["stage"]
    model, _, template = open_model(out, device="cpu")  # base: the SFT run, folded in memory
    assert template.name == "alpaca" and type(model).__name__ == "PeftModelForCausalLM"
    # DPO raises log p(chosen) - log p(rejected) above the reference's (the SFT model's)
    pairs = str(synth_data["preference_train"])
    margins = {}
    for run in (sft_run, out):
        assert main(["eval", str(run), "--preference", pairs, "--device", "cpu"]) == 0
        margins[run] = float(capsys.readouterr().out.split("mean margin ")[1].split(";")[0])
    assert margins[out] > margins[sft_run]
    assert main(["eval", str(out), "--data", str(synth_data["test"]), "--reward", str(rm_run),
                 "--device", "cpu", "--max-new-tokens", "8"]) == 0
    assert "mean reward" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("stage, keys", [("orpo", {"beta": 0.2}),
                                         ("cpo", {"loss_type": "simpo", "cpo_alpha": 0.0})])
def test_reference_free_stages_from_trl_experimental(tmp_path, sft_run, synth_data, stage,
                                                     keys):
    out = tmp_path / stage
    train(TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage=stage,
                      data=[str(synth_data["preference_train"])],
                      validation_data=[str(synth_data["preference_validation"])],
                      output_dir=str(out), max_steps=3, **{stage: keys}), **QUIET)
    record = read_run(out)
    assert record.kind == stage and "eval_rewards/accuracies" in record.metrics["stage"]
    open_model(out, device="cpu")


@pytest.mark.slow
def test_dpo_reference_is_the_base_with_the_adapter_disabled(tmp_path, sft_run, synth_data):
    """No second copy: TRL's "ref" adapter is dropped; the reference log-probabilities are
    those of the folded SFT model."""
    from unitune.train.recipe import Recipe

    cfg = TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage="dpo",
                      data=[str(synth_data["preference_train"])], output_dir=str(tmp_path / "d"),
                      max_steps=1)
    recipe = Recipe(cfg, lambda *a: None, False, [])
    recipe.setup(False, False)
    try:
        assert recipe.trainer.ref_model is None
        assert list(recipe.trainer.model.peft_config) == ["default"]
    finally:
        recipe.staging.discard()


class CrashAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_preference_stages_resume_bit_for_bit(tmp_path, sft_run, synth_data, stage):
    def cfg(out):
        data = synth_data["preference_train" if stage == "dpo" else "train"]
        return TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage=stage,
                           data=[str(data)], output_dir=str(out), max_steps=6, save_steps=2,
                           rl={"reward": ["exact_match", "brevity"], "num_generations": 2,
                               "max_new_tokens": 4})

    reference = train(cfg(tmp_path / "reference"), **QUIET)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg(tmp_path / "run"), callbacks=[CrashAt()], **QUIET)
    assert read_run(tmp_path / "run.partial").status == "failed"
    done = train(cfg(tmp_path / "run"), resume_from=True, **QUIET)
    a = load_file(str(done / "adapter_model.safetensors"))
    b = load_file(str(reference / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_every_kind_of_stage_on_the_shared_dpo_demo(tmp_path, judge_model, shared_data):
    """KTO unpairs the pairs, GRPO takes their prompts (sampling until ChatML's end-of-turn
    marker, several tokens for this tokenizer); the demo's long answers need a model with a
    long context."""
    demo = shared_data / "instruct" / "dpo_en_demo.json"
    for stage in ("kto", "dpo", "rm", "grpo"):
        out = tmp_path / stage
        rl = ["rl.reward=brevity", "rl.num_generations=2", "rl.max_new_tokens=4"]
        assert main(["train", "stage=" + stage, "--base-model", str(judge_model), "--data",
                     str(demo), "-o", str(out), "--max-steps", "2", "--batch-size", "2",
                     "max_length=1024", "device=cpu", "template=chatml", "lora.r=2",
                     "--no-progress", *(rl if stage == "grpo" else [])]) == 0
        record = read_run(out)
        assert record.kind == stage and record.metrics["steps"] == 2
        assert record.data["train"]["kept"] > 0
    assert main(["eval", str(tmp_path / "rm"), "--preference", str(demo), "--device",
                 "cpu"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_rl_stages_learn_from_a_reward_model_and_a_python_function(tmp_path, stage, sft_run,
                                                                    rm_run, synth_data):
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def short(prompts, completions, **kwargs):\n"
                           "    return [-len(c) / 10 for c in completions]\n")
    out = tmp_path / stage
    train(TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage=stage,
                      data=[str(synth_data["train"])], output_dir=str(out), max_steps=2,
                      save_steps=1, rl={"reward": [str(rm_run), f"{reward_file}:short",
                                                   "exact_match"], "num_generations": 2,
                                        "max_new_tokens": 6, "reward_weights": [1, 1, 1]}),
          **QUIET)
    record = read_run(out)
    assert record.kind == stage and "reward" in record.metrics["stage"]
    assert not (out / "ref").exists()  # (TRL's copy of the new adapter is not kept)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/short/mean" in row for row in logged)
    assert any(f"rewards/{rm_run.name}/mean" in row for row in logged)
    assert main(["generate", str(out), "Count the letters.", "--device", "cpu",
                 "--max-new-tokens", "4"]) == 0


@pytest.mark.slow
def test_grpo_trains_on_prompts_alone_and_rewards_see_their_references(tmp_path, sft_run,
                                                                       synth_data, capsys):
    convs = read_records(str(synth_data["train"]))[:16]
    prompts = write(tmp_path / "prompts.json", [
        {"prompt": c.turns[0].user_text(), "answer": c.answer} for c in convs])
    seen = tmp_path / "seen.jsonl"
    reward_file = tmp_path / "spy.py"
    reward_file.write_text(
        "import json\n"
        "def spy(prompts, completions, answer, **kwargs):\n"
        f"    with open({str(seen)!r}, 'a') as f:\n"
        "        f.write(json.dumps(answer) + '\\n')\n"
        "    return [0.0 for _ in completions]\n")
    out = tmp_path / "grpo"
    cfg = TrainConfig(**{**TINY, "base_model": str(sft_run)}, stage="grpo",
                      data=[str(prompts)], output_dir=str(out), max_steps=2,
                      rl={"reward": ["exact_match", f"{reward_file}:spy"],
                          "num_generations": 2, "max_new_tokens": 4,
                          "mask_truncated_completions": True})  # (alpaca: turns end at EOS)
    assert stages.get("grpo").trl_arguments(cfg)["mask_truncated_completions"] is True
    train(cfg, **QUIET)
    assert read_run(out).status == "finished"
    references = {c.answer for c in convs}
    answered = [a for line in seen.read_text().splitlines() for a in json.loads(line)]
    assert answered and set(answered) <= references
    code = main(["train", "--data", str(prompts), "-o", str(tmp_path / "sft"), "device=cpu",
                 "--base-model", str(sft_run)])
    err = capsys.readouterr().err
    assert code == 2 and f"{prompts}:1: is a prompt without an answer" in err
    assert "Traceback" not in err
    code = main(["train", "stage=grpo", "--data", str(prompts), "-o", str(tmp_path / "m"),
                 "device=cpu", "--base-model", str(sft_run), "template=chatml",
                 "rl.reward=exact_match", "rl.num_generations=2", "--batch-size", "2",
                 "rl.mask_truncated_completions=true"])
    err = the_error(capsys.readouterr().err)
    assert code == 2 and "rl.mask_truncated_completions: template 'chatml'" in err
    assert not (tmp_path / "m.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_rl_stages_train_a_whole_model_from_a_run_against_its_starting_weights(
        tmp_path, stage, sft_run, synth_data):
    """TRL loads the reference of a whole model from the base's folder; from a LoRA run
    that would be the base without the run's adapter. The reference is the run's folded
    weights instead: at the first step the policy is the reference, so the KL is 0."""
    out = tmp_path / stage
    train(TrainConfig(**{**TINY, "base_model": str(sft_run), "lr": 1e-4}, stage=stage,
                      method="full", data=[str(synth_data["train"])], output_dir=str(out),
                      max_steps=2, rl={"reward": ["exact_match"], "num_generations": 2,
                                       "max_new_tokens": 4, "beta": 0.1}), **QUIET)
    assert read_run(out).status == "finished"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kls = [row["kl"] for row in logged if "kl" in row]
    assert kls and kls[0] == 0.0


def test_number_match_compares_final_numbers_as_gsm8k_is_graded(family_tokenizer):
    (reward,) = load_rewards(["number_match"], family_tokenizer, get_template("chatml"))
    assert reward(prompts=["p"] * 5,
                  completions=["so it is 42.", "It is 1,000<|im_end|>\n7", "41", "none",
                               "x"],
                  answer=["work\n#### 42", "1000", "#### 42", "#### 7", "no number"]) == \
        [1.0, 1.0, 0.0, 0.0, None]  # (the last: no number to compare, so no reward)


def test_rewards_cut_answers_at_the_end_of_turn(family_tokenizer):
    (reward,) = load_rewards(["exact_match"], family_tokenizer, get_template("chatml"))
    assert reward(prompts=["p", "p"], completions=["3<|im_end|>\nmore", "4"],
                  answer=["3", "3"]) == [1.0, 0.0]


def test_a_sampled_answer_is_cut_after_a_marker_of_several_tokens(test_preset):
    from unitune.infer.generate import tokens_through_stop
    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(test_preset))  # no <|im_end|> token: the marker is several
    marker = get_template("chatml").stop_strings(tok)
    assert marker == ["<|im_end|>"] and len(tok("<|im_end|>", add_special_tokens=False)
                                           ["input_ids"]) > 1
    answer = tok("3<|im_end|>\nmore text", add_special_tokens=False)["input_ids"]
    kept = tokens_through_stop(tok, answer, marker)
    assert tok.decode(answer[:kept]).endswith("<|im_end|>") and kept < len(answer)
    assert tokens_through_stop(tok, answer[:3], marker) == 3  # no marker: all of it
    assert tokens_through_stop(tok, answer, []) == len(answer)

    class Sampler:  # stands in for TRL's trainer: what its sampling returns, in both shapes
        def _generate_single_turn(self, *args):
            return ([answer, answer[:2]], [[0.5] * len(answer), [0.5, 0.5]])

    trainer_cls = stages.get("grpo").trainer_for(Sampler)
    trainer = object.__new__(trainer_cls)  # (only the sampling hook is exercised)
    trainer.processing_class, trainer._stop_strings = tok, marker
    ids, logprobs = trainer._generate_single_turn()
    assert ids == [answer[:kept], answer[:2]] and [len(x) for x in logprobs] == [kept, 2]


def test_sampling_stops_at_a_marker_of_several_tokens(test_preset):
    """TRL's generate call (the policy's generate with TRL's generation config, no tokenizer)
    stops at a stop string once the trainer has wired it in: greedy decoding stops right
    after the text it was going to produce anyway, taken as the marker."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, GenerationConfig

    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(test_preset))
    model = AutoModelForCausalLM.from_pretrained(str(test_preset))
    prompt = tok("Sort the numbers: 3 1 2", return_tensors="pt")["input_ids"]
    config = GenerationConfig(max_new_tokens=24, min_new_tokens=24, do_sample=False,
                              pad_token_id=tok.pad_token_id)
    free = model.generate(prompt, generation_config=config)[0, prompt.shape[1]:].tolist()
    marker = tok.decode(free[4:7])  # what greedy decoding writes as its 5th to 7th tokens
    assert len(tok(marker, add_special_tokens=False)["input_ids"]) > 1
    config.min_new_tokens = None  # (TRL's config asks for no minimum)

    trainer = object.__new__(stages.get("grpo").trainer_for(object))
    trainer.generation_config, trainer.model, trainer.processing_class = config, model, tok
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    trainer._stop_strings = [marker]
    trainer._stop_sampling_at_markers()
    stopped = model.generate(prompt, generation_config=trainer.generation_config)
    answer = stopped[0, prompt.shape[1]:].tolist()
    assert len(answer) < 12 and marker in tok.decode(answer), (marker, tok.decode(answer))


# --- bad input: one line, before any weights load -------------------------------------------


@pytest.mark.slow
def test_a_stage_from_the_wrong_kind_of_run_is_refused(tmp_path, rm_run, sft_run, synth_data,
                                                       capsys):
    code = main(["train", "stage=dpo", "--base-model", str(rm_run), "--data",
                 str(synth_data["preference_train"]), "-o", str(tmp_path / "x"), "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "a reward model (a scoring head, not a language model)" in err
    assert "Traceback" not in err and not (tmp_path / "x.partial").exists()
    code = main(["train", "stage=grpo", "--base-model", str(sft_run), "--data",
                 str(synth_data["train"]), "-o", str(tmp_path / "y"), "device=cpu",
                 f"rl.reward={sft_run}", "rl.num_generations=2", "--batch-size", "2"])
    assert code == 2 and "a run of kind 'sft', not a reward model" in capsys.readouterr().err
    code = main(["train", "stage=sft", "--data", str(synth_data["preference_train"]), "-o",
                 str(tmp_path / "z"), "device=cpu", "--base-model", "tiny-llama-test"])
    assert code == 2 and ":2: is a preference pair; instruction tuning needs conversations" \
        in capsys.readouterr().err


@pytest.mark.slow
def test_bad_pairs_and_mismatched_tokenizers_are_one_line_errors(tmp_path, rm_run,
                                                                 family_tokenizer, capsys):
    bad = write(tmp_path / "bad.json", [{"prompt": "hi", "chosen": "a", "rejected": "b"},
                                        {"prompt": "hi", "chosen": "a"}])
    code = main(["train", "stage=dpo", "--base-model", "tiny-llama-test", "--data", str(bad),
                 "-o", str(tmp_path / "x"), "device=cpu"])
    assert code == 2 and f"{bad}:1: rejected: missing" in the_error(capsys.readouterr().err)
    with pytest.raises(UserError, match="the reward model's tokenizer differs"):
        check_rewards([str(rm_run)], family_tokenizer)
    code = main(["train", "stage=dpo", "--base-model", "tiny-llama-test", "--data",
                 str(bad), "-o", str(tmp_path / "a"), "device=cpu", "method=adalora"])
    assert code == 2 and "PEFT holds one AdaLoRA adapter only" in capsys.readouterr().err
    with pytest.raises(UserError, match="did you mean 'exact_match'"):
        check_rewards(["exact_mach"])
    with pytest.raises(UserError, match="has no function 'nope'"):
        check_rewards(["unitune.train.rewards:nope"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_torchrun_two_processes_train_a_preference_stage(tmp_path, sft_run, synth_data, stage,
                                                         torchrun):
    """DDP over gloo: DPO's losses match one process with the same global batch; GRPO's
    groups are split over the processes and still finish, written once."""
    data = synth_data["preference_train" if stage == "dpo" else "train"]
    args = [f"stage={stage}", "--base-model", str(sft_run), "--data", str(data),
            "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--no-progress",
            "logging_steps=1", "lora.r=4", "lora.dropout=0", "device=cpu", "template=alpaca",
            "rl.reward=exact_match", "rl.num_generations=2", "rl.max_new_tokens=4"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(["train", *args, "-o", str(single)]) == 0
    torchrun([*args, "-o", str(double)])
    record = read_run(double)
    assert record.world_size == 2 and record.status == "finished" and record.kind == stage
    if stage == "dpo":
        logged = [[json.loads(line).get("loss") for line in (run / "metrics.jsonl").open()]
                  for run in (single, double)]
        steps = [[v for v in losses if v is not None] for losses in logged]
        assert steps[1] == pytest.approx(steps[0], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "freeze", "ia3", "prefix", "adapter_seq"])
def test_dpo_trains_every_kind_of_method(tmp_path, sft_run, synth_data, method):
    """Whole-model and bottleneck runs get a frozen copy as the reference, prompt tuning
    TRL's copy of its starting adapter, (IA)3 the base with the adapter disabled."""
    from unitune.train.recipe import Recipe

    cfg = TrainConfig(**{**TINY, "base_model": str(sft_run), "method": method}, stage="dpo",
                      data=[str(synth_data["preference_train"])], output_dir=str(tmp_path / "d"),
                      max_steps=2)
    recipe = Recipe(cfg, lambda *a: None, False, [])
    recipe.setup(False, False)
    try:
        peft_config = getattr(recipe.trainer.model, "peft_config", {})
        if method in ("full", "freeze", "adapter_seq"):
            assert recipe.trainer.ref_model is not None and not peft_config
        else:
            assert recipe.trainer.ref_model is None
            assert ("ref" in peft_config) == (method == "prefix")
        recipe.train()
        out = recipe.save()
    finally:
        recipe.close()
    assert read_run(out).kind == "dpo"
    model, _, _ = open_model(out, device="cpu")  # (reopens as trained, in eval mode)
    assert not model.training
