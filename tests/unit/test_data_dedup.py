"""Exact and near duplicates among raw-text documents: found (and only those), reported by
`tunery data check` with every member's file:line, and dropped by `data.drop_duplicates`."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunery.cli.main import app
from tunery.config.schema import TrainConfig
from tunery.data.dataset import build_datasets
from tunery.data.dedup import _bands, duplicate_groups

runner = CliRunner()
VOCABULARY = [f"{stem}{n}" for stem in ("river", "stone", "lamp", "cloud", "field", "north") for n in range(200)]


def text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def changed(original: str, every: int, word: str = "changed") -> str:
    """``original`` with one word in ``every`` replaced (a few words edited in a long text)."""
    words = original.split()
    return " ".join(word if i % every == every // 2 else w for i, w in enumerate(words))


def test_exact_duplicates_ignore_whitespace_and_case_only():
    base = "The Quick brown fox.\n\nJumps over   the dog."
    texts = [base, "the quick BROWN fox. jumps over the dog.", base + " Again.", "  " + base.upper() + "\n"]
    assert [(g.kind, g.members) for g in duplicate_groups(texts, "exact")] == [("exact", (0, 1, 3))]


def test_a_few_changed_words_in_a_long_text_are_a_near_duplicate_unrelated_texts_are_not():
    long = text(1)
    edited = changed(long, every=75)  # 4 of 300 words: word 5-gram Jaccard 0.87
    unrelated = [text(seed) for seed in range(2, 40)]  # same vocabulary, different texts
    texts = unrelated[:10] + [long] + unrelated[10:] + [edited]
    groups = duplicate_groups(texts, "near")
    assert [(g.kind, g.members) for g in groups] == [("near", (10, len(texts) - 1))]
    assert duplicate_groups(texts, "exact") == []
    # Heavily edited (one word in five): below the 0.8 threshold, not a duplicate.
    assert duplicate_groups([long, changed(long, every=5)], "near") == []


def test_near_groups_stand_for_exact_groups_and_threshold_is_respected():
    long = text(7)
    texts = [long, text(8), long.upper(), changed(long, every=25)]  # 12 of 300 words: Jaccard 0.66
    at_default = duplicate_groups(texts, "near")
    assert [(g.kind, g.members) for g in at_default] == [("exact", (0, 2))]
    lower = duplicate_groups(texts, "near", threshold=0.5)
    assert [(g.kind, g.members) for g in lower] == [("exact", (0, 2)), ("near", (0, 3))]


def test_banding_is_chosen_below_the_threshold():
    # 16 bands of 8 rows for 0.8: candidate threshold (1/16)**(1/8) = 0.71.
    assert _bands(0.8) == 8 and _bands(0.95) == 16 and _bands(0.5) == 4


def test_five_thousand_documents_take_seconds(capsys):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(20000)]
    texts = [" ".join(rng.choices(words, k=300)) for _ in range(5000)]
    texts += [changed(texts[123], every=100), texts[4567].title()]
    started = time.perf_counter()
    groups = duplicate_groups(texts, "near")
    elapsed = time.perf_counter() - started
    assert [(g.kind, g.members) for g in groups] == [("near", (123, 5000)), ("exact", (4567, 5001))]
    assert elapsed < 20, elapsed  # ~1 s on 2 busy cores; minutes would mean pairwise comparison


def corpus(root: Path) -> tuple[Path, dict[str, str]]:
    base, other = text(11), text(12)
    files = {
        "a.txt": base,
        "b.txt": other,
        "c.md": "  " + base.upper().replace(" ", "\n") + "\n",  # exact duplicate of a.txt
        "d.txt": changed(base, every=100),  # near duplicate of a.txt (3 words changed: Jaccard 0.90)
        "e.txt": text(13),
        "f.txt": changed(other, every=100, word="edited"),  # near duplicate of b.txt
    }
    docs = root / "docs"
    docs.mkdir()
    for name, body in files.items():
        (docs / name).write_text(body, encoding="utf-8")
    return docs, files


@pytest.mark.parametrize(
    "mode, kept, message",
    [
        (False, ["a", "b", "c", "d", "e", "f"], None),
        ("exact", ["a", "b", "d", "e", "f"],
         "data.drop_duplicates: exact: dropped 1 raw text document(s) that are exact duplicates of an earlier "
         "one (1 of 6 training); `tunery data check` lists the groups"),
        ("near", ["a", "b", "e"],
         "data.drop_duplicates: near: dropped 3 raw text document(s) that are exact or near duplicates "
         "(Jaccard >= 0.8) of an earlier one (3 of 6 training); `tunery data check` lists the groups"),
    ],
)
def test_drop_duplicates_keeps_the_first_of_each_group(tmp_path, smol_tokenizer, mode, kept, message):
    docs, files = corpus(tmp_path)
    cfg = TrainConfig(method="cpt", data={"train": [str(docs)], "drop_duplicates": mode, "max_length": 4096})
    data = build_datasets(cfg, smol_tokenizer)
    expected = [smol_tokenizer(files[f"{name}.txt" if name != "c" else "c.md"])["input_ids"] for name in kept]
    assert [row.ids[:-1] for row in data.train] == expected  # each document then EOS
    assert [w for w in data.warnings if "drop_duplicates" in w] == ([message] if message else [])


def test_data_check_lists_each_group_with_every_member(tmp_path):
    docs, _ = corpus(tmp_path)
    result = runner.invoke(app, ["data", "check", str(docs), "--max-length", "4096", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    at = {name: f"{docs / name}:1" for name in ("a.txt", "b.txt", "c.md", "d.txt", "f.txt")}
    assert [(w["file"], w["kind"], w["reason"]) for w in report["warnings"]] == [
        (str(docs / "a.txt"), "duplicate",
         f"2 exact duplicates (the same text after normalising whitespace and case): {at['a.txt']}, "
         f"{at['c.md']}; data.drop_duplicates: exact or near keeps only the first"),
        (str(docs / "a.txt"), "near_duplicate",
         f"2 near duplicates (estimated word 5-gram Jaccard >= 0.8): {at['a.txt']}, {at['d.txt']}; "
         "data.drop_duplicates: near keeps only the first"),
        (str(docs / "b.txt"), "near_duplicate",
         f"2 near duplicates (estimated word 5-gram Jaccard >= 0.8): {at['b.txt']}, {at['f.txt']}; "
         "data.drop_duplicates: near keeps only the first"),
    ]
    stats = report["stats"]
    assert stats["method"] == "cpt"
    assert stats["train"]["files"] == {str(docs): {"format": "text", "examples": 6, "files": 6}}
    assert stats["train"]["duplicates"] == {"exact_groups": 1, "exact_extra": 1, "near_groups": 2,
                                            "near_extra": 2, "near_threshold": 0.8}
    text_report = runner.invoke(app, ["data", "check", str(docs), "--max-length", "4096"]).stdout.splitlines()
    assert text_report[-2] == ("  duplicate documents: 1 exact group (1 beyond the first of each), "
                               "2 near groups (2 beyond the first of each); data.drop_duplicates: exact | near "
                               "drops them")
    assert text_report[-1] == "OK: 0 errors, 3 warnings"
