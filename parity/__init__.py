"""parity: golden-dataset recorder and offline differ for LLM inference parity."""

__version__ = "0.1.0"
