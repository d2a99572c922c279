"""Model adapters: declarative specs and the modules the export wraps."""

from flashvlm_export.models.spec import MODELS, ModelSpec, get_spec

__all__ = ["MODELS", "ModelSpec", "get_spec"]
