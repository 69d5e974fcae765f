"""Serving load: tunery serve under N concurrent streaming clients, against one request at a time.

    python bench/serve_load.py [--clients 16] [--seconds 60] [--max-tokens 64] [--threads 2]
                               [--out bench/results/serve_load.json]

Two LoRA runs of the embedded SmolLM2-135M-Instruct (rank 16 on all linear layers, random weights,
seeded) are made in a temporary folder. Rows, each measured in this one sitting:

  tunery serve       `tunery serve` in its own process; N clients on loopback, each sending one
                     streamed chat request after another (stream_options.include_usage) for
                     `--seconds`, cycling over the two runs and the base; requests still running at the
                     end are waited for and counted. Time to first token is the first content chunk.
  generate           the same prompts, one request at a time, through transformers' `generate` with
                     one of the runs loaded alone (tunery.inference.generate_ids, KV cache, greedy).
  llama.cpp          the same run merged and exported to GGUF (f16, tunery's own writer), one request at
                     a time through llama.cpp's C API (the prebuilt library the export check uses),
                     greedy, where llama-cpp-cffi is installed.

Every row decodes greedily with the same `--max-tokens` and stops at the chat template's end token,
so answers have the lengths the model gives them; throughput is generated tokens over wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Lena Park needs a room in Oslo for 2 nights. Extract the booking as JSON.",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Give me three tips for a job interview.",
    "Ben Kato books 4 nights in Bologna. Who, where and how long?",
    "Explain what a hash table is in two sentences.",
    "Name a primary colour and a fruit of that colour.",
    "Translate 'good morning' into French and Spanish.",
]


def make_runs(folder: Path, names=("alpha", "beta")) -> list[Path]:
    """LoRA runs of the embedded model with small random adapters (seeded), in tunery's run layout."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunery.models.load import load_model, load_tokenizer
    from tunery.runfolder import RunFolder

    tokenizer = load_tokenizer(MODEL)
    runs = []
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        model = get_peft_model(load_model(MODEL), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                             init_lora_weights=False))
        with torch.no_grad():  # small, so answers stay answers
            for pname, param in model.named_parameters():
                if "lora_B" in pname:
                    param.mul_(0.02)
        run = RunFolder(folder / name)
        model.save_pretrained(run.adapter)
        tokenizer.save_pretrained(run.tokenizer)
        run.update_info(base_model=MODEL, adapter="lora", status="finished", method="sft")
        runs.append(run.root)
    return runs


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


# -- the served row -------------------------------------------------------------------------------

async def one_request(http, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens, error = None, 0, None
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}", "latency": time.perf_counter() - start}
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]["message"]
            elif event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
    return {"ttft": first, "latency": time.perf_counter() - start, "tokens": tokens, "error": error}


async def drive(url: str, clients: int, seconds: float, max_tokens: int, models: list[str]) -> dict:
    import httpx

    results: list[dict] = []
    stop_at = time.perf_counter() + seconds

    async def client(index: int, http) -> None:
        k = 0
        while time.perf_counter() < stop_at:
            model = models[(index + k) % len(models)]
            prompt = PROMPTS[(index * 3 + k) % len(PROMPTS)]
            try:
                results.append(await one_request(http, url, model, prompt, max_tokens))
            except Exception as exc:  # noqa: BLE001 - every failure is counted as an error of the row
                results.append({"error": f"{type(exc).__name__}: {exc}", "latency": 0.0})
            k += 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    done = [r for r in results if not r.get("error")]
    tokens = sum(r["tokens"] for r in done)
    ttfts = [r["ttft"] for r in done if r["ttft"] is not None]
    latencies = [r["latency"] for r in done]
    return {"row": f"tunery serve, {clients} clients, {len(models)} models", "clients": clients, "wall_s": wall,
            "requests": len(done), "errors": len(results) - len(done), "output_tokens": tokens,
            "requests_per_s": len(done) / wall, "output_tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p95_s": percentile(ttfts, 0.95),
            "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
            "latency_p99_s": percentile(latencies, 0.99),
            "error_samples": [r["error"] for r in results if r.get("error")][:3]}


def served_row(runs: list[Path], args) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "tunery.cli.main", "serve", *map(str, runs), "--port", "0", "--threads",
           str(args.threads), "--max-batch", str(args.clients), "--max-tokens", str(args.max_tokens)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("tunery serve exited early")
            if " on http://" in line:
                url = line.split(" on ")[1].split("/v1")[0]
        models = ["alpha", "beta", MODEL]
        asyncio.run(drive(url, 1, 1, 4, models))  # warm up every model once
        return asyncio.run(drive(url, args.clients, args.seconds, args.max_tokens, models))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


