"""The models a server answers for, by name: bases, LoRA runs on them, and full (or merged) runs.

Every LoRA run of one base shares that base's engine, so requests for any of them share forward
passes; the base itself is served too, under its own name (adapter "__base__"). A full run, or a run
on another base, gets an engine of its own. Each served model keeps its run's tokenizer, so prompts
are rendered with the chat template the run was trained with and stop at its end tokens.

Loading reads files and may take seconds (`prepare`, on any thread); attaching an adapter to a model
that is decoding must happen between two steps (`install`, on the scheduler thread).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import TuneryError
from tunery.inference import read_run_info, stop_token_ids
from tunery.models.embedded import ALIASES
from tunery.models.load import DTYPES, load_model, load_tokenizer, resolve_model_source
from tunery.runfolder import RunFolder, is_run_folder
from tunery.serve.engine import BASE, Engine
from tunery.grammar import GrammarBook


@dataclass
class EngineOptions:
    max_batch: int = 16
    max_context: int = 2048
    prefill_tokens: int = 512
    dtype: str = "float32"


@dataclass(eq=False)
class ServedModel:
    """One name a request can ask for."""

    name: str
    kind: str  # base | lora | qlora | full | dora (merged into an engine of its own)
    source: str  # the run folder or base model spec it came from
    engine: Engine
    adapter: str  # the PEFT adapter rows of this model use, or "__base__"
    tokenizer: object
    stop_ids: list[int]
    parent: str | None = None  # the base a LoRA run is served on
    created: int = field(default_factory=lambda: int(time.time()))
    removed: bool = False
    _grammar: GrammarBook | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def grammar(self) -> GrammarBook:
        """The grammar compiler for this model's tokenizer (built on first use: ~0.3 s)."""
        with self._lock:
            if self._grammar is None:
                vocab = _embedding_rows(self.engine.model)
                self._grammar = GrammarBook(self.tokenizer, vocab, self.stop_ids)
            return self._grammar


@dataclass
class Prepared:
    """A model read from disk and ready to be installed: what `prepare` returns."""

    name: str
    kind: str
    source: str
    tokenizer: object
    base_key: str | None = None
    base_spec: str | None = None
    engine: Engine | None = None  # a new engine (full run, or a base not loaded yet)
    adapter_dir: Path | None = None


def _embedding_rows(model) -> int:
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.get_input_embeddings().num_embeddings


def base_name(spec: str) -> str:
    """The name a base model is served under: its alias, or the last part of its path or hub id."""
    return spec if spec in ALIASES else Path(spec.rstrip("/")).name


def split_spec(spec: str) -> tuple[str | None, str]:
    """`name=path` -> (name, path); a bare path -> (None, path)."""
    if "=" in spec and not Path(spec).exists():
        name, _, path = spec.partition("=")
        return name.strip() or None, path.strip()
    return None, spec


