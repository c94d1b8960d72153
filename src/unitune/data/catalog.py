"""The catalog of the Alpaca-CoT instruction collections: what each one is and where it lives.

Owns ``CatalogEntry`` (one row of the Alpaca-CoT data table: size, language / task / generation
tags, content, source and its folder in the hub dataset ``QingyiSi/Alpaca-CoT``), the ``CATALOG``
itself, lookup by name / alias / hub folder (``get_entry``), filtering by tag
(``filter_entries``), the local data cache (``cache_dir``: ``$UNITUNE_DATA_DIR``, else
``$UNITUNE_HOME/data``), finding a downloaded collection's files (``resolve``; nothing is ever
downloaded here, a missing collection is a ``UserError`` saying what to fetch and where), and
the text shown by ``unitune data list`` / ``unitune data info`` (``format_table``,
``format_info``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from unitune.errors import UserError, did_you_mean
from unitune.paths import unitune_home

HUB_REPO = "QingyiSi/Alpaca-CoT"

# Tag vocabularies of the Alpaca-CoT table, with what each tag means.
LANGS: dict[str, str] = {"EN": "English", "CN": "Chinese", "ML": "multilingual"}
TASKS: dict[str, str] = {"MT": "multi-task", "TS": "task-specific"}
GENS: dict[str, str] = {
    "HG": "human-generated",
    "SI": "self-instruct (model-generated)",
    "MIX": "mixed human and model generated",
    "COL": "collection of existing datasets",
}
DATA_SUFFIXES = (".json", ".jsonl")
FINANCE_PATTERN = "finance_en*.json"  # finance_en is a file at the hub repo's root, not a folder


@dataclass(frozen=True)
class CatalogEntry:
    """One collection of the Alpaca-CoT data table."""

    name: str  # short lowercase key used on the command line
    title: str  # display name from the table
    examples: int | None  # None where the table says "todo"
    lang: tuple[str, ...]  # among LANGS
    task: tuple[str, ...]  # among TASKS; empty where the table says "-"
    gen: tuple[str, ...]  # among GENS; empty where the table says "-"
    content: str
    source: str
    hub_folder: str | None  # "" = the repo root (finance_en); None = not published
    aliases: tuple[str, ...] = ()

    @property
    def hub_repo(self) -> str | None:
        """The hub dataset that publishes the collection; None where it is not published."""
        return HUB_REPO if self.hub_folder is not None else None

    @property
    def local_folder(self) -> str:
        """The folder name under the data dir: the hub folder, or the name where there is none."""
        return self.hub_folder or self.name

    @property
    def hub_url(self) -> str | None:
        if self.hub_folder is None:
            return None
        base = f"https://huggingface.co/datasets/{self.hub_repo}/tree/main"
        return f"{base}/{self.hub_folder}" if self.hub_folder else base


def _tags(text: str) -> tuple[str, ...]:
    return () if text == "-" else tuple(text.split("/"))


def _e(name: str, title: str, examples: int | None, lang: str, task: str, gen: str, content: str,
       source: str, folder: str | None, aliases: tuple[str, ...] = ()) -> CatalogEntry:
    return CatalogEntry(name=name, title=title, examples=examples, lang=_tags(lang),
                        task=_tags(task), gen=_tags(gen), content=content, source=source,
                        hub_folder=folder, aliases=aliases)


# The rows of the Alpaca-CoT data table, in its order (SPEC.md section 1).
_ENTRIES: tuple[CatalogEntry, ...] = (
    _e("cot", "Chain-of-Thought", 74_771, "EN/CN", "MT", "HG",
       "instructions with CoT reasoning",
       "CoT annotation of existing data (9 FLAN CoT sets)", "Chain-of-Thought",
       ("chain-of-thought", "chain_of_thought")),
    _e("gpt4all", "GPT4All", 806_199, "EN", "MT", "COL",
       "code, stories, dialogs", "distilled from gpt-3.5-turbo", "GPT4all"),
    _e("gpteacher", "GPTeacher", 29_013, "EN", "MT", "SI",
       "general, roleplay, toolformer", "GPT-4 & toolformer", "GPTeacher"),
    _e("guanaco", "Guanaco", 534_610, "ML", "MT", "SI",
       "various linguistic tasks", "text-davinci-003", "Guanaco"),
    _e("hc3", "HC3", 37_175, "EN/CN", "TS", "MIX",
       "dialogue evaluation", "human or ChatGPT", "HC3"),
    _e("alpaca", "Alpaca", 52_002, "EN", "MT", "SI",
       "general instructions", "text-davinci-003", "alpaca"),
    _e("natural_instructions", "Natural Instructions", 5_040_134, "ML", "MT", "COL",
       "diverse NLP tasks", "human-annotated collection", "Natural-Instructions",
       ("ni", "natural-instructions", "super_natural_instructions")),
    _e("belle_cn", "belle_cn", 1_079_517, "CN", "TS/MT", "SI",
       "general, math reasoning, dialogue", "text-davinci-003", "belle_cn", ("belle",)),
    _e("instruction_wild", "InstructionWild", 52_191, "EN/CN", "MT", "SI",
       "generation, open QA, brainstorm", "text-davinci-003", "instinwild",
       ("instructionwild", "instinwild")),
    _e("prosocial_dialog", "Prosocial Dialog", 165_681, "EN", "TS", "MIX",
       "dialogue", "GPT-3 rewrites + human feedback", "prosocial-dialog", ("prosocial",)),
    _e("finance_en", "finance_en", 68_912, "EN", "TS", "COL",
       "finance QA", "GPT-3.5", "", ("finance",)),
    _e("xp3", "xP3", 78_883_588, "ML", "MT", "COL",
       "prompts & datasets in 46 languages, 16 tasks", "human-annotated collection", "xP3"),
    _e("firefly", "firefly", 1_649_398, "CN", "MT", "COL",
       "23 NLP tasks", "human-annotated collection", "firefly"),
    _e("instruct", "instruct", 888_969, "EN", "MT", "COL",
       "augmented GPT4All, Alpaca, open Meta sets", "AllenAI NLP tools", "instruct"),
    _e("code_alpaca", "Code Alpaca", 20_022, "EN", "TS", "SI",
       "code generation, editing, optimisation", "text-davinci-003", "CodeAlpaca",
       ("codealpaca",)),
    _e("alpaca_gpt4", "Alpaca_GPT4", 52_002, "EN/CN", "MT", "SI",
       "general instructions", "GPT-4 on Alpaca prompts", "alpacaGPT4",
       ("alpacagpt4", "gpt4_alpaca", "gpt4alpaca")),
    _e("webgpt", "WebGPT", 18_994, "EN", "TS", "MIX",
       "retrieval QA, two answers, better one chosen", "fine-tuned GPT-3", "webGPT"),
    _e("dolly", "Dolly 2.0", 15_015, "EN", "TS", "HG",
       "closed QA, summarisation, ... (Wikipedia refs)", "human", "dolly",
       ("dolly2", "dolly-2.0", "dolly_2.0")),
    _e("baize", "Baize", 653_699, "EN", "MT", "COL",
       "Alpaca, Quora, StackOverflow, MedQuAD dialogs", "collection", "baize"),
    _e("hh_rlhf", "hh-rlhf", 284_517, "EN", "TS", "MIX",
       "dialogue", "human vs RLHF models", "hh-rlhf", ("hh", "hhrlhf")),
    _e("oig", "OIG (part)", 49_237, "EN", "MT", "COL",
       "QA and other tasks", "augmentation + collection", "OIG"),
    _e("gaokao", "GAOKAO", 2_785, "CN", "MT", "COL",
       "exam multiple choice, cloze, open questions", "human", "GAOKAO"),
    _e("camel", "CAMEL", 760_620, "EN", "MT", "SI",
       "role-play dialogs: society, code, math, physics, chemistry, biology", "gpt-3.5-turbo",
       "camel"),
    _e("flan_muffin", "FLAN-Muffin", 1_764_800, "EN", "MT", "COL",
       "60 NLP tasks", "human-annotated collection", "FLAN-Muffin", ("muffin", "flan")),
    _e("coig", "COIG (FlagInstruct)", 298_428, "CN", "MT", "COL",
       "exams, translated, value alignment, counterfactual multi-round chat",
       "tools + manual checks", "COIG", ("flaginstruct",)),
    _e("gpt4tools", "GPT4Tools", 71_446, "EN", "MT", "SI",
       "tool-use instructions", "gpt-3.5-turbo", "gpt4tools"),
    _e("sharegpt", "ShareChat (ShareGPT)", 1_663_241, "EN", "MT", "MIX",
       "real user/ChatGPT conversations", "crowdsourced", "ShareGPT", ("sharechat",)),
    _e("auto_cot", "Auto CoT", 5_816, "EN", "MT", "COL",
       "arithmetic, commonsense, symbolic, logic reasoning", "collection", "Auto-CoT",
       ("autocot",)),
    _e("moss", "MOSS", 1_583_595, "EN/CN", "TS", "SI",
       "general instructions", "text-davinci-003", "MOSS"),
    _e("ultrachat", "UltraChat", 28_247_446, "EN", "-", "-",
       "world questions, writing, assistance on materials", "two gpt-3.5-turbo", "ultrachat"),
    _e("chinese_medical", "Chinese-medical", 792_099, "CN", "TS", "COL",
       "medical advice questions", "crawled", "Chinese-medical", ("medical",)),
    _e("csl", "CSL", 396_206, "CN", "MT", "COL",
       "paper text generation, keywords, summary, classification", "crawled", "CSL"),
    _e("pclue", "pCLUE", 1_200_705, "CN", "MT", "COL",
       "general instructions", "-", "pCLUE"),
    _e("news_commentary", "news_commentary", 252_776, "CN", "TS", "COL",
       "translation", "-", "news_commentary"),
    _e("stackllama", "StackLLaMA", None, "EN", "-", "-", "-", "-", None, ("stack_llama",)),
)

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _ENTRIES}


def _norm(name: str) -> str:
    """Lookup key: case-insensitive, with '-', ' ' and '_' treated alike."""
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def _build_index() -> dict[str, CatalogEntry]:
    index: dict[str, CatalogEntry] = {}
    for entry in _ENTRIES:
        keys = {entry.name, entry.title, *entry.aliases}
        if entry.hub_folder:
            keys.add(entry.hub_folder)
        for key in keys:
            k = _norm(key)
            other = index.setdefault(k, entry)
            if other is not entry:  # pragma: no cover - a bug in the table above
                raise AssertionError(f"catalog key {k!r} names both {other.name} and {entry.name}")
    return index


_INDEX = _build_index()


def get_entry(name: str) -> CatalogEntry:
    """The entry for a name, alias, title or hub folder (case-insensitive; '-' == '_')."""
    entry = _INDEX.get(_norm(name))
    if entry is None:
        key = _norm(name)
        hint = did_you_mean(key, CATALOG) or did_you_mean(key, _INDEX)
        raise UserError(f"unknown dataset '{name}'{hint}; `unitune data list` shows all names")
    return entry


def _check_tag(kind: str, value: str, allowed: dict[str, str]) -> str:
    tag = str(value).strip().upper()
    if tag not in allowed:
        raise UserError(f"invalid {kind} filter '{value}': allowed values are "
                        f"{', '.join(allowed)}")
    return tag


def filter_entries(lang: str | None = None, task: str | None = None,
                   gen: str | None = None) -> list[CatalogEntry]:
    """Entries carrying every given tag (case-insensitive), in table order."""
    want_lang = _check_tag("lang", lang, LANGS) if lang is not None else None
    want_task = _check_tag("task", task, TASKS) if task is not None else None
    want_gen = _check_tag("gen", gen, GENS) if gen is not None else None
    return [e for e in _ENTRIES
            if (want_lang is None or want_lang in e.lang)
            and (want_task is None or want_task in e.task)
            and (want_gen is None or want_gen in e.gen)]


def cache_dir() -> Path:
    """Where downloaded collections live: ``$UNITUNE_DATA_DIR``, else ``$UNITUNE_HOME/data``."""
    env = os.environ.get("UNITUNE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return unitune_home() / "data"


def _data_files(folder: Path) -> list[Path]:
    """The .json / .jsonl files under a folder (recursively, sorted; hidden paths skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _entry(name: str | CatalogEntry) -> CatalogEntry:
    return name if isinstance(name, CatalogEntry) else get_entry(name)


def fetch_hint(entry: CatalogEntry, data_dir: Path | None = None) -> str:
    """One line: what to fetch from the hub and where to put it (or that it is not published)."""
    root = data_dir if data_dir is not None else cache_dir()
    target = root / entry.local_folder
    env_hint = " (or set UNITUNE_DATA_DIR)" if data_dir is None else ""
    if entry.hub_folder is None:
        return (f"dataset '{entry.name}' is not published in the hub dataset {HUB_REPO} yet "
                f"(the collection lists it as todo); put its .json/.jsonl files into "
                f"{target}/ yourself{env_hint}")
    if entry.hub_folder == "":
        return (f"fetch the file '{FINANCE_PATTERN}' at the root of the hub dataset "
                f"{entry.hub_repo} ({entry.hub_url}) into {target}/{env_hint}")
    return (f"fetch the folder '{entry.hub_folder}' of the hub dataset {entry.hub_repo} "
            f"({entry.hub_url}) into {target}/{env_hint}")


def download_command(entry: CatalogEntry, data_dir: Path | None = None) -> str | None:
    """A ``huggingface-cli`` command that puts the collection where ``resolve`` looks."""
    if entry.hub_folder is None:
        return None
    root = data_dir if data_dir is not None else cache_dir()
    if entry.hub_folder == "":
        return (f"huggingface-cli download {entry.hub_repo} --repo-type dataset "
                f"--include '{FINANCE_PATTERN}' --local-dir {root / entry.local_folder}")
    return (f"huggingface-cli download {entry.hub_repo} --repo-type dataset "
            f"--include '{entry.hub_folder}/*' --local-dir {root}")


def resolve(name: str | CatalogEntry, data_dir: Path | None = None) -> list[Path]:
    """The local .json/.jsonl files of a catalog collection (sorted).

    Looks in ``<data_dir or cache_dir()>/<hub folder or name>/``; when nothing is there, raises
    a one-line ``UserError`` saying what to fetch and where to put it.
    """
    entry = _entry(name)
    root = Path(data_dir) if data_dir is not None else None
    folder = (root if root is not None else cache_dir()) / entry.local_folder
    files = _data_files(folder)
    if files:
        return files
    if entry.hub_folder is None:
        raise UserError(fetch_hint(entry, root))
    why = "is not downloaded" if not folder.is_dir() else \
        f"is not downloaded ({folder}/ has no .json or .jsonl file)"
    raise UserError(f"dataset '{entry.name}' {why}: {fetch_hint(entry, root)}")


def _fmt_examples(n: int | None) -> str:
    return "todo" if n is None else f"{n:,}"


def _fmt_tags(tags: tuple[str, ...]) -> str:
    return "/".join(tags) if tags else "-"


def _truncate(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def format_table(entries: list[CatalogEntry] | tuple[CatalogEntry, ...]) -> str:
    """An aligned text table: name, examples, lang, task, gen, content."""
    header = ("name", "examples", "lang", "task", "gen", "content")
    rows = [(e.name, _fmt_examples(e.examples), _fmt_tags(e.lang), _fmt_tags(e.task),
             _fmt_tags(e.gen), _truncate(e.content)) for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                 *(c.ljust(w) for c, w in zip(row[2:5], widths[2:5], strict=True)), row[5]]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _describe(tags: tuple[str, ...], meaning: dict[str, str]) -> str:
    return ", ".join(f"{t} ({meaning[t]})" for t in tags) if tags else "-"


def format_info(entry: CatalogEntry, data_dir: Path | None = None) -> str:
    """Every field of an entry, and whether it is downloaded (where) or what to fetch."""
    root = Path(data_dir) if data_dir is not None else None
    folder = (root if root is not None else cache_dir()) / entry.local_folder
    if entry.hub_repo is None or entry.hub_folder is None:
        hub = "not published in the collection yet"
    elif entry.hub_folder == "":
        hub = f"{entry.hub_repo}, file '{FINANCE_PATTERN}' at the repo root ({entry.hub_url})"
    else:
        hub = f"{entry.hub_repo}, folder '{entry.hub_folder}' ({entry.hub_url})"
    lines = [
        f"name:       {entry.name}",
        f"title:      {entry.title}",
        f"aliases:    {', '.join(entry.aliases) if entry.aliases else '-'}",
        f"examples:   {_fmt_examples(entry.examples)}",
        f"language:   {_describe(entry.lang, LANGS)}",
        f"task:       {_describe(entry.task, TASKS)}",
        f"generation: {_describe(entry.gen, GENS)}",
        f"content:    {entry.content}",
        f"source:     {entry.source}",
        f"hub:        {hub}",
    ]
    files = _data_files(folder)
    if files:
        lines.append(f"local:      downloaded, {len(files)} file(s) in {folder}/")
        lines.extend(f"              {p.relative_to(folder)}" for p in files)
    else:
        lines.append(f"local:      not downloaded; {fetch_hint(entry, root)}")
        cmd = download_command(entry, root)
        if cmd:
            lines.append(f"            e.g. {cmd}")
    return "\n".join(lines)
