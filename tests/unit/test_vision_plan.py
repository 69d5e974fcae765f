"""`tunery plan` on a vision config counts the image tokens: each row's tokens are the processor's,
with every image expanded, so the plan's tokens per step and largest micro-batch include them."""

from __future__ import annotations

from test_vision_train import write_data
from tunery.config.load import load_config
from tunery.trainers.preflight import estimate
from tunery.trainers.run import prepare
from tunery.vision.render import image_token_ids
from vlm_helpers import save_tiny


def test_plan_counts_image_tokens(smol_tokenizer, tmp_path):
    folder = save_tiny("llava", smol_tokenizer, tmp_path / "model")
    write_data(tmp_path)
    (tmp_path / "vision.yaml").write_text(
        f"method: vision\nbase_model: {folder}\ndata: {{train: [train.jsonl]}}\n"
        "training: {epochs: 1, batch_size: 2, threads: 1}\n")
    loop = prepare(load_config(tmp_path / "vision.yaml").config, log=lambda _: None)
    plan = estimate(loop).to_json()  # what `tunery plan --json` prints (tunery.cli.plan)
    images = image_token_ids(loop.method.processor)
    image_tokens = sum(t in images for row in loop.train for t in row.ids)
    assert image_tokens == 4 * 16  # four records, one 32 x 32 image of 16 patches each
    assert plan["tokens_per_step"] == sum(len(row.ids) for row in loop.train) / 2  # two steps, images included
    assert plan["max_micro_tokens"] == max(len(row.ids) for row in loop.train)  # one example per pass
