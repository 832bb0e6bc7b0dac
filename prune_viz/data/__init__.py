"""Data sources: procedural scenes with labels (``synthetic``)."""
