"""`flashvlm-export run`: a photo and a question through an exported graph to kept tokens, a heatmap and an answer.

`run` and `RunResult` are imported on first use, so that `runtime.chain` (a split export's runtime) loads
without torch.
"""

__all__ = ["RunResult", "run"]


def __getattr__(name: str):
    if name in __all__:
        from flashvlm_export.runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'flashvlm_export.runtime' has no attribute {name!r}")
