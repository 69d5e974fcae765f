"""Chat records with images, and image folders with captions, to `VisionExample`s.

Formats read:

- chat records whose message `content` is a list of parts, as OpenAI's and HF's chat formats write
  them: `{"type": "text", "text": ...}`, `{"type": "image", "path": "cat.png"}` (a path relative to
  the data file's folder; `image` or `url` hold it too) and `{"type": "image_url", "image_url":
  {"url": "data:image/png;base64,..."}}`. A plain string content is one text part.
- a captions table (CSV, JSONL ...) with an `image` column (a path relative to the table) and a
  `caption` column, plus an optional `prompt` column (default `DEFAULT_PROMPT`): one user turn with the
  image and the prompt, one assistant turn with the caption.

Images may appear in user (and system) turns only: an answer is text. Every problem of a record is
reported with its file and line; images themselves are checked by `tunery.vision.images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunery.data.messages import ROLES
from tunery.data.problems import Problem
from tunery.vision.images import ImageProblem, ImageRef, from_data_url

DEFAULT_PROMPT = "Describe the image."
Part = tuple[str, object]  # ("text", str) or ("image", ImageRef)


@dataclass(frozen=True)
class VisionMessage:
    role: str
    parts: tuple[Part, ...]
    weight: int | None = None

    @property
    def images(self) -> list[ImageRef]:
        return [value for kind, value in self.parts if kind == "image"]


@dataclass
class VisionExample:
    source: str
    line: int
    messages: list[VisionMessage]

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def images(self) -> list[ImageRef]:
        return [image for message in self.messages for image in message.images]


def has_image_parts(record) -> bool:
    """Does a record hold an image (a content part of an image type, or a captions row)?"""
    if not isinstance(record, dict):
        return False
    if "image" in record and "caption" in record:
        return True
    for message in record.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image", "image_url")
                                             for p in content):
            return True
    return False


def _image_part(part: dict, folder: Path) -> ImageRef:
    if part["type"] == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ImageProblem("bad_image_part", "an image_url part needs image_url.url (a base64 data URL)")
        return from_data_url(url)
    where = next((part[k] for k in ("path", "image", "url") if isinstance(part.get(k), str)), None)
    if where is None:
        raise ImageProblem("bad_image_part", "an image part needs a `path` (a file relative to the data file)")
    if where.startswith("data:"):
        return from_data_url(where)
    if where.startswith(("http://", "https://")):
        raise ImageProblem("remote_image", f"image {where[:60]} is a web address; tunery reads no network: "
                                           "download it and give its path")
    return ImageRef(path=str((folder / where).resolve()))


def _parts(content, folder: Path, role: str, add) -> tuple[Part, ...] | None:
    if isinstance(content, str):
        return (("text", content),)
    if not isinstance(content, list) or not content:
        add("wrong_type", f"{role} content must be a string or a non-empty list of parts")
        return None
    parts: list[Part] = []
    for index, part in enumerate(content, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(("text", part["text"]))
        elif kind in ("image", "image_url"):
            if role == "assistant":
                add("image_in_answer", f"part {index} of an assistant turn is an image; answers are text")
                continue
            try:
                parts.append(("image", _image_part(part, folder)))
            except ImageProblem as exc:
                add(exc.kind, f"part {index}: {exc.reason}")
        else:
            add("bad_part", f"part {index} of a {role} turn is not a text, image or image_url part")
    return tuple(parts)


def _from_messages(record: dict, folder: Path, add) -> list[VisionMessage]:
    messages = []
    for turn in record.get("messages") or []:
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            add("unknown_role", f"role must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        parts = _parts(turn.get("content"), folder, role, add)
        if parts is not None:
            messages.append(VisionMessage(role, parts, turn.get("weight")))
    if not any(m.role == "assistant" for m in messages):
        add("no_assistant", "the conversation has no assistant turn to train on")
    return messages


def _from_caption(record: dict, folder: Path, add) -> list[VisionMessage]:
    caption, image = record.get("caption"), record.get("image")
    if not isinstance(caption, str) or not caption.strip():
        add("empty_content", "caption is empty")
        return []
    if not isinstance(image, str) or not image.strip():
        add("missing_key", "image is empty")
        return []
    prompt = record.get("prompt") if isinstance(record.get("prompt"), str) else DEFAULT_PROMPT
    try:
        ref = _image_part({"type": "image", "path": image}, folder)
    except ImageProblem as exc:
        add(exc.kind, exc.reason)
        return []
    return [VisionMessage("user", (("image", ref), ("text", prompt))), VisionMessage("assistant", (("text", caption),))]


def to_vision_example(source: str, line: int, record) -> tuple[VisionExample | None, list[Problem]]:
    """One record as a `VisionExample` (None when it has errors), and its problems."""
    problems: list[Problem] = []

    def add(kind: str, reason: str) -> None:
        problems.append(Problem(source, line, reason, "error", kind))

    folder = Path(source).resolve().parent
    if not isinstance(record, dict):
        add("wrong_type", "a record must be an object")
        return None, problems
    reader = _from_caption if "caption" in record and "messages" not in record else _from_messages
    messages = reader(record, folder, add)
    if problems:
        return None, problems
    return VisionExample(source, line, messages), problems


def load_vision_examples(paths: list[str]) -> tuple[list[VisionExample], list[Problem]]:
    """Every readable record of `paths` as a `VisionExample`, and the problems of the others."""
    from tunery.data.readers import read_records

    examples, problems = [], []
    for path in paths:
        records, found = read_records(path)
        problems += found
        for line, record in records:
            example, bad = to_vision_example(path, line, record)
            problems += bad
            if example is not None:
                examples.append(example)
    return examples, problems
