"""unitune: instruction fine-tuning of large language models, one CLI and one Python API."""

__version__ = "0.1.0"
