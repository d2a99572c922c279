"""LLaVA-1.5 parts as LlavaModel composes them: vision tower, projector, text embeddings.

Weights come from a local directory (--model-path) or the local Hugging Face cache, never the
network; or seeded random weights for the exact architecture (--random-weights). Only the three
parts the export needs are materialised, so a 7B checkpoint costs ~1.3 GB of RAM, not ~28 GB.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import VisionFeatures

# checkpoint key prefixes (llava-hf original layout, transformers >= 4.52 layout, and save_pretrained of 5.x) -> part
PREFIXES = {
    "vision_tower": ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower."),
    "projector": ("model.multi_modal_projector.", "multi_modal_projector."),
    "embed_tokens": ("model.language_model.embed_tokens.", "language_model.model.embed_tokens.", "model.embed_tokens."),
}


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
            raise UsageError(f"{source} was exported from the checkpoint {graph.path}, not {arg('model_path', model_path)}; {fix}")
        return graph
    if not graph.random and not Path(graph.path).is_dir():
        raise UsageError(
            f"{source} was exported from the checkpoint {graph.path}, which is not on this machine; pass {arg('model_path')} with its folder"
        )
    return graph


@dataclass
class LlavaParts:
    spec: ModelSpec
    config: object  # transformers LlavaConfig
    vision_tower: nn.Module  # CLIPVisionModel, eager attention
    projector: nn.Module  # LlavaMultiModalProjector
    embed_tokens: nn.Module | None  # Llama embed_tokens, when asked for
    source: WeightsSource  # where the weights came from, for metadata

    def vision_features(self) -> VisionFeatures:
        return VisionFeatures(self.vision_tower, self.config.vision_feature_layer)


def _build(config, with_embeddings: bool):
    from transformers import AutoModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config.vision_config._attn_implementation = "eager"
    vision_tower = AutoModel.from_config(config.vision_config, attn_implementation="eager")
    projector = LlavaMultiModalProjector(config)
    embed = None
    if with_embeddings:
        text = config.text_config
        embed = nn.Embedding(text.vocab_size, text.hidden_size, padding_idx=getattr(text, "pad_token_id", None))
        nn.init.normal_(embed.weight, std=getattr(text, "initializer_range", 0.02))
    return vision_tower, projector, embed


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False) -> LlavaParts:
    """The exact architecture with weights from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    config = spec.llava_config()
    vision_tower, projector, embed = _build(config, with_embeddings)
    return _finish(LlavaParts(spec, config, vision_tower, projector, embed, WeightsSource(seed=seed)))


def resolve_weights_dir(spec: ModelSpec, model_path: str | None) -> Path:
    """--model-path, else the local HF cache; never a download."""
    fix = (
        f"pass {arg('model_path', 'DIR')} (a local checkpoint) or {switch('random_weights')} (the architecture, seeded random weights)"
    )
    if model_path is not None:
        path = Path(model_path).expanduser()
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


def _check_geometry(spec: ModelSpec, config) -> None:
    vision = config.vision_config
    got = (vision.image_size, vision.patch_size, vision.hidden_size, config.text_config.hidden_size)
    want = (spec.image_size, spec.patch_size, spec.vision_hidden, spec.text_hidden)
    if got != want:
        raise UsageError(
            f"checkpoint geometry (image, patch, Dv, Dl) = {got} does not match --model {spec.name} {want}; "
            "pick the --model that matches the checkpoint"
        )


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False) -> LlavaParts:
    """Real weights from a local directory or the HF cache, fp32."""
    from transformers import LlavaConfig

    path = resolve_weights_dir(spec, model_path)
    fix = "point --model-path at a complete llava-hf LLaVA-1.5 checkpoint (config.json + *.safetensors)"
    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{config_file} is not readable JSON ({type(exc).__name__}: {str(exc)[:80]}); {fix}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
    if model_type != "llava":
        raise UsageError(f"{config_file} describes a {model_type!r} model, not 'llava'; {fix}")
    try:
        config = LlavaConfig.from_pretrained(str(path))
        _check_geometry(spec, config)
    except UsageError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError or AttributeError for a broken or foreign file
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path / 'config.json'} is not a readable LLaVA config ({reason}); {fix}") from None
    vision_tower, projector, embed = _build(config, with_embeddings)
    targets = {"vision_tower": vision_tower, "projector": projector}
    if embed is not None:
        targets["embed_tokens"] = embed
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in targets}
    for file in sorted(path.glob("*.safetensors")):
        try:
            _read_parts(file, targets, states)
        except Exception as exc:  # safetensors' SafetensorError: truncated, not safetensors, bad header
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{file} is not a readable safetensors file ({reason}); {fix}") from None
    for part, module in targets.items():
        try:
            missing, unexpected = module.load_state_dict(states[part], strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            reason = str(exc).strip().splitlines()[-1].strip()[:160]
            raise UsageError(f"checkpoint {path} has {part} weights of the wrong shape ({reason}); {fix}") from None
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise UsageError(
                f"checkpoint {path} lacks {len(missing)} {part} weights (e.g. {missing[0]}); "
                "point --model-path at a complete LLaVA-1.5 checkpoint"
            )
    return _finish(LlavaParts(spec, config, vision_tower, projector, embed, WeightsSource(path=str(path))))


def _read_parts(file: Path, targets: dict, states: dict) -> None:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            for part, prefixes in PREFIXES.items():
                if part not in targets:
                    continue
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None:
                    states[part][key[len(prefix) :]] = f.get_tensor(key).to(torch.float32)
                    break


def _finish(parts: LlavaParts) -> LlavaParts:
    for module in (parts.vision_tower, parts.projector, parts.embed_tokens):
        if module is not None:
            module.eval().requires_grad_(False)
    return parts


def get_parts(spec: ModelSpec, source: WeightsSource, with_embeddings: bool = False) -> LlavaParts:
    if source.random:
        return random_parts(spec, source.seed, with_embeddings)
    return load_parts(spec, source.path, with_embeddings)


def get_parts_logged(spec: ModelSpec, source: WeightsSource, log=print, with_embeddings: bool = False, what: str = "") -> LlavaParts:
    """get_parts, timed in one line: "Model: loaded llava15-tiny (random weights, seed 0) 0.4s"."""
    from flashvlm_export.artifacts.timing import StepTimer

    timer = StepTimer("Model", log)
    parts = get_parts(spec, source, with_embeddings)
    timer.done(f"loaded {spec.name}{what} ({parts.source})")
    return parts
