"""`tunery eval` on image records with a tiny random Idefics3 (SmolVLM's class) vision run: the rows
(tuned, base zero-shot, base few-shot with the shots' images), answers equal to the model's own
`generate` on the processor's tensors, the report (eval.json, table), and clear refusals."""

from __future__ import annotations

import copy
import json

import pytest
from peft import PeftModel

from test_vision_run import config
from test_vision_train import write_data
from tunery.errors import TuneryError
from tunery.eval.evaluate import EvalOptions, evaluate
from tunery.trainers.run import run_training
from tunery.vision.model import load_processor, load_vlm
from vlm_helpers import save_tiny, write_png

MAX_NEW = 4


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory, smol_tokenizer):
    """(run folder, base folder, held-out file) of a 2-step vision run on a tiny Idefics3."""
    root = tmp_path_factory.mktemp("vision-eval")
    base = save_tiny("idefics3", smol_tokenizer, root / "base")
    (root / "train").mkdir()
    train = write_data(root / "train")
    run_training(config(base, train, max_steps=2), root / "run", log=lambda _: None)
    held = root / "held"
    held.mkdir()
    lines = []
    for name, rgb in [("pink", (240, 120, 180)), ("grey", (120, 120, 120)), ("teal", (20, 140, 140))]:
        write_png(held / f"{name}.png", rgb, (44, 40))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"{name}.png"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": name}]}))
    (held / "heldout.jsonl").write_text("\n".join(lines) + "\n")
    return root / "run", base, held / "heldout.jsonl"