# -- one request at a time --------------------------------------------------------------------------

def sequential(row: str, answer, seconds: float) -> dict:
    """Answer the prompts one after another for `seconds` (the last one finishes); answer(prompt) -> tokens."""
    latencies, tokens = [], 0
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        tokens += answer(PROMPTS[k % len(PROMPTS)])
        latencies.append(time.perf_counter() - began)
        k += 1
    wall = time.perf_counter() - start
    return {"row": row, "clients": 1, "wall_s": wall, "requests": len(latencies), "errors": 0,
            "output_tokens": tokens, "requests_per_s": len(latencies) / wall, "output_tokens_per_s": tokens / wall,
            "ttft_p50_s": None, "ttft_p95_s": None, "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95), "latency_p99_s": percentile(latencies, 0.99)}


def generate_row(run: Path, args) -> dict:
    import torch

    from tunery.inference import generate_ids, load_run

    torch.set_num_threads(args.threads)
    model, tokenizer = load_run(run)
    generate_ids(model, tokenizer, [[{"role": "user", "content": "hi"}]], max_new_tokens=2)  # warm up

    def answer(prompt: str) -> int:
        ids = generate_ids(model, tokenizer, [[{"role": "user", "content": prompt}]], max_new_tokens=args.max_tokens)
        return len(ids[0]) + (len(ids[0]) < args.max_tokens)  # the end token is generated too

    return sequential("transformers generate, one request at a time", answer, args.seconds)


def llama_row(run: Path, args, folder: Path) -> dict | None:
    from tunery.export.llamacpp import LlamaCpp, load_api

    if load_api() is None:
        return None
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import pre_tokenizer_name, read_vocab
    from tunery.export.gguf_writer import write_gguf
    from tunery.export.merge import merged_model
    from tunery.inference import stop_token_ids
    from tunery.runfolder import RunFolder

    from transformers import AutoTokenizer

    folder_run = RunFolder(run)
    tokenizer = AutoTokenizer.from_pretrained(folder_run.tokenizer)
    model, _ = merged_model(folder_run, folder_run.read_info(), tokenizer)
    path = folder / "alpha-f16.gguf"
    write_gguf(model, read_vocab(tokenizer, model.config.vocab_size, chat_template_of(tokenizer)), path, "f16",
               name="alpha", pre=pre_tokenizer_name(tokenizer)[0])
    stops = set(stop_token_ids(tokenizer, model))
    del model
    llm = LlamaCpp(path, n_ctx=512, threads=args.threads)
    try:
        def answer(prompt: str) -> int:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            out = llm.greedy(llm.tokenize(text), args.max_tokens, stops)
            return len(out) + (len(out) < args.max_tokens)

        answer("hi")
        return sequential("llama.cpp (GGUF f16 of the same run), one request at a time", answer, args.seconds)
    finally:
        llm.close()


# -- report ----------------------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| row | clients | requests | requests/s | output tokens/s | TTFT p50 / p95 (s) | "
             "latency p50 / p95 / p99 (s) | errors |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['clients']} | {r['requests']} | {fmt(r['requests_per_s'])} | "
                     f"{fmt(r['output_tokens_per_s'], 1)} | {fmt(r['ttft_p50_s'])} / {fmt(r['ttft_p95_s'])} | "
                     f"{fmt(r['latency_p50_s'])} / {fmt(r['latency_p95_s'])} / {fmt(r['latency_p99_s'])} | "
                     f"{r['errors']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix="tunery-serve-bench-") as tmp:
        runs = make_runs(Path(tmp))
        rows = [served_row(runs, args), generate_row(runs[0], args)]
        llama = llama_row(runs[0], args, Path(tmp))
        rows += [llama] if llama else []
    served, one = rows[0], rows[1]
    ratio = served["output_tokens_per_s"] / one["output_tokens_per_s"]
    print(table(rows))
    print(f"\ntunery serve: {ratio:.1f}x the output tokens/s of one-at-a-time generate "
          f"(goal: 4x); TTFT p95 {served['ttft_p95_s']:.2f} s (goal: under 2 s); {served['errors']} errors; "
          f"{os.cpu_count()} CPUs, {args.threads} torch threads")
    if llama is None:
        print("llama.cpp row skipped: llama-cpp-cffi is not installed (pip install --no-deps llama-cpp-cffi==0.4.42)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"settings": vars(args) | {"out": str(args.out)}, "rows": rows, "serve_vs_generate": ratio,
              "load_average": os.getloadavg()}
    from tunery.runfolder import write_text_atomic

    write_text_atomic(args.out, json.dumps(record, indent=2, default=str) + "\n")
    return 0 if served["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
