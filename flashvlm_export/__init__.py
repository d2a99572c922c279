"""flashvlm-export: query-aware visual token pruning (FlashVLM) as static-shape deployable artifacts."""

__version__ = "0.1.0"
