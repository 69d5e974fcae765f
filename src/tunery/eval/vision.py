"""`tunery eval` on image records: the tuned vision run against its base, zero-shot and few-shot.

Each held-out record's prompt (its turns before the last answer, images included) is rendered by the
model's own processor and answered greedily (`tunery.vision.inference`); the answers are scored by the
usual graders (exact match by default) and the reference's loss given the prompt is measured on the
same tensors. Rows: the tuned run(s); the base zero-shot; the base few-shot, where k training examples
(drawn once with the seed, never the evaluated record itself) go before the question as earlier turns
with their images, when the processor takes several images in one prompt. Retrieval rows rank
training examples by their text, which says little about an image question: they are skipped, and
the report says why. The report is the text evaluation's: eval.json, the table, intervals, the paired
test of the best row against each other one, disagreements with the base, overfitting signals.
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tunery import __version__
from tunery.errors import TuneryError
from tunery.eval import aggregate, signals
from tunery.eval.baselines import System, fixed_shots
from tunery.vision.images import MAX_PIXELS
from tunery.vision.records import VisionExample, VisionMessage, load_vision_examples

SKIPPED_RETRIEVAL = ("retrieval rows are skipped for image records: they rank training examples by text, "
                     "and an image question's text says little about its image")


@dataclass
class VisionItem:
    """One held-out image record: the prompt turns, the reference answer, the record as read."""

    id: str
    messages: list[VisionMessage]
    reference: str
    example: VisionExample
    record: dict = field(default_factory=dict)
    graders: list | None = None

    @property
    def prompt(self) -> list[dict]:
        """The prompt as text dicts (images written `<image>`), for the report's disagreements."""
        return [{"role": m.role, "content": "".join("<image>" if k == "image" else v for k, v in m.parts)}
                for m in self.messages]


def split_vision(example: VisionExample) -> tuple[list[VisionMessage], str]:
    """(prompt turns, reference text): the last assistant turn and what comes before it."""
    last = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=None)
    if last is None or not any(m.role == "user" for m in example.messages[:last]):
        raise TuneryError(f"{example.location}: needs a user message followed by an assistant message "
                          "(the reference answer)")
    answer = "".join(v for k, v in example.messages[last].parts if k == "text")
    return example.messages[:last], answer


def read_vision_items(path: str, limit: int | None = None) -> list[VisionItem]:
    from tunery.data.problems import raise_if_errors
    from tunery.data.readers import read_records

    examples, problems = load_vision_examples([path])
    raise_if_errors(problems, what=path)
    records = dict(read_records(path)[0])
    items = []
    for example in examples[:limit] if limit is not None else examples:
        prompt, reference = split_vision(example)
        record = records.get(example.line)
        items.append(VisionItem(example.location, prompt, reference, example,
                                dict(record) if isinstance(record, dict) else {}))
    if not items:
        raise TuneryError(f"{path} holds no evaluation example")
    return items


def example_key(example: VisionExample) -> tuple:
    """What makes two image records the same: their turns' text and the bytes of their images."""
    def part(kind, value):
        if kind == "text":
            return value
        data = Path(value.path).read_bytes() if value.path and Path(value.path).is_file() else (value.data or b"")
        return hashlib.sha256(data).hexdigest()
    return tuple((m.role, tuple(part(k, v) for k, v in m.parts)) for m in example.messages)


def shot_turns(example: VisionExample) -> list[VisionMessage]:
    """A training example as earlier turns: its user and assistant turns, images kept, system dropped."""
    prompt, answer = split_vision(example)
    return [m for m in prompt if m.role != "system"] + [VisionMessage("assistant", (("text", answer),))]


def with_vision_shots(messages: list[VisionMessage], shots: list[VisionExample]) -> list[VisionMessage]:
    lead = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    return messages[:lead] + [m for shot in shots for m in shot_turns(shot)] + messages[lead:]


def vision_prompts(system: System, items: list[VisionItem], pool: list[VisionExample], seed: int = 0):
    """(prompt turns of each item under `system`, pool indices used as shots for each)."""
    if system.prompting == "zero-shot":
        return [item.messages for item in items], [[] for _ in items]
    if system.prompting != "few-shot":
        raise ValueError(f"unknown prompting '{system.prompting}' for image records")
    keys = [example_key(e) for e in pool]
    drawn = fixed_shots(pool, system.k + len(items), seed)
    prompts, used = [], []
    for item in items:
        own = example_key(item.example)
        chosen = [i for i in drawn if keys[i] != own][: system.k]
        prompts.append(with_vision_shots(item.messages, [pool[i] for i in chosen]))
        used.append(chosen)
    return prompts, used


