"""Vision-language fine-tuning: chat records with image parts, rendered by the model's own processor.

- `records`: image parts in chat records (a file path, or a base64 `data:` URL as OpenAI's and HF's
  chat formats write them) and an image folder + captions CSV, to `VisionExample`s.
- `images`: opening an image with every way it can be wrong named (missing, unreadable, truncated,
  oversized, animated, unsupported).
- `render`: the processor's rendering to token ids and the trained mask (assistant tokens only: image
  and prompt tokens never carry loss), and the batches the model takes.
- `parts`: which modules of each family are the vision tower, the projector and the language model.
- `lint`: `tunery data check` on image records.
- `composed`: the offline model `smollm2-135m-vision` (a frozen VGG16-BN + projector + SmolLM2).
"""
