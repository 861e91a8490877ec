"""The tiny GGUF writer lives in the package (``lifecycle doctor`` uses it for its canary)."""

from lifecycle.tinymodel import SPECIAL_TEXT_TOKENS, write_tiny_llama

__all__ = ["SPECIAL_TEXT_TOKENS", "write_tiny_llama"]
