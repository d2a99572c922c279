"""The JSON record beside an artifact (`X.onnx` or `X.plan` -> `X.json`): where it is, and reading it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flashvlm_export.artifact_paths import BOUNDS, named_file, read_bounded
from flashvlm_export.errors import UsageError


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_suffix(".json")


def read_sidecar(artifact: Path, required: tuple[str, ...] = ()) -> dict:
    """The JSON record next to an artifact; a broken or incomplete one is a one-line error."""
    path = sidecar_path(artifact)
    fix = f"rebuild {artifact.name} with flashvlm-export so its sidecar is rewritten"
    if not os.path.lexists(path):
        raise UsageError(f"{artifact} has no sidecar {path}; re-export it with flashvlm-export")
    path = named_file(artifact, artifact.parent, path.name, "sidecar", "json", fix=fix)  # no link out, no FIFO, bounded
    try:
        record = json.loads(read_bounded(path, BOUNDS["json"]))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"sidecar {path} is not readable JSON ({type(exc).__name__}: {str(exc)[:80]}); {fix}") from None
    if not isinstance(record, dict):
        raise UsageError(f"sidecar {path} holds a JSON {type(record).__name__}, not a record; {fix}")
    missing = [key for key in required if key not in record]
    if missing:
        raise UsageError(f"sidecar {path} lacks {', '.join(missing)}; {fix}")
    return record
