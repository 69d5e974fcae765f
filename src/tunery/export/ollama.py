"""An Ollama Modelfile whose TEMPLATE and stop tokens reproduce the run's chat template.

Ollama does not run Jinja: its TEMPLATE is a Go template over `.Messages` (each with `.Role` and
`.Content`), and a default system message goes in a SYSTEM line, which Ollama puts first when a
request brings none. Exports that lose this produce the familiar failures: the model is prompted in
a format it was never trained on, or never stops because the end-of-turn token is not a stop word.

The translation is derived from the template itself, not from a table of known families: the run's
Jinja template is rendered on conversations with marker contents, and the text around each marker
gives the prefix and suffix of each role, the generation prompt and any default system message.
The result is then checked by rendering the Go template with `render_go_template` (a renderer of
exactly the constructs written here, with Ollama's SYSTEM rule) against Jinja on several multi-turn
conversations; a template that does not translate is an error, never a silent approximation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tunery.errors import TuneryError

ROLES = ("system", "user", "assistant")
_MARK = {role: f"\u2063{role.upper()}-CONTENT\u2063" for role in ROLES}
CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}],
    [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
     {"role": "user", "content": "Three?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"},
     {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
     {"role": "assistant", "content": "e e"}, {"role": "user", "content": "f"}],
]


@dataclass
class Translation:
    """Per-role text around the content, the generation prompt and the default system message."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None
    header: str = ""  # written once before the first message (a BOS token, say)


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _between(text: str, start: str, end: str | None) -> str:
    head = text.index(start) + len(start)
    return text[head:] if end is None else text[head:text.index(end, head)]


def derive_translation(tokenizer) -> Translation:
    """Read the role wrappers off renderings of marker conversations (see the module docstring)."""
    msgs = [{"role": r, "content": _MARK[r]} for r in ROLES] + [{"role": "user", "content": "\u2063END\u2063"}]
    try:
        full = _render(tokenizer, msgs, True)
        no_prompt = _render(tokenizer, msgs, False)
        alone = {n: _render(tokenizer, msgs[:n], False) for n in (1, 2, 3)}
        without_system = _render(tokenizer, [{"role": "user", "content": _MARK["user"]}], False)
    except Exception as exc:  # Jinja errors come in many types; the message says which
        raise TuneryError("the chat template could not be rendered for the Ollama translation",
                          why=f"{type(exc).__name__}: {exc}") from exc
    try:
        suffix = {role: alone[i + 1].split(_MARK[role])[-1] for i, role in enumerate(ROLES)}
        prefix = {"system": full[:full.index(_MARK["system"])]}
        prefix["user"] = _between(full, _MARK["system"], _MARK["user"])[len(suffix["system"]):]
        prefix["assistant"] = _between(full, _MARK["user"], _MARK["assistant"])[len(suffix["user"]):]
    except ValueError:  # a message's text is not where its turn is (moved, merged or dropped)
        raise TuneryError(
            "the chat template does not write each message in its own place, so it has no Ollama TEMPLATE",
            why="rendered as system, user, assistant, user, the messages come out in another order or "
            f"merged: {full!r}",
            fix="export --format gguf and write the Modelfile TEMPLATE by hand",
        ) from None
    generation_prompt = full[len(no_prompt):]
    head = without_system[:without_system.index(_MARK["user"])]
    header, default_system = _split_head(head, prefix, suffix)
    prefix["system"] = prefix["system"][len(header):]
    return Translation(prefix, suffix, generation_prompt, default_system, header)


def _split_head(head: str, prefix: dict, suffix: dict) -> tuple[str, str | None]:
    """(header, default system message) from the text a template writes before a lone user turn.

    That text is [header] + either the user prefix, or a whole system turn with the default message
    and then the user prefix. The shortest header that explains it wins; `check_translation` then
    confirms the reading on whole conversations.
    """
    for cut in range(len(prefix["system"]) + 1):
        header = prefix["system"][:cut]
        if not head.startswith(header):
            break
        rest, sys_prefix = head[cut:], prefix["system"][cut:]
        if rest == prefix["user"]:
            return header, None
        closing = suffix["system"] + prefix["user"]
        if rest.startswith(sys_prefix) and rest.endswith(closing) and len(rest) >= len(sys_prefix + closing):
            return header, rest[len(sys_prefix):len(rest) - len(closing)]
    raise TuneryError("the chat template writes a header that tunery cannot express for Ollama",
                      why=f"text before the first user turn: {head!r}")


