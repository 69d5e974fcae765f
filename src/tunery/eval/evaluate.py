"""`tunery eval`: tuned vs base vs prompting vs retrieval on the same examples, plus forgetting,
leakage and overfitting signals. Returns one dict, which is eval.json and the source of report.html.

Order of work: read the examples, plan the rows, then load one model at a time (a run's LoRA weights
come with their own copy of the base model, so two would double the memory), answer with it under
every prompting that uses it, score the probe with it, and free it.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunery.config import defaults
from tunery import __version__
from tunery.data.messages import Example
from tunery.data.retrieval_aug import query_of
from tunery.errors import TuneryError
from tunery.eval import aggregate, signals
from tunery.eval.baselines import DEFAULT_BASELINES, RUN_RETRIEVAL, System, plan_systems, prompts_for
from tunery.eval.items import EvalItem, load_conversations, missing_fields, read_eval_items
from tunery.graders import Failures, Grader, gate, parse_gate, parse_graders, score_all, score_batch
from tunery.trainers import reward_grader  # noqa: F401  installs the reward_model grader's scorer

BUILTIN_PROBE = Path(__file__).resolve().parent / "assets" / "probe.jsonl"


@dataclass
class EvalOptions:
    """Everything `tunery eval` can be told; defaults are the CLI's."""

    graders: list[str] = field(default_factory=list)  # empty: chosen from the references
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    k: int = defaults.SHOTS
    retrieval: str = defaults.RETRIEVAL
    train: list[str] = field(default_factory=list)  # example pool; empty: the first run's training files
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = defaults.EVAL_BATCH_SIZE
    limit: int | None = None
    probe: str | None = "builtin"  # builtin, a file in the eval format with graders per record, or None
    probe_max_new_tokens: int = 32
    max_length: int = defaults.MAX_LENGTH
    near_threshold: float = signals.NEAR_THRESHOLD
    gates: list[str] = field(default_factory=list)  # "exact>=0.8": checked on the first row (the first run)
    choices: str | list[str] | None = None  # "auto" or a list: constrained answers (default: the run's own)
    json_schema: str | None = None  # a JSON schema file: constrained answers (default: the run's own)


@dataclass
class RunTarget:
    path: str
    base_model: str
    train_files: list[str]
    fmt: str
    metrics: list[dict]
    config: dict


def read_run_target(path: Path, info: dict | None = None) -> RunTarget:
    """Base model, training files and metrics of a run folder (from run.json, or its `info` when already
    read, and config.yaml)."""
    from tunery.inference import read_run_info
    from tunery.runfolder import RunFolder

    folder = RunFolder(path)
    info = info if info is not None else read_run_info(path)
    typed = folder.read_config()
    config = typed.model_dump(mode="json") if typed is not None else {}
    data = config.get("data") or {}
    return RunTarget(str(path), info["base_model"], list(data.get("train") or []), data.get("format", "auto"),
                     folder.read_metrics(), config)


def resolve_targets(targets: list[str]) -> tuple[list[RunTarget], list[str]]:
    """(runs, base models): base models named directly plus each run's base, without repeats."""
    from tunery.eval.targets import split_targets

    runs, bases = split_targets(targets, read_run_target)
    return [run for _, run in runs], bases


def auto_graders(items: list[EvalItem]) -> list[str]:
    """`exact`, plus `json` and `json_match` when every reference is a JSON object or array."""
    specs = ["exact"]
    refs = [i.reference.strip() for i in items]
    if refs and all(r[:1] in "{[" for r in refs):
        try:
            [json.loads(r) for r in refs]
            specs += ["json", "json_match"]
        except json.JSONDecodeError:
            pass
    return specs


def _grader_specs(opts: EvalOptions, runs: list[RunTarget], items: list[EvalItem]) -> list[str]:
    """--graders, else the first run's `eval.graders`, else chosen from the references (none when every
    record brings its own graders)."""
    configured = ((runs[0].config.get("eval") or {}).get("graders") if runs else None) or []
    if opts.graders or configured:
        return list(opts.graders or configured)
    return [] if all(i.graders for i in items) else auto_graders(items)


