"""Training stages: what data a stage trains on and how it becomes batches.

A stage brings its checks, how its rows are built from the config's data (tokenised once and
cached, ``data/cache.py``), how the rows become the training set, and its collator; the
recipe (``train/recipe.py``) runs every stage the same way (set up, train, save). ``sft`` tunes
on conversations with the loss on the replies; ``pt`` continues pre-training on plain text with
the loss on every token. A new stage (reward modelling, DPO, ...) is one more class here.
"""

from __future__ import annotations

from pathlib import Path

from unitune.data.encode import Collator, Packed, encode_records
from unitune.data.templates import Template
from unitune.errors import UserError, did_you_mean


class Stage:
    name: str = ""
    summary: str = ""
    teaches_chat_format: bool = True  # the run's tokenizer gets the template as chat_template

    def check(self, cfg, seq2seq: bool) -> None:
        """Refuse what the stage cannot do, before any data or weights load."""

    def loss(self, cfg) -> tuple[str, bool]:
        """(which tokens carry the loss: a ``masking`` value, whether rows are packed)."""
        return cfg.masking, cfg.packing

    def build(self, cfg, tokenizer, template: Template, seq2seq: bool, progress: bool):
        """A function of a work folder that returns (train rows, validation rows or None,
        report, log lines): what ``data.cache.prepared`` runs when the data is not cached."""
        raise NotImplementedError

    def train_set(self, rows, cfg, log):
        """The dataset the Trainer iterates, from the prepared rows."""
        return rows

    def collator(self, tokenizer):
        return Collator(tokenizer.pad_token_id)


class SupervisedFineTuning(Stage):
    name = "sft"
    summary = "instruction tuning on conversations, loss on the replies"

    def check(self, cfg, seq2seq):
        if seq2seq and (cfg.packing or cfg.masking != "assistant"):
            raise UserError("an encoder-decoder model trains on the final reply given the "
                            "prompt: packing and masking other than 'assistant' do not apply")

    def build(self, cfg, tokenizer, template, seq2seq, progress):
        from unitune.data.sources import build_datasets

        def build(workdir: Path):
            lines: list[str] = []
            train_records, val_records, data_report = build_datasets(cfg, workdir, lines.append,
                                                                     progress)

            def encode(records, name):
                return encode_records(records, tokenizer, template, cfg.max_length, cfg.masking,
                                      seq2seq, workdir / f"{name}-encoded.arrow",
                                      cfg.data_workers, progress)

            train_rows, train_report = encode(train_records, "train")
            lines.append(f"train data: {train_report.summary()}")
            val_rows, val_report = encode(val_records, "validation") if val_records else \
                (None, None)
            if val_report:
                lines.append(f"validation data: {val_report.summary()}")
            if not len(train_rows):
                raise UserError(f"every training example was dropped "
                                f"({train_report.summary()}); raise max_length (now "
                                f"{cfg.max_length})")
            report = {**data_report.as_dict(), "train": train_report.as_dict(),
                      "validation": val_report.as_dict() if val_report else None}
            return train_rows, val_rows, report, lines

        return build

    def train_set(self, rows, cfg, log):
        if not cfg.packing:
            return rows
        packed = Packed(rows, cfg.max_length)
        log(f"packed {len(rows)} examples into {len(packed)} rows of <= {cfg.max_length} "
            "tokens")
        return packed


class Pretraining(Stage):
    name = "pt"
    summary = "continued pre-training on plain text, loss on every token, in blocks"
    teaches_chat_format = False

    def loss(self, cfg):
        return "all", False  # every token of full blocks

    def check(self, cfg, seq2seq):
        from unitune.data.text import check

        if seq2seq:
            raise UserError("stage=pt trains a decoder-only (causal) language model; this "
                            "model is an encoder-decoder")
        check(cfg)

    def build(self, cfg, tokenizer, template, seq2seq, progress):
        from unitune.data.mixing import split
        from unitune.data.sources import Invalid
        from unitune.data.text import text_blocks

        def build(workdir: Path):
            invalid = Invalid()
            train, report = text_blocks(cfg.data, cfg, tokenizer, template, workdir / "train",
                                        invalid, progress)
            validation, val_report = None, None
            if cfg.validation_data:
                if cfg.validation_split:
                    raise UserError("give either validation_data or validation_split, not both")
                validation, val_report = text_blocks(cfg.validation_data, cfg, tokenizer,
                                                     template, workdir / "validation", invalid,
                                                     progress)
            elif cfg.validation_split:
                train, validation = split(train, cfg.validation_split, cfg.seed)
                val_report = {"blocks": len(validation)}
            lines = [f"pre-training text: {report['documents']} documents, "
                     f"{report['tokens']:,} tokens in {len(train)} blocks of <= "
                     f"{cfg.max_length}"]
            if invalid.count:
                lines.append(f"skipped {invalid.count} invalid records (skip_invalid), first: "
                             f"{invalid.first[0]}")
            return train, validation, {"train": report, "validation": val_report,
                                       "skipped_invalid": invalid.count,
                                       "first_invalid": invalid.first}, lines

        return build


STAGES: dict[str, Stage] = {s.name: s for s in (SupervisedFineTuning(), Pretraining())}


def get(name: str) -> Stage:
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'{did_you_mean(name, STAGES)}; stages: "
                        f"{', '.join(STAGES)}")
    return STAGES[name]
