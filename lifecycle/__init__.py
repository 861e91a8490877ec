"""lifecycle: make a local-LLM model update a reviewed, tested, pinned change."""

__version__ = "0.1.0"
