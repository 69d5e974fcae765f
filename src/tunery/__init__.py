"""tunery: fine-tune pre-trained language models, from data check to export."""

__version__ = "0.1.0"
