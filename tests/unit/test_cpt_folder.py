"""`method: cpt` on a folder of notes, through `run_training` (what `tunery train` calls): the YAML's
relative folder is read, the duplicate is dropped with one warning, and every token of every kept
document is trained."""

from __future__ import annotations

from pathlib import Path

from tunery.config.load import load_config
from tunery.trainers.run import run_training

NOTES = {
    "intro.md": "# Pumps\n\nA centrifugal pump moves water by spinning an impeller.",
    "guide/priming.txt": "Prime the pump before the first start: fill the casing with water.",
    "guide/seals.txt": "Replace the shaft seal when it drips more than ten drops a minute.",
    "guide/copy-of-priming.txt": "prime the pump before the first start:\nfill the casing with water.\n",
    "drafts/todo.txt": "unfinished",
    ".git/description.txt": "not a note",
}


def test_cpt_trains_every_token_of_a_folder(tmp_path, tiny_model_dir, smol_tokenizer):
    project = tmp_path / "project"
    for name, body in NOTES.items():
        (project / "notes" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "notes" / name).write_text(body, encoding="utf-8")
    config = project / "cpt.yaml"
    config.write_text(
        f"base_model: {tiny_model_dir}\nmethod: cpt\n"
        "data:\n  train: [notes]\n  exclude: ['drafts/**']\n  drop_duplicates: exact\n  max_length: 64\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        "training: {epochs: 1, batch_size: 4, lr: 1.0e-3, warmup_ratio: 0.0, threads: 1, preflight: false}\n",
        encoding="utf-8",
    )
    cfg = load_config(config).config
    printed: list[str] = []
    info = run_training(cfg, tmp_path / "run", log=printed.append)

    assert info["status"] == "finished" and info["method"] == "cpt"
    assert info["train_examples"] == 3 and info["val_examples"] == 0
    assert [line for line in printed if line.startswith("warning:")] == [
        "warning: data.drop_duplicates: exact: dropped 1 raw text document(s) that are exact duplicates of an "
        "earlier one (1 of 4 training); `tunery data check` lists the groups"
    ]
    # Sorted path order: guide/copy-of-priming.txt (kept: first of its group), guide/priming.txt
    # (dropped), guide/seals.txt, intro.md. Each document and its end token is trained in full: the
    # loss covers every token after the first.
    kept = [NOTES["guide/copy-of-priming.txt"], NOTES["guide/seals.txt"], NOTES["intro.md"]]
    lengths = [len(smol_tokenizer(text)["input_ids"]) + 1 for text in kept]
    assert info["tokens"] == sum(lengths)
    assert info["trained_tokens"] == sum(length - 1 for length in lengths)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
