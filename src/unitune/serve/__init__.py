"""Serving: the OpenAI-compatible HTTP API (``openai_api``) and the web chat UI over the one
chat engine of ``infer/engine.py``."""
