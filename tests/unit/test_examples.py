"""Every shipped example is valid as it stands: configs load, named data exists and passes the data
check, and generated data sets are exactly what their generator writes."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from tunery.config.load import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.yaml"))
GENERATORS = sorted(EXAMPLES.rglob("make_data.py"))


def _ids(paths):
    return [str(p.relative_to(EXAMPLES)) for p in paths]


def test_examples_are_found():
    assert EXAMPLES / "quickstart" / "config.yaml" in CONFIGS
    assert EXAMPLES / "quickstart" / "make_data.py" in GENERATORS
    assert {EXAMPLES / "rl" / "rl.yaml", EXAMPLES / "rl" / "sft.yaml"} <= set(CONFIGS)
    assert EXAMPLES / "rl" / "make_data.py" in GENERATORS


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_config_loads_and_names_existing_data(config):
    cfg = load_config(config).config
    files = cfg.data.train + cfg.data.validation
    assert files, f"{config} names no data"
    for name in files:
        assert Path(name).is_file(), f"{config} names {name}, which does not exist"


PREFERENCE_METHODS = {"dpo": "pairs", "orpo": "pairs", "reward": "pairs", "kto": "feedback"}


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_config_data_passes_the_data_check(config, capsys):
    from tunery.cli.data import run_check

    cfg = load_config(config).config
    if cfg.method == "rl":  # prompt records: checked by the loader method rl uses (the data check lints sft/cpt)
        from tunery.data.preference import load_records

        records, problems = load_records(cfg.data.train + cfg.data.validation, "prompts")
        assert records and problems == [], problems
        return
    if cfg.method in PREFERENCE_METHODS:  # `tunery data check` lints conversations; training reads these
        return _check_preference_data(cfg)
    code = run_check(
        [Path(p) for p in cfg.data.train], cfg.base_model, [Path(p) for p in cfg.data.validation],
        cfg.data.max_length, cfg.data.train_on, cfg.data.format, as_json=True, method=cfg.method,
    )
    assert code == 0, capsys.readouterr().out


def _check_preference_data(cfg) -> None:
    """Every record converts, and every pair renders within max_length with both answers whole, as
    training loads them."""
    from tunery.data.preference import build_pair_datasets
    from tunery.models.load import load_tokenizer

    data = build_pair_datasets(cfg, load_tokenizer(cfg.base_model))
    assert data.warnings == [] and len(data.train) + len(data.val) == sum(
        1 for path in cfg.data.train for _ in open(path, encoding="utf-8"))


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("generator", GENERATORS, ids=_ids(GENERATORS))
def test_generated_data_is_reproduced_byte_for_byte(generator, tmp_path):
    script = _load_script(generator)
    made_with = getattr(script, "MADE_WITH", None)  # text read from this Python's own library
    if made_with is not None and sys.version_info[:2] != made_with:
        pytest.skip(f"{generator} reads Python {made_with[0]}.{made_with[1]}'s docstrings; this is "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    script.main(["--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written, f"{generator} wrote nothing"
    for name in written:
        shipped = generator.parent / name
        assert shipped.read_bytes() == (tmp_path / name).read_bytes(), f"{shipped} is stale: rerun {generator}"


def _records(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_quickstart_splits_are_disjoint_and_well_formed():
    train = _records(EXAMPLES / "quickstart" / "train.jsonl")
    heldout = _records(EXAMPLES / "quickstart" / "heldout.jsonl")
    assert (len(train), len(heldout)) == (320, 40)
    requests = lambda rows: {m[1]["content"] for m in rows}  # noqa: E731
    names = lambda rows: {json.loads(m[2]["content"])["name"] for m in rows}  # noqa: E731
    assert len(requests(train)) == 320 and len(requests(heldout)) == 40  # no duplicates
    assert not requests(train) & requests(heldout)
    assert not names(train) & names(heldout)  # no held-out person was seen in training
    for messages in train + heldout:
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        answer = json.loads(messages[2]["content"])
        assert list(answer) == ["name", "city", "nights"]
        assert isinstance(answer["nights"], int) and 1 <= answer["nights"] <= 14
        assert answer["name"] in messages[1]["content"] and answer["city"] in messages[1]["content"]
        # The exact compact shape the task scores: default json separators, no spaces added or lost.
        assert messages[2]["content"] == json.dumps(answer, ensure_ascii=False)


def test_quickstart_demo_runs_the_three_commands_a_user_would(monkeypatch):
    demo = _load_script(EXAMPLES / "quickstart" / "demo.py")
    typed = []
    monkeypatch.setattr(demo, "tunery", lambda *args: typed.append(args) or 0)
    assert demo.main() == 0
    assert [args[:2] for args in typed] == [("data", "check"), ("train", demo.shown(demo.CONFIG)),
                                            ("eval", str(Path("runs") / "quickstart"))]
    assert typed[2][2:] == ("--data", demo.shown(demo.HELDOUT), "--baselines", "zero", "--graders", "exact",
                            "--probe", "none", "--max-new-tokens", "40")
    assert demo.run_dir() == Path("runs") / "quickstart"


def _pairs(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "preference" / name).read_text(encoding="utf-8").splitlines()]


def test_preference_pairs_keep_their_rule_and_held_out_content_is_never_trained_on():
    make_data = _load_script(EXAMPLES / "preference" / "make_data.py")
    train, heldout = _pairs("train.jsonl"), _pairs("heldout.jsonl")
    assert (len(train), len(heldout)) == (320, 200)
    for records in (train, heldout):
        rules = [r["prompt"][0]["content"] for r in records]
        assert {rules.count(text) for text in make_data.RULES.values()} == {len(records) // 4}  # equal shares
        assert len({json.dumps(r) for r in records}) == len(records)
    by_rule = {text: name for name, text in make_data.RULES.items()}
    is_sentence = lambda text: text.endswith(".") and " " in text  # noqa: E731
    for r in train + heldout:
        rule, chosen, rejected = by_rule[r["prompt"][0]["content"]], r["chosen"], r["rejected"]
        short, sentence = (chosen, rejected) if rule == "short" else (rejected, chosen)
        if rule in ("short", "sentence"):  # the same content, as a bare answer or as a sentence
            assert not is_sentence(short) and is_sentence(sentence) and short.lower() in sentence.lower()
            assert sentence[0].isupper() and (short.isdigit() or short in r["prompt"][1]["content"])
        else:  # the same sentence, in the rule's case or in ordinary case
            assert is_sentence(rejected) and rejected[0].isupper() and chosen != rejected
            assert chosen == (rejected.upper() if rule == "upper" else rejected.lower())
    words = lambda records: {w.strip(".?,") for r in records for w in r["prompt"][1]["content"].split()}  # noqa: E731
    held_only = {w for lst in (make_data.NAMES, make_data.CITIES, make_data.THINGS, make_data.COLOURS, make_data.PETS)
                 for w in make_data.split(lst, heldout=True)}
    assert held_only & words(heldout) and not held_only & words(train)  # no held-out person, place or thing trained


def _problem_numbers(prompt: str) -> tuple[int, int]:
    a, b = (int(x) for x in re.findall(r"\d+", prompt))
    return a, b


def test_rl_problems_are_right_disjoint_and_serve_every_method():
    """The word problems of examples/rl: each answer is the problem's sum or difference, the
    demonstration states it, no held-out prompt or name is in training, and the reward of rl.yaml gives
    the demonstration full marks (so SFT and RL chase the same target)."""
    from tunery.graders import parse_graders

    rows = {name: [json.loads(line) for line in (EXAMPLES / "rl" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "heldout")}
    assert (len(rows["train"]), len(rows["heldout"])) == (256, 100)
    prompts = {name: {r["prompt"] for r in records} for name, records in rows.items()}
    assert len(prompts["train"]) == 256 and len(prompts["heldout"]) == 100 and not prompts["train"] & prompts["heldout"]
    names = {name: {r["prompt"].split()[0] for r in records if not r["prompt"].startswith("There")}
             | {r["prompt"].split(". ")[1].split()[0] for r in records if r["prompt"].startswith("There")}
             for name, records in rows.items()}
    assert not names["train"] & names["heldout"]
    cfg = load_config(EXAMPLES / "rl" / "rl.yaml").config
    (reward,) = parse_graders(cfg.rl.graders)
    kinds = set()
    for record in rows["train"] + rows["heldout"]:
        assert set(record) == {"prompt", "completion", "answer"}
        a, b = _problem_numbers(record["prompt"])
        adds = " more" in record["prompt"]
        kinds.add(adds)
        assert int(record["answer"]) == (a + b if adds else a - b) >= 1
        assert re.findall(r"\d+", record["completion"]) == [record["answer"]]  # states the answer, nothing else
        assert reward.score(record["completion"], record["answer"], record) == 1.0
    assert kinds == {True, False}


def test_cpt_documents_are_whole_modules_and_held_out_modules_are_never_trained():
    make_data = _load_script(EXAMPLES / "cpt" / "make_data.py")
    rows = {name: [json.loads(line) for line in (EXAMPLES / "cpt" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "heldout")}
    modules = {name: [r["module"] for r in records] for name, records in rows.items()}
    assert sorted(modules["train"] + modules["heldout"]) == make_data.MODULES
    assert modules["heldout"] == make_data.MODULES[make_data.HELD_OUT_EVERY - 1::make_data.HELD_OUT_EVERY]
    for records in rows.values():
        for r in records:
            assert r["text"].startswith(f"Module {r['module']}") and len(r["text"]) <= make_data.MAX_CHARS
            assert sys.base_prefix not in r["text"] and sys.prefix not in r["text"]  # no path of the machine that wrote it
    trained_text = "\n".join(r["text"] for r in rows["train"])
    assert not any(f"Module {m}\n" in trained_text for m in modules["heldout"])


def test_routing_messages_are_labelled_by_their_template_and_held_out_words_are_never_trained():
    make_data = _load_script(EXAMPLES / "routing" / "make_data.py")
    rows = {name: _records(EXAMPLES / "routing" / f"{name}.jsonl") for name in ("train", "heldout")}
    assert (len(rows["train"]), len(rows["heldout"])) == (240, 80)
    for name, records in rows.items():
        teams = [m[2]["content"] for m in records]
        assert {teams.count(t) for t in make_data.TEMPLATES} == {len(records) // 4}  # balanced
        assert len({m[1]["content"] for m in records}) == len(records)
        held = [w for lst in (make_data.PRODUCTS, make_data.NAMES) for w in make_data.split(lst, heldout=True)]
        text = " ".join(m[1]["content"] for m in records)
        assert any(w in text for w in held) == (name == "heldout")
    def pattern(template: str) -> str:
        return re.escape(template).replace(r"\{product\}", "(.+)").replace(r"\{name\}", "(.+)").replace(
            r"\{amount\}", r"\d+ euros")
    for m in rows["train"] + rows["heldout"]:  # each message is one of its own team's templates
        teams = {team for team, templates in make_data.TEMPLATES.items()
                 if any(re.fullmatch(pattern(t), m[1]["content"]) for t in templates)}
        assert teams == {m[2]["content"]}, m[1]["content"]


def test_intents_are_balanced_and_no_held_out_message_is_a_near_duplicate_of_a_training_one():
    make_data = _load_script(EXAMPLES / "intents" / "make_data.py")
    train, held, confirm, confirm2 = (_records(EXAMPLES / "intents" / f"{name}.jsonl")
                                      for name in ("train", "heldout", "confirm", "confirm2"))
    assert (len(train), len(held), len(confirm), len(confirm2)) == (240, 180, 180, 360)
    for new, earlier_sets in ((confirm, train + held), (confirm2, train + held + confirm)):
        earlier = [make_data.word_set(r[1]["content"]) for r in earlier_sets]
        assert max(max(make_data.jaccard(make_data.word_set(r[1]["content"]), t) for t in earlier)
                   for r in new) < make_data.NEAR_DUPLICATE  # each confirmation set is new to all before it
    for records in (train, held, confirm, confirm2):
        labels = [r[2]["content"] for r in records]
        assert {labels.count(i) for i in make_data.INTENTS} == {len(records) // 6}  # balanced
    trained = [make_data.word_set(r[1]["content"]) for r in train]
    closest = [max(make_data.jaccard(make_data.word_set(r[1]["content"]), t) for t in trained) for r in held]
    assert max(closest) < make_data.NEAR_DUPLICATE == 0.6
    held_only = [w for lst in (make_data.PRODUCTS, make_data.NAMES) for w in make_data.split(lst, heldout=True)]
    train_text = " ".join(r[1]["content"] for r in train)
    assert not [w for w in held_only if re.search(rf"\b{re.escape(w)}\b", train_text)]
    novel = [max(re.split(r"\{\w+\}", p), key=len).strip()  # each phrasing's longest literal part
             for i in make_data.INTENTS for p in make_data.INTENT[i][make_data.TRAINED_PHRASINGS:]]
    assert not [p for p in novel if p.lower() in train_text.lower()]  # held-out-only phrasings stay out of training
    assert sum(any(p.lower() in r[1]["content"].lower() for p in novel) for r in held) > len(held) // 5


def test_rewrite_lines_follow_the_house_style_and_restate_the_note():
    make_data = _load_script(EXAMPLES / "rewrite" / "make_data.py")
    train, held = (_records(EXAMPLES / "rewrite" / f"{name}.jsonl") for name in ("train", "heldout"))
    style = re.compile(r"^(Monday|Tuesday|Wednesday|Thursday|Friday) (\d\d):(\d\d) - ([A-Z][a-z ]+) with (\w+)$")
    for records, heldout in ((train, False), (held, True)):
        for system, note, line in records:
            day, hour, minute, topic, name = style.match(line["content"]).groups()
            text = note["content"].lower()
            assert day.lower() in text and topic.lower() in text and name.lower() in text
            twelve = int(hour) - 12 if int(hour) > 12 else int(hour)
            assert f"{int(hour)}:{minute}" in text or str(twelve) in text  # the note's time, however said
            assert name in make_data.split(make_data.NAMES, heldout) and topic.lower() in make_data.split(
                make_data.TOPICS, heldout)
