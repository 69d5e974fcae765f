"""The continuous-batching engine against transformers' own `generate`, on a tiny base with two random
LoRA adapters: rows of different adapters in one pass, rows joining mid-batch, rows leaving."""

from __future__ import annotations

import json

import pytest
import torch

from adapter_helpers import make_adapter_run, write_base
from tunery.inference import generate_ids, prompt_ids, stop_token_ids
from tunery.serve.engine import BASE, Engine, Sequence
from tunery.serve.sampling import SamplingParams, make_generator
from tunery.serve.text import TextStream

PROMPTS = ["Lena Park needs a room in Oslo for 2 nights.", "What is the capital of France?",
           "Count from one to five.", "Hello there!", "Name a primary colour.", "Ben Kato books 4 nights."]


@pytest.fixture(scope="module")
def served(tmp_path_factory, smol_tokenizer):
    """(PEFT model with adapters run0 and run1 on a scrambled tiny base, tokenizer, the two run folders)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("engine")
    base = write_base(folder / "base", smol_tokenizer, seed=3, scrambled=True)
    runs = [make_adapter_run(folder / "runs", smol_tokenizer, base, seed=11 + i, name=f"r{i}",
                             target=("q_proj", "v_proj", "up_proj"), adapter_scale=0.5)[0] for i in range(2)]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(runs[0] / "adapter"),
                                      adapter_name="run0")
    model.load_adapter(str(runs[1] / "adapter"), adapter_name="run1")
    return model.eval(), smol_tokenizer, runs


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def reference(model, tokenizer, text: str, adapter: str, max_new: int) -> list[int]:
    """What transformers' generate answers with this adapter alone (greedy), cut before the end token."""
    if adapter == BASE:
        with model.disable_adapter():
            return generate_ids(model, tokenizer, [conv(text)], max_new_tokens=max_new)[0]
    model.set_adapter(adapter)
    return generate_ids(model, tokenizer, [conv(text)], max_new_tokens=max_new)[0]


def make_seq(model, tokenizer, text, adapter, params, out, index=0, seed=None):
    def emit(delta):
        out.setdefault(index, []).append(delta)

    return Sequence(prompt_ids(tokenizer, conv(text)), params, adapter,
                    frozenset(stop_token_ids(tokenizer, model)), TextStream(tokenizer, params.stop), emit,
                    generator=None if params.greedy else make_generator(seed), index=index)


def tokens_of(deltas, stop_ids) -> list[int]:
    ids = [t for d in deltas for t in d.tokens]
    return [t for t in ids if t not in stop_ids]


def run_engine(engine: Engine, joins: dict[int, list[Sequence]] | None = None, steps: int = 200) -> list:
    """Step until idle; `joins[k]` sequences enter before step k. Returns each step's StepStats."""
    history = []
    for k in range(steps):
        engine.waiting.extend((joins or {}).get(k, []))
        if not engine.has_work and not any(j > k for j in (joins or {})):
            break
        history.append(engine.step())
    assert not engine.has_work, "the engine did not finish in its step budget"
    return history


def test_mixed_adapters_in_one_batch_answer_as_each_alone_token_for_token(served):
    model, tok, _ = served
    stops = frozenset(stop_token_ids(tok, model))
    adapters = ["run0", "run1", BASE, "run1", "run0", BASE]
    expected = [reference(model, tok, p, a, 10) for p, a in zip(PROMPTS, adapters)]
    assert len({tuple(e) for e in expected}) == len(expected)  # the adapters do change the answers
    out: dict = {}
    engine = Engine(model, max_batch=8, max_context=256)
    params = SamplingParams(max_tokens=10, temperature=0.0)
    engine.waiting.extend(make_seq(model, tok, p, a, params, out, i) for i, (p, a) in enumerate(zip(PROMPTS, adapters)))
    history = run_engine(engine)
    assert max(s.decode_rows for s in history) == len(PROMPTS)  # they really shared passes
    assert [tokens_of(out[i], stops) for i in range(len(PROMPTS))] == expected


