"""Helpers for evaluation tests: a small booking task, a finished tiny run folder, and canned answers."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from external_tools import chromium, require

SYSTEM = "Extract the booking as JSON."
PEOPLE = [("Ana Costa", "Lima", 3), ("Ben Kato", "Oslo", 2), ("Cy Young", "Rome", 5), ("Dee Park", "Kyiv", 1),
          ("Eli Moss", "Pune", 4), ("Fay Lund", "Bern", 6), ("Gus Hale", "Nice", 7), ("Hal Roth", "Riga", 2),
          ("Ida Wolf", "Baku", 3), ("Jon Bell", "Oran", 9), ("Kai Stone", "Lyon", 2), ("Lia Frost", "Graz", 4)]


def booking(name: str, city: str, nights: int) -> dict:
    answer = json.dumps({"name": name, "city": city, "nights": nights})
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"{name} needs a room in {city} for {nights} nights."},
                         {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_project(folder: Path, model_dir: Path) -> dict[str, Path]:
    """train.jsonl (8 people), heldout.jsonl (4 others) and a tiny-model config in `folder`."""
    train = write_jsonl(folder / "train.jsonl", [booking(*p) for p in PEOPLE[:8]])
    heldout = write_jsonl(folder / "heldout.jsonl", [booking(*p) for p in PEOPLE[8:]])
    config = folder / "run.yaml"
    config.write_text(
        f"base_model: {model_dir}\n"
        "data: {train: [train.jsonl], val_split: 0.25, max_length: 96}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        "training: {max_steps: 2, batch_size: 2, lr: 1.0e-3, eval_every: 1, threads: 1}\n"
    )
    return {"train": train, "heldout": heldout, "config": config}


# A loss curve with the shape of overfitting: training loss falls all along, validation loss is best at
# step 4 (1.0) and ends at 1.3, 30% above it.
VAL = {2: 1.2, 4: 1.0, 6: 1.1, 8: 1.3}
METRICS = [record for step in range(1, 9) for record in
           [{"kind": "train", "step": step, "loss": round(2.0 - 0.2 * step, 6)}]
           + ([{"kind": "eval", "step": step, "val_loss": VAL[step]}] if step in VAL else [])]


def make_run_folder(folder: Path, model_dir: Path, name: str = "tiny", seed: int = 0) -> Path:
    """A finished LoRA run folder of the tiny model on the booking task, written directly (not by the
    trainer, so these tests depend only on the run folder's layout): a random LoRA adapter, the
    tokenizer, run.json, config.yaml naming train.jsonl, and metrics.jsonl with `METRICS`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.config.load import load_config, to_yaml
    from tunery.runfolder import RunFolder

    paths = make_project(folder, model_dir)
    root = folder / "runs" / name
    run = RunFolder(root)
    root.mkdir(parents=True)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(run.adapter)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run.tokenizer)
    run.config.write_text(to_yaml(load_config(paths["config"], [f"output.name={name}"]).config))
    run.update_info(base_model=str(model_dir), adapter="lora", status="finished", step=8, best_step=4,
                    best_val_loss=1.0, final_loss=0.4)
    for record in METRICS:
        run.append_metrics(record)
    return root


def is_tuned(model) -> bool:
    """Runs are loaded with their weights merged and marked with the run they came from."""
    return getattr(model, "tunery_run", None) is not None


def canned_generation(answer_for):
    """A stand-in for `measure.generate_timed`: `answer_for(model, prompt)` gives each answer."""
    def fake(model, tokenizer, prompts, max_new_tokens, temperature=0.0, seed=0, batch_size=8):
        return [{"answer": answer_for(model, p), "tokens": 5, "seconds": 0.5} for p in prompts]
    return fake


def reference_of(prompt: list[dict]) -> str:
    """The correct answer to a booking prompt (parsed back from its last user message)."""
    text = prompt[-1]["content"]
    name, rest = text.split(" needs a room in ")
    city, nights = rest.removesuffix(" nights.").split(" for ")
    return json.dumps({"name": name, "city": city, "nights": int(nights)})


class Dom(HTMLParser):
    """The table ids, image sources and comparison-table rows of a rendered page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.rows, self._in_comparison = [], [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append(attrs.get("id"))
            self._in_comparison = attrs.get("id") == "comparison"
        if tag == "tr" and self._in_comparison:
            self.rows += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_comparison = False


def open_in_chromium(html: Path, folder: Path) -> tuple[str, Path]:
    """Render `html` headless: (the DOM after rendering, a screenshot). Fails the test when Chromium is
    missing, unless TUNERY_SKIP_BROWSER=1 asks to skip it (see external_tools)."""
    browser = require("chromium", chromium())
    shot = folder / "report.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={folder / 'profile'}", "--window-size=1200,3200", f"--screenshot={shot}",
         "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, shot


def report_dom(html: Path, folder: Path) -> tuple["Dom", str, Path]:
    """The report opened in headless Chromium: its parsed DOM, the DOM as text, and the screenshot."""
    dom_text, shot = open_in_chromium(html, folder)
    dom = Dom()
    dom.feed(dom_text)
    return dom, dom_text, shot


def blue_pixels(png: Path) -> tuple[tuple[int, int], int]:
    """(height, width) of a screenshot and how many pixels have matplotlib's default blue (#1f77b4),
    which only appears where a plot was decoded and drawn."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    blue = ((abs(pixels[..., 0] - 0x1F / 255) < 0.02) & (abs(pixels[..., 1] - 0x77 / 255) < 0.02)
            & (abs(pixels[..., 2] - 0xB4 / 255) < 0.02))
    return pixels.shape[:2], int(blue.sum())
