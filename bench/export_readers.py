"""Every GGUF family and rope scaling type through the installed llama.cpp reader: the per-family table.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src:$PWD/tests python bench/export_readers.py --out bench/results/export_readers_cffi.json
    TUNERY_LLAMA_CPP_READER=llama-cpp-python ... python bench/export_readers.py --out bench/results/export_readers_llama_cpp_python.json

For each tiny random config of the export tests (tests/export_helpers.py: one per family, one per rope
type and family, with a 32-token original context and probe prompts of 41 to 112 tokens), tunery
writes an f32 GGUF and `verify_gguf` reads it back: the record says which reader ran (its binding and version), whether llama.cpp loaded the file (or its own reason
why not), max |logit diff| against the Hugging Face model over every probe position, the largest
|logit|, and whether greedy continuations are identical. For rope-scaled files it adds what
transformers' GGUF reader does (it runs them unscaled: its max |logit diff|) and what llama.cpp gives
for the same file written without the scaling (how much the scaling matters on these prompts).
Quality figures only; no timing is taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]


def configs(vocab: int) -> dict:
    from export_helpers import CASES, QWEN3_CASES, family_configs, scaled_config

    return dict(family_configs(vocab)) | {case: scaled_config(case, vocab) for case in CASES + QWEN3_CASES}


def one(name: str, config, tok, folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from export_helpers import random_model, write
    from tunery.export import gguf_writer
    from tunery.export.gguf_rope import rope_scaling_of
    from tunery.export.probe import compare_logits, logits_of, probe_ids
    from tunery.export.verify import verify_gguf

    model = random_model(config)
    path = write(model, tok, folder / f"{name}.gguf")
    record = verify_gguf(path, model, tok, "f32")
    llama = record["llama_cpp"]
    row = {"case": name, "llama_cpp_ran": llama.get("ran"), "why": llama.get("why"),
           "reader": llama.get("reader"), "passed": record["passed"]}
    if llama.get("ran"):
        row |= {"max_abs_diff": llama["logits"]["max_abs_diff"], "max_abs_logit": llama["logits"]["max_abs_logit"],
                "greedy_identical": llama["greedy_identical"], "positions": llama["logits"]["positions"]}
    if rope_scaling_of(config) is None:
        row["transformers_max_abs_diff"] = record["logits"]["max_abs_diff"]
        return row
    row["transformers"] = record["transformers"]["why"]
    rows = probe_ids(tok)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name, dtype=torch.float32).eval()
    row["transformers_unscaled_max_abs_diff"] = compare_logits(logits_of(model, rows), logits_of(loaded, rows))["max_abs_diff"]
    keep = gguf_writer.write_rope_scaling, gguf_writer.rope_tensors
    gguf_writer.write_rope_scaling, gguf_writer.rope_tensors = (lambda w, c: None), (lambda c, b, d: [])
    try:
        bare = verify_gguf(write(model, tok, folder / f"{name}-unscaled.gguf"), model, tok, "f32")["llama_cpp"]
    finally:
        gguf_writer.write_rope_scaling, gguf_writer.rope_tensors = keep
    row["llama_cpp_without_scaling_max_abs_diff"] = bare["logits"]["max_abs_diff"] if bare.get("ran") else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    from adapter_helpers import tiny_bpe_tokenizer
    from tunery.atomic import write_text_atomic
    from tunery.export.llamacpp import reader_name
    from tunery.models.load import load_tokenizer

    tok = tiny_bpe_tokenizer(load_tokenizer("smollm2-135m-instruct").chat_template)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunery-readers-") as folder:
        for name, config in configs(len(tok)).items():
            if args.only and name not in args.only:
                continue
            row = one(name, config, tok, Path(folder))
            rows.append(row)
            figure = (f"{row['max_abs_diff']:.3g} of {row['max_abs_logit']:.3g}, greedy identical "
                      f"{row['greedy_identical']}") if row["llama_cpp_ran"] else row["why"]
            print(f"{name:16} {figure}  {({k: v for k, v in row.items() if 'unscaled' in k or 'without' in k})}",
                  flush=True)
    write_text_atomic(args.out, json.dumps({"reader": reader_name(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
