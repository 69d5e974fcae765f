"""Verification on the run's own task: does the exported file still do the job the run was trained for?

A seeded sample of the run's validation examples (the same files, or the same `data.val_split` split
with the same seed, as in training; the training examples when the run had no validation set;
`--verify-data FILE` to choose) is answered greedily twice: by the unmerged run (its base plus the
PEFT adapter, as trained, through transformers) and by the exported file through llama.cpp (the code
Ollama and llama-server run). Reported: the share of identical answers, and each grader's score on
both (the run's `eval.graders`, else exact match), in points (0-100). The verdict: the export fails
when a grader scores more than `margin` points lower through the export than on the run. The
logit comparison on fixed probe prompts (`verify.py`) stays as a secondary diagnostic.

Both sides get the same prompt token ids (the run's chat template, rendered by its tokenizer), one
prompt at a time (no padding), and stop at the run's stop tokens; answers are compared as token ids
and graded as decoded text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunery.errors import TuneryError

DEFAULT_SAMPLES = 32
DEFAULT_MARGIN_POINTS = 2.0


@dataclass
class TaskSample:
    """The examples to answer, where they came from, and how to grade them."""

    items: list  # tunery.trainers.watch.GraderItem
    source: str
    grader_specs: list
    max_new_tokens: int


def _validation_examples(cfg) -> tuple[list, str]:
    """The run's validation examples as training split them, else its training examples."""
    from tunery.data.dataset import drop_from_splits, load_examples, split_validation
    from tunery.data.problems import raise_if_errors

    data = cfg.data
    train, problems = load_examples(data.train, data.format, data.include, data.exclude)
    validation, more = load_examples(data.validation, data.format, data.include, data.exclude)
    raise_if_errors(problems + more)
    train, validation, _ = drop_from_splits(train, validation, data.drop_duplicates, data.near_duplicate_threshold)
    if data.validation:
        return validation, "validation files " + ", ".join(map(str, data.validation))
    if data.val_split > 0:
        train, validation = split_validation(train, data.val_split, cfg.training.seed)
        if validation:
            return validation, f"the run's validation split (data.val_split {data.val_split}, seed {cfg.training.seed})"
    return train, "training examples (the run has no validation set)"


def _missing_files(paths: list) -> list[str]:
    return [str(p) for p in paths if not Path(p).exists()]


def task_sample(run, verify_data: str | None, samples: int, seed: int = 0) -> TaskSample | str:
    """The seeded sample to verify on, or the reason there is none (a run without config or data)."""
    from tunery.data.dataset import load_examples
    from tunery.data.problems import raise_if_errors
    from tunery.trainers.watch import as_grader_item, records_of

    cfg = run.read_config()
    if verify_data:
        if not Path(verify_data).expanduser().exists():
            raise TuneryError(f"--verify-data {verify_data} does not exist", fix="name a file of conversations")
        examples, problems = load_examples([str(Path(verify_data).expanduser())], "auto")
        raise_if_errors(problems)
        source = str(verify_data)
    elif cfg is None:
        return "the run folder has no config.yaml, so its validation data is unknown (pass --verify-data FILE)"
    elif missing := _missing_files(list(cfg.data.train) + list(cfg.data.validation)):
        return f"the run's data {missing[0]} is not found here (pass --verify-data FILE)"
    else:
        examples, source = _validation_examples(cfg)
    examples = [e for e in examples if e.messages is not None and any(m.role == "assistant" for m in e.messages)]
    if not examples:
        return f"{source} holds no conversation with an assistant answer"
    if len(examples) > samples:
        keep = sorted(random.Random(seed).sample(range(len(examples)), samples))
        examples = [examples[i] for i in keep]
    items = [as_grader_item(e) for e in examples]
    for item, record in zip(items, records_of(examples)):
        item.record = record
    specs = list(cfg.eval.graders) if cfg is not None and cfg.eval.graders else ["exact"]
    max_new = cfg.eval.max_new_tokens if cfg is not None else 64
    return TaskSample(items, source, specs, max_new)


def answer_ids_with_model(model, tokenizer, sample: TaskSample) -> list[list[int]]:
    """Greedy answer ids of the unmerged run, one prompt at a time (no padding)."""
    from tunery.inference import generate_ids

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return [generate_ids(model, tokenizer, [item.prompt], max_new_tokens=sample.max_new_tokens, batch_size=1)[0]
            for item in sample.items]


def answer_ids_with_llama_cpp(path: Path, tokenizer, sample: TaskSample, adapter: Path | None = None,
                              timing: dict | None = None) -> list[list[int]]:
    """Greedy answer ids of the exported GGUF (with `adapter` applied) through llama.cpp, in a child
    process; raises `llamacpp.NotVerified` with the reason when llama.cpp cannot answer. `timing`
    receives the answers' wall time and token count (prompt processing included)."""
    from tunery.export import llamacpp
    from tunery.inference import prompt_ids, stop_token_ids

    if llamacpp.reader_name() is None:
        raise llamacpp.NotVerified("llama.cpp is not installed (pip install --no-deps llama-cpp-cffi==0.4.42)")
    rows = [prompt_ids(tokenizer, item.prompt) for item in sample.items]
    got = llamacpp.read_back_isolated(path, [], rows, sample.max_new_tokens, set(stop_token_ids(tokenizer)),
                                      adapter=adapter, with_logits=False)
    if timing is not None:
        timing["seconds"] = got.greedy_seconds
        timing["tokens"] = sum(len(ids) for ids in got.greedy)
    return got.greedy