def test_sequences_join_a_running_batch_between_steps_and_answer_as_alone(served):
    model, tok, _ = served
    stops = frozenset(stop_token_ids(tok, model))
    params = SamplingParams(max_tokens=12, temperature=0.0)
    out: dict = {}
    seqs = [make_seq(model, tok, p, a, params, out, i)
            for i, (p, a) in enumerate(zip(PROMPTS[:4], ["run0", "run1", "run0", BASE]))]
    engine = Engine(model, max_batch=8, max_context=256)
    history = run_engine(engine, joins={0: seqs[:1], 3: seqs[1:3], 5: seqs[3:]})
    assert [h.prefill_rows for h in history[:6]] == [1, 0, 0, 2, 0, 1]
    assert history[5].decode_rows == 4  # the late one decodes next to three that started earlier
    for i, (p, a) in enumerate(zip(PROMPTS[:4], ["run0", "run1", "run0", BASE])):
        assert tokens_of(out[i], stops) == reference(model, tok, p, a, 12)


def test_a_full_batch_queues_the_rest_and_finished_rows_give_their_slot_back(served):
    model, tok, _ = served
    out: dict = {}
    lengths = [2, 9, 4, 7, 3]
    seqs = [make_seq(model, tok, PROMPTS[i], "run0", SamplingParams(max_tokens=n, temperature=0.0), out, i)
            for i, n in enumerate(lengths)]
    engine = Engine(model, max_batch=2, max_context=256)
    history = run_engine(engine, joins={0: seqs})
    assert max(h.decode_rows for h in history) == 2
    assert [sum(len(d.tokens) for d in out[i]) <= n for i, n in enumerate(lengths)] == [True] * 5
    assert all(out[i][-1].finish_reason in ("stop", "length") for i in range(5))


def test_a_cancelled_row_frees_its_slot_at_the_next_step(served):
    model, tok, _ = served
    out: dict = {}
    long = make_seq(model, tok, PROMPTS[0], "run0", SamplingParams(max_tokens=60, temperature=0.0), out, 0)
    other = make_seq(model, tok, PROMPTS[1], "run1", SamplingParams(max_tokens=6, temperature=0.0), out, 1)
    engine = Engine(model, max_batch=4, max_context=256)
    engine.waiting.extend([long, other])
    engine.step()
    engine.step()
    long.cancel()
    stats = engine.step()
    assert long in stats.finished and long.finish_reason == "cancelled"
    assert long not in engine.running and len(long.out) == 2 + 1  # nothing decoded for it after the cancel
    run_engine(engine)
    assert out[1][-1].finish_reason in ("stop", "length")


def test_seeded_sampling_gives_the_same_tokens_alone_and_in_a_batch(served):
    model, tok, _ = served
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.8)
    alone: dict = {}
    engine = Engine(model, max_batch=8, max_context=256)
    engine.waiting.append(make_seq(model, tok, PROMPTS[0], "run1", params, alone, 0, seed=5))
    run_engine(engine)
    together: dict = {}
    engine.waiting.extend(make_seq(model, tok, p, a, params, together, i, seed=5 + i)
                          for i, (p, a) in enumerate(zip(PROMPTS[:3], ["run1", "run0", BASE])))
    run_engine(engine)
    other_seed: dict = {}
    engine.waiting.append(make_seq(model, tok, PROMPTS[0], "run1", params, other_seed, 0, seed=6))
    run_engine(engine)
    first = [t for d in alone[0] for t in d.tokens]
    assert first == [t for d in together[0] for t in d.tokens]
    assert first != [t for d in other_seed[0] for t in d.tokens]


def test_the_cache_grows_past_its_first_capacity_without_changing_answers(served):
    model, tok, _ = served
    stops = frozenset(stop_token_ids(tok, model))
    out: dict = {}
    engine = Engine(model, max_batch=2, max_context=512)
    engine.cache.capacity = 48  # the prompt (~43 tokens) fits, the answer does not: it must grow mid-decode
    engine.waiting.append(make_seq(model, tok, PROMPTS[0], "run0", SamplingParams(max_tokens=30, temperature=0.0),
                                   out, 0))
    run_engine(engine)
    assert engine.cache.capacity > 48
    assert tokens_of(out[0], stops) == reference(model, tok, PROMPTS[0], "run0", 30)


