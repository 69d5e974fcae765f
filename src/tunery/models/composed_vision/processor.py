"""The processor of the composed model `smollm2-135m-vision`: SmolLM2's tokenizer with `<image>` added,
ChatML with image parts (SmolLM2's own template, default system message included), and images resized to
a square and normalised as the CRAFT backbone was trained (ImageNet mean and spread). Each `<image>` the
template writes expands into `tokens_per_image` image tokens, as LLaVA's processor does."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunery.atomic import write_text_atomic

PROCESSOR_FILE = "tunery_processor.json"
IMAGE_TOKEN = "<image>"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TuneryVisionProcessor:
    """Renders text with images for `TuneryVisionForConditionalGeneration` (see the module's note)."""

    image_token = IMAGE_TOKEN

    def __init__(self, tokenizer, image_size: int, tokens_per_image: int, chat_template: str = CHAT_TEMPLATE):
        self.tokenizer, self.image_size, self.tokens_per_image = tokenizer, image_size, tokens_per_image
        self.chat_template = chat_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt)

    def pixels(self, image) -> torch.Tensor:
        """One RGB image as [3, size, size], resized (bicubic) and normalised."""
        from PIL import Image

        resized = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        values = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).float() / 255.0
        values = values.view(self.image_size, self.image_size, 3).permute(2, 0, 1)
        return (values - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    def __call__(self, text=None, images=None, return_tensors: str = "pt", padding: bool = False,
                 padding_side: str = "right", **_unused) -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        flat = [image for group in (images or []) for image in (group if isinstance(group, list) else [group])]
        placeholders = sum(t.count(IMAGE_TOKEN) for t in texts)
        if placeholders != len(flat):
            raise ValueError(f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the text for {len(flat)} image(s)")
        expanded = [t.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.tokens_per_image) for t in texts]
        out = dict(self.tokenizer(expanded, add_special_tokens=False, padding=padding, padding_side=padding_side,
                                  return_tensors=return_tensors))
        if flat:
            out["pixel_values"] = torch.stack([self.pixels(image) for image in flat])
        return out

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        settings = {"image_size": self.image_size, "tokens_per_image": self.tokens_per_image,
                    "chat_template": self.chat_template}
        write_text_atomic(folder / PROCESSOR_FILE, json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(cls, folder) -> "TuneryVisionProcessor":
        from transformers import AutoTokenizer

        settings = json.loads((Path(folder) / PROCESSOR_FILE).read_text())
        return cls(AutoTokenizer.from_pretrained(folder), settings["image_size"], settings["tokens_per_image"],
                   settings["chat_template"])


def is_composed_folder(folder) -> bool:
    return (Path(folder) / PROCESSOR_FILE).is_file()
