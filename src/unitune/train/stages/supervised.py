"""The language-modelling stages: ``sft`` tunes on conversations with the loss on the replies;
``pt`` continues pre-training on plain text with the loss on every token. Both train with the
HF Trainer and our collator (``data/encode.py``)."""

from __future__ import annotations

from pathlib import Path

from unitune.data.encode import Packed, encode_records
from unitune.errors import UserError
from unitune.train.stages.base import Stage


class SupervisedFineTuning(Stage):
    name = "sft"
    summary = "instruction tuning on conversations, loss on the replies"

    def check(self, cfg, seq2seq):
        if seq2seq and (cfg.packing or cfg.masking != "assistant"):
            raise UserError("an encoder-decoder model trains on the final reply given the "
                            "prompt: packing and masking other than 'assistant' do not apply")

    def encode(self, records, tokenizer, template, cfg, seq2seq, out, progress):
        return encode_records(records, tokenizer, template, cfg.max_length, cfg.masking,
                              seq2seq, out, cfg.data_workers, progress)

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
