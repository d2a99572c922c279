"""Where a model's weights come from, and which weights a graph was exported with.

Weights come from a local directory (--model-path) or the local Hugging Face cache, never the network;
or seeded random weights for the exact architecture (--random-weights).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.models.spec import ModelSpec


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from: seeded random weights, or a local checkpoint folder.

    Graphs record it in their metadata as `tag` ("random:<seed>" or the checkpoint path), so parity
    can rebuild the very weights a graph was exported with.
    """

    seed: int | None = None  # seeded random weights (the exact architecture), offline
    path: str | None = None  # a local checkpoint folder; None with no seed: the local HF cache

    RANDOM_PREFIX = "random:"
    MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= self.MAX_SEED:
            raise UsageError(f"{arg('seed', self.seed)} is out of range; use 0 <= seed <= {self.MAX_SEED}")

    @property
    def random(self) -> bool:
        return self.seed is not None

    @classmethod
    def from_flags(cls, random_weights: bool, seed: int, model_path: str | None) -> WeightsSource:
        if random_weights and model_path is not None:
            raise UsageError(f"{switch('random_weights')} and {arg('model_path')} exclude each other; pass one")
        return cls(seed=seed) if random_weights else cls(path=model_path)

    @classmethod
    def from_tag(cls, tag: str) -> WeightsSource:
        """The inverse of `tag`; a malformed random tag is a one-line error."""
        if tag.startswith(cls.RANDOM_PREFIX):
            try:
                return cls(seed=int(tag[len(cls.RANDOM_PREFIX) :]))
            except ValueError:
                raise UsageError(f"weights tag {tag!r} is malformed (random:<seed>); re-export the graph") from None
        return cls(path=tag)

    @property
    def tag(self) -> str:
        return f"{self.RANDOM_PREFIX}{self.seed}" if self.random else str(self.path)

    def flags(self) -> str:
        """The CLI flags that select these weights again."""
        if self.random:
            return "--random-weights" + (f" --seed {self.seed}" if self.seed else "")
        return f"--model-path {self.path}"

    def arguments(self) -> str:
        """The arguments that select these weights again, spelled for the caller (flags or keyword arguments)."""
        if self.random:
            return switch("random_weights") + (f" {arg('seed', self.seed)}" if self.seed else "")
        return arg("model_path", self.path)

    def __str__(self) -> str:
        return f"random weights, seed {self.seed}" if self.random else str(self.path)


def recorded_weights(tag: str | None, source: str) -> WeightsSource:
    """The weights a graph's `weights` metadata records; a graph without them is a one-line error."""
    if not tag:
        raise UsageError(f"{source} records no weights; re-export it with flashvlm-export (a full graph, not --selector-only)")
    return WeightsSource.from_tag(tag)


def weights_for_graph(
    recorded_tag: str | None, random_weights: bool, seed: int | None, model_path: str | None, source: str
) -> WeightsSource:
    """The weights a graph was exported with (its `weights` metadata), or a one-line error when the flags name others.

    No flags: the graph's own record. --random-weights [--seed S] or --model-path DIR must name the same weights.
    """
    graph = recorded_weights(recorded_tag, source)
    random_flag, model_flag = switch("random_weights"), arg("model_path")
    if random_weights and model_path is not None:
        raise UsageError(f"{random_flag} and {model_flag} exclude each other; pass one")
    fix = f"pass {graph.arguments()} (the graph's own weights), or none, or re-export the graph"
    if random_weights:
        if not graph.random:
            raise UsageError(f"{source} was exported from the checkpoint {graph.path}, not {random_flag}; {fix}")
        if seed is not None and seed != graph.seed:
            raise UsageError(f"{source} was exported with random weights seed {graph.seed}, not {arg('seed', seed)}; {fix}")
        return graph
    if seed is not None:
        raise UsageError(f"{arg('seed', seed)} applies to {random_flag} only; drop it or add {random_flag}")
    if model_path is not None:
        if graph.random:
            raise UsageError(
                f"{source} was exported with random weights (seed {graph.seed}), not {arg('model_path', model_path)}; {fix}"
            )
        if Path(model_path).expanduser().resolve() != Path(graph.path).expanduser().resolve():
            raise UsageError(
                f"{source} was exported from the checkpoint {graph.path}, not {arg('model_path', model_path)}; {fix}"
            )
        return graph
    if not graph.random and not Path(graph.path).is_dir():
        raise UsageError(
            f"{source} was exported from the checkpoint {graph.path}, which is not on this machine; pass {arg('model_path')} with its folder"
        )
    return graph


