"""Hogwild! Inference on llama.cpp: several workers, one shared KV cache (arXiv 2504.06261)."""

__version__ = "0.1.0"
