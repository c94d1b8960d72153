"""``unitune predict``: batch prediction over a data file, through the chat engine.

Reads any supported conversation format; writes JSON lines in input order, one per record:
``{"index", "id", "prediction", "reference"}`` (``id``: the record's own ``id`` field when it
has one; a record that cannot run, such as a prompt over the context, gets ``"error"`` and no
prediction, and the rest go on). Resumable: each batch is appended and flushed to disk once
all of it is done, so after a crash or Ctrl-C the same command continues after the last
complete line (a torn last line is dropped), never redoing or duplicating one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from unitune.errors import UserError
from unitune.infer.engine import Engine, Request, TooLarge
from unitune.infer.generate import Decoding
from unitune.jsonl import complete_lines


def _done_lines(out: Path, total: int) -> int:
    """How many complete lines ``out`` holds (a torn last line is cut off), checked to be the
    first records of this input in order."""
    if not out.exists():
        return 0
    lines = complete_lines(out)
    for i, line in enumerate(lines):
        try:
            index = json.loads(line)["index"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{out}:{i + 1}: not a prediction line of unitune predict; give "
                            "another output file") from None
        if index != i:
            raise UserError(f"{out}:{i + 1}: index {index}, expected {i}; the file belongs to "
                            "another input; give another output file")
    if len(lines) > total:
        raise UserError(f"{out} has {len(lines)} predictions but the input has {total} "
                        "records; give another output file")
    return len(lines)


def _submit(engine: Engine, model: str, prompt: str, decoding: Decoding):
    """The record's job, or the error that keeps it from running (a prompt too long)."""
    try:
        return engine.submit(Request(model, prompt, decoding))
    except UserError as exc:
        return exc


def predict(engine: Engine, model: str, data: str, out: Path, decoding: Decoding,
            batch_size: int = 32, progress: bool = True, log=print) -> dict:
    """Predict every record of ``data`` (resuming ``out``); returns counts and throughput."""
    from tqdm import tqdm

    from unitune.data.readers import read_conversations

    records = read_conversations(data)
    template = engine.template(model)
    start = _done_lines(out, len(records))
    if start:
        log(f"{out}: {start} of {len(records)} predictions already there; continuing")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, tokens, failed = time.time(), 0, 0
    bar = tqdm(total=len(records), initial=start, disable=not progress, unit="rec",
               desc="predict")
    with out.open("a", encoding="utf-8") as f:
        for at in range(start, len(records), batch_size):
            chunk = records[at:at + batch_size]
            jobs = [_submit(engine, model, template.render_prompt(r, engine.tokenizer),
                            decoding) for r in chunk]
            lines = []
            for i, (rec, job) in enumerate(zip(chunk, jobs, strict=True)):
                line = {"index": at + i, "id": rec.meta.get("id", at + i)}
                if isinstance(job, UserError):  # (a record that cannot run: said, not fatal)
                    line.update(prediction=None, error=str(job), reference=rec.answer)
                    failed += 1
                else:
                    try:
                        seq = job.result().seqs[0]
                    except TooLarge as exc:  # (said on its line, as a record too long is)
                        line.update(prediction=None, error=str(exc), reference=rec.answer)
                        failed += 1
                    else:
                        tokens += len(seq.tokens)
                        line.update(prediction=seq.text.strip(), reference=rec.answer)
                lines.append(json.dumps(line, ensure_ascii=False))
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    bar.close()
    seconds = time.time() - t0
    done = len(records) - start
    summary = {"records": len(records), "predicted": done, "failed": failed,
               "resumed_after": start,
               "generated_tokens": tokens, "seconds": round(seconds, 2),
               "records_per_s": round(done / seconds, 2) if seconds else None,
               "tokens_per_s": round(tokens / seconds, 1) if seconds else None}
    log(f"{done} predictions in {seconds:.1f}s ({summary['records_per_s']} records/s, "
        f"{summary['tokens_per_s']} generated tokens/s) -> {out}"
        + (f"; {failed} records could not run (their lines say why)" if failed else ""))
    return summary
