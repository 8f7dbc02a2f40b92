"""Prompt templates shipped as package data (`tipretrieval.templates`, read with importlib.resources)."""
