"""`tunery generate RUN --image PATH --prompt TEXT` on a tiny Idefics3 vision run: the printed answer is
the model's own greedy generate on the processor's tensors; clear errors for a bad image, a text model
given --image and `tunery chat` on a vision run."""

from __future__ import annotations

import json

from peft import PeftModel
from typer.testing import CliRunner

from test_vision_eval import MAX_NEW, direct_answer, user_turn, vision_run  # noqa: F401  (the fixture)
from tunery.cli.main import app
from tunery.vision.model import load_processor, load_vlm

runner = CliRunner()


def test_generate_with_an_image_answers_as_the_model_does(vision_run):  # noqa: F811
    run, base, held = vision_run
    image = held.parent / "teal.png"
    out = runner.invoke(app, ["generate", str(run), "--image", str(image), "--prompt", "Colour?",
                              "--max-new-tokens", str(MAX_NEW), "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout[out.stdout.index("["):])
    processor = load_processor(str(run / "processor"))
    tuned = PeftModel.from_pretrained(load_vlm(str(base)), str(run / "adapter")).merge_and_unload().eval()
    turn, picture = user_turn(image)
    ids = direct_answer(tuned, processor, [turn], [picture])
    assert len(ids) > 0
    assert rows == [{"prompt": "Colour?", "answer": processor.tokenizer.decode(ids, skip_special_tokens=True).strip()}]


def test_generate_and_chat_errors(vision_run, tmp_path, tiny_model_dir):  # noqa: F811
    run, _, held = vision_run
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = runner.invoke(app, ["generate", str(run), "--image", str(tmp_path / "bad.png"), "--prompt", "Colour?"])
    assert out.exit_code != 0 and "--image: not an image any reader knows" in str(out.exception)
    out = runner.invoke(app, ["generate", str(tiny_model_dir), "--image", str(held.parent / "teal.png"),
                              "--prompt", "Colour?"])
    assert out.exit_code != 0 and "--image needs a vision run or a vision-language model" in str(out.exception)
    out = runner.invoke(app, ["chat", str(run)], input="/exit\n")
    assert out.exit_code != 0 and "is a vision run; tunery chat talks to text runs only" in str(out.exception)
    assert "--image PATH" in str(out.exception)
