"""Render a `VisionExample` with the model's own processor to token ids and a trained mask, and turn
rendered rows into the batches the model takes.

The processor's chat template writes each image as the family's placeholder (`<image>`,
`<|vision_start|><|image_pad|><|vision_end|>` ...) and the processor expands it into as many image
tokens as the image gives features (tiles, grid size). Which tokens carry loss is found the way text
rendering finds it (`tunery.data.render`), on tokens instead of characters, since only the processor
knows how an image expands: for assistant turn i, the conversation up to turn i with the generation
prompt and the conversation through turn i are processed too, with their images, and their token
counts are where the answer starts and ends. Both must be prefixes of the whole conversation's tokens
(else the template is not prefix-stable and the record is refused). Whitespace tokens the template writes
after the end-of-turn token are not trained; the end-of-turn token is. Image tokens are never trained,
whatever the template does: any token of the processor's image vocabulary is taken out of the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunery.data.batching import IGNORE
from tunery.errors import TuneryError
from tunery.vision.images import MAX_PIXELS, ImageProblem, ImageRef, open_image
from tunery.vision.records import VisionExample, VisionMessage

# Tokens of the families' image vocabulary (placeholders, tile tags, image boundaries).
IMAGE_TOKEN_NAMES = ("image_token", "fake_image_token", "global_image_tag", "video_token", "boi_token", "eoi_token")
IMAGE_TOKEN_TEXTS = ("<|vision_start|>", "<|vision_end|>")


@dataclass
class VisionRow:
    """Token ids of one example, per token whether it is trained, and what the processor needs to
    build its image inputs again (the rendered text and the images)."""

    ids: list[int]
    trained: list[bool]
    text: str
    images: list[ImageRef]
    truncated: bool = False
    answer_cut: bool = False
    location: str = ""

    @property
    def num_trained(self) -> int:
        return sum(self.trained)


def hf_messages(messages: list[VisionMessage]) -> list[dict]:
    """Messages as processors' chat templates take them: a list of typed parts per turn."""
    return [{"role": m.role, "content": [{"type": "image"} if kind == "image" else {"type": "text", "text": value}
                                          for kind, value in m.parts]} for m in messages]


