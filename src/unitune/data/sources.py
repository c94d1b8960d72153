"""From what the user named (files, catalog names, hub dataset ids) to train/validation records.

Owns resolving each data entry of a config, reading it, mixing the sources by weight or count,
de-duplication, the train/validation split and augmentation, in that order, and the report of
what each step did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unitune.data import catalog
from unitune.data.readers import read_conversations, to_record
from unitune.data.schema import Conversation
from unitune.errors import UserError

_DATA_SUFFIXES = (".json", ".jsonl", ".txt")


@dataclass
class DataReport:
    sources: dict = field(default_factory=dict)
    skipped_invalid: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0
    validation_from_split: int = 0

    def as_dict(self) -> dict:
        return {"sources": self.sources, "skipped_invalid": self.skipped_invalid,
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


def read_hub_dataset(name: str, fmt: str, split: str = "train") -> list[Conversation]:
    """Rows of a Hugging Face hub dataset (needs ``datasets`` and network or its cache)."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"data '{name}' is not a local file or a catalog name; as a hub dataset "
                        "id it needs the 'datasets' package: pip install 'unitune[hub]'") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # hub errors come in many types; all mean "could not load"
        raise UserError(f"cannot load hub dataset '{name}' (split {split}): "
                        f"{str(exc).splitlines()[0]}") from None
    from unitune.data.readers import detect_format

    out = []
    for i, row in enumerate(rows):
        row_fmt = fmt if fmt != "auto" else detect_format(row)
        if row_fmt is None:
            raise UserError(f"{name}:{i}: cannot tell the format from the fields "
                            f"({', '.join(sorted(row))}); set the data format explicitly")
        rec = to_record(row, row_fmt, f"{name}:{i}", name, i)
        if not isinstance(rec, Conversation):
            raise UserError(f"{name}: rows are {row_fmt}; instruction tuning needs conversations")
        out.append(rec)
    return out


def read_source(name: str, fmt: str = "auto", skip_invalid: bool = False,
                problems: list[str] | None = None, data_dir: str | None = None
                ) -> list[Conversation]:
    files = resolve_files(name, data_dir)
    if files is None:
        return read_hub_dataset(name, fmt)
    return read_conversations([str(f) for f in files], fmt, skip_invalid, problems)


def build_datasets(cfg, log=print) -> tuple[list[Conversation], list[Conversation], DataReport]:
    """Train and validation conversations for a ``TrainConfig``: read, mix, dedupe, split,
    augment (each step reported)."""
    from unitune.data.augment import augment
    from unitune.data.mixing import Source, dedupe, mix, split

    report = DataReport()
    sources = []
    for spec in cfg.data:
        records = read_source(spec.path, spec.format or cfg.data_format, cfg.skip_invalid,
                              report.skipped_invalid, cfg.data_dir)
        if not records:
            raise UserError(f"data '{spec.path}': no usable records")
        sources.append(Source(spec.path, records, spec.weight, spec.count))
    if any(s.weight is not None or s.count is not None for s in sources) or len(sources) > 1:
        train, mixed = mix(sources, cfg.seed, cfg.mix_total)
        report.sources = mixed
    else:
        train = list(sources[0].records)
        report.sources = {sources[0].name: {"available": len(train), "taken": len(train),
                                            "repeated": False}}
    if cfg.dedupe:
        train, report.duplicates_dropped = dedupe(train)
    validation: list[Conversation] = []
    for spec in cfg.validation_data:
        validation += read_source(spec.path, spec.format or cfg.data_format, cfg.skip_invalid,
                                  report.skipped_invalid, cfg.data_dir)
    if cfg.validation_split:
        if validation:
            raise UserError("give either validation_data or validation_split, not both")
        train, validation = split(train, cfg.validation_split, cfg.seed)
        report.validation_from_split = len(validation)
    aug = cfg.augment
    if aug.flan_templates or aug.k_shot or aug.cot_suffix:
        train = augment(train, aug.flan_templates, aug.zero_shot_ratio, aug.k_shot,
                        aug.cot_suffix, cfg.seed)
    if report.skipped_invalid:
        log(f"skipped {len(report.skipped_invalid)} invalid records (skip_invalid), first: "
            f"{report.skipped_invalid[0]}")
    return train, validation, report
