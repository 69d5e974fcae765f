"""Answering speed of `tunery eval`: 200 short classification prompts answered greedily by the embedded
model, one at a time through transformers' `generate` (what a user's own loop does) and through
tunery's batched generation (`inference.generate_ids`, what `tunery eval`, graders during training
and `tunery generate` use) at batch 1, 8 and 32, with and without the shared prompt prefix computed once, and llama.cpp
(llama-cpp-cffi) answering one at a time from a q8_0 GGUF that tunery's exporter wrote.

    python bench/eval_generation.py [--prompts 200] [--max-new-tokens 8] [--threads 2]

The prompts are the routing example's messages (system + user, examples/routing). Figures per row:
answers per second, output tokens per second, and how many answers equal the one-at-a-time answers
(batched greedy decoding pads prompts on the left; an answer may differ by float rounding).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROUTING = HERE.parent / "examples" / "routing"
MODEL = "smollm2-135m-instruct"


def prompts(n: int) -> list[list[dict]]:
    rows = []
    for name in ("heldout.jsonl", "train.jsonl"):
        rows += [json.loads(line)["messages"][:-1] for line in (ROUTING / name).read_text().splitlines()]
    return rows[:n]


def one_at_a_time(model, tokenizer, convs, max_new_tokens: int) -> list[list[int]]:
    """transformers' generate on one prompt at a time, greedy, stopping at the end-of-turn token."""
    from tunery.inference import cut_at_stop, prompt_ids, stop_token_ids

    stops = stop_token_ids(tokenizer, model)
    out = []
    for conv in convs:
        ids = torch.tensor([prompt_ids(tokenizer, conv)])
        with torch.inference_mode():
            row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                 top_p=None, top_k=None, temperature=None)
        out.append(cut_at_stop(row[0, ids.shape[1]:].tolist(), stops))
    return out


def llamacpp_answers(model, tokenizer, convs, max_new_tokens: int, threads: int) -> tuple[list[list[int]], float]:
    """The same prompts through llama.cpp (what Ollama and llama-server run) on the model exported as
    q8_0 by tunery's GGUF writer: greedy, one prompt at a time, timed without the export and load."""
    import tempfile

    from tunery.data.render import chat_template_of
    from tunery.export.exporter import write_gguf_of_type
    from tunery.export.gguf_vocab import pre_tokenizer_name, read_vocab
    from tunery.export.llamacpp import LlamaCpp
    from tunery.inference import prompt_ids, stop_token_ids

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.q8_0.gguf"
        vocab = read_vocab(tokenizer, model.config.vocab_size, chat_template_of(tokenizer))
        write_gguf_of_type(model, vocab, path, "q8_0", name="bench", pre=pre_tokenizer_name(tokenizer)[0])
        reader = LlamaCpp(path, n_ctx=512, threads=threads)
        try:
            stops = set(stop_token_ids(tokenizer, model))
            rows = [prompt_ids(tokenizer, conv) for conv in convs]
            return timed(lambda: [reader.greedy(row, max_new_tokens, stops) for row in rows])
        finally:
            reader.close()


def timed(fn) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp row")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "eval_generation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tunery.inference import generate_ids
    from tunery.models.load import load_model, load_tokenizer

    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    convs = prompts(args.prompts)
    generate_ids(model, tokenizer, convs[:4], args.max_new_tokens, batch_size=4)  # warm-up
    reference, seconds = timed(lambda: one_at_a_time(model, tokenizer, convs, args.max_new_tokens))
    rows = [{"row": "transformers generate, one at a time", "seconds": seconds, "answers": reference}]
    for batch, share in ((1, True), (8, False), (8, True), (32, False), (32, True)):
        answers, seconds = timed(lambda: generate_ids(model, tokenizer, convs, args.max_new_tokens, batch_size=batch,
                                                      share_prefix=share))
        name = f"tunery generate_ids, batch {batch}" + ("" if share or batch == 1 else ", prefix not shared")
        rows.append({"row": name, "seconds": seconds, "answers": answers})
    if not args.no_llamacpp:
        answers, seconds = llamacpp_answers(model, tokenizer, convs, args.max_new_tokens, args.threads)
        rows.append({"row": "llama.cpp on a q8_0 GGUF export, one at a time", "seconds": seconds, "answers": answers})
    base = rows[0]["seconds"]
    print(f"{len(convs)} prompts, greedy, at most {args.max_new_tokens} new tokens, {args.threads} threads")
    print(f"{'row':<56}{'answers/s':>10}{'tokens/s':>10}{'same answers':>14}{'x one-at-a-time':>17}")
    for r in rows:
        tokens = sum(len(a) for a in r["answers"])
        same = sum(a == b for a, b in zip(r["answers"], reference))
        r |= {"answers_per_s": len(convs) / r["seconds"], "tokens_per_s": tokens / r["seconds"], "same": same,
              "speedup": base / r["seconds"]}
        print(f"{r['row']:<56}{r['answers_per_s']:>10.1f}{r['tokens_per_s']:>10.1f}{same:>10}/{len(convs):<3}"
              f"{r['speedup']:>15.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                    "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
