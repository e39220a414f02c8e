"""Helpers for Flair's tests and for users' own tests: commit-graph builder, tiny models, daemon processes."""
