"""Write docs/config.md from the config schema. Run after changing src/tunery/config/schema.py."""

from pathlib import Path

from tunery.config.docs import render_config_docs

if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    target.write_text(render_config_docs(), encoding="utf-8")
    print(f"wrote {target}")
