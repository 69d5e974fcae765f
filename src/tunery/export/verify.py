"""Check an export by reading it back with an independent reader and comparing on fixed prompts.

The reader is transformers' GGUF loader (`from_pretrained(..., gguf_file=...)`), which shares no code
with our writer: it parses the file with the `gguf` reader, rebuilds the config and the tokenizer from
metadata, and undoes the rotary row order itself. llama.cpp is the second reader where llama-cpp-python
or llama-cpp-cffi is installed (`tunery.export.llamacpp`; the `llamacpp` extra): its own tokeniser,
template lookup and end tokens, logits and greedy continuations, judged by the same tolerances.

What is compared, on `probe.PROBE_CONVERSATIONS` rendered with the run's chat template:
- the chat template string, byte for byte, and the token ids it renders for every probe;
- the stop (end-of-turn) token ids;
- logits at every position: max |difference| within the tolerance of the file type (below);
- greedy continuations of `max_new_tokens` tokens: required identical for f32 and f16.

Tolerances, as a share of the largest |logit| of the reference on the probes: f32 1e-5 (only float
rounding differs), f16 2e-2, q8_0 5e-2 (1e-1 through llama.cpp, which also quantizes activations).
q8_0 continuations are reported but not required to match.
"""

from __future__ import annotations

from pathlib import Path

from tunery.export.probe import PROBE_CONVERSATIONS, compare_logits, logits_of, probe_ids

RELATIVE_TOLERANCE = {"f32": 1e-5, "f16": 2e-2, "q8_0": 5e-2, "hf": 1e-5,
                      # k-quants (llama.cpp's quantizer): diagnostics next to the task check, which
                      # decides; set from the quickstart figures in docs/export-quantization.md.
                      "q6_k": 1e-1, "q5_k_m": 1.5e-1, "q4_k_m": 3e-1}
# llama.cpp multiplies a q8_0 weight by activations that it quantizes to 8 bits as well (blocks of 32),
# so its logits carry a second rounding on top of the file's; measured on the quickstart run: max
# |diff| 2.2 of 37.7 through llama.cpp against 1.7 through transformers (which dequantizes weights only).
LLAMA_CPP_TOLERANCE = RELATIVE_TOLERANCE | {"q8_0": 1e-1}
GREEDY_MUST_MATCH = {"f32", "f16", "hf"}


def compare_tokenizers(reference, other) -> dict:
    """Chat template, rendered probe ids and stop ids of two tokenizers."""
    from tunery.data.render import chat_template_of
    from tunery.inference import stop_token_ids

    ref_rows, other_rows = probe_ids(reference), probe_ids(other)
    return {
        "chat_template_identical": chat_template_of(reference) == chat_template_of(other),
        "probe_tokens_identical": ref_rows == other_rows,
        "stop_ids": stop_token_ids(reference),
        "stop_ids_identical": stop_token_ids(reference) == stop_token_ids(other),
    }


def greedy_continuations(model, tokenizer, max_new_tokens: int) -> list[list[int]]:
    """Greedy answer ids of every probe conversation (one at a time: no padding differences)."""
    from tunery.inference import generate_ids

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return [generate_ids(model, tokenizer, [conv], max_new_tokens=max_new_tokens)[0]
            for conv in PROBE_CONVERSATIONS]


def tokenizer_failures(tokenizer: dict) -> list[str]:
    """What differs in a `compare_tokenizers` record, in words."""
    checks = (("chat_template_identical", "chat template differs"),
              ("probe_tokens_identical", "the template renders different tokens"),
              ("stop_ids_identical", "stop tokens differ"))
    return [said for key, said in checks if not tokenizer[key]]


def judge(record: dict, kind: str, tolerances: dict[str, float] = RELATIVE_TOLERANCE) -> dict:
    """Add `tolerance`, `passed` and `failures` to a verification record."""
    logits = record["logits"]
    tolerance = tolerances[kind] * max(logits["max_abs_logit"], 1.0)
    failures = tokenizer_failures(record["tokenizer"])
    # How a user's request is rendered and where answers stop: these fail an export whatever the task
    # check says; the logit and probe-continuation figures below become diagnostics when it runs.
    structural = list(failures)
    if logits["max_abs_diff"] > tolerance:
        failures.append(f"max |logit diff| {logits['max_abs_diff']:.3g} > tolerance {tolerance:.3g}")
    if kind in GREEDY_MUST_MATCH and not record["greedy_identical"]:
        failures.append("greedy continuations differ")
    return record | {"tolerance_abs": tolerance, "passed": not failures, "failures": failures,
                     "structural_failures": structural}


