"""Plain text for continued pre-training: read, tokenised, grouped into blocks.

Owns the ``pt`` stage's data: every record of the named files becomes one document (plain
text as it is, a conversation rendered with the run's template), each document is tokenised
with the tokenizer's special tokens and closed with EOS, and the documents are concatenated
and cut into blocks of ``max_length`` tokens (what Hugging Face's ``run_clm`` does); the loss is
on every token. Documents are streamed into an Arrow table and tokenised by a batched
``datasets.map`` (in parallel), so a corpus of any size trains in flat memory. Blocks are cut
in one pass within each batch of 1,000 documents; each batch's remainder is kept as a shorter
block, so no text is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from unitune.data.encode import (
    BAR_FROM,
    map_workers,
    progress_bars,
    row_lengths,
    tokenize_ids,
)
from unitune.data.readers import iter_records
from unitune.data.schema import Conversation, PlainText
from unitune.data.sources import Invalid, resolve_files
from unitune.data.store import BATCH, write_rows
from unitune.data.templates import Template
from unitune.errors import UserError

_TEXT = pa.schema([("text", pa.string()), ("specials", pa.bool_())])
_BLOCKS = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                             "labels": datasets.Sequence(datasets.Value("int32"))})


def check(cfg) -> None:
    """Refuse keys that shape instruction data, which plain text does not have."""
    mixed = [s.path for s in cfg.data + cfg.validation_data
             if s.weight is not None or s.count is not None]
    for what, bad in (("mixing by weight or count", mixed or cfg.mix_total),
                      ("dedupe", cfg.dedupe),
                      ("augment", cfg.augment.flan_templates or cfg.augment.k_shot
                       or cfg.augment.cot_suffix),
                      ("packing (blocks are full already)", cfg.packing)):
        if bad:
            raise UserError(f"stage=pt trains on plain text grouped into blocks: {what} "
                            "applies to stage=sft only; remove it")


def _documents(specs, cfg, template: Template, tokenizer,
               invalid: Invalid) -> Iterator[tuple[str, bool]]:
    """(text, whether the tokenizer adds its special tokens to it): plain text gets them; a
    conversation holds what its template writes, as in fine-tuning."""
    for spec in specs:
        files = resolve_files(spec.path, cfg.data_dir)
        if files is None:
            raise UserError(f"data '{spec.path}': stage=pt reads local files (.txt, "
                            "{\"text\"} records or conversations); download the hub dataset")
        for path in files:
            for rec in iter_records(path, spec.format or cfg.data_format, cfg.skip_invalid,
                                    invalid):
                if isinstance(rec, PlainText):
                    yield rec.text, True
                elif isinstance(rec, Conversation):
                    yield template.render(rec, tokenizer)[0], template.add_special_tokens
                else:
                    raise UserError(f"{rec.where}: is a preference pair; stage=pt trains on "
                                    "plain text or conversations")


def _tokenize(batch: dict, tokenizer) -> dict:
    """Each document's ids as fine-tuning tokenises its text (with the special tokens the
    tokenizer opens a text with where it gets them), closed by EOS."""
    eos = tokenizer.eos_token_id
    docs: list = [None] * len(batch["text"])
    for specials in (True, False):  # (one batched call per kind)
        where = [i for i, s in enumerate(batch["specials"]) if s is specials]
        if where:
            encoded = tokenize_ids([batch["text"][i] for i in where], tokenizer, specials)
            for i, ids in zip(where, encoded, strict=True):
                docs[i] = ids
    return {"ids": [doc if doc and doc[-1] == eos else [*doc, eos] for doc in docs]}


def _blocks(batch: dict, block: int) -> dict:
    ids = [i for doc in batch["ids"] for i in doc]
    cut = [ids[i:i + block] for i in range(0, len(ids), block)]
    cut = [c for c in cut if len(c) > 1]  # a block of one token has nothing to predict
    return {"input_ids": cut, "labels": cut}


def text_blocks(specs, cfg, tokenizer, template: Template, out: Path, invalid: Invalid,
                progress: bool = False) -> tuple[datasets.Dataset, dict]:
    """The blocks of the documents ``specs`` name, and a report (documents, tokens, blocks)."""
    docs = write_rows(({"text": text, "specials": specials} for text, specials in
                       _documents(specs, cfg, template, tokenizer, invalid)),
                      out / "texts.arrow", _TEXT)
    if not len(docs):
        raise UserError(f"data {', '.join(s.path for s in specs)}: no text to train on")
    workers = map_workers(len(docs), cfg.data_workers)
    with progress_bars(progress and len(docs) >= BAR_FROM):
        # tokenising runs in parallel; cutting into blocks is one pass, so the blocks do not
        # depend on how many processes tokenised
        ids = docs.map(_tokenize, batched=True, batch_size=BATCH,
                       remove_columns=["text", "specials"],
                       num_proc=workers if workers > 1 else None,
                       fn_kwargs={"tokenizer": tokenizer}, cache_file_name=str(out / "ids.arrow"),
                       load_from_cache_file=False, new_fingerprint=uuid.uuid4().hex,
                       desc="tokenizing text")
        blocks = ids.map(_blocks, batched=True, batch_size=BATCH, features=_BLOCKS,
                         remove_columns=["ids"], fn_kwargs={"block": cfg.max_length},
                         cache_file_name=str(out / "blocks.arrow"), load_from_cache_file=False,
                         new_fingerprint=uuid.uuid4().hex, desc="grouping into blocks")
    return blocks, {"documents": len(docs), "blocks": len(blocks),
                    "tokens": int(row_lengths(blocks).sum()), "block_length": cfg.max_length}
