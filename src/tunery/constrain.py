"""Answers valid by construction: constrained decoding for `eval.choices` and `eval.json_schema`.

- choices: a prefix trie over each choice's token ids (as the chat template tokenises an answer), so at
  every step only a token that continues some choice may be picked, and the end-of-turn token only where
  a choice is complete; once a choice is complete, only the end-of-turn token. The answer is therefore a
  listed choice whatever the model's weights, and never longer than the longest choice.
- json_schema: xgrammar compiles the schema into a grammar over the tokenizer's vocabulary; a grammar
  matcher per answer masks every token that cannot continue valid JSON, and allows the end-of-turn token
  only once the JSON is complete: the server's grammar (`tunery.grammar`, which also keeps raw
  control characters out of strings), compact: no free whitespace, only json.dumps' separators, so a
  model cannot spend its budget on blanks. An answer cut by `max_new_tokens` is only a prefix of valid
  JSON: give structured answers room.
Each is a transformers `LogitsProcessor` made per `generate()` call (`Constraint.processor`).
The run folder keeps the resolved constraint in `answers.json`, so every command applies the same one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunery.errors import TuneryError

ANSWERS_FILE = "answers.json"
MAX_AUTO_CHOICES = 100  # more distinct final answers than this is not a label set


@dataclass
class Constraint:
    """What answers may be: one of `choices`, or JSON valid against `json_schema`."""

    choices: list[str] | None = None
    json_schema: dict | None = None
    _compiled: dict = field(default_factory=dict, repr=False)  # per tokenizer: trie or compiled grammar

    def __post_init__(self):
        if (self.choices is None) == (self.json_schema is None):
            raise ValueError("a constraint is choices or a json_schema, exactly one")
        if self.choices is not None:
            self.choices = list(dict.fromkeys(c.strip() for c in self.choices if c.strip()))
            if not self.choices:
                raise TuneryError("the list of choices is empty", fix="name at least one answer")

    @property
    def label(self) -> str:
        return f"one of {len(self.choices)} choices" if self.choices is not None else "JSON valid against the schema"

    def is_valid(self, answer: str) -> bool:
        """Whether a (decoded, stripped) answer meets the constraint."""
        if self.choices is not None:
            return answer.strip() in self.choices
        from tunery.graders.schema import compile_schema

        try:
            value = json.loads(answer)
        except json.JSONDecodeError:
            return False
        return not compile_schema(self.json_schema)(value)

    def processor(self, tokenizer, stop_ids: list[int], prompt_width: int):
        """A fresh logits processor for one `generate()` call whose prompts are `prompt_width` wide."""
        key = id(tokenizer)
        if self.choices is not None:
            if key not in self._compiled:
                self._compiled[key] = ChoiceTrie([answer_ids(tokenizer, c, stop_ids) for c in self.choices])
            return TrieProcessor(self._compiled[key], stop_ids, prompt_width)
        return GrammarProcessor(self, tokenizer, stop_ids, prompt_width)

    def grammar(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        """(grammar book, compiled schema) for this tokenizer, compiled once (a second or so)."""
        from tunery.grammar import GrammarBook, GrammarError

        key = (id(tokenizer), vocab_size, tuple(stop_ids))
        if key not in self._compiled:
            book = GrammarBook(tokenizer, vocab_size, list(stop_ids))
            try:
                compiled = book.compile({"type": "json_schema", "schema": self.json_schema}, compact=True)
            except GrammarError as exc:
                raise TuneryError("xgrammar cannot compile the JSON schema", why=str(exc),
                                  fix="simplify the schema (xgrammar supports most of JSON Schema)") from exc
            self._compiled[key] = (book, compiled)
        return self._compiled[key]

    def to_json(self) -> dict:
        return {"choices": self.choices} if self.choices is not None else {"json_schema": self.json_schema}


def answer_ids(tokenizer, text: str, stop_ids: list[int]) -> list[int]:
    """The token ids of `text` as an assistant answer, as the chat template renders it (the ids between
    the generation prompt and the end-of-turn token), so the trie follows the tokens training taught."""
    from tunery.data.chat_template import cut_at_stop, prompt_ids

    user = [{"role": "user", "content": "?"}]
    head = prompt_ids(tokenizer, user)
    full = list(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": text}], tokenize=True,
                                              return_dict=True)["input_ids"])
    if full[: len(head)] == head:
        ids = cut_at_stop(full[len(head):], stop_ids)
        if tokenizer.decode(ids, skip_special_tokens=True).strip() == text:
            return ids
    return list(tokenizer.encode(text, add_special_tokens=False))


class ChoiceTrie:
    """A prefix tree of token sequences: node = {token: child}, with END marking a complete choice."""

    END = -1

    def __init__(self, sequences: list[list[int]]):
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            node[self.END] = {}

    def node_after(self, tokens: list[int]) -> dict | None:
        node = self.root
        for token in tokens:
            node = node.get(token)
            if node is None:
                return None
        return node


def _mask_row(scores: torch.Tensor, row: int, allowed: list[int]) -> None:
    keep = torch.full((scores.shape[-1],), float("-inf"), dtype=scores.dtype, device=scores.device)
    index = torch.tensor([t for t in allowed if 0 <= t < scores.shape[-1]], dtype=torch.long, device=scores.device)
    keep[index] = 0.0
    scores[row] += keep


def _finished(tokens: list[int], stop_ids: list[int]) -> bool:
    return any(t in stop_ids for t in tokens)


class TrieProcessor:
    """Masks, per row, every token that does not continue a choice (see the module docstring)."""

    def __init__(self, trie: ChoiceTrie, stop_ids: list[int], prompt_width: int):
        self.trie, self.stop_ids, self.width = trie, list(stop_ids), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.width:].tolist()
            if _finished(generated, self.stop_ids):  # the row is over; generate() pads it
                _mask_row(scores, row, self.stop_ids)
                continue
            node = self.trie.node_after(generated)
            allowed = [] if node is None else [t for t in node if t != ChoiceTrie.END]
            if node is None or ChoiceTrie.END in node:
                allowed += self.stop_ids
            _mask_row(scores, row, allowed)
        return scores


class GrammarProcessor:
    """One xgrammar matcher per row (the server's `tunery.grammar`, with its guard against raw
    control characters in strings): masks every token that cannot continue JSON valid for the schema."""

    def __init__(self, constraint: "Constraint", tokenizer, stop_ids: list[int], prompt_width: int):
        self.constraint, self.tokenizer = constraint, tokenizer
        self.stop_ids, self.width = list(stop_ids), prompt_width
        self.rows: list = []
        self.accepted: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from tunery.grammar import apply_grammars

        if not self.rows:
            book, compiled = self.constraint.grammar(self.tokenizer, scores.shape[-1], self.stop_ids)
            self.rows = [book.matcher(compiled) for _ in range(input_ids.shape[0])]
            self.accepted = [0] * input_ids.shape[0]
        active = []
        for row, grammar in enumerate(self.rows):
            generated = input_ids[row, self.width:].tolist()
            for token in generated[self.accepted[row]:]:
                if not grammar.is_terminated():
                    grammar.accept_token(token)
            self.accepted[row] = len(generated)
            # A finished row is padded by generate(); its scores no longer matter.
            active.append(None if grammar.is_terminated() else grammar)
        apply_grammars(scores, active)
        return scores


def resolve(choices, json_schema, labels: list[str] | None) -> Constraint | None:
    """The constraint of `eval.choices` / `eval.json_schema` (a file path); `auto` takes `labels`, the
    training set's distinct final answers."""
    if choices is None and json_schema is None:
        return None
    if json_schema is not None:
        return Constraint(json_schema=read_schema(json_schema))
    if choices == "auto":
        if not labels:
            raise TuneryError("eval.choices is auto but no training answer was found to take the choices from")
        if len(labels) > MAX_AUTO_CHOICES:
            raise TuneryError(f"eval.choices is auto, but the training answers hold {len(labels)} distinct "
                              f"answers (more than {MAX_AUTO_CHOICES}): they are not a label set",
                              fix="list the choices (eval.choices=[a,b,c]) or leave eval.choices empty")
        return Constraint(choices=list(labels))
    return Constraint(choices=list(choices))


def read_schema(path: str | Path) -> dict:
    """A JSON schema file, checked (a broken schema is an error now, not at the first answer)."""
    from tunery.graders.schema import compile_schema

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TuneryError(f"cannot read the JSON schema {path}", why=str(exc)) from exc
    compile_schema(schema)
    return schema


def save_constraint(run_dir: str | Path, constraint: Constraint) -> Path:
    """Write `answers.json` into the run folder (atomically)."""
    from tunery.atomic import write_text_atomic

    path = Path(run_dir) / ANSWERS_FILE
    write_text_atomic(path, json.dumps(constraint.to_json(), ensure_ascii=False, indent=1))
    return path


def load_constraint(run_dir: str | Path) -> Constraint | None:
    """The run's saved constraint, or None when its answers are free."""
    path = Path(run_dir) / ANSWERS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Constraint(choices=data.get("choices"), json_schema=data.get("json_schema"))
    except (ValueError, TypeError) as exc:
        raise TuneryError(f"{path} cannot be read: {exc}", fix="train the run again or restore the file") from exc
