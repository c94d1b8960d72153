"""The arena: ratings recover a known ordering from a synthetic tournament, verdicts are
parsed robustly, positions are randomised and mapped back, and `unitune arena` runs end to
end against `unitune serve` as the judge, continuing from its caches."""

from __future__ import annotations

import json
import random

import pytest

from unitune.cli import main
from unitune.eval.arena import Judge, parse_verdict, run_arena
from unitune.eval.ratings import bradley_terry, elo, leaderboard, markdown
from unitune.infer.generate import Decoding


def tournament(strengths: dict[str, float], games: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    names = list(strengths)
    out = []
    for _ in range(games):
        a, b = rng.sample(names, 2)
        p = strengths[a] / (strengths[a] + strengths[b])
        r = rng.random()
        out.append((a, b, 0.5 if abs(r - p) < 0.05 else float(r < p)))
    return out


def test_ratings_recover_a_known_ordering():
    truth = {"weak": 1.0, "fair": 2.0, "good": 4.0, "best": 8.0}
    games = tournament(truth, 3000)
    order = sorted(truth, key=truth.get, reverse=True)
    bt = bradley_terry(games)
    assert sorted(bt, key=bt.get, reverse=True) == order
    # BT on the Elo scale: a strength ratio of 2 is 400*log10(2) ≈ 120 points
    assert bt["best"] - bt["good"] == pytest.approx(120.4, abs=30)
    assert sorted(elo(games), key=elo(games).get, reverse=True) == order
    rows = leaderboard(games, rounds=50)
    assert [r["model"] for r in rows] == order
    assert rows[0]["bt_low"] > rows[-1]["bt_high"]  # the intervals separate best from weak
    assert all(r["bt_low"] <= r["bt"] <= r["bt_high"] for r in rows)
    assert sum(r["wins"] + r["losses"] + r["ties"] for r in rows) == 2 * len(games)
    assert markdown(rows).count("\n") == 6


def test_verdicts_are_parsed_robustly():
    assert parse_verdict("Both are fine, but [[B]].") == "B"
    assert parse_verdict("[[A]] at first... final verdict: [[ C ]]") == "C"
    assert parse_verdict(" A. ") == "A" and parse_verdict("tie") == "C"
    assert parse_verdict("I cannot decide") is None and parse_verdict("[[D]]") is None


class AlwaysFirst(Judge):
    """A judge that always prefers the answer shown first (to check the position mapping)."""

    def ask(self, messages):
        self.usage["calls"] += 1
        return "[[A]]"


def test_positions_are_randomised_and_mapped_back(tmp_path):
    out = tmp_path / "arena"
    out.mkdir()
    questions = [f"q{i}" for i in range(40)]
    from unitune.eval.answers import Answerer, answer_key

    by = Answerer("unused").identity(Decoding())
    (out / "answers.jsonl").write_text("".join(
        json.dumps({"model": m, "index": i, "answer": f"{m} {i}",
                    "key": answer_key(by, [f"q{i}"])}) + "\n"
        for m in ("x", "y") for i in range(40)))
    judge = AlwaysFirst("http://unused/v1", "judge")
    report = run_arena({"x": "unused", "y": "unused"}, questions, judge, out, Decoding())
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    shown_first = sum(r["a"] == "x" for r in rows)
    assert 10 < shown_first < 30  # randomised positions
    x = next(r for r in report["leaderboard"] if r["model"] == "x")
    assert x["wins"] == shown_first and x["losses"] == 40 - shown_first
    again = run_arena({"x": "unused", "y": "unused"}, questions, judge, out, Decoding())
    assert judge.usage["calls"] == 40 and again["comparisons"] == 40  # all from the cache


def test_a_judge_that_is_down_is_a_clear_error():
    from unitune.errors import UserError

    with pytest.raises(UserError, match="no answer after 2 tries"):
        Judge("http://127.0.0.1:9/v1", "judge", retries=1, timeout_s=2).ask(
            [{"role": "user", "content": "x"}])


@pytest.mark.slow
def test_arena_end_to_end_with_unitune_serve_as_the_judge(small_lora, chat_run, start_server,
                                                          judge_model, tmp_path, capsys):
    other = small_lora("other", seed=1)
    proc, url = start_server([str(judge_model)])
    try:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("Count the letters. a b\nSort 3 1 2.\n")
        args = ["arena", "--model", f"one={chat_run}", "--model", f"two={other}",
                "--prompts", str(prompts), "--judge-url", f"{url}/v1", "--judge-model",
                str(judge_model), "-o", str(tmp_path / "out"), "--device", "cpu",
                "--max-new-tokens", "4", "--rounds", "20"]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 0, err
        report = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
        assert report["judge"]["calls"] == 2 and report["judge"]["prompt_tokens"] > 0
        assert report["comparisons"] + report["unparsed_verdicts"] == 2
        assert set(report["answer_lengths"]) == {"one", "two"}
        assert len((tmp_path / "out" / "judgments.jsonl").read_text().splitlines()) == 2
        import httpx

        before = httpx.get(f"{url}/health").json()["requests"]
        assert main(args) == 0  # answers and judgments come from the caches
        assert httpx.get(f"{url}/health").json()["requests"] == before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert main(["arena", "--model", f"one={chat_run}", "--prompts", str(prompts),
                 "--judge-url", "http://x/v1", "--judge-model", "j", "-o",
                 str(tmp_path / "o2")]) == 2
    assert "at least two models" in capsys.readouterr().err
    assert main(["arena", "--model", f"a={chat_run}", "--model", f"a={chat_run}", "--prompts",
                 str(prompts), "--judge-url", "http://x/v1", "--judge-model", "j", "-o",
                 str(tmp_path / "o3")]) == 2
    assert "the name 'a' is taken" in capsys.readouterr().err


def test_belle_eval_scores_are_parsed():
    from unitune.eval.belle import parse_score

    assert parse_score("分析……得分: 0.8") == 0.8 and parse_score("得分：1") == 1.0
    assert parse_score("得分: 0.2\n复核后得分: .5") == 0.5
    assert parse_score("我认为不错") is None


@pytest.mark.slow
def test_belle_eval_end_to_end_with_unitune_serve_as_the_judge(chat_run, start_server,
                                                               judge_model, shared_data,
                                                               tmp_path, capsys):
    from unitune.eval.belle import read_belle

    data_dir = shared_data / "eval" / "belle_eval"
    items, prompts = read_belle(data_dir)
    assert len(items) == 300 and len(prompts) == 11
    proc, url = start_server([str(judge_model)])
    try:
        report = tmp_path / "belle.json"
        args = ["eval", str(chat_run), "--tasks", "belle_eval", "--data-dir", str(data_dir),
                "--judge-url", f"{url}/v1", "--judge-model", str(judge_model),
                "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", "--report",
                str(report)]
        assert main(args) == 0, capsys.readouterr().err
        result = json.loads(report.read_text())["benchmarks"]["belle_eval"]
        assert result["questions"] == 3 and result["graded"] + result["unparsed"] == 3
        assert result["judge"]["calls"] == 3
        grades = (tmp_path / "belle.belle_eval" / "grades.jsonl").read_text().splitlines()
        assert len(grades) == 3
        assert main(args) == 0  # a rerun continues from the cached answers and grades
        assert json.loads(report.read_text())["benchmarks"]["belle_eval"]["judge"]["calls"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert main(["eval", str(chat_run), "--tasks", "belle_eval", "--data-dir",
                 str(data_dir)]) == 2
    assert "--judge-url and --judge-model" in capsys.readouterr().err
    assert main(["eval", str(chat_run), "--tasks", "belle_eval", "--data-dir", str(tmp_path),
                 "--judge-url", "http://x/v1", "--judge-model", "j"]) == 2
    assert "eval_prompt.json" in capsys.readouterr().err


def test_a_person_s_votes_are_judgments_and_move_the_leaderboard(tmp_path):
    from unitune.serve.web import HumanArena

    questions = ["q0", "q1", "q2"]
    answers = {m: [f"{m} says {i}" for i in range(3)] for m in ("x", "y")}
    arena = HumanArena(["x", "y"], questions, answers, tmp_path, seed=3)
    seen = []
    for _ in range(3):
        position, question, a, b, progress = arena.shown()
        seen.append(question)
        assert a != b and {a.split()[0], b.split()[0]} == {"x", "y"}
        arena.vote(position, "A" if a.startswith("x") else "B")  # the person prefers x
    assert sorted(seen) == questions and arena.shown()[4] == "3 of 3 comparisons judged"
    assert arena.shown()[:2] == (None, "All comparisons are judged.")
    rows = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert {r["judge"] for r in rows} == {"human"} and len(rows) == 3
    board = json.loads((tmp_path / "leaderboard.json").read_text())["leaderboard"]
    assert board[0]["model"] == "x" and board[0]["wins"] == 3
    assert main(["arena", "--model", "a=x", "--model", "b=y", "--prompts", "p.txt", "-o",
                 str(tmp_path)]) == 2  # neither an LLM judge nor --human


def test_a_vote_counts_for_the_comparison_on_the_person_s_screen(tmp_path):
    from unitune.serve.web import HumanArena

    questions = ["q0", "q1"]
    answers = {m: [f"{m} says {i}" for i in range(2)] for m in ("x", "y")}
    arena = HumanArena(["x", "y"], questions, answers, tmp_path)
    first_page = arena.shown()
    second_page = arena.shown()  # another tab shows the same comparison
    assert first_page == second_page
    arena.vote(second_page[0], "A")
    arena.vote(first_page[0], "B")  # a second opinion on the same comparison, not the next
    rows = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [rows[0]["index"]] * 2
    assert arena.shown()[4] == "1 of 2 comparisons judged"
    again = HumanArena(["x", "y"], questions, answers, tmp_path)  # the page restarted
    assert again.shown()[0] != first_page[0] and len(again.pending()) == 1


class Rambling(Judge):
    """A judge whose replies hold no verdict."""

    def ask(self, messages):
        self.usage["calls"] += 1
        return "Both answers have merits."


def test_a_judge_without_verdicts_leaves_no_picture_of_an_earlier_board(tmp_path):
    from unitune.eval.answers import Answerer, answer_key

    questions = ["q0", "q1"]
    by = Answerer("unused").identity(Decoding())
    (tmp_path / "answers.jsonl").write_text("".join(
        json.dumps({"key": answer_key(by, [q]), "answer": f"{m} {q}"}) + "\n"
        for m in ("x", "y") for q in questions))
    run_arena({"x": "unused", "y": "unused"}, questions,
              AlwaysFirst("http://unused/v1", "judge"), tmp_path, Decoding(), rounds=5)
    assert (tmp_path / "leaderboard.png").exists()
    report = run_arena({"x": "unused", "y": "unused"}, questions,
                       Rambling("http://unused/v1", "rambler"), tmp_path, Decoding(), rounds=5)
    assert report["comparisons"] == 0 and report["unparsed_verdicts"] == 2
    assert not (tmp_path / "leaderboard.png").exists()
    assert (tmp_path / "leaderboard.md").read_text().startswith(
        "No verdicts yet (2 judge replies without one")


def test_judgments_are_asked_anew_for_changed_answers_or_another_judge(tmp_path):
    from unitune.eval.answers import Answerer, answer_key

    questions = ["q0", "q1"]
    by = Answerer("unused").identity(Decoding())

    def answers(text):
        (tmp_path / "answers.jsonl").write_text("".join(
            json.dumps({"key": answer_key(by, [q]), "answer": f"{m} {text}"}) + "\n"
            for m in ("x", "y") for q in questions))

    answers("first")
    judge = AlwaysFirst("http://unused/v1", "judge")
    run_arena({"x": "unused", "y": "unused"}, questions, judge, tmp_path, Decoding())
    run_arena({"x": "unused", "y": "unused"}, questions, judge, tmp_path, Decoding())
    assert judge.usage["calls"] == 2  # the second run came from the cache
    answers("second")  # answers changed: their old judgments no longer count
    report = run_arena({"x": "unused", "y": "unused"}, questions, judge, tmp_path, Decoding())
    assert judge.usage["calls"] == 4 and report["comparisons"] == 2
    other = AlwaysFirst("http://unused/v1", "another judge")
    report = run_arena({"x": "unused", "y": "unused"}, questions, other, tmp_path, Decoding())
    assert other.usage["calls"] == 2 and report["comparisons"] == 2  # one judge per board
    assert report["judge"]["model"] == "another judge"


def test_answers_are_asked_anew_for_other_decoding_settings_or_a_retrained_run(tmp_path):
    from unitune.eval.answers import Answerer
    from unitune.run import RunRecord, write_run

    run = tmp_path / "run"
    run.mkdir()
    write_run(run, RunRecord(method="lora", base_model="b", started=1.0))
    by = Answerer(str(run)).identity(Decoding())
    assert by == Answerer(str(run)).identity(Decoding())
    assert by != Answerer(str(run)).identity(Decoding(max_new_tokens=7))
    assert by != Answerer(str(run), template="alpaca").identity(Decoding())
    write_run(run, RunRecord(method="lora", base_model="b", started=2.0))  # retrained
    assert by != Answerer(str(run)).identity(Decoding())


def test_prompt_files_in_every_layout_the_readers_know(tmp_path):
    from unitune.errors import UserError
    from unitune.eval.answers import read_prompts

    (tmp_path / "p.txt").write_text("Sort 3 1 2.\n\n  Count a b.  \n")
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "Sort 3 1 2."}\n{"prompt": "Count a b.", "chosen": "2", "rejected": "3"}\n')
    (tmp_path / "c.jsonl").write_text('{"instruction": "Sort 3 1 2.", "output": "1 2 3"}\n')
    assert read_prompts(tmp_path / "p.txt") == ["Sort 3 1 2.", "Count a b."]
    with pytest.raises(UserError, match="p.jsonl:2: record looks like preference"):
        read_prompts(tmp_path / "p.jsonl")  # (one format per file)
    assert read_prompts(tmp_path / "c.jsonl") == ["Sort 3 1 2."]
    with pytest.raises(UserError, match="missing.txt"):
        read_prompts(tmp_path / "missing.txt")