def template_text(processor, messages: list[VisionMessage], generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(hf_messages(messages), tokenize=False,
                                         add_generation_prompt=generation_prompt)


def image_token_ids(processor) -> set[int]:
    """Ids of every token of the processor's image vocabulary (never trained)."""
    tokenizer = processor.tokenizer
    texts = [getattr(processor, name, None) for name in IMAGE_TOKEN_NAMES] + list(IMAGE_TOKEN_TEXTS)
    texts += [t for t in tokenizer.get_vocab() if t.startswith("<row_") and t.endswith(">")]
    ids = {tokenizer.convert_tokens_to_ids(t) for t in texts if isinstance(t, str)}
    ids |= {getattr(processor, "image_token_id", None)}
    return {i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id}


def process(processor, texts: list[str], images: list[list], **kwargs) -> dict[str, torch.Tensor]:
    """The processor's model inputs for texts and their images (one list per text)."""
    given = images if any(images) else None
    return dict(processor(text=texts, images=given, return_tensors="pt", **kwargs))


def _ids(processor, text: str, images: list) -> list[int]:
    return process(processor, [text], [images])["input_ids"][0].tolist()


def _prefix(full: list[int], part: list[int], turn: int, what: str, location: str) -> int:
    if full[: len(part)] == part:
        return len(part)
    raise TuneryError(f"{location}: the chat template is not prefix-stable, so tunery cannot locate assistant "
                      f"turn {turn}", why=f"the processed conversation up to that turn ({what}) is not the start "
                      "of the whole conversation's tokens", fix="use a template that renders earlier turns the same "
                      "way whatever follows them")


def _answer_spans(example: VisionExample, processor, full: list[int], pictures: list, train_on: str) -> list[range]:
    messages, spans = example.messages, []
    turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    turns = turns[-1:] if train_on == "last" else turns
    tokenizer = processor.tokenizer
    for i in turns:
        if messages[i].weight == 0:
            continue
        seen = sum(len(m.images) for m in messages[:i])  # answers hold no image: the same before and through
        before = _ids(processor, template_text(processor, messages[:i], True), pictures[:seen])
        start = _prefix(full, before, i, "with the generation prompt", example.location)
        through = full if i == len(messages) - 1 else _ids(processor, template_text(processor, messages[: i + 1]),
                                                          pictures[:seen])
        end = _prefix(full, through, i, "through the answer", example.location)
        while end > start and not tokenizer.decode([full[end - 1]]).strip():  # formatting after the turn's end
            end -= 1
        spans.append(range(start, end))
    return spans


def load_images(example: VisionExample, max_pixels: int = MAX_PIXELS) -> list:
    """The example's images, opened and checked; a `TuneryError` naming the record and the image."""
    pictures = []
    for index, ref in enumerate(example.images, 1):
        try:
            pictures.append(open_image(ref, max_pixels))
        except ImageProblem as exc:
            raise TuneryError(f"{example.location}: image {index}: {exc.reason}",
                              fix="run `tunery data check` on the file to list every bad image") from None
    return pictures


def render_vision(example: VisionExample, processor, train_on: str = "assistant", max_length: int | None = None,
                  max_pixels: int = MAX_PIXELS) -> VisionRow:
    """Token ids and trained mask of one example, by the model's processor (see the module's note).

    A conversation longer than `max_length` is cut at the end when every image token survives the cut;
    a cut through an image would leave the model features without their tokens, so it is an error."""
    pictures = load_images(example, max_pixels)
    text = template_text(processor, example.messages)
    full = _ids(processor, text, pictures)
    trained = [False] * len(full)
    if train_on == "all":
        trained = [True] * len(full)
    else:
        for span in _answer_spans(example, processor, full, pictures, train_on):
            for index in span:
                trained[index] = True
    image_ids = image_token_ids(processor)
    trained = [flag and token not in image_ids for token, flag in zip(full, trained)]
    row = VisionRow(full, trained, text, list(example.images), location=example.location)
    if max_length is None or len(full) <= max_length:
        return row
    last_image = max((i for i, token in enumerate(full) if token in image_ids), default=-1)
    if last_image >= max_length:
        raise TuneryError(f"{example.location}: {len(full)} tokens, and data.max_length ({max_length}) would cut "
                          "through an image's tokens", fix=f"raise data.max_length to at least {len(full)}, or use "
                          "smaller images (vision options)")
    return VisionRow(full[:max_length], trained[:max_length], text, row.images, True, any(trained[max_length:]),
                     example.location)


def collate_vision(rows: list[VisionRow], processor, max_pixels: int = MAX_PIXELS) -> dict[str, torch.Tensor]:
    """A right-padded batch of rows with the processor's image inputs, and `labels` (-100 where not
    trained). The processor runs again on each row's text and images (pixels are not kept between
    steps: memory stays that of one batch); its ids must be the rendered ones, else rendering drifted."""
    pictures = [[open_image(ref, max_pixels) for ref in row.images] for row in rows]
    batch = process(processor, [row.text for row in rows], pictures, padding=True, padding_side="right")
    width = max(len(row.ids) for row in rows)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for j, row in enumerate(rows):
        got = batch["input_ids"][j, : len(row.ids)].tolist()
        if got != row.ids:
            raise TuneryError(f"{row.location}: the processor gave other tokens than at rendering",
                              fix="delete the run's cache/ folder and train again")
        labels[j, : len(row.ids)] = torch.tensor([t if m else IGNORE for t, m in zip(row.ids, row.trained)])
        batch["attention_mask"][j, len(row.ids):] = 0  # a cut row's tail: padding from here on
    length = batch["input_ids"].shape[1]
    for key, value in list(batch.items()):  # cut every per-token tensor to the longest row
        if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == length and key != "pixel_values":
            batch[key] = value[:, :width]
    batch["labels"] = labels
    return batch
