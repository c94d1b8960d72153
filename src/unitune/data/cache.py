"""Prepared (tokenised) training data, cached by what it was made from.

Owns the cache key, a digest of everything that shapes the rows a model trains on (the stage,
the content of every data file, the config's data keys, the tokenizer's vocabulary and special
tokens, the template, ``max_length``, masking), the entries (``$UNITUNE_HOME/cache/data/<key>/``:
``train/`` and ``validation/`` saved by ``datasets``, then ``report.json``, written last), and
how several processes share them: the local main process prepares an entry in a temporary
folder and renames it into place while the others wait for it on disk, then every process
memory-maps the same files. A resumed run, a rerun with another method or learning rate, and
every rank of a multi-process run reuse one entry. Hub datasets are keyed by their id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from unitune import distributed
from unitune.data.encode import progress_bars
from unitune.data.sources import resolve_files
from unitune.data.templates import Template
from unitune.paths import unitune_home

CACHE_VERSION = 2  # raise when the same key would encode to different rows
DATA_KEYS = ("stage", "data", "validation_data", "data_format", "data_dir", "validation_split",
             "mix_total", "dedupe", "augment", "masking", "max_length", "seed", "skip_invalid")


@dataclass
class Prepared:
    train: datasets.Dataset
    validation: datasets.Dataset | None
    report: dict  # what run.json records about the data


def cache_root() -> Path:
    return unitune_home() / "cache" / "data"


def file_sha256(path: Path, whole_up_to: int | None = None) -> str:
    """sha256 of a file's content; a file larger than ``whole_up_to`` bytes by its first and
    last 16 MiB (with its size known elsewhere: cheap enough for checkpoints of any size)."""
    sha = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if whole_up_to is not None and size > whole_up_to:
            sha.update(f.read(16 << 20))
            f.seek(size - (16 << 20))
            sha.update(f.read())
        else:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


class Digests:
    """sha256 of files' content, remembered (``digests.json``) by (path, size, mtime) so an
    unchanged file is read once; the memo is read once and written once per use."""

    def __init__(self):
        self.path = cache_root() / "digests.json"
        try:
            self.memo = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def __call__(self, path: Path) -> str:
        path = path.resolve()
        stat = path.stat()
        seen = self.memo.get(str(path))
        if seen and seen[:2] == [stat.st_size, stat.st_mtime_ns]:
            return seen[2]
        digest = file_sha256(path)
        self.memo[str(path)] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        memo = {k: v for k, v in self.memo.items() if Path(k).exists()}  # (gone: forgotten)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"digests.{socket.gethostname()}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, self.path)


def tokenizer_digest(tokenizer) -> str:
    """A digest of what a tokenizer does: its vocabulary, merges, normalisation and special
    tokens (not where it was loaded from)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else \
        json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps([type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token,
                           tokenizer.pad_token, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256((body + specials).encode()).hexdigest()


def data_key(cfg, tokenizer, template: Template, seq2seq: bool) -> str:
    """The digest that names the prepared data of ``cfg``."""
    config = cfg.model_dump(mode="json")
    digest = Digests()
    files = {}
    for spec in [*cfg.data, *cfg.validation_data]:
        found = resolve_files(spec.path, cfg.data_dir)
        files[spec.path] = [digest(f) for f in found] if found is not None else "hub"
    if cfg.augment.flan_templates:
        files["flan_templates"] = digest(Path(cfg.augment.flan_templates))
    digest.save()
    parts = {"version": CACHE_VERSION, "config": {k: config[k] for k in DATA_KEYS},
             "files": files, "tokenizer": tokenizer_digest(tokenizer),
             "template": asdict(template), "seq2seq": seq2seq}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


Build = Callable[[Path], tuple[datasets.Dataset, datasets.Dataset | None, dict, list[str]]]


def prepared(key: str, build: Build, log=print) -> Prepared:
    """The entry ``key``: reused when it exists; else made by ``build(workdir)`` (which returns
    train rows, validation rows or None, the report and its log lines) on the local main
    process while the other processes wait for it."""
    entry = cache_root() / key
    done = entry / "report.json"
    reused = done.exists()
    distributed.build_once(entry, done.name, "preparing the data",
                           lambda tmp: _make(tmp, build))
    saved = json.loads(done.read_text(encoding="utf-8"))
    train = datasets.load_from_disk(str(entry / "train"))
    validation = datasets.load_from_disk(str(entry / "validation")) \
        if (entry / "validation").exists() else None
    for line in saved["log"]:
        log(line)
    if reused:
        log(f"data: reusing the prepared data in {entry}")
    return Prepared(train, validation, saved["report"])


def _make(tmp: Path, build: Build) -> None:
    train, validation, report, lines = build(tmp / "work")
    with progress_bars(False):
        train.save_to_disk(str(tmp / "train"))
        if validation is not None:
            validation.save_to_disk(str(tmp / "validation"))
    del train, validation  # (their files in work/ may now go)
    shutil.rmtree(tmp / "work", ignore_errors=True)
    (tmp / "report.json").write_text(json.dumps({"report": report, "log": lines}),
                                     encoding="utf-8")
