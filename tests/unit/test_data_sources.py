"""Folders as data sources: which files are read (include, exclude, hidden folders), in what order,
and every bad file reported at once with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.config.load import load_config
from tunery.config.schema import TrainConfig
from tunery.data.dataset import build_datasets, load_examples
from tunery.data.sources import expand, matches
from tunery.errors import TuneryError


def put(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def corpus(root: Path) -> Path:
    """A folder as a user keeps notes: nested folders, a hidden .git, drafts, other file types."""
    docs = root / "docs"
    put(docs, "b.txt", "Bravo text.\nSecond line.\n")
    put(docs, "a.md", "# Alpha\n\nSome *markdown*.")
    put(docs, "guide/c.txt", "Charlie.")
    put(docs, "guide/deep/d.md", "Delta.")
    put(docs, "drafts/e.txt", "Echo draft.")
    put(docs, ".git/HEAD.txt", "ref: refs/heads/main")
    put(docs, "guide/.cache/f.txt", "hidden folder inside")
    put(docs, ".hidden.txt", "hidden file")
    put(docs, "notes.rst", "not a default match")
    put(docs, "records.jsonl", json.dumps({"text": "a record"}) + "\n")
    return docs


def test_a_folder_is_every_txt_and_md_file_in_sorted_path_order(tmp_path):
    docs = corpus(tmp_path)
    examples, problems = load_examples([str(docs)])
    assert problems == []
    assert [(Path(e.source).relative_to(docs).as_posix(), e.line) for e in examples] == [
        ("a.md", 1), ("b.txt", 1), ("drafts/e.txt", 1), ("guide/c.txt", 1), ("guide/deep/d.md", 1),
    ]
    # The whole file, byte for byte, as one raw-text document.
    assert examples[1].text == "Bravo text.\nSecond line.\n" and examples[1].messages is None
    assert examples[0].source == str(docs / "a.md")


def test_include_and_exclude_are_globs_on_the_relative_path(tmp_path):
    docs = corpus(tmp_path)
    examples, problems = load_examples([str(docs)], include=["**/*.txt", "*.rst", "*.jsonl"],
                                       exclude=["drafts/**", "guide/*.txt"])
    assert problems == []
    found = [(Path(e.source).relative_to(docs).as_posix(), e.text) for e in examples]
    # .rst is not a record format: one document; .jsonl is read as records.
    assert found == [("b.txt", "Bravo text.\nSecond line.\n"), ("notes.rst", "not a default match"),
                     ("records.jsonl", "a record")]


def test_glob_rules():
    assert matches("a.txt", ["**/*.txt"]) and matches("x/y/a.txt", ["**/*.txt"])
    assert not matches("x/a.txt", ["*.txt"])  # "*" stays within one folder name
    assert matches("drafts/x/y.md", ["drafts/**"]) and not matches("drafts.md", ["drafts/**"])
    assert matches("b1.txt", ["b?.txt"]) and not matches("b12.txt", ["b?.txt"])
    assert matches("b.txt", ["[!a].txt"]) and not matches("a.txt", ["[!a].txt"])


def test_empty_and_non_utf8_files_are_all_reported_in_one_error(tmp_path, smol_tokenizer):
    docs = tmp_path / "docs"
    put(docs, "good.txt", "Fine text.")
    put(docs, "empty.txt", "")
    put(docs, "blank.md", "  \n\t\n")
    put(docs, "sub/latin.txt", "first line\ncaf\xe9 au lait\n".encode("latin-1"))
    put(docs, "sub/two.txt", b"\xff\nok\n\xfe\n")
    cfg = TrainConfig(method="cpt", data={"train": [str(docs)]})
    with pytest.raises(TuneryError) as info:
        build_datasets(cfg, smol_tokenizer)
    lines = info.value.what.splitlines()
    assert lines[0] == f"4 problems in the data ({docs / 'blank.md'}, {docs / 'empty.txt'}, " \
                       f"{docs / 'sub/latin.txt'}, {docs / 'sub/two.txt'}):"
    assert lines[1:] == [
        f"{docs / 'blank.md'}: the file is blank (only whitespace): a document needs text",
        f"{docs / 'empty.txt'}: the file is empty: a document needs text",
        # "first line\n" is 11 bytes, "caf" 3 more: the bad byte is byte 14 of the file.
        f"{docs / 'sub/latin.txt'}:2: the file is not UTF-8 text: invalid continuation byte at byte 14 "
        "of the file (column 4)",
        f"{docs / 'sub/two.txt'}:1: the file is not UTF-8 text: invalid start byte at byte 0 of the file "
        "(column 1); 1 more line(s) hold bytes that are not UTF-8",
    ]


def test_a_folder_with_no_matching_file_names_the_folder_and_globs(tmp_path):
    docs = tmp_path / "docs"
    put(docs, ".git/a.txt", "hidden")
    put(docs, "data.csv", "text\nhello\n")
    sources, problems = expand(str(docs), ["**/*.txt", "**/*.md"], ["x/**"])
    assert sources == []
    assert [p.format() for p in problems] == [
        f"{docs}: the folder holds no file matching include ['**/*.txt', '**/*.md'], exclude ['x/**'] "
        "(hidden files and folders are skipped); set data.include / data.exclude, or name the files"
    ]


def test_a_single_txt_or_md_file_is_one_document_whatever_the_format(tmp_path):
    note = put(tmp_path, "note.md", '{"messages": "looks like JSON, is a document"}')
    examples, problems = load_examples([str(note)], fmt="messages")
    assert problems == []
    assert [(e.source, e.line, e.text) for e in examples] == [
        (str(note), 1, '{"messages": "looks like JSON, is a document"}')
    ]


def test_folders_in_a_yaml_config_are_relative_to_the_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    corpus(project)
    put(project, "held/x.txt", "Held out.")
    config = put(project, "configs/cpt.yaml",
                 "method: cpt\ndata:\n  train: [../docs]\n  validation: [../held/]\n  exclude: ['drafts/**']\n")
    monkeypatch.chdir(tmp_path)  # anywhere else than the config's folder
    cfg = load_config(config).config
    assert cfg.data.train == [str(project / "docs")] and cfg.data.validation == [str(project / "held")]
    train, _ = load_examples(cfg.data.train, include=cfg.data.include, exclude=cfg.data.exclude)
    assert [Path(e.source).name for e in train] == ["a.md", "b.txt", "c.txt", "d.md"]


def test_the_rendered_data_cache_key_follows_the_files_of_a_folder(tmp_path, smol_tokenizer):
    from tunery.data.token_cache import cache_key

    docs = corpus(tmp_path)
    cfg = TrainConfig(method="cpt", data={"train": [str(docs)]})
    keys = [cache_key(cfg, smol_tokenizer)]
    put(docs, "guide/new.txt", "A new note.")  # a file added
    keys.append(cache_key(cfg, smol_tokenizer))
    put(docs, "guide/new.txt", "A new note, edited.")  # a file edited
    keys.append(cache_key(cfg, smol_tokenizer))
    put(docs, ".git/other.txt", "hidden")  # a file that is not read changes nothing
    keys.append(cache_key(cfg, smol_tokenizer))
    cfg.data.exclude = ["guide/**"]  # another selection
    keys.append(cache_key(cfg, smol_tokenizer))
    cfg.data.drop_duplicates = "near"
    keys.append(cache_key(cfg, smol_tokenizer))
    assert len(set(keys)) == 5 and keys[2] == keys[3]


def test_data_check_takes_a_folder_with_include_and_exclude(tmp_path):
    from typer.testing import CliRunner

    from tunery.cli.main import app

    docs = corpus(tmp_path)
    put(docs, "empty.txt", "")
    args = ["data", "check", str(docs), "--include", "**/*.txt", "--exclude", "drafts/**", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [(e["file"], e["line"], e["kind"]) for e in report["errors"]] == [(str(docs / "empty.txt"), 0, "empty_file")]
    # b.txt and guide/c.txt: not the .md files, not drafts/, not the hidden ones.
    assert report["stats"]["method"] == "cpt"
    assert report["stats"]["train"]["files"] == {str(docs): {"format": "text", "examples": 2, "files": 3}}