def score_answers(items: list[EvalItem], answers: list[dict], graders: list[Grader],
                  failures: Failures | None = None) -> None:
    """Attach {label: score} to each answer; records with graders of their own get the `own` column.
    Each grader scores the whole batch at once (code_tests runs the programs in parallel); a grader
    that cannot score a record gives it 0 and reports it to `failures`."""
    texts = [a["answer"] for a in answers]
    refs, records, where = [i.reference for i in items], [i.record for i in items], [i.id for i in items]
    columns = {g.label: score_batch(g, texts, refs, records, where, failures) for g in graders}
    for n, (item, answer) in enumerate(zip(items, answers)):
        scores = {label: column[n] for label, column in columns.items()}
        if item.graders:
            own = score_all(item.graders, answer["answer"], item.reference, item.record, item.id, failures)
            scores[aggregate.OWN] = min(own.values())
        answer["scores"] = scores


def run_system(system: System, model, tokenizer, items: list[EvalItem], graders: list[Grader],
               pool: list[Example], retriever, opts: EvalOptions, max_new_tokens: int,
               failures: Failures | None = None, probe: bool = False, index=None, constraint=None) -> dict:
    """Answer every item with one system; score the answers and the references' loss. For the
    forgetting probe (`probe`), a record's `max_new_tokens` replaces `max_new_tokens` for its answer,
    and the references' loss is not computed: the probe's own graders are its figure, and the loss
    pass would cost about half as much again as the answers (loss None). `index` is the run's own
    retrieval index (the "run-retrieval" row); with a `constraint`, the answers are decoded under it and
    the row also says how many answers decoded without it would have broken it."""
    from tunery.eval.measure import answer_loss, generate_timed

    if system.prompting == RUN_RETRIEVAL:
        prompts = [index.augment(item.prompt) for item in items]
        wheres = [[index.documents[i]["where"] for i in index.neighbours(query_of(item.prompt))[::-1]]
                  for item in items]
    else:
        prompts, shots = prompts_for(system, items, pool, retriever, opts.seed)
        wheres = [[pool[i].location for i in used] for used in shots]
    if probe:
        answers = _answers_by_cap(model, tokenizer, items, prompts, max_new_tokens, opts)
    else:
        answers = generate_timed(model, tokenizer, prompts, max_new_tokens, opts.temperature, opts.seed,
                                 opts.batch_size, **({"constraint": constraint} if constraint is not None else {}))
    score_answers(items, answers, graders, failures)
    for item, answer, used in zip(items, answers, wheres):
        answer["id"] = item.id
        answer["shots"] = used
    loss = None if probe else answer_loss(model, tokenizer, prompts, [i.reference for i in items], opts.max_length,
                                          opts.batch_size)
    row = {"system": system.to_json(), "loss": loss, "per_example": answers}
    if constraint is not None and not probe:
        row["constraint"] = unconstrained_validity(model, tokenizer, prompts, answers, constraint, max_new_tokens, opts)
    return row


def unconstrained_validity(model, tokenizer, prompts, answers: list[dict], constraint, max_new_tokens: int,
                           opts: EvalOptions) -> dict:
    """Answer the same prompts without the constraint (a second generation pass) and count the answers
    that would have broken it; each per-example answer keeps its unconstrained text."""
    from tunery.eval.measure import generate_timed

    free = generate_timed(model, tokenizer, prompts, max_new_tokens, opts.temperature, opts.seed, opts.batch_size)
    invalid = 0
    for answer, plain in zip(answers, free):
        answer["unconstrained"] = plain["answer"]
        invalid += not constraint.is_valid(plain["answer"])
    return {"label": constraint.label, "n": len(answers), "invalid_unconstrained": invalid,
            "invalid_share": invalid / len(answers) if answers else 0.0}


def item_cap(item: EvalItem, default: int) -> int:
    """The most tokens an item's answer may take: its record's `max_new_tokens`, else `default`."""
    cap = item.record.get("max_new_tokens")
    if cap is None:
        return default
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise TuneryError(f"{item.id}: max_new_tokens must be a whole number of at least 1 (got {cap!r})")
    return cap


