"""After training: merge an adapter into its base, combine adapters, write HF/GGUF/Ollama exports and
check each one by reading it back with an independent reader."""
