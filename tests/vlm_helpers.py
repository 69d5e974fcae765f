"""Tiny random-weight vision-language models of the three families tunery supports (LLaVA, Idefics3 /
SmolVLM, Qwen2-VL), each with a processor of its own class built from SmolLM2's tokenizer and the
family's image processor at a small image size, as transformers' own tests build tiny processors.
No weights are downloaded: every model comes from a config, seeded."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

# A ChatML template that writes image parts as the family's image placeholder and text parts as text;
# the real processors ship templates of the same shape (a content list of typed parts).
CHATML_PARTS = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMAGE{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096)


def _tokenizer(base, extra: list[str]):
    tokenizer = copy.deepcopy(base)
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def tiny_llava(base_tokenizer, seed: int = 0):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaImageProcessorPil, LlavaProcessor)

    tokenizer = _tokenizer(base_tokenizer, ["<image>"])
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHATML_PARTS.replace("IMAGE", "<image>"))
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=2, eos_token_id=2, bos_token_id=1, **TINY_TEXT)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor


def tiny_idefics3(base_tokenizer, seed: int = 0):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig)

    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = _tokenizer(base_tokenizer, ["<fake_token_around_image>", "<image>", "<end_of_utterance>",
                                            "<global-img>", *tiles])
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                             do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=CHATML_PARTS.replace("IMAGE", "<image>"))
    vision = Idefics3VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=2, eos_token_id=2, bos_token_id=1, **TINY_TEXT)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    return Idefics3ForConditionalGeneration(config).eval(), processor


def image_only_qwen2_vl_processor():
    """Qwen2-VL's processor without its video processor, which transformers builds only with torchvision
    (not installed here): the same image path, the same placeholder expansion."""
    from transformers import ProcessorMixin, Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


def tiny_qwen2_vl(base_tokenizer, seed: int = 0):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil)

    tokenizer = _tokenizer(base_tokenizer, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    image_processor = Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                            temporal_patch_size=2)
    processor = image_only_qwen2_vl_processor()(image_processor=image_processor, tokenizer=tokenizer,
                                                chat_template=CHATML_PARTS.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
                         pad_token_id=2, eos_token_id=2, bos_token_id=1, **TINY_TEXT),
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                           temporal_patch_size=2, in_chans=3, mlp_ratio=2),
        **ids)
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config).eval(), processor


FAMILIES = {"llava": tiny_llava, "idefics3": tiny_idefics3, "qwen2_vl": tiny_qwen2_vl}


def save_tiny(family: str, base_tokenizer, folder: Path, seed: int = 0) -> Path:
    """A tiny model of `family` saved as a local model folder (weights, config, processor)."""
    model, processor = FAMILIES[family](base_tokenizer, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_png(path: Path, colour=(200, 30, 30), size=(40, 40)) -> Path:
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    return path