def _answers_by_cap(model, tokenizer, items: list[EvalItem], prompts: list, default: int, opts: EvalOptions) -> list[dict]:
    """Answers in item order, generated in groups of equal token cap: a batch waits for its longest
    answer, so one-word facts are not held up by a JSON object that may take 40 tokens."""
    from tunery.eval import measure

    caps = [item_cap(item, default) for item in items]
    answers: list[dict | None] = [None] * len(items)
    for cap in sorted(set(caps)):
        where = [n for n, c in enumerate(caps) if c == cap]
        got = measure.generate_timed(model, tokenizer, [prompts[n] for n in where], cap, opts.temperature,
                                     opts.seed, opts.batch_size)
        for n, answer in zip(where, got):
            answers[n] = answer
    return answers


def load_target(key: str, runs: dict[str, RunTarget]):
    """(model, tokenizer) of a run or a base model. A LoRA run is merged into its base first: the
    same function, without one adapter detour per linear layer at every generated token."""
    from tunery.inference import load_for_inference, load_run

    if key not in runs:
        return load_for_inference(key)
    model, tokenizer = load_run(Path(key))
    if hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False):
        model = model.merge_and_unload()
    model.tunery_run = key  # provenance: which run these merged weights came from
    return model, tokenizer


def _pool(runs: list[RunTarget], opts: EvalOptions, log) -> tuple[list[Example], list[str]]:
    """The examples few-shot and retrieval draw from: --train, else the first run's training files.

    A run folder copied to another machine may name training files that are not there: then only
    zero-shot rows are possible, and the log says why (files given with --train must exist).
    """
    files = opts.train or (runs[0].train_files if runs else [])
    fmt = "auto" if opts.train or not runs else runs[0].fmt
    missing = [f for f in files if not Path(f).is_file()]
    if missing and not opts.train:
        log(f"warning: the run's training file {missing[0]} is not here, so there are no examples for "
            "few-shot and retrieval rows; pass --train FILE to add them")
        return [], []
    return [e for f in files for e in load_conversations(f, fmt)], files


def evaluate(targets: list[str], data: str, opts: EvalOptions | None = None,
             log: Callable[[str], None] = print, items: list[EvalItem] | None = None,
             pool: list[Example] | None = None, pool_files: list[str] | None = None) -> dict:
    """Evaluate run folders and/or base models on `data` against the baselines; the eval.json dict.

    `items` and `pool` replace reading `data` and the training files (`tunery advise` splits one file).
    A file of image records is answered by the runs' processors (`tunery.eval.vision`), a file of
    preference pairs is scored by `tunery.eval.pairs` instead (which answer each model prefers),
    a file of raw text by `tunery.eval.text` (held-out perplexity before and after).
    """
    opts = opts or EvalOptions()
    if items is None:
        from tunery.vision.lint import is_vision_data

        if is_vision_data([data]):  # image records: answered by the runs' processors (tunery.eval.vision)
            from tunery.eval.vision import evaluate_vision

            return evaluate_vision(targets, data, opts, log)
        from tunery.eval.pairs import evaluate_pairs, is_pairs_file

        if is_pairs_file(data):
            return evaluate_pairs(targets, data, opts, log)
        from tunery.eval.text import evaluate_text, is_text_file

        if is_text_file(data):
            return evaluate_text(targets, data, opts, log)
    if not targets:
        raise TuneryError("name at least one run folder or base model to evaluate")
    started = time.monotonic()
    runs, bases = resolve_targets(targets)
    items = items if items is not None else read_eval_items(data, limit=opts.limit)
    graders = parse_graders(_grader_specs(opts, runs, items))
    thresholds = _gate_thresholds(opts.gates, graders, log)
    lacking = missing_fields(graders, items)
    if lacking:
        raise TuneryError(lacking, fix="add the field to every record, or choose other graders")
    failures = Failures(log)
    sandbox = _sandbox_layers(graders, items, log)
    labels = [g.label for g in graders] + ([aggregate.OWN] if any(i.graders for i in items) else [])
    if pool is None:
        pool, pool_files = _pool(runs, opts, log)
    setups = _answer_setups(runs)
    indexed = {path: (index.method, index.k) for path, (index, _) in setups.items() if index is not None}
    constraint = _constraint(opts, runs, setups, pool, log)
    systems = plan_systems([r.path for r in runs], bases, tuple(opts.baselines), opts.k, opts.retrieval, bool(pool),
                           indexed)
    probe_items = _probe_items(opts)
    retriever = _retriever(systems, pool, opts, log)
    by_run = {r.path: r for r in runs}
    rows, probes = {}, {}
    for key in dict.fromkeys([s.model for s in systems] + (bases if probe_items else [])):
        log(f"loading {key} ...")
        model, tokenizer = load_target(key, by_run)
        for system in [s for s in systems if s.model == key]:
            log(f"answering {len(items)} examples: {system.name}")
            index = setups[key][0] if key in setups else None
            rows[system.name] = run_system(system, model, tokenizer, items, graders, pool, retriever, opts,
                                           opts.max_new_tokens, failures, index=index, constraint=constraint)
        if probe_items:
            log(f"forgetting probe ({len(probe_items)} items) on {key}")
            probes[key] = run_system(System("probe", key, key in by_run, "zero-shot"), model, tokenizer,
                                     probe_items, [], [], None, opts, opts.probe_max_new_tokens, failures,
                                     probe=True)
        del model, tokenizer
        gc.collect()
    ordered = [aggregate.summarize(rows[s.name], labels, opts.seed) for s in systems]
    result = _assemble(ordered, labels, items, runs, pool, pool_files, probes, probe_items, data, opts)
    result["grader_failures"] = failures.to_json()
    result["warnings"] += [f"grader {label} could not score {f['count']} answer(s), which scored 0; the first: "
                           f"{f['first']}" for label, f in result["grader_failures"].items()]
    if sandbox is not None:
        result["sandbox"] = sandbox
    if thresholds:
        result["gate"] = gate_result(ordered[0], thresholds)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _answer_setups(runs: list[RunTarget]) -> dict:
    """{run path: (its retrieval index, its answer constraint)}, as saved in each run folder."""
    from tunery.inference import answer_setup

    return {r.path: answer_setup(r.path) for r in runs}


