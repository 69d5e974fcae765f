"""Hand-made adapter run folders on the tiny model, for merge, combine, export and card tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import make_tiny_model


def randomize_adapter(peft_model, seed: int, scale: float = 0.3) -> None:
    """Give every adapter tensor random values: at init lora_B is zero and would change nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=gen))
            elif "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)


def write_base(folder: Path, tokenizer, seed: int = 3) -> Path:
    """A tiny random base model folder with the tokenizer (once per folder)."""
    if not (folder / "config.json").is_file():
        make_tiny_model(len(tokenizer), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def make_adapter_run(root: Path, tokenizer, base_dir: Path, *, seed: int = 7, rank: int = 4,
                     target=("q_proj", "v_proj"), dora: bool = False, rslora: bool = False,
                     modules_to_save=None, name: str = "run"):
    """A finished LoRA run folder (adapter/, tokenizer/, run.json, config.yaml, metrics.jsonl);
    returns (run_dir, the PEFT model it holds, in eval mode)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target) if not isinstance(target, str)
                        else target, use_dora=dora, use_rslora=rslora, modules_to_save=modules_to_save)
    peft_model = get_peft_model(base, config)
    randomize_adapter(peft_model, seed)
    run = root / name
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    info = {"base_model": str(base_dir), "adapter": "lora", "dtype": "float32", "status": "finished",
            "method": "sft", "step": 6, "best_val_loss": 2.5, "best_step": 6, "train_examples": 12,
            "val_examples": 4, "trainable_params": sum(p.numel() for p in peft_model.parameters()
                                                       if p.requires_grad)}
    (run / "run.json").write_text(json.dumps(info))
    lora = {"rank": rank, "alpha": 2 * rank, "dora": dora, "rslora": rslora,
            "target_modules": list(target) if not isinstance(target, str) else target}
    (run / "config.yaml").write_text(json.dumps({"base_model": str(base_dir), "adapter": "lora",
                                                 "lora": lora, "data": {"train": ["train.jsonl"]}}))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 6, "val_loss": 2.5}) + "\n")
    return run, peft_model.eval()


@torch.no_grad()
def logits(model, ids) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