def direct_answer(model, processor, hf_turns: list[dict], images: list) -> list[int]:
    """Greedy answer ids straight from the model's generate on the processor's tensors, cut at a stop."""
    text = processor.apply_chat_template(hf_turns, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[images], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    stops = {processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return next((out[:i] for i, t in enumerate(out) if t in stops), out)


def user_turn(path) -> tuple[dict, object]:
    from PIL import Image

    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}, \
        Image.open(path).convert("RGB")


def test_vision_eval_rows_answers_and_report(vision_run, capsys):
    run, base, held = vision_run
    result = evaluate([str(run)], str(held), EvalOptions(max_new_tokens=MAX_NEW, k=2, probe=None), log=lambda _: None)
    names = [row["system"]["name"] for row in result["systems"]]
    assert names == ["tuned", "base zero-shot", "base few-shot (k=2)"]
    assert result["graders"] == ["exact"] and result["n_examples"] == 3 and result["pool_size"] == 4
    assert any("retrieval rows are skipped for image records" in s for s in result["skipped"])
    for row in result["systems"]:
        assert row["scores"]["exact"]["n"] == 3 and row["loss"]["tokens"] > 0
    assert {c["b"] for c in result["comparisons"]} | {result["best"]} == set(names)  # the paired tests

    processor = load_processor(str(run / "processor"))
    tuned = PeftModel.from_pretrained(load_vlm(str(base)), str(run / "adapter")).merge_and_unload().eval()
    plain = load_vlm(str(base))
    by_name = {row["system"]["name"]: row["per_example"] for row in result["systems"]}
    assert all(answer["tokens"] > 0 for rows in by_name.values() for answer in rows)  # a real answer to compare
    train_dir = run.parent / "train"
    for n, name in enumerate(["pink", "grey", "teal"]):
        turn, image = user_turn(held.parent / f"{name}.png")
        ids = direct_answer(tuned, processor, [turn], [image])
        assert by_name["tuned"][n]["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert by_name["tuned"][n]["tokens"] == len(ids)
        ids = direct_answer(plain, processor, [turn], [image])
        assert by_name["base zero-shot"][n]["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        shots = by_name["base few-shot (k=2)"][n]["shots"]
        assert len(shots) == 2 and all(s.startswith(str(train_dir / "train.jsonl")) for s in shots)
        colours = ["red", "green", "blue", "yellow"]
        hf, images = [], []
        for where in shots:  # the shots' images, in order, then the question's
            colour = colours[int(where.rsplit(":", 1)[1]) - 1]
            shot_turn, shot_image = user_turn(train_dir / f"{colour}.png")
            hf += [shot_turn, {"role": "assistant", "content": [{"type": "text", "text": colour}]}]
            images.append(shot_image)
        ids = direct_answer(plain, processor, hf + [turn], images + [image])
        assert by_name["base few-shot (k=2)"][n]["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_vision_eval_cli_writes_eval_json_and_table(vision_run, tmp_path, capsys):
    from tunery.cli.evaluation import run_eval

    run, _, held = vision_run
    code = run_eval([str(run)], str(held), EvalOptions(max_new_tokens=2, baselines=("zero",), probe=None),
                    tmp_path / "out", as_json=False)
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert code == 0 and saved["kind"] == "vision" and [r["system"]["name"] for r in saved["systems"]] == \
        ["tuned", "base zero-shot"]
    assert "tuned" in printed and "base zero-shot" in printed and "exact" in printed
    assert (tmp_path / "out" / "report.html").is_file()


def test_vision_eval_refusals(vision_run, tmp_path_factory, tiny_model_dir):
    run, _, held = vision_run
    with pytest.raises(TuneryError, match="not supported on image records"):
        evaluate([str(run)], str(held), EvalOptions(choices=["red", "blue"], probe=None), log=lambda _: None)
    from tunery.eval.vision import SKIPPED_RETRIEVAL

    result = evaluate([str(run)], str(held), EvalOptions(max_new_tokens=1, baselines=("rag",), probe=None),
                      log=lambda _: None)
    assert [r["system"]["name"] for r in result["systems"]] == ["tuned"] and SKIPPED_RETRIEVAL in result["warnings"]


def test_few_shot_skipped_when_the_processor_takes_one_image(vision_run, monkeypatch):
    from tunery.vision import model as vision_model

    real = vision_model.load_processor

    class OneImage:
        def __init__(self, processor):
            self.processor = processor

        def __call__(self, *args, images=None, **kwargs):
            if images and sum(len(group) for group in images) > 1:
                raise ValueError("one image per prompt")
            return self.processor(*args, images=images, **kwargs)

        def __getattr__(self, name):
            return getattr(self.processor, name)

    monkeypatch.setattr(vision_model, "load_processor", lambda spec: OneImage(real(spec)))
    run, _, held = vision_run
    result = evaluate([str(run)], str(held), EvalOptions(max_new_tokens=1, baselines=("zero", "few"), k=1, probe=None),
                      log=lambda _: None)
    assert [r["system"]["name"] for r in result["systems"]] == ["tuned", "base zero-shot"]
    assert any("does not take several images in one prompt" in w and "one image per prompt" in w
               for w in result["skipped"])


def test_vision_eval_on_the_composed_model(vision_run, tmp_path, smol_tokenizer):
    """The composed model's class (tiny: a 2-layer Llama, 32-pixel images) as a base model folder: its
    zero-shot answers are its own generate's on its processor's tensors."""
    from conftest import make_tiny_model
    from tunery.models.composed_vision.build import compose, craft_backbone_state

    model, processor = compose(make_tiny_model(len(smol_tokenizer)), copy.deepcopy(smol_tokenizer),
                               craft_backbone_state(), image_size=32, grid=2)
    model.save_pretrained(tmp_path / "composed")
    processor.save_pretrained(tmp_path / "composed")
    _, _, held = vision_run
    result = evaluate([str(tmp_path / "composed")], str(held), EvalOptions(max_new_tokens=MAX_NEW, probe=None),
                      log=lambda _: None)
    assert [r["system"]["name"] for r in result["systems"]] == ["base zero-shot"]
    loaded = load_vlm(str(tmp_path / "composed"))
    for n, name in enumerate(["pink", "grey", "teal"]):
        turn, image = user_turn(held.parent / f"{name}.png")
        ids = direct_answer(loaded, processor, [turn], [image])
        got = result["systems"][0]["per_example"][n]
        assert got["tokens"] == len(ids) > 0
        assert got["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_vl"])
def test_vision_eval_base_rows_per_family(family, vision_run, tmp_path, smol_tokenizer, monkeypatch):
    """Each family's base model, zero-shot and few-shot (k=1: two images in one prompt), answers as its
    own generate does on its processor's tensors."""
    from vlm_helpers import FAMILIES

    folder = save_tiny(family, smol_tokenizer, tmp_path / family)
    processor = FAMILIES[family](smol_tokenizer)[1]
    if family == "qwen2_vl":  # its processor loads from a folder only with torchvision
        monkeypatch.setattr("tunery.vision.model.load_processor", lambda spec: processor)
    run, _, held = vision_run
    train = run.parent / "train" / "train.jsonl"
    result = evaluate([str(folder)], str(held), EvalOptions(max_new_tokens=MAX_NEW, k=1, baselines=("zero", "few"),
                                                            train=[str(train)], probe=None), log=lambda _: None)
    rows = {r["system"]["name"]: r["per_example"] for r in result["systems"]}
    assert list(rows) == ["base zero-shot", "base few-shot (k=1)"]
    model = load_vlm(str(folder))
    colours = ["red", "green", "blue", "yellow"]
    for n, name in enumerate(["pink", "grey", "teal"]):
        turn, image = user_turn(held.parent / f"{name}.png")
        ids = direct_answer(model, processor, [turn], [image])
        assert rows["base zero-shot"][n]["tokens"] == len(ids) > 0
        assert rows["base zero-shot"][n]["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        [where] = rows["base few-shot (k=1)"][n]["shots"]
        colour = colours[int(where.rsplit(":", 1)[1]) - 1]
        shot_turn, shot_image = user_turn(train.parent / f"{colour}.png")
        ids = direct_answer(model, processor, [shot_turn, {"role": "assistant", "content": [{"type": "text", "text": colour}]},
                                               turn], [shot_image, image])
        assert rows["base few-shot (k=1)"][n]["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
