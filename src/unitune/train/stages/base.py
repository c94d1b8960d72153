"""What a training stage is: the data it trains on, how that becomes batches, and which
Trainer (with which arguments) trains it.

A stage brings its checks, how its rows are built from the config's data (tokenised once and
cached, ``data/cache.py``), how the rows become the training set, its collator, the model head
it trains (a language model, or a reward model's scoring head), the Trainer class and its
arguments (the HF ``Trainer``; TRL's trainers for the preference stages), and the config
section of its own keys. The recipe (``train/recipe.py``) runs every stage the same way (set
up, train, save).
"""

from __future__ import annotations

from pathlib import Path

from unitune.data.schema import Conversation
from unitune.data.templates import Template
from unitune.errors import UserError
from unitune.sections import Section

LOSS_ON = {"assistant": "every assistant reply", "last": "the last assistant reply",
           "all": "every token"}
POLICY_KINDS = ("sft", "pt", "dpo", "kto", "grpo", "rloo", "orpo", "cpo", "merge", "compose")


class Stage:
    name: str = ""
    summary: str = ""
    teaches_chat_format: bool = True  # the run's tokenizer gets the template as chat_template
    head: str = "causal"  # the model it trains: 'causal' (a language model) or 'reward'
    sections: tuple[tuple[str, type[Section]], ...] = ()  # (config key, schema) it reads
    starts_from: tuple[str, ...] = POLICY_KINDS  # the kinds of run it may start from
    metrics: tuple[str, ...] = ()  # logged values kept in the record (their last value)
    accept: tuple[type, ...] = (Conversation,)  # the records its data holds
    purpose: str = "instruction tuning"  # (what a record of another kind is told it is for)
    # train/speed.py's fused kernels and lean LoRA layers apply (TRL's trainers compute their
    # own losses and switch dropout off themselves)
    fast_path: bool = True

    def check(self, cfg, seq2seq: bool) -> None:
        """Refuse what the stage cannot do, before any data or weights load."""

    def check_tokenizer(self, cfg, tokenizer, template: Template) -> None:
        """Refuse what does not fit the run's tokenizer and template, before any data or
        weights load."""

    def check_base(self, kind: str, where: str) -> None:
        """Refuse to start from a run of the wrong kind (``kind`` of the run at ``where``)."""
        if kind not in self.starts_from:
            what = "a reward model (a scoring head, not a language model)" if kind == "rm" \
                else f"a run of kind '{kind}'"
            raise UserError(f"base_model={where}: {what}; stage={self.name} starts from a "
                            f"base model or a run of kind {', '.join(self.starts_from)}")

    def loss(self, cfg) -> tuple[str, bool]:
        """(which tokens carry the loss: a ``masking`` value, whether rows are packed)."""
        return cfg.masking, cfg.packing

    def trains_on(self, masking: str) -> str:
        """What the loss is on, as the run's log says it."""
        return LOSS_ON[masking]

    def encode(self, records, tokenizer, template: Template, cfg, seq2seq: bool, out: Path,
               progress: bool):
        """(the rows of ``records`` the stage trains on, written to the Arrow file ``out``,
        their ``EncodeReport``)."""
        raise NotImplementedError

    def build(self, cfg, tokenizer, template: Template, seq2seq: bool, progress: bool):
        """A function of a work folder that returns (train rows, validation rows or None,
        report, log lines): what ``data.cache.prepared`` runs when the data is not cached.
        By default: the records of the config's data (``data/sources.py``: read, mixed,
        de-duplicated, split; of the kinds in ``accept``), each set ``encode``d."""
        from unitune.data.sources import build_datasets

        def build(workdir: Path):
            lines: list[str] = []
            train, val, data_report = build_datasets(cfg, workdir, lines.append, progress,
                                                     self.accept, self.purpose)

            def encode(records, name):
                return self.encode(records, tokenizer, template, cfg, seq2seq,
                                   workdir / f"{name}-encoded.arrow", progress)

            train_rows, train_report = encode(train, "train")
            lines.append(f"train data: {train_report.summary()}")
            val_rows, val_report = encode(val, "validation") if val else (None, None)
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
        """The dataset the Trainer iterates, from the prepared rows."""
        return rows

    def collator(self, tokenizer):
        """The batch collator; None: the Trainer's own (TRL's trainers bring theirs)."""
        from unitune.data.encode import Collator

        return Collator(tokenizer.pad_token_id)

    def arguments(self, cfg, common: dict):
        """The Trainer's arguments: ``common`` (what every stage sets) and the stage's own."""
        from transformers import TrainingArguments

        return TrainingArguments(**common)

    def trainer_class(self):
        from transformers import Trainer

        return Trainer

    def trainer_kwargs(self, cfg, model, tokenizer, template: Template, log) -> dict:
        """What the stage's Trainer takes beyond model, arguments, data and callbacks."""
        return {}
