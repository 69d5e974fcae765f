"""Serving runs over HTTP with OpenAI's API: many LoRA runs on one base model, continuously batched.

See docs/serve.md. The server is an extra: pip install 'tunery[serve]' (fastapi, uvicorn, xgrammar,
prometheus-client).
"""
