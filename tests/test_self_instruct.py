"""Self-instruct: the teacher's replies are parsed, filtered as Alpaca filters them and
de-duplicated by ROUGE-L; a rerun continues; and the command runs end to end against
`unitune serve` as the teacher (a tiny random model: its replies hold no task, which is
counted, not fatal)."""

from __future__ import annotations

import json

import pytest

from unitune.cli import main
from unitune.data.self_instruct import (
    Deduplicator,
    generate,
    parse_reply,
    read_seed_tasks,
    rejected,
    render_prompt,
)
from unitune.eval.judge import Judge

REPLY = """ Give three tips for staying healthy while working from home.
4. Input:
<noinput>
4. Output:
Take breaks, move every hour and keep a regular schedule.
###
5. Instruction: Draw a picture of a cat sitting on a mat.
5. Input:
<noinput>
5. Output:
(a picture)
###
6. Instruction: Estimate the time a cyclist saves over a walker on a five kilometre trip.
6. Input:
Walking speed: 5 km/h, cycling speed: 15 km/h
6. Output:
40 minutes
###
7. Instruction: Give three tips for staying healthy while working at home.
7. Input:
<noinput>
7. Output:
Sleep well, eat vegetables and stretch.
###
8. Instruction: 把下面的句子翻译成英文，并解释其中的成语。
8. Input:
他做事总是半途而废。
8. Output:
He always gives up halfway."""


def test_replies_are_parsed_and_filtered_as_alpaca_does(shared_data):
    seeds = read_seed_tasks(shared_data / "instruct" / "seed_tasks.jsonl")
    assert len(seeds) == 175 and seeds[1]["input"] == "Night : Day :: Right : Left"
    prompt = render_prompt(seeds[:3])
    assert prompt.endswith("###\n4. Instruction:") and "3. Output:" in prompt
    tasks = parse_reply(REPLY, 4)
    assert [t["instruction"][:11] for t in tasks] == ["Give three ", "Draw a pict",
                                                      "Estimate th", "Give three ",
                                                      "把下面的句子翻译成英文"]
    assert tasks[0]["input"] == "" and tasks[2]["input"].startswith("Walking speed")
    assert rejected(tasks[1]) == "blacklist" and rejected(tasks[0]) is None
    assert rejected({"instruction": "Write a program that sorts.", "output": "x"}) == "program"
    assert rejected({"instruction": "Hi there", "output": "x"}) == "length"
    dedup = Deduplicator(0.7)
    assert dedup.add(tasks[0]["instruction"]) and not dedup.add(tasks[3]["instruction"])
    assert dedup.add(tasks[4]["instruction"])
    assert not dedup.add("把下面的句子翻译成英文，并解释其中的成语！")  # compared by character


class Scripted(Judge):
    def __init__(self, replies):
        super().__init__("http://unused/v1", "teacher")
        self.replies = replies

    def ask(self, messages):
        self.usage["calls"] += 1
        self.usage["prompt_tokens"] += 10
        return self.replies.pop(0) if self.replies else "nothing useful"


def test_generation_keeps_what_passes_and_continues(shared_data, tmp_path):
    out = tmp_path / "gen.jsonl"
    seeds = shared_data / "instruct" / "seed_tasks.jsonl"
    report = generate(seeds, Scripted([REPLY]), out, count=10, max_requests=3,
                      log=lambda *a: None)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["instruction"][:8] for k in kept] == ["Give thr", "Estimate", "把下面的句子翻译"]
    assert report["kept"] == 3 and report["dropped"] == {"blacklist": 1, "similar": 1}
    assert report["requests"] == 3 and report["replies_without_tasks"] == 2
    assert report["teacher"]["prompt_tokens"] == 30
    again = generate(seeds, Scripted([REPLY]), out, count=4, log=lambda *a: None)
    assert again["tasks"] == 3 and again["kept"] == 0  # a rerun starts from the 3 kept
    assert again["dropped"] == {"blacklist": 1, "similar": 4}  # all seen before
    assert again["requests"] == 16  # 4 per task asked for, then it stops
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.slow
def test_self_instruct_against_unitune_serve(judge_model, start_server, shared_data,
                                             tmp_path, capsys):
    proc, url = start_server([str(judge_model)])
    try:
        out = tmp_path / "gen.jsonl"
        assert main(["data", "self-instruct", "--seed-tasks",
                     str(shared_data / "instruct" / "seed_tasks.jsonl"), "--teacher-url",
                     f"{url}/v1", "--teacher-model", str(judge_model), "-n", "2",
                     "--max-requests", "2", "--max-tokens", "16", "-o", str(out)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["requests"] == 2 and report["teacher"]["calls"] == 2
        assert report["teacher"]["prompt_tokens"] > 0 and out.exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert main(["data", "self-instruct", "--seed-tasks",
                 str(shared_data / "instruct" / "seed_tasks.jsonl"), "--teacher-url",
                 "http://127.0.0.1:9/v1", "--teacher-model", "t", "-o", str(out)]) == 2
    err = capsys.readouterr().err  # a teacher that is down: what was kept stays
    assert "teacher http" in err and "no answer after" in err and "rerun to continue" in err
    assert "Traceback" not in err
    assert main(["data", "self-instruct", "--seed-tasks", str(tmp_path / "none.jsonl"),
                 "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "t", "-o",
                 str(tmp_path / "x.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