def plan_vision_systems(runs: list[str], bases: list[str], baselines: tuple[str, ...], k: int,
                        pool: list[VisionExample], log) -> tuple[list[System], list[str]]:
    """(rows to evaluate, why rows asked for were skipped): the text evaluation's rows without the
    retrieval ones, which image records cannot take."""
    from tunery.eval.baselines import plan_systems

    skipped = [SKIPPED_RETRIEVAL] if {"rag", "tuned+rag"} & set(baselines) else []
    if "few" in baselines and not pool:
        skipped.append("few-shot rows are skipped: no training examples are known (pass --train FILE)")
    kept = tuple(b for b in baselines if b not in ("rag", "tuned+rag"))
    systems = plan_systems(runs, bases, kept, k, retrieval="", has_pool=bool(pool))
    for reason in skipped:
        log(f"note: {reason}")
    return systems, skipped


@torch.inference_mode()
def vision_answer_loss(model, processor, prompts: list[list[VisionMessage]], references: list[str],
                       max_length: int, max_pixels: int) -> dict:
    """Mean loss per reference token (the last answer and its end-of-turn token) given each prompt."""
    from tunery.losses.lm import token_ce_sum
    from tunery.models.forward import next_token_targets
    from tunery.vision.render import collate_vision, render_vision

    total, count = 0.0, 0
    device = next(model.parameters()).device
    for prompt, reference in zip(prompts, references):
        example = VisionExample("eval", 0, list(prompt) + [VisionMessage("assistant", (("text", reference),))])
        batch = collate_vision([render_vision(example, processor, "last", max_length, max_pixels)], processor, max_pixels)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        positions, targets = next_token_targets(batch["labels"])
        loss, n = token_ce_sum(model(**inputs).logits[positions.to(device)], targets.to(device))
        total, count = total + float(loss), count + int(n)
    mean = total / count if count else math.nan
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)) if count else math.nan, "tokens": count}


def answer_all(model, processor, prompts: list[list[VisionMessage]], opts, max_pixels: int) -> list[dict]:
    """Per prompt: the answer text, tokens generated and seconds (one prompt at a time)."""
    from tunery.vision.inference import generate_vision_ids

    out = []
    for n, prompt in enumerate(prompts):
        began = time.perf_counter()
        ids = generate_vision_ids(model, processor, [prompt], opts.max_new_tokens, opts.temperature, opts.seed + n,
                                  max_pixels)[0]
        out.append({"answer": processor.tokenizer.decode(ids, skip_special_tokens=True).strip(), "tokens": len(ids),
                    "seconds": time.perf_counter() - began})
    return out


def takes_prompt(processor, prompt: list[VisionMessage], max_pixels: int) -> str | None:
    """None when the processor renders the prompt (several images in one prompt included), else why not."""
    from tunery.vision.inference import vision_inputs

    try:
        vision_inputs(processor, prompt, max_pixels)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_vision_system(system: System, model, processor, items, graders, pool, opts, max_pixels: int, failures):
    """Answer every item with one system, score the answers and the references' loss; None (and why)
    when the processor cannot take the system's prompts (several images in one prompt)."""
    from tunery.eval.evaluate import score_answers

    prompts, shots = vision_prompts(system, items, pool, opts.seed)
    if system.prompting == "few-shot":
        why = takes_prompt(processor, prompts[0], max_pixels)
        if why is not None:
            return None, (f"'{system.name}' is skipped: this model's processor does not take several images in one "
                          f"prompt ({why})")
    answers = answer_all(model, processor, prompts, opts, max_pixels)
    score_answers(items, answers, graders, failures)
    for item, answer, used in zip(items, answers, shots):
        answer["id"], answer["shots"] = item.id, [pool[i].location for i in used]
    loss = vision_answer_loss(model, processor, prompts, [i.reference for i in items], opts.max_length, max_pixels)
    return {"system": system.to_json(), "loss": loss, "per_example": answers}, None


def refuse_unsupported(opts) -> None:
    if opts.choices is not None or opts.json_schema is not None:
        raise TuneryError("--choices and --json-schema are not supported on image records yet",
                          fix="evaluate without them (exact match and the other graders score free answers)")


