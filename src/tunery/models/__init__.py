"""Model loading (aliases, folders, GGUF, hub ids), adapters and checkpoints."""
