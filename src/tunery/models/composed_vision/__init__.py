"""`smollm2-135m-vision`: a LLaVA-style model composed offline from a packaged conv backbone, a projector
and the embedded SmolLM2 (model.py: the classes; processor.py: images and text to tensors; build.py:
composing it into the cache on first use)."""
