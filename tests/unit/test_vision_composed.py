"""The composed offline model's parts on tiny sizes: the CRAFT VGG16-BN weights map onto the backbone
key for key (loaded with weights_only=True), the backbone stays frozen and in eval mode through a
training step (batch-norm statistics unchanged), image features land on the `<image>` tokens, and the
saved folder loads back as a plain folder with the same outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import make_tiny_model
from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError
from tunery.trainers import loop as training_loop
from tunery.trainers.methods.vision import VisionSFT
from tunery.models.composed_vision.build import compose, craft_backbone_state
from test_vision_train import changed_parts, vision_config, write_data


@pytest.fixture(scope="module")
def backbone_state():
    return craft_backbone_state()


@pytest.fixture()
def tiny_composed(smol_tokenizer, backbone_state):
    return compose(make_tiny_model(len(smol_tokenizer)), copy.deepcopy(smol_tokenizer), backbone_state,
                   image_size=32, grid=2)


def test_craft_weights_fill_the_backbone(backbone_state, tiny_composed):
    model, _ = tiny_composed
    backbone = model.model.vision_backbone.state_dict()
    assert backbone.keys() == backbone_state.keys() and len(backbone) == 12 * 7  # 12 conv + batch-norm layers
    for key, value in backbone_state.items():
        assert torch.equal(backbone[key], value), key


def test_features_replace_the_image_tokens(tiny_composed):
    from PIL import Image

    model, processor = tiny_composed
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    red, blue = Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))
    a, b = processor(text=[text], images=[[red]]), processor(text=[text], images=[[blue]])
    assert int((a["input_ids"] == processor.image_token_id).sum()) == 4  # a 2 x 2 grid
    with torch.no_grad():
        assert not torch.allclose(model(**a).logits, model(**b).logits)  # the image reaches the answer
    with pytest.raises(ValueError, match="placeholder"):
        processor(text=[text], images=[[red, blue]])


def test_step_trains_projector_and_lora_and_keeps_the_backbone(tiny_composed, tmp_path):
    model, processor = tiny_composed
    cfg = vision_config(write_data(tmp_path), mode="projector")
    method = VisionSFT(cfg, processor.tokenizer, processor)
    loop = training_loop.setup(cfg, method, model, method.load_data())
    stats = {k: v.clone() for k, v in model.model.vision_backbone.state_dict().items()}
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    result = training_loop.accumulate(loop, 0)
    training_loop.optimizer_step(loop, 0, result.loss)
    assert changed_parts(before, loop.model) == {"language": {"lora"}, "projector": {"copy"}}
    after = model.model.vision_backbone.state_dict()
    assert all(torch.equal(stats[k], after[k]) for k in stats)  # running means/vars too: always eval


def test_untrained_projector_needs_vision_train(tiny_composed, tmp_path):
    model, processor = tiny_composed
    cfg = vision_config(write_data(tmp_path), mode="none")
    method = VisionSFT(cfg, processor.tokenizer, processor)
    with pytest.raises(TuneryError, match="projector is untrained"):
        training_loop.setup(cfg, method, model, method.load_data())


def test_saved_folder_loads_back(tiny_composed, tmp_path):
    from tunery.vision.model import load_processor, load_vlm

    model, processor = tiny_composed
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    again, proc = load_vlm(str(tmp_path / "m")), load_processor(str(tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "tunery_vision"
    text = proc.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    inputs = proc(text=[text])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_pixels_are_rgb_resized_and_normalised_as_craft_was_trained(tiny_composed):
    """What the backbone reads: channels in RGB order, resized to the model's square, normalised with
    ImageNet's mean and spread (CRAFT's `normalizeMeanVariance`); a colour must not swap channels."""
    from PIL import Image

    from tunery.models.composed_vision.processor import MEAN, STD

    _, processor = tiny_composed
    pixels = processor.pixels(Image.new("RGB", (80, 20), (210, 40, 40)))
    assert tuple(pixels.shape) == (3, 32, 32)
    expected = [(value / 255 - mean) / std for value, mean, std in zip((210, 40, 40), MEAN, STD)]
    assert pixels.mean((1, 2)).tolist() == pytest.approx(expected, abs=1e-5)
    assert pixels[0].min() > pixels[1].max()  # red in channel 0
