"""Training speed on a GPU: tunery against TRL's best settings on random-weight Llama models built from
the configs of a ~1B and an ~8B model (no weights needed for speed), LoRA and full fine-tuning.

    python bench/gpu_speed.py                        # every row, on the GPU (bf16), ~6 minutes on an H200
    python bench/gpu_speed.py --rows 8b-lora-tunery,8b-lora-trl --steps 20
    python bench/gpu_speed.py --tiny                 # the same script on tiny configs (CPU, fp32, seconds)

Everything the rows need is made here: a byte-level BPE tokenizer trained on the chat set's own
sentences (bench/chat_data.py), the model from its config with random weights straight on the device,
and chat examples of about `--tokens` tokens. Each row runs in its own process, so its peak memory is
its own. Both tools train the same examples in the same order, batch `--batch`, LoRA r16 alpha 32 on
every linear layer with dropout 0 (or every weight for full fine-tuning), AdamW at 1e-4.

Rows: `<size>-<lora|full>-<tunery|trl>`, size `1b` or `8b` (`tiny` with --tiny).
  tunery   its defaults: padding-free packing, the head only at trained positions, the head's loss a
           slice at a time for large vocabularies
  trl      SFTTrainer's best settings: bf16, padding_free=True, completion-only loss, gradient
           checkpointing off (on for 8b full, which does not fit without it), Liger kernels when
           `liger_kernel` imports (`--no-liger` to leave them off)

Figures per row: real tokens per second (padding never counts), peak memory (CUDA's max allocated, or
the process's peak resident set on a CPU), and model FLOPs utilisation: model FLOPs per token x tokens
per second / the device's peak (`--peak-tflops`; 989 for H100/H200 bf16 dense). Model FLOPs per token
are 6 N for full fine-tuning and 4 N for LoRA (frozen weights need no weight gradient), N the
parameters of the linear layers and the head, plus the attention scores' 6 (or 4) x layers x hidden x
tokens / 2 (causal). The same count for both tools, so the MFU ratio is the speed ratio.

The GPU machine reaches no package registry: trl, datasets and their dependencies (and liger-kernel)
travel as wheels, like the gpu tier's (scripts/gpu_tests.sh says how to download them); a row whose
tool does not import is reported as skipped, never as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chat_data import paragraph  # noqa: E402

LLAMA = dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=8192, vocab_size=128256, bos_token_id=0, eos_token_id=2)
CONFIGS = {  # the shapes of Llama 3.2 1B and Llama 3.1 8B, and a tiny one for the CPU check
    "1b": LLAMA | dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "8b": LLAMA | dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": LLAMA | dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, vocab_size=4096,
                         max_position_embeddings=2048),
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SETTINGS = dict(rank=16, alpha=32, lr=1e-4, seed=0)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- what the rows share (parent process)

def make_tokenizer(folder: Path, vocab: int) -> None:
    """A byte-level BPE tokenizer trained on the chat set's sentences, with ChatML specials, saved with
    the model's config.json (a model folder without weights: the rows build the weights)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 2000), show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([paragraph(rng, 4) for _ in range(2000)], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=CHATML)
    tokenizer.save_pretrained(folder)


def write_examples(path: Path, tokenizer, count: int, tokens: int) -> None:
    """`count` single-turn chats of about `tokens` tokens, a quarter of them the answer."""
    rng = random.Random(1)
    with path.open("w") as out:
        for _ in range(count):
            question, answer = paragraph(rng, 2), paragraph(rng, 2)
            while len(tokenizer(question + answer)["input_ids"]) < tokens * 3 // 4:
                question += " " + paragraph(rng, 2)
            while len(tokenizer(question + answer)["input_ids"]) < tokens - 16:
                answer += " " + paragraph(rng, 1)
            out.write(json.dumps({"messages": [{"role": "user", "content": question},
                                               {"role": "assistant", "content": answer}]}) + "\n")


# ---------------------------------------------------------------- one row (its own process)

