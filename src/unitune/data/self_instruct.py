"""``unitune data self-instruct``: Stanford Alpaca's data generation from seed tasks with any
OpenAI-compatible teacher (``unitune serve`` included).

Each request shows the teacher a numbered list of example tasks (``--prompt-tasks`` of them:
seed tasks and, once there are some, a third from the generated ones) and asks it to
continue the list with new tasks in the same layout (``N. Instruction: / N. Input: /
N. Output:``, tasks separated by ``###``). Every reply is parsed, and each task is kept only if
it passes Alpaca's filters: a length of 3 to 150 words, none of the words a text model cannot
act on (image, graph, file, draw, ...), not a program to write, not starting with
punctuation, and a ROUGE-L similarity to every kept instruction below ``--max-similarity``
(0.7). Chinese text is compared character by character. Kept tasks are appended to the output
(JSON lines in the Alpaca format) as they come, so a rerun continues. Replies that hold no
task are counted and retried with a new sample; the teacher's token usage is reported.
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from unitune.errors import UserError

BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
             "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
             "diagram")
HEADER = ("You are asked to come up with a set of diverse task instructions. These task "
          "instructions will be given to a language model and we will evaluate it for "
          "completing the instructions.\n\nHere are the requirements:\n"
          "1. Do not repeat the verb for each instruction, to maximize diversity.\n"
          "2. The language used for the instructions should also be diverse.\n"
          "3. The type of instructions should be diverse: open-ended generation, "
          "classification, editing, rewriting, question answering, reasoning, and more.\n"
          "4. A language model should be able to complete the instruction: no images, audio "
          "or actions in the world.\n"
          "5. Each instruction should be 1 to 2 sentences, an imperative or a question.\n"
          "6. Give an input when the instruction needs one (a real example, not a "
          "placeholder); otherwise write \"<noinput>\".\n"
          "7. The output should be an appropriate response of fewer than 100 words.\n\n"
          "List of {count} tasks:\n")


def read_seed_tasks(path: str | Path) -> list[dict]:
    """Self-instruct seed tasks (``instruction`` and ``instances`` of ``input``/``output``), or
    any Alpaca file."""
    from unitune.data.readers import iter_objects

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    tasks = []
    for n, (_, row) in enumerate(iter_objects(path), 1):  # (a JSON array or JSON lines)
        if isinstance(row, UserError):
            raise row
        instance = (row.get("instances") or [row])[0] if isinstance(row, dict) else {}
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) \
                or not isinstance(instance.get("output"), str):
            raise UserError(f"{path}: task {n}: expected 'instruction' and an output "
                            "('instances': [{input, output}], or Alpaca's 'output')")
        tasks.append({"instruction": row["instruction"].strip(),
                      "input": (instance.get("input") or "").strip(),
                      "output": instance["output"].strip()})
    if not tasks:
        raise UserError(f"{path}: no seed tasks")
    return tasks


def render_prompt(examples: list[dict]) -> str:
    """The teacher's request: the header, then the examples numbered, then the next number."""
    prompt = HEADER.format(count=20)
    for i, task in enumerate(examples, 1):
        prompt += (f"###\n{i}. Instruction: {task['instruction']}\n{i}. Input:\n"
                   f"{task['input'] or '<noinput>'}\n{i}. Output:\n{task['output']}\n")
    return prompt + f"###\n{len(examples) + 1}. Instruction:"


def parse_reply(reply: str, first: int) -> list[dict]:
    """The tasks of a teacher's reply (which continues the list at number ``first``)."""
    text = f"{first}. Instruction:" + reply if not re.match(r"\s*\d+\.\s*Instruction", reply) \
        else reply
    tasks = []
    for block in re.split(r"\n?###\n?", text):
        parts = re.split(r"^\s*\d+\s*\.\s*(Instruction|Input|Output)\s*:", block, flags=re.M)
        fields = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
        if not fields.get("instruction") or "output" not in fields:
            continue
        source = fields.get("input", "")
        tasks.append({"instruction": fields["instruction"],
                      "input": "" if source.lower().strip("<> ") == "noinput" else source,
                      "output": fields["output"]})
    return tasks


