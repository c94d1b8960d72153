"""Judged tasks: IMPACT relevance / coherence, MT-bench single-answer grading (two turns,
reference-guided), win rate against a reference model with both orders judged; scripted judges
check the scoring (all right, all wrong, position bias cancelled), and the three run end to end
through the CLI with the tiny model answering and `unitune serve` judging."""

from __future__ import annotations

import json

import pytest

from unitune.cli import main
from unitune.eval.answers import Answerer
from unitune.eval.grading import grade_impact, grade_mt_bench, grade_winrate, parse_rating
from unitune.eval.judge import Judge
from unitune.infer.generate import Decoding


class Scripted(Judge):
    """A judge whose reply is a function of the messages it is shown."""

    def __init__(self, reply):
        super().__init__("http://unused/v1", "scripted")
        self.reply, self.seen = reply, []

    def ask(self, messages):
        self.usage["calls"] += 1
        self.seen.append(messages)
        return self.reply(messages)


def cached_answers(out, dialogues: list[list[str]]) -> None:
    """The answers of model 'unused', already in the cache (so no model is loaded):
    'answer i.t'."""
    from unitune.eval.answers import Answerer, answer_key

    by = Answerer("unused").identity(Decoding())
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.jsonl").write_text("".join(
        json.dumps({"model": "model", "index": i, "turn": t, "answer": f"answer {i}.{t}",
                    "key": answer_key(by, turns[:t + 1])}) + "\n"
        for i, turns in enumerate(dialogues) for t in range(len(turns))))


def test_ratings_are_parsed_within_their_scale():
    assert parse_rating("Good. Rating: [[4]]", 5) == 4.0
    assert parse_rating("[[2]] first, then Rating: [[7.5]]", 10) == 7.5
    assert parse_rating("Rating: [6]", 10) == 6.0
    assert parse_rating("Rating: [[6]]", 5) is None and parse_rating("great", 10) is None


def test_impact_means_each_aspect_per_category(tmp_path):
    data = tmp_path / "impact"
    data.mkdir()
    (data / "creative.txt").write_text("Write a poem.\nWrite a story.\n")
    (data / "informative.txt").write_text("Explain tides.\n")
    out = tmp_path / "out"
    cached_answers(out, [["Write a poem."], ["Write a story."], ["Explain tides."]])

    def reply(messages):
        if "answer 2.0" in messages[-1]["content"]:
            return "no rating here"
        return "Rating: [[4]]" if "relevance" in messages[0]["content"] else "[[2]]"

    judge = Scripted(reply)
    report = grade_impact(Answerer("unused"), data, judge, out, Decoding())
    assert report["prompts"] == 3 and report["unparsed"] == 2
    assert report["relevance"] == 4.0 and report["coherence"] == 2.0
    assert report["by_category"]["creative"] == {"relevance": 4.0, "coherence": 2.0}
    assert report["by_category"]["informative"] == {"relevance": None, "coherence": None}
    again = grade_impact(Answerer("unused"), data, judge, out, Decoding())
    assert judge.usage["calls"] == 6 and again["relevance"] == 4.0  # all from the cache


@pytest.mark.parametrize("score", [10, 1])
def test_mt_bench_grades_both_turns_with_references_where_due(tmp_path, score):
    data = tmp_path / "mt_bench"
    (data / "reference_answer").mkdir(parents=True)
    (data / "question.jsonl").write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": ["Write.", "Shorter."]})
        + "\n" + json.dumps({"question_id": 111, "category": "math",
                             "turns": ["2+2?", "Times 3?"]}) + "\n")
    (data / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(
        {"question_id": 111, "choices": [{"turns": ["4", "12"]}]}) + "\n")
    out = tmp_path / "out"
    cached_answers(out, [["Write.", "Shorter."], ["2+2?", "Times 3?"]])
    judge = Scripted(lambda m: f"Fine. Rating: [[{score}]]")
    report = grade_mt_bench(Answerer("unused"), data, judge, out, Decoding())
    assert report["rating"] == report["turn_1"] == report["turn_2"] == score
    assert report["by_category"] == {"math": score, "writing": score}
    prompts = [m[-1]["content"] for m in judge.seen]
    assert sum("[The Start of Reference Answer]\n4\n" in p for p in prompts) == 1
    assert sum("### Reference answer:\n12" in p for p in prompts) == 1
    second_math = next(p for p in prompts if "Times 3?" in p)
    assert second_math.index("<|The Start of Reference Answer|>") < second_math.index(
        "Assistant A's Conversation") and "### Reference answer:\n4" in second_math
    second = next(p for p in prompts if "Shorter." in p)
    assert "### Assistant A:\nanswer 0.0" in second and "answer 0.1" in second


def test_winrate_is_1_when_always_preferred_0_when_never_and_half_under_position_bias(
        tmp_path):
    data = tmp_path / "winrate"
    data.mkdir()
    rows = [{"instruction": f"q{i}", "output": f"reference answer {i} is long",
             "generator": "gpt4"} for i in range(4)]
    (data / "ref.json").write_text(json.dumps(rows))

    def prefers(ours: bool):
        def reply(messages):
            text = messages[-1]["content"]
            first_is_ours = text.index("answer ") < text.index("reference answer")
            return "[[A]]" if first_is_ours == ours else "[[B]]"
        return reply

    for name, reply, expected in (("always", prefers(True), 1.0),
                                  ("never", prefers(False), 0.0),
                                  ("first", lambda m: "[[A]]", 0.5)):
        out = tmp_path / name
        cached_answers(out, [[r["instruction"]] for r in rows])
        report = grade_winrate(Answerer("unused"), data, Scripted(reply), out, Decoding())
        assert report["win_rate"] == expected, name
        assert report["reference"] == "gpt4" and report["prompts"] == 4
        assert report["answer_chars"]["gpt4"] > report["answer_chars"]["model"]
    assert report["ties"] == 4 and report["judge"]["calls"] == 8  # both orders, every prompt