def resolve_weights_dir(spec: ModelSpec, model_path: str | None) -> Path:
    """--model-path, else the local HF cache; never a download."""
    fix = f"pass {arg('model_path', 'DIR')} (a local checkpoint) or {switch('random_weights')} (the architecture, seeded random weights)"
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_dir():  # a file or nothing there: named as such, not as a folder missing its files
            what = "is a file, not a checkpoint folder" if path.exists() else "does not exist"
            raise UsageError(f"{arg('model_path', model_path)} {what}; {fix}")
        if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
            raise UsageError(f"{arg('model_path', model_path)} holds no config.json and *.safetensors; {fix}")
        return path
    if not spec.hf_repo:
        raise UsageError(f"--model {spec.name} has no published weights; use --random-weights")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.hf_repo, local_files_only=True))
    except Exception:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise UsageError(
            f"no weights for --model {spec.name}: {spec.hf_repo} is not in the local Hugging Face cache "
            f"({cache}) and nothing is downloaded at run time; {fix}"
        ) from None


def checkpoint_config(spec: ModelSpec, path: Path, model_type: str, fix: str) -> dict:
    """The checkpoint's config.json as a dict, refused in one line when unreadable or of another model family."""
    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{config_file} is not readable JSON ({type(exc).__name__}: {str(exc)[:80]}); {fix}") from None
    found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
    if found != model_type:
        raise UsageError(f"{config_file} describes a {found!r} model, not {model_type!r} (--model {spec.name}); {fix}")
    return raw


def read_config(config_class, path: Path, fix: str, title: str):
    """config_class.from_pretrained(path), a broken or foreign file refused in one line."""
    try:
        return config_class.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError, ValueError or AttributeError for a broken or foreign file
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path / 'config.json'} is not a readable {title} config ({reason}); {fix}") from None


def load_states(path: Path, targets: dict, prefixes: dict[str, tuple[str, ...]], fix: str) -> None:
    """Fill each target module from the checkpoint's safetensors (keys under the part's prefixes, fp32); a truncated
    file, a tensor of the wrong shape or a missing weight is a one-line error naming the part."""
    import torch
    from safetensors import safe_open

    states: dict[str, dict] = {name: {} for name in targets}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    for part in targets:
                        prefix = next((p for p in prefixes[part] if key.startswith(p)), None)
                        if prefix is not None:
                            states[part][key[len(prefix) :]] = f.get_tensor(key).to(torch.float32)
                            break
        except Exception as exc:  # safetensors' SafetensorError: truncated, not safetensors, bad header
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{file} is not a readable safetensors file ({reason}); {fix}") from None
    for part, module in targets.items():
        try:
            missing, _ = module.load_state_dict(states[part], strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            reason = str(exc).strip().splitlines()[-1].strip()[:160]
            raise UsageError(f"checkpoint {path} has {part} weights of the wrong shape ({reason}); {fix}") from None
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise UsageError(f"checkpoint {path} lacks {len(missing)} {part} weights (e.g. {missing[0]}); {fix}")


def open_checkpoint(spec: ModelSpec, model_path: str | None, model_type: str, config_class, title: str, fix: str):
    """(folder, config) of a family's checkpoint: --model-path or the HF cache, its config.json of that family,
    read by the family's config class; each refused in one line naming `fix`."""
    path = resolve_weights_dir(spec, model_path)
    checkpoint_config(spec, path, model_type, fix)
    return path, read_config(config_class, path, fix, title)
