"""The Alpaca-CoT catalog: the table's rows, lookup, filters, local resolution and display."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unitune.data.catalog import (
    CATALOG,
    HUB_REPO,
    CatalogEntry,
    cache_dir,
    filter_entries,
    format_info,
    format_table,
    get_entry,
    resolve,
)
from unitune.errors import UserError

SPEC = Path(__file__).resolve().parents[2] / "shared" / "SPEC.md"


def test_all_rows_present():
    assert len(CATALOG) == 35
    titles = {e.title for e in CATALOG.values()}
    for title in ("Chain-of-Thought", "GPT4All", "xP3", "belle_cn", "finance_en", "UltraChat",
                  "StackLLaMA", "news_commentary", "ShareChat (ShareGPT)", "COIG (FlagInstruct)"):
        assert title in titles
    for name, entry in CATALOG.items():
        assert entry.name == name
        assert name == name.lower() and " " not in name


def test_spot_checks_against_spec():
    alpaca = CATALOG["alpaca"]
    assert (alpaca.examples, alpaca.lang, alpaca.task, alpaca.gen) == (52_002, ("EN",), ("MT",),
                                                                        ("SI",))
    assert alpaca.hub_repo == "QingyiSi/Alpaca-CoT"
    assert alpaca.hub_folder == "alpaca"

    belle = CATALOG["belle_cn"]
    assert set(belle.task) == {"TS", "MT"}
    assert belle.examples == 1_079_517 and belle.lang == ("CN",)

    assert CATALOG["xp3"].examples == 78_883_588
    assert CATALOG["xp3"].lang == ("ML",)
    gaokao = CATALOG["gaokao"]
    assert (gaokao.examples, gaokao.lang, gaokao.hub_folder) == (2_785, ("CN",), "GAOKAO")

    cot = CATALOG["cot"]
    assert cot.title == "Chain-of-Thought" and cot.lang == ("EN", "CN") and cot.gen == ("HG",)
    assert cot.examples == 74_771

    ultra = CATALOG["ultrachat"]
    assert ultra.task == () and ultra.gen == () and ultra.examples == 28_247_446

    finance = CATALOG["finance_en"]
    assert finance.hub_folder == "" and finance.hub_repo == HUB_REPO

    stack = CATALOG["stackllama"]
    assert stack.examples is None and stack.hub_folder is None and stack.hub_repo is None

    assert CATALOG["code_alpaca"].hub_folder == "CodeAlpaca"
    assert CATALOG["alpaca_gpt4"].hub_folder == "alpacaGPT4"
    assert CATALOG["hh_rlhf"].hub_folder == "hh-rlhf"


def test_tags_are_from_the_vocabularies():
    for e in CATALOG.values():
        assert e.lang and set(e.lang) <= {"EN", "CN", "ML"}, e.name
        assert set(e.task) <= {"MT", "TS"}, e.name
        assert set(e.gen) <= {"HG", "SI", "MIX", "COL"}, e.name
        if e.hub_folder is not None:
            assert e.hub_repo == HUB_REPO, e.name


def _spec_rows() -> list[list[str]]:
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("| dataset | examples |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        line = line.strip()
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_catalog_matches_spec_table_exactly(shared_data):
    rows = _spec_rows()
    assert len(rows) == 35
    by_title = {e.title: e for e in CATALOG.values()}
    for title, examples, lang, task, gen, content, source, folder in rows:
        e = by_title[title]
        want_n = None if examples == "(todo)" else int(examples.replace(",", ""))
        assert e.examples == want_n, title

        def tags(s: str) -> tuple[str, ...]:
            return () if s == "-" else tuple(s.split("/"))

        assert (e.lang, e.task, e.gen) == (tags(lang), tags(task), tags(gen)), title
        assert (e.content, e.source) == (content, source), title
        want_folder = {"(repo root)": "", "-": None}.get(folder, folder)
        assert e.hub_folder == want_folder, title


def test_filter_by_language():
    cn = filter_entries(lang="cn")
    assert cn and all("CN" in e.lang for e in cn)
    assert {e.name for e in cn} == {e.name for e in CATALOG.values() if "CN" in e.lang}
    assert "belle_cn" in {e.name for e in cn} and "alpaca" not in {e.name for e in cn}
    assert len(filter_entries()) == 35


def test_combined_filters():
    hits = filter_entries(lang="EN", task="TS", gen="HG")
    assert [e.name for e in hits] == ["dolly"]
    hits = filter_entries(lang="CN", gen="SI")
    assert {e.name for e in hits} == {"belle_cn", "instruction_wild", "alpaca_gpt4", "moss"}
    assert all("TS" in e.task for e in filter_entries(task="ts"))
    assert "belle_cn" in {e.name for e in filter_entries(task="TS")}
    assert "belle_cn" in {e.name for e in filter_entries(task="MT")}


@pytest.mark.parametrize("kwargs, kind, value", [
    ({"lang": "FR"}, "lang", "FR"),
    ({"task": "XX"}, "task", "XX"),
    ({"gen": "human"}, "gen", "human"),
])
def test_invalid_filter_tag(kwargs, kind, value):
    with pytest.raises(UserError) as err:
        filter_entries(**kwargs)
    msg = str(err.value)
    assert kind in msg and value in msg
    allowed = {"lang": ["EN", "CN", "ML"], "task": ["MT", "TS"],
               "gen": ["HG", "SI", "MIX", "COL"]}[kind]
    assert all(a in msg for a in allowed)


def test_get_entry_by_alias_case_and_folder():
    assert get_entry("alpaca").name == "alpaca"
    assert get_entry("ALPACA").name == "alpaca"
    assert get_entry("chain-of-thought").name == "cot"
    assert get_entry("Chain-of-Thought").name == "cot"
    assert get_entry("belle").name == "belle_cn"
    assert get_entry("CodeAlpaca").name == "code_alpaca"  # hub folder
    assert get_entry("hh-rlhf").name == "hh_rlhf"
    assert get_entry("alpacaGPT4").name == "alpaca_gpt4"
    assert get_entry("instinwild").name == "instruction_wild"
    assert isinstance(get_entry("xP3"), CatalogEntry)


def test_get_entry_unknown_has_hint():
    with pytest.raises(UserError) as err:
        get_entry("alpacca")
    msg = str(err.value)
    assert "'alpacca'" in msg
    assert "did you mean 'alpaca'" in msg
    assert "unitune data list" in msg
    with pytest.raises(UserError, match="unitune data list"):
        get_entry("zzzzzz")


def test_resolve_finds_files(tmp_path):
    folder = tmp_path / "alpaca"
    (folder / "sub").mkdir(parents=True)
    (folder / "alpaca_data.json").write_text("[]", encoding="utf-8")
    (folder / "sub" / "more.jsonl").write_text("", encoding="utf-8")
    (folder / "README.md").write_text("x", encoding="utf-8")
    files = resolve("alpaca", data_dir=tmp_path)
    assert files == [folder / "alpaca_data.json", folder / "sub" / "more.jsonl"]


def test_resolve_uses_hub_folder_name(tmp_path):
    (tmp_path / "Chain-of-Thought").mkdir()
    (tmp_path / "Chain-of-Thought" / "CoT_data.json").write_text("[]", encoding="utf-8")
    assert resolve("cot", data_dir=tmp_path) == [tmp_path / "Chain-of-Thought" / "CoT_data.json"]


def test_resolve_missing_says_what_to_fetch(tmp_path):
    with pytest.raises(UserError) as err:
        resolve("alpaca", data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "QingyiSi/Alpaca-CoT" in msg
    assert str(tmp_path / "alpaca") in msg
    assert "https://huggingface.co/datasets/QingyiSi/Alpaca-CoT/tree/main/alpaca" in msg


def test_resolve_empty_folder_is_an_error(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="no .json or .jsonl"):
        resolve("alpaca", data_dir=tmp_path)


def test_resolve_finance_and_stackllama_messages(tmp_path):
    with pytest.raises(UserError) as err:
        resolve("finance_en", data_dir=tmp_path)
    msg = str(err.value)
    assert "root" in msg and "finance_en" in msg and str(tmp_path / "finance_en") in msg
    with pytest.raises(UserError, match="not published"):
        resolve("stackllama", data_dir=tmp_path)


def test_data_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITUNE_DATA_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "dolly.jsonl").write_text("", encoding="utf-8")
    assert resolve("Dolly") == [tmp_path / "dolly" / "dolly.jsonl"]
    with pytest.raises(UserError) as err:
        resolve("gpt4all")
    assert str(tmp_path / "GPT4all") in str(err.value)


def test_cache_dir_defaults_under_unitune_home(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("UNITUNE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "data"
    with pytest.raises(UserError) as err:
        resolve("alpaca")
    assert str(tmp_path / "data" / "alpaca") in str(err.value)
    assert "UNITUNE_DATA_DIR" in str(err.value)


def test_format_table():
    entries = [CATALOG["alpaca"], CATALOG["xp3"], CATALOG["stackllama"], CATALOG["camel"]]
    text = format_table(entries)
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["name", "examples", "lang", "task", "gen", "content"]
    assert "52,002" in lines[1] and "78,883,588" in lines[2] and "todo" in lines[3]
    # columns are aligned: the lang column starts at the same offset on every line
    starts = {line.index(tag) for line, tag in zip(lines[1:], ["EN", "ML", "EN", "EN"],
                                                      strict=True)}
    assert len(starts) == 1
    assert starts == {lines[0].index("lang")}
    assert CATALOG["camel"].content not in text  # > 50 chars, truncated
    assert re.search(r"\.\.\.$", lines[4])
    assert all(len(line) < 120 for line in lines)


def test_format_info_downloaded_or_not(tmp_path):
    info = format_info(CATALOG["belle_cn"], data_dir=tmp_path)
    for piece in ("belle_cn", "1,079,517", "TS", "MT", "CN", "SI", "text-davinci-003",
                  "belle", "QingyiSi/Alpaca-CoT", "not downloaded", str(tmp_path / "belle_cn")):
        assert piece in info, piece
    (tmp_path / "belle_cn").mkdir()
    (tmp_path / "belle_cn" / "belle.json").write_text("[]", encoding="utf-8")
    info = format_info(CATALOG["belle_cn"], data_dir=tmp_path)
    assert "not downloaded" not in info
    assert "downloaded" in info and "belle.json" in info