@pytest.mark.slow
def test_judged_tasks_end_to_end_with_unitune_serve_as_the_judge(chat_run, start_server,
                                                                 judge_model, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "impact").mkdir(parents=True)
    (data / "impact" / "creative.txt").write_text("Write a poem about the sea.\n")
    (data / "mt_bench").mkdir()
    (data / "mt_bench" / "question.jsonl").write_text(json.dumps(
        {"question_id": 1, "category": "writing", "turns": ["Sort 3 1 2.", "And 9 8?"]}) + "\n")
    (data / "winrate").mkdir()
    (data / "winrate" / "ref.json").write_text(json.dumps(
        [{"instruction": "Sort 3 1 2.", "output": "1 2 3", "generator": "ref"}]))
    # a judge with a short context: its reply budget must be lowered (2048 would not fit)
    proc, url = start_server([str(judge_model), "--max-prompt-tokens", "1500"])
    try:
        report = tmp_path / "judged.json"
        args = ["eval", str(chat_run), "--tasks", "impact,mt_bench,winrate", "--data-dir",
                str(data), "--judge-url", f"{url}/v1", "--judge-model", str(judge_model),
                "--max-new-tokens", "4", "--device", "cpu", "--report", str(report),
                "--judge-max-tokens", "256"]
        assert main(args) == 0, capsys.readouterr().err
        result = json.loads(report.read_text())["benchmarks"]
        assert result["impact"]["judge"]["calls"] == 2  # relevance and coherence
        assert result["mt_bench"]["judge"]["calls"] == 2  # two turns
        assert result["winrate"]["judge"]["calls"] == 2  # both orders
        answers = (tmp_path / "judged.mt_bench" / "answers.jsonl").read_text().splitlines()
        assert [json.loads(a)["turn"] for a in answers] == [0, 1]
        assert main(args) == 0  # everything from the caches
        result = json.loads(report.read_text())["benchmarks"]
        assert all(result[t]["judge"]["calls"] == 0 for t in ("impact", "mt_bench", "winrate"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert main(["eval", str(chat_run), "--tasks", "mt_bench", "--data-dir", str(tmp_path),
                 "--judge-url", "http://x/v1", "--judge-model", "j"]) == 2
    assert "question.jsonl" in capsys.readouterr().err
    assert main(["eval", str(chat_run), "--tasks", "mt_bench", "--data-dir", str(data),
                 "--judge-url", "http://x/v1", "--judge-model", "j", "--judge-max-tokens",
                 "0"]) == 2
    assert "argument --judge-max-tokens: expected a whole number >= 1" in \
        capsys.readouterr().err  # (named by its flag)


def test_a_judged_task_without_a_single_rating_keeps_its_row():
    from unitune.eval.harness import table

    report = {"model": "m", "benchmarks": {
        "impact": {"relevance": None, "coherence": None, "unparsed": 4, "prompts": 2},
        "winrate": {"win_rate": 0.5, "n": 2}}}
    lines = table(report).splitlines()
    assert "| impact | - | no score: 4 judge replies without a rating | | 0 | plain | 2 |" in lines
    assert "| winrate | win_rate | 50.00 |  | 0 | plain | 2 |" in lines


def test_a_grade_cut_short_by_a_crash_is_asked_again_and_the_cache_stays_readable(tmp_path):
    from unitune.eval.judge import Grades
    from unitune.jsonl import read_jsonl

    judge = Scripted(lambda messages: "Rating: [[4]]")
    grades = Grades(tmp_path, judge)
    for question in ("q1", "q2"):
        grades.reply(question, [{"role": "user", "content": question}])
    cache = tmp_path / "grades.jsonl"
    whole = cache.read_bytes()
    cache.write_bytes(whole[:-9])  # the second append cut short (no newline)
    again = Grades(tmp_path, judge)  # reads the first grade; cuts the torn one off the file
    assert cache.read_bytes() == whole[:whole.index(b"\n") + 1]
    assert again.reply("q2", [{"role": "user", "content": "q2"}]) == "Rating: [[4]]"
    assert judge.usage["calls"] == 3  # q2 asked again, q1 not
    assert [row["key"].split(":")[0] for row in read_jsonl(cache)] == ["q1", "q2"]
    user_file = tmp_path / "questions.jsonl"  # a file a user wrote: its last line may
    user_file.write_text('{"a": 1}\n{"a": 2}')  # lack a newline, and it is never cut
    assert read_jsonl(user_file) == [{"a": 1}, {"a": 2}]
    assert user_file.read_text().endswith("2}")
    assert read_jsonl(user_file, appended=True) == [{"a": 1}, {"a": 2}]  # appended to next:
    assert user_file.read_text() == '{"a": 1}\n{"a": 2}\n'  # a whole record keeps its line
