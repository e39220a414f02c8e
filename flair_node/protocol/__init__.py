"""Flair."""
