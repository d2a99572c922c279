"""`flashvlm-export run`: a photo and a question through an exported graph to kept tokens, a heatmap and an answer."""

from flashvlm_export.runtime.api import RunResult, run

__all__ = ["RunResult", "run"]
