"""From what the user named (files, catalog names, hub dataset ids) to train/validation records.

Owns resolving each data entry of a config, reading it, mixing the sources by weight or count,
de-duplication, the train/validation split and augmentation, in that order, and the report of
what each step did. Records are streamed from the files into Arrow tables (``store``) and
every later step selects rows of those, so a multi-million-record collection is never held
in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from unitune.data import catalog, store
from unitune.data.readers import check_kind, iter_accepted, to_record
from unitune.data.schema import Conversation
from unitune.data.store import Records
from unitune.errors import UserError

_DATA_SUFFIXES = (".json", ".jsonl", ".txt")


class Invalid:
    """Invalid records left out (``skip_invalid``): how many, and the first messages."""

    def __init__(self, keep: int = 100):
        self.count = 0
        self.first: list[str] = []
        self.keep = keep

    def append(self, message: str) -> None:
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(message)


@dataclass
class DataReport:
    sources: dict = field(default_factory=dict)
    invalid: Invalid = field(default_factory=Invalid)
    duplicates_dropped: int = 0
    validation_from_split: int = 0

    def as_dict(self) -> dict:
        return {"sources": self.sources, "skipped_invalid": self.invalid.count,
                "first_invalid": self.invalid.first,
                "duplicates_dropped": self.duplicates_dropped,
                "validation_from_split": self.validation_from_split}


def resolve_files(name: str, data_dir: str | None = None) -> list[Path] | None:
    """The local files a data entry names, or None when it is a hub dataset id."""
    path = Path(name).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _DATA_SUFFIXES)
        if not files:
            raise UserError(f"{path}: folder has no .json, .jsonl or .txt files")
        return files
    looks_like_path = path.suffix in _DATA_SUFFIXES or name.startswith((".", "/", "~"))
    if looks_like_path:
        raise UserError(f"data file not found: {name}")
    try:
        entry = catalog.get_entry(name)
    except UserError:
        if "/" in name:
            return None  # a hub dataset id
        raise
    return catalog.resolve(entry, Path(data_dir) if data_dir else None)


def iter_hub_dataset(name: str, fmt: str, split: str = "train",
                     accept: tuple[type, ...] = (Conversation,),
                     purpose: str = "instruction tuning") -> Iterator[Conversation]:
    """Rows of a Hugging Face hub dataset (network or its cache), streamed from its Arrow
    files."""
    from unitune.data.readers import detect_format

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # hub errors come in many types; all mean "could not load"
        raise UserError(f"cannot load hub dataset '{name}' (split {split}): "
                        f"{str(exc).splitlines()[0]}") from None
    for i, row in enumerate(rows):
        row_fmt = fmt if fmt != "auto" else detect_format(row)
        if row_fmt is None:
            raise UserError(f"{name}:{i}: cannot tell the format from the fields "
                            f"({', '.join(sorted(row))}); set the data format explicitly")
        yield check_kind(to_record(row, row_fmt, f"{name}:{i}", name, i), accept, purpose)


def read_source(name: str, fmt: str, skip_invalid: bool, invalid: Invalid,
                data_dir: str | None, out: Path, progress: bool = False,
                accept: tuple[type, ...] = (Conversation,),
                purpose: str = "instruction tuning") -> Records:
    """The records a data entry names (conversations, or the kinds in ``accept``), streamed
    into the Arrow file ``out`` (with a progress bar when that takes more than a few
    seconds)."""
    from tqdm.auto import tqdm

    files = resolve_files(name, data_dir)
    convs = iter_hub_dataset(name, fmt, accept=accept, purpose=purpose) if files is None else \
        iter_accepted([str(f) for f in files], fmt, skip_invalid, invalid, accept, purpose)
    bar = tqdm(convs, desc=f"reading {name}", unit=" records", delay=3, mininterval=1,
               disable=not progress)
    return store.write(bar, out)


def build_datasets(cfg, workdir: Path, log=print, progress: bool = False,
                   accept: tuple[type, ...] = (Conversation,),
                   purpose: str = "instruction tuning"
                   ) -> tuple[Records, Records | None, DataReport]:
    """Train and validation records for a ``TrainConfig`` (conversations, or the kinds a
    stage ``accept``s): read, mix, dedupe, split, augment (each step reported). Every stage is
    an Arrow table in ``workdir`` or a selection of rows of one, so the data never has to fit
    in memory."""
    from unitune.data.augment import iter_augment
    from unitune.data.mixing import Source, dedupe, mix, split

    report = DataReport()

    def read(kind: str, i: int, spec) -> Records:
        records = read_source(spec.path, spec.format or cfg.data_format, cfg.skip_invalid,
                              report.invalid, cfg.data_dir, workdir / f"{kind}-{i}.arrow",
                              progress, accept, purpose)
        if not records:
            raise UserError(f"data '{spec.path}': no usable records")
        return records

    sources = [Source(spec.path, read("source", i, spec), spec.weight, spec.count)
               for i, spec in enumerate(cfg.data)]
    if any(s.weight is not None or s.count is not None for s in sources) or len(sources) > 1:
        train, report.sources = mix(sources, cfg.seed, cfg.mix_total)
    else:
        train = sources[0].records
        report.sources = {sources[0].name: {"available": len(train), "taken": len(train),
                                            "repeated": False}}
    if cfg.dedupe:
        train, report.duplicates_dropped = dedupe(train)
    validation = [read("validation", i, spec) for i, spec in enumerate(cfg.validation_data)]
    if cfg.validation_split:
        if validation:
            raise UserError("give either validation_data or validation_split, not both")
        train, held_out = split(train, cfg.validation_split, cfg.seed)
        validation = [held_out] if len(held_out) else []
        report.validation_from_split = len(held_out)
    aug = cfg.augment
    if aug.flan_templates or aug.k_shot or aug.cot_suffix:
        train = store.write(iter_augment(train, aug.flan_templates, aug.zero_shot_ratio,
                                         aug.k_shot, aug.cot_suffix, cfg.seed),
                            workdir / "augmented.arrow")
    if report.invalid.count:
        log(f"skipped {report.invalid.count} invalid records (skip_invalid), first: "
            f"{report.invalid.first[0]}")
    return train, Records.concat(validation) if validation else None, report
