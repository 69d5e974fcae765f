"""docs/config.md is generated from the schema and must be current."""

from pathlib import Path

from tunery.config.docs import render_config_docs
from tunery.config.load import known_keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_docs_are_current():
    assert DOC.read_text(encoding="utf-8") == render_config_docs(), (
        "docs/config.md is stale: run `python scripts/gen_config_docs.py`"
    )


def test_every_leaf_key_is_documented_with_its_default():
    text = render_config_docs()
    for key in ("lora.rank", "training.lr", "training.early_stopping_patience", "data.train_on", "output.name"):
        assert f"| `{key}` |" in text
    assert "| `lora.rank` | int | `16` |" in text
    assert "| `training.lr` | float (or empty) | empty |" in text
    leaves = [k for k in known_keys() if k not in ("lora", "data", "training", "output")]
    assert all(f"`{k}`" in text for k in leaves)