def _constraint(opts: EvalOptions, runs: list[RunTarget], setups: dict, pool: list[Example], log):
    """The constraint every row answers under: --choices / --json-schema, else the first run's own
    (answers.json); None for free answers. `auto` takes the final answers of the example pool."""
    from tunery.constrain import resolve

    if opts.choices is not None or opts.json_schema is not None:
        from tunery.data.dataset import final_answers

        constraint = resolve(opts.choices, opts.json_schema, final_answers(pool) if opts.choices == "auto" else None)
    else:
        constraint = setups[runs[0].path][1] if runs else None
    if constraint is not None:
        log(f"answers constrained to {constraint.label} in every row")
    return constraint


def _gate_thresholds(gates: list[str], graders: list, log) -> dict[str, float]:
    """{label: bar} of --gate options, parsed before any answer is generated; a gate on a grader that
    will not be scored is said now (it fails at the end)."""
    thresholds = dict(parse_gate(text) for text in gates)
    labels = [g.label for g in graders] + [aggregate.OWN]
    for label in thresholds:
        if label not in labels:
            log(f"warning: --gate names '{label}', which is not among the graders ({', '.join(labels[:-1])}): "
                "that gate will fail")
    return thresholds


def gate_result(row: dict, thresholds: dict[str, float]) -> dict:
    """The release gate on one row (the first run's): each check, and whether all passed."""
    means = {label: s["mean"] for label, s in row["scores"].items() if s.get("n")}
    passed, reasons = gate(means, thresholds)
    checks = [{"grader": label, "threshold": bar, "mean": means.get(label),
               "passed": means.get(label) is not None and means[label] >= bar} for label, bar in thresholds.items()]
    return {"system": row["system"]["name"], "passed": passed, "checks": checks, "failures": reasons}


def _sandbox_layers(graders: list, items: list[EvalItem], log) -> dict | None:
    """Which isolation layers the code_tests sandbox has on this machine (logged, and kept in
    eval.json), when some grader runs code."""
    from tunery.graders.code_tests import sandbox_layers

    layers = sandbox_layers(list(graders) + [g for i in items for g in (i.graders or [])])
    if layers is not None:
        from tunery.graders.sandbox import describe_layers

        log(f"code_tests sandbox: {describe_layers(layers)}")
    return layers