def verify_gguf(path: Path, reference_model, reference_tokenizer, file_type: str,
                max_new_tokens: int = 16) -> dict:
    """Reload `path` with transformers' GGUF loader and compare it with the model it was written from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    rows = probe_ids(reference_tokenizer)
    reference_logits = logits_of(reference_model, rows)
    unreadable = transformers_cannot_run(reference_model.config)
    if unreadable:
        return _judged_by_llama_cpp(path, reference_model, reference_tokenizer, tokenizer, reference_logits,
                                    file_type, max_new_tokens, unreadable)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    record = {
        "reader": "transformers GGUF loader",
        "file": str(path),
        "type": file_type,
        "tokenizer": compare_tokenizers(reference_tokenizer, tokenizer),
        "logits": compare_logits(reference_logits, logits_of(model, rows)),
    }
    ref_greedy = greedy_continuations(reference_model, reference_tokenizer, max_new_tokens)
    got_greedy = greedy_continuations(model, tokenizer, max_new_tokens)
    record["greedy_identical"] = ref_greedy == got_greedy
    record["greedy_tokens"] = sum(len(g) for g in ref_greedy)
    record["greedy_example"] = reference_tokenizer.decode(ref_greedy[0])
    record["llama_cpp"] = verify_with_llama_cpp(path, reference_logits, ref_greedy, reference_tokenizer,
                                                file_type, max_new_tokens,
                                                tolerances=_llama_cpp_tolerances(reference_model.config))
    judged = judge(record, file_type)
    if record["llama_cpp"].get("ran") and not record["llama_cpp"]["passed"]:
        judged["failures"] += [f"llama.cpp: {f}" for f in record["llama_cpp"]["failures"]]
        judged["structural_failures"] += [f"llama.cpp: {f}" for f in record["llama_cpp"]["structural_failures"]]
        judged["passed"] = False
    return judged


def _llama_cpp_tolerances(config) -> dict[str, float]:
    from tunery.export.gguf_families import family_of

    floor = family_of(config).llama_cpp_f32_tolerance
    return LLAMA_CPP_TOLERANCE | {"f32": max(LLAMA_CPP_TOLERANCE["f32"], floor)}


def transformers_cannot_run(config) -> str | None:
    """Why transformers' GGUF reader would run a different model from this file, or None.

    Its config mapping restores rope scaling for gpt-oss only: a Llama 3.1/3.2 file comes back with
    unscaled rotary frequencies (and the `rope_freqs` tensor ignored), so its logits would say nothing
    about the file. llama.cpp, the code users run the file with, applies the scaling."""
    from tunery.export.gguf_rope import rope_scaling_of

    scaling = rope_scaling_of(config)
    if scaling is None:
        return None
    return (f"transformers' GGUF reader cannot represent rope scaling '{scaling['rope_type']}' (it restores "
            "rope scaling for gpt-oss only, so it would run this model unscaled); the model is checked by "
            "llama.cpp, which applies it, and transformers' reader checks the tokenizer only")


def _judged_by_llama_cpp(path: Path, reference_model, reference_tokenizer, tokenizer, reference_logits,
                         file_type: str, max_new_tokens: int, why: str) -> dict:
    """The verification record of a file only llama.cpp can run: its figures decide, said plainly."""
    ref_greedy = greedy_continuations(reference_model, reference_tokenizer, max_new_tokens)
    llama = verify_with_llama_cpp(path, reference_logits, ref_greedy, reference_tokenizer, file_type,
                                  max_new_tokens, tolerances=_llama_cpp_tolerances(reference_model.config))
    transformers_side = {"ran": False, "why": why,
                         "tokenizer": compare_tokenizers(reference_tokenizer, tokenizer)}
    token_failures = [f"transformers' tokenizer: {f}" for f in tokenizer_failures(transformers_side["tokenizer"])]
    base = {"reader": f"{llama.get('reader', 'llama.cpp')}; transformers' reader: tokenizer only", "file": str(path),
            "type": file_type, "transformers": transformers_side, "llama_cpp": llama}
    if not llama.get("ran"):
        failures = token_failures + [f"no reader ran the model: {why}; {llama['why']}"]
        return base | {"tokenizer": transformers_side["tokenizer"], "passed": False, "failures": failures,
                       "structural_failures": failures}
    failures = llama["failures"] + token_failures
    return llama | base | {"passed": not failures, "failures": failures,
                           "structural_failures": llama["structural_failures"] + token_failures}


def verify_with_llama_cpp(path: Path, reference_logits: list, reference_greedy: list[list[int]], tokenizer,
                          file_type: str, max_new_tokens: int, adapter: Path | None = None,
                          tolerances: dict[str, float] = LLAMA_CPP_TOLERANCE) -> dict:
    """The same comparison through llama.cpp (see tunery.export.llamacpp), in a separate process.

    When llama.cpp is missing, cannot load the file or dies, the result is {"ran": False, "why":
    "not verified by llama.cpp: <reason>"}: a status next to the transformers check, never a crash.
    `adapter`: a LoRA GGUF that llama.cpp applies over `path` (`--format gguf-lora`)."""
    from tunery.data.render import chat_template_of
    from tunery.export import llamacpp
    from tunery.inference import stop_token_ids

    if llamacpp.reader_name() is None:
        return not_verified("llama.cpp is not installed (pip install 'tunery[llamacpp]' && "
                            "pip install --no-deps llama-cpp-cffi==0.4.42)")
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in PROBE_CONVERSATIONS]
    rows = probe_ids(tokenizer)
    stops = stop_token_ids(tokenizer)
    try:
        got = llamacpp.read_back_isolated(path, texts, rows, max_new_tokens, set(stops), adapter=adapter)
    except llamacpp.NotVerified as exc:
        return not_verified(str(exc))
    record = {
        "reader": f"llama.cpp ({llamacpp.reader_name()})",
        "tokenizer": {"chat_template_identical": got.chat_template == chat_template_of(tokenizer),
                      "probe_tokens_identical": got.prompt_ids == rows,
                      # The same set, not a subset: an end id the run has and llama.cpp lacks is an
                      # answer that never stops there (an empty set would stop nowhere).
                      "stop_ids": stops, "stop_ids_identical": set(got.end_ids) == set(stops)},
        "logits": compare_logits(reference_logits, got.logits),
        "greedy_identical": got.greedy == reference_greedy,
    }
    return judge(record, file_type, tolerances) | {"ran": True}


def not_verified(reason: str) -> dict:
    return {"ran": False, "why": f"not verified by llama.cpp: {reason}"}
