"""Flair: version control for machine-learning models trained together on private data."""

__version__ = "0.1.0"
