"""``unitune vocab extend``: a SentencePiece tokenizer grown with another model's pieces (the
Chinese-LLaMA recipe: LLaMA's 32,000 pieces + the Chinese model's new ones), saved as a
working Hugging Face tokenizer, with the tokens-per-character report.

The SentencePiece protos are read and written directly (``sentencepiece_model_pb2``; recent
transformers no longer exposes a slow tokenizer's ``sp_model``). Every original piece keeps its
id: new pieces are appended after the last one, each once, as normal pieces scored below
every original one, so they never win a merge over an original piece (Chinese-LLaMA's script
gave them score 0, which lets them break up English words in the SentencePiece model). The
folder holds ``tokenizer.model`` (the SentencePiece model: the slow form) and
``tokenizer.json`` (the fast form transformers builds from it), with the base's special
tokens and chat template when the base is a tokenizer folder. It is written under a temporary
name and renamed when complete.

Training with it (``tokenizer: DIR``) grows the model's embeddings to the new size, the new rows
set to the mean of the old ones, and the run records the size as a model patch, so every
reopen, merge and export sees the same shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from unitune.errors import UserError

NORMAL = 1  # ModelProto.SentencePiece.Type


def read_model(path: str | Path):
    """The SentencePiece ``ModelProto`` in ``path`` (a ``.model`` file, or a tokenizer folder
    with ``tokenizer.model``)."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = Path(path)
    if path.is_dir():
        if not (path / "tokenizer.model").exists():
            raise UserError(f"{path}: no tokenizer.model; give a SentencePiece .model file or "
                            "a tokenizer folder that has one (LLaMA-style tokenizers do)")
        path = path / "tokenizer.model"
    if not path.exists():
        raise UserError(f"{path}: no such file")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError:
        proto = None
    if proto is None or not proto.pieces:
        raise UserError(f"{path}: not a SentencePiece model (a .model file written by "
                        "sentencepiece's trainer)")
    return proto


def merge_models(base, extra) -> tuple[object, int]:
    """``base`` with the normal pieces of ``extra`` it lacks appended (ids and scores of
    ``base`` kept); (the merged proto, how many pieces were added)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    merged = pb.ModelProto()
    merged.CopyFrom(base)
    have = {p.piece for p in merged.pieces}
    lowest = min(p.score for p in merged.pieces)
    added = 0
    for piece in extra.pieces:
        if piece.type != NORMAL or piece.piece in have:
            continue
        new = merged.pieces.add()  # scored below every original piece: a BPE model's original
        new.piece, new.type = piece.piece, NORMAL  # merges keep their priority (English
        new.score = lowest - 1.0 - added  # text tokenizes as before), in the extra's order
        have.add(piece.piece)
        added += 1
    return merged, added


_LLAMA_DEFAULTS = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}


def extend(base: str | Path, additions: list[str | Path], out: Path, overwrite: bool = False,
           sample: str | None = None, log=print) -> dict:
    """Writes the extended tokenizer folder ``out`` with its ``vocab_report.json`` (sizes, and
    tokens per character of the ``sample`` file's text before and after); returns the
    report."""
    from transformers import AutoTokenizer

    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    texts = sample_texts(sample) if sample else []  # (a bad sample fails before any work)
    proto = read_model(base)
    original = [p.piece for p in proto.pieces]
    base_folder = Path(base) if Path(base).is_dir() else None
    config = dict(_LLAMA_DEFAULTS)
    if base_folder is not None:
        old = AutoTokenizer.from_pretrained(str(base_folder))
        beyond = sorted(i for i in old.added_tokens_decoder if i >= len(original))
        if beyond:
            raise UserError(f"{base}: tokens after the SentencePiece pieces (ids "
                            f"{', '.join(map(str, beyond[:5]))}): appending pieces would take "
                            "their ids; extend the SentencePiece model before adding tokens")
        if (base_folder / "tokenizer_config.json").exists():
            config = json.loads((base_folder / "tokenizer_config.json").read_text(
                encoding="utf-8"))
    for extra in additions:
        proto, added = merge_models(proto, read_model(extra))
        log(f"{Path(extra).name}: {added:,} new pieces")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
        config.pop("added_tokens_decoder", None)  # (ids of the old vocabulary's extras)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1),
                                                  encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(tmp))  # builds the fast form
        if len(tokenizer) != len(proto.pieces):
            raise UserError(f"the extended tokenizer has {len(tokenizer)} tokens, its "
                            f"SentencePiece model {len(proto.pieces)}; nothing written")
        moved = [p for i, p in enumerate(original) if tokenizer.convert_tokens_to_ids(p) != i]
        if moved:
            raise UserError(f"the merge would change the ids of {len(moved)} pieces (e.g. "
                            f"{moved[0]!r}); nothing written")
        tokenizer.save_pretrained(str(tmp))
        if base_folder is not None and (base_folder / "chat_template.jinja").exists():
            shutil.copy(base_folder / "chat_template.jinja", tmp / "chat_template.jinja")
        result = report(base_tokenizer(base), tokenizer, texts)
        (tmp / "vocab_report.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


SAMPLE_RECORDS = 1000  # of a --sample file, measured


def base_tokenizer(base: str | Path):
    """The tokenizer before the extension; a bare ``.model`` with LLaMA's special tokens (as
    ``extend`` gives it), so the two differ only in their pieces."""
    import tempfile

    from unitune.models.loading import load_tokenizer

    if Path(base).is_dir():
        return load_tokenizer(str(base))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(base, Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(_LLAMA_DEFAULTS),
                                                          encoding="utf-8")
        return load_tokenizer(tmp)


def tokens_per_character(tokenizer, texts: list[str]) -> float:
    """Tokens per character of ``texts`` (special tokens not counted)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    return tokens / max(1, chars)


def sample_texts(path: str | Path) -> list[str]:
    """The text of a sample file's first ``SAMPLE_RECORDS`` records: a .txt's lines, plain text, and
    every turn and answer of conversations, prompts and preference pairs."""
    from itertools import islice

    from unitune.data.readers import iter_records
    from unitune.data.schema import PlainText, PreferencePair, Prompt, conversation_of

    texts = []
    for record in islice(iter_records(path), SAMPLE_RECORDS):
        if isinstance(record, PlainText):
            texts.append(record.text)
            continue
        conv = conversation_of(record)
        texts += [t.user_text() for t in conv.turns]
        if isinstance(record, PreferencePair):
            texts += [record.chosen, record.rejected]
        elif isinstance(record, Prompt):
            texts.append(record.reference)
    return [t for t in texts if t.strip()]


def report(before, after, texts: list[str]) -> dict:
    """Vocabulary sizes and tokens per character before and after."""
    tpc_before = tokens_per_character(before, texts) if texts else None
    tpc_after = tokens_per_character(after, texts) if texts else None
    return {"vocab_before": len(before), "vocab_after": len(after),
            "tokens_per_char_before": tpc_before, "tokens_per_char_after": tpc_after,
            "ratio": tpc_after / tpc_before if texts and tpc_before else None,
            "sample_chars": sum(len(t) for t in texts)}
