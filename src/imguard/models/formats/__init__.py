"""Readers of foreign weight files into torch modules."""
