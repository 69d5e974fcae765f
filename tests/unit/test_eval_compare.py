"""`tunery compare`: figures and eval scores side by side, and exactly the differing config keys marked."""

from __future__ import annotations

import json

import pytest
import yaml

from eval_helpers import make_run_folder
from tunery.errors import TuneryError
from tunery.eval.compare import compare_runs, flatten, format_compare, render_compare_html


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    a = make_run_folder(tmp_path_factory.mktemp("a"), tiny_model_dir, name="a")
    b = make_run_folder(tmp_path_factory.mktemp("b"), tiny_model_dir, name="b")
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["training"]["lr"] = 0.002
    config["lora"]["rank"] = 8
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    (b / "eval.json").write_text(json.dumps({
        "primary": "exact", "best": "tuned", "n_examples": 4,
        "systems": [{"system": {"name": "tuned"}, "scores": {"exact": {"mean": 0.75}}}],
        "forgetting": {"b": {"before": {"mean": 0.5}, "after": {"mean": 0.4}}}}))
    return a, b


def test_config_differences_are_exactly_the_changed_keys(two_runs):
    table = compare_runs([str(p) for p in two_runs])
    config_diffs = [r["key"] for r in table["rows"] if r["section"] == "config" and r["differs"]]
    # data.train differs too: each run folder's project has its own training file.
    assert config_diffs == ["lora.rank", "data.train", "training.lr", "output.name"]
    lr = next(r for r in table["rows"] if r["key"] == "training.lr")
    assert lr["values"] == [0.001, 0.002]
    tuned = next(r for r in table["rows"] if r["key"] == "eval.exact: tuned")
    assert tuned["values"] == [None, 0.75] and tuned["differs"]


def test_text_marks_differences_and_hides_equal_config(two_runs):
    text = format_compare(compare_runs([str(p) for p in two_runs]))
    lines = text.splitlines()
    assert any(line.startswith("* training.lr") and "0.001" in line and "0.002" in line for line in lines)
    assert not any("training.batch_size" in line for line in lines)
    assert lines[-1].startswith("(* differs between runs;") and "config keys are equal" in lines[-1]
    html = render_compare_html(compare_runs([str(p) for p in two_runs]))
    assert html.count('data-differs="true"') == sum(1 for line in lines if line.startswith("*"))
    assert '<td class="diff">0.002</td>' in html


def test_errors_and_flatten(tmp_path):
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
    with pytest.raises(TuneryError, match="is not a run folder"):
        compare_runs([str(tmp_path), str(tmp_path)])
