"""shoplm: search and recommendations for online shops, driven by language models."""

__version__ = "0.1.0"