def compare_on_task(sample: TaskSample, tokenizer, run_ids: list[list[int]], export_ids: list[list[int]],
                    reader: str, margin_points: float = DEFAULT_MARGIN_POINTS) -> dict:
    """The task record: identical answers, each grader's score on both sides, and the verdict."""
    from tunery.graders import Failures, parse_graders, score_batch

    graders = parse_graders(sample.grader_specs)
    refs = [item.reference for item in sample.items]
    records = [item.record for item in sample.items]
    where = [item.where for item in sample.items]
    failures = Failures(log=lambda _: None)
    texts = {side: [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answer_ids]
             for side, answer_ids in (("run", run_ids), ("export", export_ids))}
    scores, verdict = {}, []
    for grader in graders:
        run_score = 100 * _mean(score_batch(grader, texts["run"], refs, records, where, failures))
        export_score = 100 * _mean(score_batch(grader, texts["export"], refs, records, where, failures))
        drop = run_score - export_score
        scores[grader.label] = {"run": run_score, "export": export_score, "drop_points": drop}
        if drop > margin_points:
            verdict.append(f"{grader.label}: {export_score:.1f} through the export vs {run_score:.1f} on the run "
                           f"(a drop of {drop:.1f} points > margin {margin_points:g})")
    identical = sum(a == b for a, b in zip(run_ids, export_ids))
    differing = [{"where": item.where, "run": r, "export": e}
                 for item, r, e, a, b in zip(sample.items, texts["run"], texts["export"], run_ids, export_ids) if a != b]
    return {"ran": True, "source": sample.source, "examples": len(sample.items), "reader": reader,
            "graders": [g.label for g in graders], "max_new_tokens": sample.max_new_tokens,
            "identical_answers": identical, "identical_share": identical / max(1, len(sample.items)),
            "scores": scores, "margin_points": margin_points, "differing_examples": differing[:5],
            "grader_failures": failures.to_json(),
            "passed": not verdict, "failures": verdict}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def not_run(reason: str) -> dict:
    return {"ran": False, "why": f"task check not run: {reason}"}


def verify_on_task(sample: TaskSample | str, reference_answers: Callable[[], list[list[int]]],
                   export_answers: Callable[[], list[list[int]]], tokenizer, reader: str,
                   margin_points: float, log, timing: dict | None = None) -> dict:
    """Answer the sample both ways and compare; a status when there is no sample or no reader."""
    from tunery.export import llamacpp

    if isinstance(sample, str):
        return not_run(sample)
    log(f"answering {len(sample.items)} examples of {sample.source} with the run and through {reader} ...")
    try:
        exported = export_answers()
    except llamacpp.NotVerified as exc:
        return not_run(str(exc))
    record = compare_on_task(sample, tokenizer, reference_answers(), exported, reader, margin_points)
    if timing and timing.get("seconds"):
        # One sitting, the threads of OMP_NUM_THREADS: a figure of this machine at this moment.
        record["export_answer_tokens_per_s"] = timing["tokens"] / timing["seconds"]
        record["threads"] = llamacpp.threads_wanted()
    return record


def task_table(task: dict) -> list[str]:
    """The printed table: one row per grader, run vs export, and the identical-answer share."""
    if not task.get("ran"):
        return [f"  {task['why']}"]
    lines = [f"  task check on {task['examples']} examples of {task['source']} ({task['reader']}): "
             f"{'PASSED' if task['passed'] else 'FAILED'}",
             f"    {'grader':<16} {'run':>7} {'export':>7} {'drop':>7}"]
    for label, row in task["scores"].items():
        lines.append(f"    {label:<16} {row['run']:>7.1f} {row['export']:>7.1f} {row['drop_points']:>7.1f}")
    lines.append(f"    identical answers: {task['identical_answers']}/{task['examples']} "
                 f"({100 * task['identical_share']:.0f}%); margin {task['margin_points']:g} points")
    if "export_answer_tokens_per_s" in task:
        lines.append(f"    llama.cpp answered at {task['export_answer_tokens_per_s']:.1f} tokens/s "
                     f"({task['threads']} thread(s), prompts included; this machine, now)")
    return lines


def with_task_verdict(record: dict, task: dict) -> dict:
    """The export's verdict: on the task when its check ran (the probe figures then become diagnostics,
    kept under `probe_failures`), on the probes otherwise. A wrong template, tokenisation or stop token
    fails the export either way."""
    record = record | {"task": task}
    if not task.get("ran"):
        return record | {"verdict_on": "probes"}
    failures = list(record.get("structural_failures", [])) + [f"task: {f}" for f in task["failures"]]
    return record | {"verdict_on": "task", "probe_failures": record["failures"], "failures": failures,
                     "passed": not failures}
