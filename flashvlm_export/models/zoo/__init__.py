"""One declarative file per model family's checkpoints: geometry, names, defaults (models/registry.py lists them)."""