def rejected(task: dict) -> str | None:
    """Why Alpaca's filters drop a task, or None."""
    instruction = task["instruction"]
    words = instruction.split()
    cjk = sum(1 for c in instruction if "\u4e00" <= c <= "\u9fff")
    if (not cjk and not 3 < len(words) <= 150) or (cjk and not 3 < len(instruction) <= 300):
        return "length"
    lowered = instruction.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", lowered) for w in BLACKLIST):
        return "blacklist"
    if lowered.startswith("write a program"):
        return "program"
    if instruction[0] in string.punctuation:
        return "punctuation"
    if not task["output"].strip():
        return "no output"
    return None


class _Tokenizer:
    """ROUGE tokens: lower-cased words, and each CJK character on its own."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[\u4e00-\u9fff]|[a-z0-9]+", text.lower())


class Deduplicator:
    """ROUGE-L against every kept instruction (``rouge_score``, as Alpaca uses it)."""

    def __init__(self, threshold: float):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
        self.threshold, self.kept = threshold, []

    def add(self, instruction: str) -> bool:
        """Keeps ``instruction`` unless it is too similar to one already kept."""
        for other in self.kept:
            if self.scorer.score(other, instruction)["rougeL"].fmeasure > self.threshold:
                return False
        self.kept.append(instruction)
        return True


def generate(seed_file: str | Path, teacher, out: Path, count: int, prompt_tasks: int = 3,
             max_similarity: float = 0.7, seed: int = 0, max_requests: int | None = None,
             log=print) -> dict:
    """Asks ``teacher`` (``eval.judge.Judge``) until ``out`` holds ``count`` tasks (or
    ``max_requests`` replies came back); returns the report."""
    from tqdm import tqdm

    seeds = read_seed_tasks(seed_file)
    kept: list[dict] = []
    if out.exists():
        from unitune.jsonl import read_jsonl

        kept = read_jsonl(out, ("instruction", "output"), appended=True)
        log(f"{out}: {len(kept)} tasks already generated; continuing")
    dedup = Deduplicator(max_similarity)
    for task in seeds + kept:
        dedup.kept.append(task["instruction"])
    rng = random.Random(seed + len(kept))
    stats = {"requests": 0, "replies_without_tasks": 0, "parsed": 0, "kept": 0,
             "dropped": {}}
    limit = max_requests if max_requests is not None else 4 * count
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f, tqdm(total=count, initial=len(kept),
                                                    desc="tasks", unit="task") as bar:
        while len(kept) < count and stats["requests"] < limit:
            generated = min(len(kept), prompt_tasks // 3)  # a third from the generated ones
            examples = rng.sample(seeds, min(prompt_tasks - generated, len(seeds))) + \
                rng.sample(kept, generated)
            prompt = render_prompt(examples)
            try:  # (the client retried with backoff already)
                reply = teacher.ask([{"role": "user", "content": prompt}])
            except UserError as exc:
                raise UserError(f"{exc}; {len(kept)} tasks are kept in {out}: rerun to "
                                "continue") from None
            stats["requests"] += 1
            tasks = parse_reply(reply, len(examples) + 1)
            stats["parsed"] += len(tasks)
            if not tasks:
                stats["replies_without_tasks"] += 1
            for task in tasks:
                reason = rejected(task) or (None if dedup.add(task["instruction"])
                                            else "similar")
                if reason:
                    stats["dropped"][reason] = stats["dropped"].get(reason, 0) + 1
                    continue
                kept.append(task)
                stats["kept"] += 1
                f.write(json.dumps(task, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(1)
                if len(kept) >= count:
                    break
    report = {"output": str(out), "tasks": len(kept), **stats,
              "teacher": teacher.report()}
    if len(kept) < count:
        log(f"stopped after {stats['requests']} requests with {len(kept)} of {count} tasks "
            f"({stats['replies_without_tasks']} replies held no task); rerun to continue")
    return report