def test_a_json_schema_row_only_ever_emits_valid_json(served):
    import jsonschema

    from tunery.grammar import GrammarBook

    model, tok, _ = served
    stops = stop_token_ids(tok, model)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "nights": {"type": "integer", "minimum": 1, "maximum": 30},
                                               "city": {"enum": ["Oslo", "Rome", "Lima"]}},
              "required": ["name", "nights", "city"], "additionalProperties": False}
    book = GrammarBook(tok, model.get_base_model().get_input_embeddings().num_embeddings, stops)
    compiled = book.compile({"type": "json_schema", "schema": schema})
    out: dict = {}
    engine = Engine(model, max_batch=8, max_context=512)
    for i in range(8):
        seq = make_seq(model, tok, PROMPTS[i % len(PROMPTS)], ["run0", "run1", BASE][i % 3],
                       SamplingParams(max_tokens=120, temperature=1.0), out, i, seed=i)
        seq.matcher = book.matcher(compiled)
        engine.waiting.append(seq)
    run_engine(engine, steps=400)
    for i in range(8):
        assert out[i][-1].finish_reason == "stop"
        text = "".join(d.text for d in out[i])
        jsonschema.validate(json.loads(text), schema)


def test_a_dora_run_is_served_merged_on_an_engine_of_its_own(served, tmp_path):
    from tunery.inference import load_run
    from tunery.serve.registry import EngineOptions, Registry

    model, tok, runs = served
    base_dir = runs[0].parent.parent / "base"
    dora, _ = make_adapter_run(tmp_path, tok, base_dir, seed=21, name="dora", dora=True, rslora=True,
                               target=("q_proj", "v_proj", "down_proj"), adapter_scale=0.5)
    registry = Registry(EngineOptions(max_batch=4, max_context=256))
    for run in (runs[0], dora):
        registry.install(registry.prepare(str(run)))
    assert registry.get("dora").kind == "dora" and registry.get("dora").adapter == BASE
    assert registry.get("dora").engine is not registry.get(runs[0].name).engine
    reference_model, _ = load_run(dora)  # PEFT with the DoRA adapter, unmerged
    expected = generate_ids(reference_model, tok, [conv(PROMPTS[0])], max_new_tokens=10)[0]
    out: dict = {}
    served_model = registry.get("dora")
    engine = served_model.engine
    engine.waiting.append(make_seq(engine.model, tok, PROMPTS[0], BASE, SamplingParams(max_tokens=10, temperature=0.0),
                                   out, 0))
    run_engine(engine)
    assert tokens_of(out[0], frozenset(served_model.stop_ids)) == expected


def test_a_request_for_a_model_removed_meanwhile_ends_with_an_error_and_others_go_on(served):
    import threading

    from tunery.serve.registry import EngineOptions, Registry
    from tunery.serve.scheduler import Scheduler

    _, tok, runs = served
    registry = Registry(EngineOptions(max_batch=4, max_context=256))
    for run in runs:
        registry.install(registry.prepare(str(run)))
    scheduler = Scheduler(registry.engines, max_queue=8, housekeeping=registry.collect)
    scheduler.start()
    try:
        late = registry.get("r1")  # what a handler holds after looking the model up
        scheduler.call(lambda: registry.remove("r1")).result(timeout=30)
        deadline = __import__("time").monotonic() + 10
        while "run1" in late.engine.model.peft_config and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.01)
        assert "run1" not in late.engine.model.peft_config  # freed, nothing used it
        out: dict = {}
        done = threading.Event()
        params = SamplingParams(max_tokens=4, temperature=0.0)
        stale = make_seq(late.engine.model, tok, PROMPTS[0], late.adapter, params, out, 0)
        alive = make_seq(late.engine.model, tok, PROMPTS[1], registry.get("r0").adapter, params, out, 1)
        alive.emit = lambda d, emit=alive.emit: (emit(d), d.finish_reason and done.set())
        scheduler.submit(late.engine, [stale])
        scheduler.submit(late.engine, [alive])
        assert done.wait(60)
        assert out[0][-1].error_code == "model_removed" and out[0][-1].finish_reason == "error"
        assert out[1][-1].finish_reason in ("stop", "length") and out[1][-1].error is None
    finally:
        scheduler.stop()
