"""QLoRA: a LoRA step on a 4-bit NF4 base (bitsandbytes) trains only the adapter; the base stays 4-bit;
the run merges into the dequantized base and reports the logit difference against the unmerged model."""

from __future__ import annotations

import pytest
import torch

from loop_helpers import make_loop, synthetic_rows, tiny_config
from tunery.config.load import to_yaml
from tunery.models import quant
from tunery.runfolder import RunFolder
from tunery.trainers import loop

pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")


def qlora_config(model_dir, **lora):
    cfg = tiny_config(max_steps=2, eval_every=2)
    return cfg.model_copy(update={"adapter": "qlora", "base_model": str(model_dir),
                                  "lora": cfg.lora.model_copy(update=lora)})


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter and 4-bit quantization statistic, copied."""
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if quant.is_4bit(module):
            state[f"{name}.absmax"] = module.weight.quant_state.absmax.clone()
    return state


def test_a_qlora_step_changes_only_adapter_weights_and_the_base_stays_4bit(smol_tokenizer, tiny_model_dir, tmp_path):
    cfg = qlora_config(tiny_model_dir)
    model = quant.load_for_training(cfg)
    assert quant.count_4bit_layers(model) == 14  # 7 linear layers x 2 blocks; head and embeddings stay fp32
    s = make_loop(smol_tokenizer, cfg, synthetic_rows(8), synthetic_rows(2, seed=1), model=model)
    before = snapshot(s.model)
    run = RunFolder(tmp_path / "run")
    st, reason = loop.train(s, run, loop.LoopState(), lambda: False)
    after = snapshot(s.model)
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert reason == "finished" and st.step == 2 and changed
    assert all("lora_" in name for name in changed)  # only adapter factors moved
    assert {n.split(".lora_")[0] for n in changed if "lora_B" in n} == {
        n.split(".lora_")[0] for n in before if "lora_B" in n}  # every adapted layer learned
    assert quant.count_4bit_layers(s.model) == 14
    weight = s.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
    assert weight.numel() == 32 * 32 // 2  # two 4-bit codes per byte

    s.method.final_artefact(s.model, run)
    (run.root / "config.yaml").write_text(to_yaml(cfg))
    run.update_info(base_model=str(tiny_model_dir), adapter="qlora", status="finished")
    from safetensors.torch import load_file

    saved = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved)

    from tunery.export.merge import merge_run
    from transformers import AutoModelForCausalLM

    record = merge_run(run.root, tmp_path / "merged", log=lambda _: None)
    assert record["adapter"] == "qlora"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    # The reference is the trained model itself, 4-bit base + adapter, computed here: the merged fp32
    # model must be the function that was trained. Dequantized weights + B @ A equal what the 4-bit
    # layer computes up to float32 rounding (measured 2e-7 here); 1e-5 of the largest |logit| allows that.
    s.model.eval()
    ids = torch.tensor([[1, 9, 48, 3, 250, 17, 2, 77, 1021, 5]])
    with torch.no_grad():
        trained, plain = s.model(input_ids=ids).logits[0], merged(input_ids=ids).logits[0]
    top = float(trained.abs().max())
    assert top > 0.1 and float((plain - trained).abs().max()) <= 1e-5 * max(top, 1.0)
    assert torch.equal(plain.argmax(-1), trained.argmax(-1))
    q = merged.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.float32 and len(torch.unique(q)) > 16  # plain fp32 weights, update included