def _probe_items(opts: EvalOptions) -> list[EvalItem]:
    if not opts.probe:
        return []
    path = BUILTIN_PROBE if opts.probe == "builtin" else Path(opts.probe)
    items = read_eval_items(str(path))
    lacking = [i.id for i in items if not i.graders]
    if lacking:
        raise TuneryError(f"probe records need their own 'graders' list; {lacking[0]} has none",
                          fix='add e.g. "graders": ["contains:Paris"] to every record of the probe file')
    for item in items:
        item_cap(item, opts.probe_max_new_tokens)  # a bad cap is said before any model is loaded
    return items


def _retriever(systems: list[System], pool: list[Example], opts: EvalOptions, log):
    if not any(s.prompting == "retrieval" for s in systems):
        return None
    from tunery.eval.items import prompt_text
    from tunery.data.retrieval import make_retriever

    log(f"indexing {len(pool)} training examples for retrieval ({opts.retrieval})")
    return make_retriever(opts.retrieval, [prompt_text(e) for e in pool])


def _assemble(rows, labels, items, runs, pool, pool_files, probes, probe_items, data, opts) -> dict:
    """The eval.json dict: table rows, best and its tests, forgetting, leakage, overfitting, summary."""
    from tunery.eval.advise import summary_sentence
    from tunery.eval.guards import guard_label, run_guard

    primary = labels[0]
    best, comparisons = aggregate.best_and_comparisons(rows, primary, opts.seed)
    result = {
        "tunery_version": __version__,
        "data": str(data), "n_examples": len(items), "targets": [r.path for r in runs],
        "graders": labels, "primary": primary, "pool_files": pool_files, "pool_size": len(pool),
        "generation": {"max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature,
                       "seed": opts.seed, "batch_size": opts.batch_size},
        "systems": rows,
        "best": best["system"]["name"] if best else None,
        "comparisons": comparisons,
        "disagreements": {},
        "forgetting": {},
        "leakage": signals.leakage(items, pool, opts.near_threshold),
        "overfitting": {r.path: signals.overfitting(r.metrics) for r in runs},
        "configs": {r.path: r.config for r in runs},
    }
    base_zero = next((r for r in rows if not r["system"]["tuned"] and r["system"]["prompting"] == "zero-shot"), None)
    for run in runs:
        tuned = next(r for r in rows if r["system"]["model"] == run.path)  # the run as it answers
        if base_zero is not None:
            result["disagreements"][run.path] = aggregate.disagreements(tuned, base_zero, items, primary)
        guard = run_guard(run.path)
        for row in rows:  # the run's rows say which guard against forgetting it trained with
            if guard is not None and row["system"]["model"] == run.path:
                row["system"]["guard"] = guard_label(guard)
        if run.path in probes and run.base_model in probes:
            summary = aggregate.forgetting_summary(probes[run.base_model], probes[run.path], probe_items, opts.seed)
            result["forgetting"][run.path] = {"probe": opts.probe, **summary, "guard": guard,
                                              "guard_label": guard_label(guard)}
    result["warnings"] = _warnings(result)
    result["summary"] = summary_sentence(result)
    return result


def _warnings(result: dict) -> list[str]:
    found = [result["leakage"]["warning"]] + [o["warning"] for o in result["overfitting"].values()]
    for run, f in result["forgetting"].items():
        fell = f"{run}: the general-ability probe fell from {f['before']['mean']:.0%} to {f['after']['mean']:.0%}"
        kinds = [k for k in aggregate.significant_drops(f) if k != "all"]
        where = ", ".join(f"{k} {f['by_kind'][k]['before']['mean']:.0%} to {f['by_kind'][k]['after']['mean']:.0%}"
                          for k in kinds)
        if f["test"]["significant"] and f["test"]["diff"] < 0:
            found.append(f"{fell} ({f['lost']} items lost{'; most in ' + where if where else ''}): the tuning cost "
                         "general ability")
        elif kinds:
            found.append(f"{run}: the probe fell significantly in {where}: the tuning cost that ability")
        elif f["test"]["diff"] <= -0.1:  # a drop this size is worth a look even when not yet significant
            found.append(f"{fell} ({f['lost']} items lost, {f['gained']} gained; p={f['test']['p']:.2g}, not "
                         "significant): see the probe items that changed in the report")
    if result["n_examples"] < 30:
        found.append(f"only {result['n_examples']} evaluation examples: intervals are wide and small "
                     "differences cannot be told apart")
    return [w for w in found if w]
