"""hashbench: a reproducible benchmark for medical image retrieval with hash codes."""

__version__ = "0.1.0"