def go_template(t: Translation) -> str:
    """The Go TEMPLATE: one branch per role, literal text between actions (no whitespace trimming)."""
    for text in [t.header, *t.prefix.values(), *t.suffix.values(), t.generation_prompt]:
        if "{{" in text or "}}" in text:
            raise TuneryError("the chat template's literal text contains '{{' or '}}', which Go templates "
                              "would read as actions")
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{t.prefix[role]}{{{{ .Content }}}}{t.suffix[role]}'
        for i, role in enumerate(ROLES)
    )
    return f"{t.header}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{t.generation_prompt}"


def render_go_template(template: str, messages: list[dict], system: str | None) -> str:
    """Render what `go_template` writes, as Ollama would for a chat request (its SYSTEM rule included).

    Supports exactly: literal text, `{{ range .Messages }}`, `{{ if eq .Role "x" }}`,
    `{{ else if eq .Role "x" }}`, `{{ .Content }}` and `{{ end }}`.
    """
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}] + messages
    parts = _split_actions(template)
    start, end = parts.index(("action", "range .Messages")), len(parts) - 1 - parts[::-1].index(("action", "end"))
    body, out = parts[start + 1:end], [text for kind, text in parts[:start] if kind == "text"]
    for message in messages:
        out.append(_render_branches(body, message))
    out.extend(text for kind, text in parts[end + 1:] if kind == "text")
    return "".join(out)


def _split_actions(template: str) -> list[tuple[str, str]]:
    parts, pos = [], 0
    while pos < len(template):
        open_at = template.find("{{", pos)
        if open_at < 0:
            parts.append(("text", template[pos:]))
            break
        if open_at > pos:
            parts.append(("text", template[pos:open_at]))
        close = template.index("}}", open_at)
        parts.append(("action", template[open_at + 2:close].strip()))
        pos = close + 2
    return parts


def _render_branches(body: list[tuple[str, str]], message: dict) -> str:
    """The text of the if/else-if branch whose role test matches `message` (the inner `end` closes it)."""
    out, active, taken = [], False, False
    for kind, text in body:
        if kind == "action" and (text.startswith("if eq .Role") or text.startswith("else if eq .Role")):
            role = json.loads(text.rsplit(" ", 1)[1])
            active = not taken and message["role"] == role
            taken = taken or active
        elif kind == "action" and text == "end":
            active = False
        elif active:
            out.append(message["content"] if (kind, text) == ("action", ".Content") else text)
    return "".join(out)


def check_translation(tokenizer, template: str, system: str | None) -> list[str]:
    """Conversations (as JSON) on which the Go template renders differently from the Jinja one."""
    bad = []
    for conv in CHECK_CONVERSATIONS:
        if render_go_template(template, conv, system) != _render(tokenizer, conv, True):
            bad.append(json.dumps(conv))
    return bad


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TuneryError('the chat template contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(tokenizer, gguf_name: str, stop_tokens: list[str]) -> tuple[str, dict]:
    """(Modelfile text, a record of the checks) for a GGUF next to it called `gguf_name`."""
    translation = derive_translation(tokenizer)
    template = go_template(translation)
    mismatches = check_translation(tokenizer, template, translation.default_system)
    if mismatches:
        raise TuneryError(
            "the Ollama TEMPLATE derived from the chat template does not reproduce it",
            why=f"differs on {len(mismatches)} of {len(CHECK_CONVERSATIONS)} check conversations, e.g. {mismatches[0]}",
            fix="export --format gguf and write the Modelfile TEMPLATE by hand",
        )
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(template)}"]
    if translation.default_system is not None:
        lines.append(f"SYSTEM {_quoted(translation.default_system)}")
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in stop_tokens]
    record = {"template_checked_on": len(CHECK_CONVERSATIONS), "template_matches": True,
              "stop": stop_tokens, "default_system": translation.default_system}
    return "\n".join(lines) + "\n", record