class Registry:
    """Served models by name, and the engines they run on."""

    def __init__(self, options: EngineOptions):
        self.options = options
        self.models: dict[str, ServedModel] = {}
        self._engines: dict[str, Engine] = {}
        self._adapters = 0
        self._retired: list[ServedModel] = []

    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    def get(self, name: str) -> ServedModel | None:
        model = self.models.get(name)
        return None if model is None or model.removed else model

    def listed(self) -> list[ServedModel]:
        return [m for m in self.models.values() if not m.removed]

    # -- loading ----------------------------------------------------------------------------------

    def prepare(self, spec: str, name: str | None = None, base: str | None = None) -> Prepared:
        """Read a run folder or a base model spec from disk (no change to what is served yet).

        `base` puts a LoRA run on that base instead of the one its run.json names (the same model
        elsewhere: a local copy of a hub model, say)."""
        path = Path(spec).expanduser()
        if not is_run_folder(path):
            key = resolve_model_source(spec)
            engine = None if key in self._engines else self._new_engine(load_model(spec, self.options.dtype))
            return Prepared(name or base_name(spec), "base", spec, load_tokenizer(spec), key, spec, engine)
        info = read_run_info(path)
        kind = info.get("adapter", "lora")
        tokenizer = _run_tokenizer(path)
        name = name or path.resolve().name
        if kind == "full":
            from tunery.inference import load_run

            model, _ = load_run(path, self.options.dtype)
            return Prepared(name, "full", str(path), tokenizer, engine=self._new_engine(model))
        adapter_dir = RunFolder(path).adapter
        if not (adapter_dir / "adapter_config.json").is_file():
            raise TuneryError(f"{path} has no final adapter yet (adapter/ is missing)",
                              fix="finish the run first: tunery train CONFIG --resume")
        if json.loads((adapter_dir / "adapter_config.json").read_text()).get("use_dora"):
            return self._prepare_dora(path, name, info, kind, tokenizer, adapter_dir, base)
        base_spec = base if base and kind == "lora" else info["base_model"]
        key = resolve_model_source(base_spec) + (":qlora" if kind == "qlora" else "")
        engine = None
        if key not in self._engines:
            engine = self._new_engine(_load_base(info | {"base_model": base_spec}, path, self.options.dtype))
        return Prepared(name, kind, str(path), tokenizer, key, base_spec, engine, adapter_dir)

    def _prepare_dora(self, path: Path, name: str, info: dict, kind: str, tokenizer, adapter_dir: Path,
                      base: str | None) -> Prepared:
        """PEFT cannot choose DoRA adapters row by row (it refuses `adapter_names` with DoRA), so a DoRA
        run is merged into its own copy of the base and served on an engine of its own."""
        from peft import PeftModel

        if kind == "qlora":
            raise TuneryError(f"{path} is a DoRA adapter on a 4-bit base, which the server cannot merge",
                              fix=f"tunery merge {path} --out MERGED, then serve MERGED as a full model")
        base_spec = base or info["base_model"]
        model = PeftModel.from_pretrained(_load_base(info | {"base_model": base_spec}, path, self.options.dtype),
                                          str(adapter_dir)).merge_and_unload()
        return Prepared(name, "dora", str(path), tokenizer, engine=self._new_engine(model))

    def install(self, prepared: Prepared) -> list[ServedModel]:
        """Serve what `prepare` read (on the scheduler thread); returns the models that were added."""
        if self.get(prepared.name) is not None:
            raise TuneryError(f"a model named '{prepared.name}' is served already",
                              fix="give it another name: NAME=PATH on the command line, or 'name' in the request")
        added = []
        key = prepared.base_key or f"full:{Path(prepared.source).resolve()}:{prepared.name}"
        if prepared.engine is not None and key not in self._engines:
            self._engines[key] = prepared.engine
            if prepared.kind in ("lora", "qlora"):
                added += self._serve_base(prepared.base_spec, prepared.engine)
        engine = self._engines[key]
        adapter = BASE
        if prepared.adapter_dir is not None:
            adapter = self._attach(engine, prepared.adapter_dir)
        _check_vocab(prepared, engine)
        parent = self._base_of(engine) if prepared.kind in ("lora", "qlora") else None
        model = ServedModel(prepared.name, prepared.kind, prepared.source, engine, adapter, prepared.tokenizer,
                            stop_token_ids(prepared.tokenizer, engine.model), parent)
        self.models[prepared.name] = model
        return added + [model]

    def _serve_base(self, spec: str, engine: Engine) -> list[ServedModel]:
        name = base_name(spec)
        if self.get(name) is not None:
            return []
        tokenizer = load_tokenizer(spec)
        model = ServedModel(name, "base", spec, engine, BASE, tokenizer, stop_token_ids(tokenizer, engine.model))
        self.models[name] = model
        return [model]

    def _base_of(self, engine: Engine) -> str | None:
        return next((m.name for m in self.models.values() if m.engine is engine and m.kind == "base"), None)

    def _attach(self, engine: Engine, adapter_dir: Path) -> str:
        from peft import PeftModel

        name = f"run{self._adapters}"  # PEFT module keys; short names like "a" clash with "lora_"
        self._adapters += 1
        if hasattr(engine.model, "peft_config"):
            engine.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            engine.model = PeftModel.from_pretrained(engine.model, str(adapter_dir), adapter_name=name)
        engine.model.eval()
        return name

    def _new_engine(self, model) -> Engine:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        _check_attention(causal)
        limit = min(self.options.max_context, getattr(causal.config, "max_position_embeddings", None) or 10**9)
        return Engine(model.eval(), self.options.max_batch, limit, self.options.prefill_tokens)

    # -- removal ----------------------------------------------------------------------------------

    def remove(self, name: str) -> ServedModel:
        """Stop listing a model; its adapter (or engine) is freed once no sequence uses it."""
        model = self.get(name)
        if model is None:
            raise KeyError(name)
        if model.kind == "base" and any(m.engine is model.engine and m.kind != "base" for m in self.listed()):
            raise TuneryError(f"'{name}' is the base of other served models", fix="remove those first")
        model.removed = True
        self._retired.append(model)
        return model

    def collect(self) -> None:
        """Free what removed models held, once nothing uses it (called between steps)."""
        for model in list(self._retired):
            engine = model.engine
            if model.adapter != BASE and model.adapter in engine.adapters_in_use():
                continue
            if model.adapter != BASE:
                _detach(engine, model.adapter)
            if not any(m.engine is engine and not m.removed for m in self.models.values()) and not engine.has_work:
                self._engines = {k: e for k, e in self._engines.items() if e is not engine}
            self._retired.remove(model)
            if self.models.get(model.name) is model:
                del self.models[model.name]


def _detach(engine: Engine, adapter: str) -> None:
    model = engine.model
    remaining = [a for a in model.peft_config if a != adapter]
    if not remaining:
        engine.model = model.unload()  # takes the LoRA layers out; the base weights are untouched
        return
    model.delete_adapter(adapter)
    model.set_adapter(remaining[0])


def _run_tokenizer(path: Path):
    from transformers import AutoTokenizer

    folder = RunFolder(path).tokenizer
    if not folder.is_dir():
        raise TuneryError(f"{path} has no tokenizer/ folder", fix="copy the whole run folder")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_base(info: dict, path: Path, dtype: str):
    from tunery.models.quant import load_base_for_run

    if dtype not in DTYPES:
        raise TuneryError(f"unknown dtype '{dtype}'", fix=f"use one of {', '.join(DTYPES)}")
    return load_base_for_run(info, path, dtype)


def _check_vocab(prepared: Prepared, engine: Engine) -> None:
    rows = _embedding_rows(engine.model)
    if len(prepared.tokenizer) > rows:
        raise TuneryError(
            f"the tokenizer of {prepared.source} has {len(prepared.tokenizer)} tokens but the model has {rows}",
            why="the run added tokens its base does not have",
            fix="merge the run (tunery merge) and serve the merged folder as a full model")


def _check_attention(causal) -> None:
    """The built-in engine gives every layer the same full causal mask; sliding-window layers need more."""
    kinds = set(getattr(causal.config, "layer_types", None) or [])
    if kinds - {"full_attention"}:
        raise TuneryError(
            f"the built-in engine cannot serve {causal.config.model_type} (layer types: {', '.join(sorted(kinds))})",
            why="its layers use sliding-window or linear attention, which needs a mask per layer type",
            fix="serve it with --engine vllm on a GPU machine")