def random_model(folder: Path, dtype: str):
    """The causal LM of `folder`'s config.json with random weights, made on the GPU when there is one."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(SETTINGS["seed"])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return model


def tunery_row(folder: Path, train: Path, mode: str, dtype: str, steps: int, batch: int, tokens: int) -> dict:
    from tunery.config.load import validate
    from tunery.data.dataset import build_datasets
    from tunery.models.load import load_tokenizer
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop
    from tunery.trainers.methods import method_for

    cfg = validate({
        "base_model": str(folder), "dtype": dtype, "adapter": "lora" if mode == "lora" else "full",
        "data": {"train": [str(train)], "max_length": tokens + 64},
        "lora": {"rank": SETTINGS["rank"], "alpha": SETTINGS["alpha"], "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": batch, "lr": SETTINGS["lr"], "warmup_ratio": 0.0,
                     "seed": SETTINGS["seed"], "save_every": steps * 10, "eval_every": steps * 10,
                     "log_every": steps, "preflight": False}})
    tokenizer = load_tokenizer(str(folder))
    data = build_datasets(cfg, tokenizer)
    data.val, data.val_examples = [], []
    s = loop.setup(cfg, method_for(cfg, tokenizer), random_model(folder, dtype), data)
    start = time.perf_counter()
    state, _ = loop.train(s, RunFolder(folder.parent / f"run-{mode}"), loop.LoopState(), lambda: False)
    synchronize()
    return {"seconds": time.perf_counter() - start, "steps": state.step, "final_loss": state.last_loss}


def trl_row(folder: Path, train: Path, mode: str, dtype: str, steps: int, batch: int, liger: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(line) for line in train.read_text().splitlines()][:steps * batch]
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    big_full = mode == "full" and folder.name.startswith("8b")
    options = dict(output_dir=str(folder.parent / f"trl-{mode}"), max_steps=steps, per_device_train_batch_size=batch,
                   learning_rate=SETTINGS["lr"], lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
                   save_strategy="no", report_to="none", seed=SETTINGS["seed"], padding_free=True, max_length=None,
                   completion_only_loss=True, gradient_checkpointing=big_full, bf16=dtype == "bfloat16",
                   use_cpu=not torch.cuda.is_available(), use_liger_kernel=liger)
    lora = (LoraConfig(r=SETTINGS["rank"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0,
                       target_modules="all-linear", task_type="CAUSAL_LM") if mode == "lora" else None)
    losses: list[float] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(model=random_model(folder, dtype), args=SFTConfig(**options), train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(folder), peft_config=lora,
                         callbacks=[KeepLoss()])
    start = time.perf_counter()
    trainer.train()
    synchronize()
    return {"seconds": time.perf_counter() - start, "steps": steps, "final_loss": losses[-1] if losses else None}


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(row: str, workdir: Path, steps: int, batch: int, tokens: int, liger: bool) -> dict:
    size, mode, tool = row.split("-")
    dtype = "bfloat16" if cuda() else "float32"
    folder, train = workdir / size, workdir / f"{size}-train.jsonl"
    if tool == "tunery":
        result = tunery_row(folder, train, mode, dtype, steps, batch, tokens)
    else:
        if liger:
            try:
                import liger_kernel  # noqa: F401
            except ImportError:
                liger = False
        result = trl_row(folder, train, mode, dtype, steps, batch, liger) | {"liger": liger}
    return result | {"peak_mb": peak_mb(), "dtype": dtype}


# ---------------------------------------------------------------- the table (parent process)

def real_tokens(folder: Path, train: Path, n: int, tokens: int) -> int:
    """Tokens of the first n examples as tunery renders them (the same for both tools)."""
    from tunery.data.dataset import load_examples
    from tunery.data.render import render_example
    from tunery.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    examples, _ = load_examples([str(train)])
    return sum(len(render_example(e, tokenizer, "assistant", tokens + 64).ids) for e in examples[:n])


def model_flops_per_token(config: dict, mode: str, tokens: int) -> float:
    d, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    linear = layers * (2 * d * d + 2 * d * kv + 3 * d * inter) + config["vocab_size"] * d
    factor = 6 if mode == "full" else 4
    return factor * linear + factor * layers * d * tokens / 2


def run_child(args, row: str, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--child", row, "--workdir", str(workdir), "--steps", str(args.steps),
               "--batch", str(args.batch), "--tokens", str(args.tokens)] + (["--no-liger"] if args.no_liger else [])
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return {"row": row, "skipped": tail[0][:200]}
    return {"row": row} | json.loads(found[-1][len("RESULT "):])


def table(rows: list[dict]) -> str:
    head = f"{'row':<18}{'tok/s':>10}{'peak MiB':>10}{'MFU':>7}{'loss':>9}{'vs TRL':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['row']:<18}  skipped: {r['skipped']}")
            continue
        ratio = f"{r['vs_trl']:.2f}x" if r.get("vs_trl") else ""
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "n/a"
        lines.append(f"{r['row']:<18}{r['tok_s']:>10.0f}{r['peak_mb']:>10.0f}{100 * r['mfu']:>6.1f}%{loss:>9}{ratio:>8}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1b-lora-tunery,1b-lora-trl,1b-full-tunery,1b-full-trl,"
                                          "8b-lora-tunery,8b-lora-trl")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU: checks the script itself")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens an example, about")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--no-liger", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_speed.json")
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.workdir, args.steps, args.batch, args.tokens,
                                           not args.no_liger)), flush=True)
        return
    rows = [r.replace(r.split("-")[0], "tiny", 1) for r in args.rows.split(",")] if args.tiny else args.rows.split(",")
    rows = list(dict.fromkeys(rows))
    peak = args.peak_tflops or (989.0 if cuda() else cpu_peak_tflops())
    workdir = Path(tempfile.mkdtemp(prefix="tunery-gpu-bench-"))
    from transformers import AutoTokenizer

    for size in dict.fromkeys(r.split("-")[0] for r in rows):
        folder = workdir / size
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(CONFIGS[size]))
        make_tokenizer(folder, CONFIGS[size]["vocab_size"])
        write_examples(workdir / f"{size}-train.jsonl", AutoTokenizer.from_pretrained(folder),
                       args.steps * args.batch, args.tokens)
    results = []
    for row in rows:
        print(f"running {row} ...", flush=True)
        result = run_child(args, row, workdir)
        if "skipped" not in result:
            size, mode, _ = row.split("-")
            n = real_tokens(workdir / size, workdir / f"{size}-train.jsonl", result["steps"] * args.batch, args.tokens)
            result |= {"tokens": n, "tok_s": n / result["seconds"]}
            result["mfu"] = result["tok_s"] * model_flops_per_token(CONFIGS[size], mode, args.tokens) / (peak * 1e12)
        results.append(result)
    for r in results:
        trl = next((t for t in results if t["row"] == r["row"].replace("-tunery", "-trl") and "tok_s" in t), None)
        if r["row"].endswith("-tunery") and "tok_s" in r and trl:
            r["vs_trl"], r["memory_vs_trl"] = r["tok_s"] / trl["tok_s"], r["peak_mb"] / trl["peak_mb"]
    print(f"\npeak {peak:.1f} TFLOP/s ({'given' if args.peak_tflops else 'H100/H200 bf16' if cuda() else 'measured fp32'})")
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"peak_tflops": peak, "rows": results, "settings": SETTINGS | vars(args)},
                                   indent=2, default=str))
    print(f"wrote {args.out}")


def cpu_peak_tflops(size: int = 1024) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * size**3 / best / 1e12


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