def evaluate_vision(targets: list[str], data: str, opts, log: Callable[[str], None] = print) -> dict:
    """`tunery eval` on a file of image records (see the module's note); the eval.json dict."""
    from tunery.eval.evaluate import _gate_thresholds, _grader_specs, gate_result, resolve_targets
    from tunery.eval.items import missing_fields
    from tunery.graders import Failures, parse_graders
    from tunery.vision.inference import is_vision_run, load_vision_target, run_vision_section

    refuse_unsupported(opts)
    if not targets:
        raise TuneryError("name at least one run folder or base model to evaluate")
    started = time.monotonic()
    runs, bases = resolve_targets(targets)
    for run in runs:
        if not is_vision_run(run.path):
            raise TuneryError(f"{data} holds image records, but {run.path} is not a vision run (method: vision)",
                              fix="evaluate a run trained with method: vision, or a file of text records")
    items = read_vision_items(data, opts.limit)
    graders = parse_graders(_grader_specs(opts, runs, items))
    thresholds = _gate_thresholds(opts.gates, graders, log)
    lacking = missing_fields(graders, items)
    if lacking:
        raise TuneryError(lacking, fix="add the field to every record, or choose other graders")
    labels = [g.label for g in graders]
    pool, pool_files = vision_pool(runs, opts, log)
    vision = run_vision_section(runs[0].path) if runs else None
    max_pixels = vision.max_image_pixels if vision is not None else MAX_PIXELS
    systems, skipped = plan_vision_systems([r.path for r in runs], bases, tuple(opts.baselines), opts.k, pool, log)
    failures, rows = Failures(log), {}
    for key in dict.fromkeys(s.model for s in systems):
        log(f"loading {key} ...")
        model, processor = load_vision_target(key, vision)
        for system in [s for s in systems if s.model == key]:
            log(f"answering {len(items)} image examples: {system.name}")
            row, why = run_vision_system(system, model, processor, items, graders, pool, opts, max_pixels, failures)
            if row is None:
                log(f"note: {why}")
                skipped.append(why)
            else:
                rows[system.name] = row
        del model, processor
        gc.collect()
    ordered = [aggregate.summarize(rows[s.name], labels, opts.seed) for s in systems if s.name in rows]
    result = assemble_vision(ordered, labels, items, runs, pool, pool_files, data, opts, skipped)
    result["grader_failures"] = failures.to_json()
    if thresholds:
        result["gate"] = gate_result(ordered[0], thresholds)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def vision_pool(runs, opts, log) -> tuple[list[VisionExample], list[str]]:
    """The image examples few-shot draws from: --train, else the first run's training files."""
    from tunery.data.problems import raise_if_errors

    files = opts.train or (runs[0].train_files if runs else [])
    missing = [f for f in files if not Path(f).is_file()]
    if missing and not opts.train:
        log(f"warning: the run's training file {missing[0]} is not here, so there are no examples for few-shot "
            "rows; pass --train FILE to add them")
        return [], []
    examples, problems = load_vision_examples(list(files))
    raise_if_errors(problems)
    return examples, list(files)


def vision_leakage(items: list[VisionItem], pool: list[VisionExample]) -> dict:
    """Exact overlap (same text and same image bytes) between held-out and training records."""
    if not pool:
        return {"checked": False, "exact": 0, "near": 0, "threshold": None, "pairs": [], "warning": None}
    keys = {example_key(e): e.location for e in pool}
    pairs = [{"eval": i.id, "train": keys[k], "similarity": 1.0, "exact": True}
             for i in items if (k := example_key(i.example)) in keys]
    warning = (f"{len(pairs)} evaluation example(s) of {len(items)} also appear in the training data (same text "
               "and image bytes): scores on them measure memory, not skill") if pairs else None
    return {"checked": True, "exact": len(pairs), "near": 0, "threshold": "same text and image bytes",
            "pairs": pairs, "max_similarity": None, "mean_nearest_similarity": None, "warning": warning}


def assemble_vision(rows, labels, items, runs, pool, pool_files, data, opts, skipped) -> dict:
    """The eval.json dict, in the shape of the text evaluation's (`tunery.eval.evaluate._assemble`)."""
    from tunery.eval.advise import summary_sentence

    primary = labels[0]
    best, comparisons = aggregate.best_and_comparisons(rows, primary, opts.seed)
    result = {
        "tunery_version": __version__, "kind": "vision",
        "data": str(data), "n_examples": len(items), "targets": [r.path for r in runs],
        "graders": labels, "primary": primary, "pool_files": pool_files, "pool_size": len(pool),
        "generation": {"max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature, "seed": opts.seed,
                       "batch_size": 1},
        "systems": rows, "best": best["system"]["name"] if best else None, "comparisons": comparisons,
        "disagreements": {}, "forgetting": {}, "skipped": skipped,
        "leakage": vision_leakage(items, pool),
        "overfitting": {r.path: signals.overfitting(r.metrics) for r in runs},
        "configs": {r.path: r.config for r in runs},
    }
    base_zero = next((r for r in rows if not r["system"]["tuned"] and r["system"]["prompting"] == "zero-shot"), None)
    for run in runs:
        tuned = next((r for r in rows if r["system"]["model"] == run.path), None)
        if base_zero is not None and tuned is not None:
            result["disagreements"][run.path] = aggregate.disagreements(tuned, base_zero, items, primary)
    warnings = [result["leakage"]["warning"]] + [o["warning"] for o in result["overfitting"].values()]
    if len(items) < 30:
        warnings.append(f"only {len(items)} evaluation examples: intervals are wide and small differences cannot "
                        "be told apart")
    result["warnings"] = [w for w in warnings if w] + skipped
    result["summary"] = summary_sentence(result)
    return result
