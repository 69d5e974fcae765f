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


def write_base(folder: Path, tokenizer, seed: int = 3, scrambled: bool = False) -> Path:
    """A tiny random base model folder with the tokenizer (once per folder)."""
    if not (folder / "config.json").is_file():
        model = make_tiny_model(len(tokenizer), seed=seed)
        (scramble(model, std=0.12, seed=seed) if scrambled else model).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def make_adapter_run(root: Path, tokenizer, base_dir: Path, *, seed: int = 7, rank: int = 4,
                     target=("q_proj", "v_proj"), dora: bool = False, rslora: bool = False,
                     modules_to_save=None, name: str = "run", adapter_scale: float = 0.3):
    """A finished LoRA run folder (adapter/, tokenizer/, run.json, config.yaml, metrics.jsonl);
    returns (run_dir, the PEFT model it holds, in eval mode)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target) if not isinstance(target, str)
                        else target, use_dora=dora, use_rslora=rslora, modules_to_save=modules_to_save)
    peft_model = get_peft_model(base, config)
    randomize_adapter(peft_model, seed, adapter_scale)
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


CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Name a primary colour. Red is a primary colour, and so are blue and yellow.",
    "Count: one, two, three, four, five. And then six, seven, eight.",
    "You answer in one short sentence. Hello there, how are you today?",
    "Lena Park needs a room in Oslo for 2 nights. Ben Kato books 4 nights in Bologna.",
]


def tiny_bpe_tokenizer(chat_template: str):
    """A byte-level BPE tokenizer of about 400 tokens with ChatML specials, trained on a few sentences.

    GGUF readers parse every token and merge as a separate string; with SmolLM2's 49k vocabulary that
    costs tens of seconds per read here, so GGUF unit tests use this small one (the embedded-model
    test covers the real vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=chat_template)


def scramble(model, std: float = 0.3, seed: int = 1):
    """Larger random weights, so that answers depend on the prompt (at init scale they barely do)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model
