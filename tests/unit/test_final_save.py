"""The final weights load with plain PEFT / transformers and give the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model
from loop_helpers import make_loop, synthetic_rows, tiny_config
from tunery.runfolder import RunFolder
from tunery.trainers import loop


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_final_weights_round_trip_through_plain_loaders(smol_tokenizer, tmp_path, adapter):
    cfg = tiny_config(max_steps=3).model_copy(update={"adapter": adapter})
    s = make_loop(smol_tokenizer, cfg, synthetic_rows(6))
    run = RunFolder(tmp_path / "run")
    loop.train(s, run, loop.LoopState(), lambda: False)
    target = s.method.final_artefact(s.model, run)
    s.model.eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        expected = s.model(input_ids=ids).logits
    if adapter == "lora":
        from peft import PeftModel

        assert json.loads((target / "adapter_config.json").read_text())["r"] == 4
        loaded = PeftModel.from_pretrained(make_tiny_model(len(smol_tokenizer)), target).eval()
        base_logits = make_tiny_model(len(smol_tokenizer))(input_ids=ids).logits
        assert not torch.allclose(base_logits, expected)  # training changed something
    else:
        loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (run.tokenizer / "tokenizer_config.json").is_file()
    assert not any(p.name.startswith(".tmp") for p in run.root.iterdir())
