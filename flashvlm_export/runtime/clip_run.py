"""`run --video`: a clip and a question through a clip graph, to the kept tokens of every frame group and an answer.

runtime/api.py's `run` hands a clip here (video= or demo_video=). The clip is decoded at the graph's frames and side
(runtime/video.py), selected by the graph (any backend: ONNX Runtime, a TensorRT engine, a split's chain), drawn as
a strip of its temporal groups (runtime/strip.py), and answered from the kept tokens and from all (runtime/clip.py).

Positions. The graph returns each kept token's (t, h, w) for the fps it was exported at (metadata `fps`); they are
checked against that table. Qwen's processor spaces the groups by the clip's own sampled fps (second_per_grid_t =
2 / effective_fps), which differs for most clips (even sampling of a 10 s clip to 8 frames is 0.8 fps), so the LLM
gets the kept tokens' positions rebuilt for the clip's fps with clip_token_positions: t changes, h and w do not,
and the selection does not depend on t. The run says so when it rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.artifact_paths import not_a_folder
from flashvlm_export.artifacts.ownership import check_replaceable
from flashvlm_export.errors import FlashVLMError, UsageError, arg, switch
from flashvlm_export.progress import plural
from flashvlm_export.runtime import run_steps as steps
from flashvlm_export.runtime.run_steps import RANDOM_NOTE, RunResult


@dataclass
class ClipRunResult(RunResult):
    kept_per_group: list[int] = field(default_factory=list)  # kept tokens of each temporal group (frames 2g, 2g+1)
    effective_fps: float = 0.0  # the clip's sampled fps: its positions' temporal spacing
    timestamps: list[float] = field(default_factory=list)  # (F,) seconds of the sampled frames


def check_inputs(video, demo_video, image, demo_image, fps) -> None:
    """One clip (a file or the demo), no picture beside it, a positive --fps if any: before anything is loaded."""
    if image is not None or demo_image is not None:
        given = arg("image") if image is not None else arg("demo_image")
        raise UsageError(
            f"{given} and {arg('video') if video is not None else arg('demo_video')} exclude each other; run one picture or one clip"
        )
    if (video is None) == (demo_video is None):
        raise UsageError(f"pass one of {arg('video', 'FILE')} or {arg('demo_video', 'FILE')}")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise UsageError(f"{arg('fps', fps)} is not a positive rate; pass frames per second such as 2 or 0.5")


def refuse_clip_graph(request, source: str) -> None:
    """A picture on a clip graph: one line pointing at --video."""
    if request.frames is not None:
        raise UsageError(
            f"{source} is a clip graph ({request.frames} frames); pass {arg('video', 'FILE')} or {arg('demo_video', 'FILE')} instead of a picture"
        )


def check_clip_graph(request, source: str) -> None:
    """--video needs a model with a video path and a graph exported with --video."""
    from flashvlm_export.runtime.clip import video_token_index

    video_token_index(request.spec)  # a model without a video path: one line
    if request.frames is None:
        raise UsageError(
            f"{arg('video')}: {source} is an image graph; export a clip graph with flashvlm-export --model {request.spec.name} "
            "--video --frames 8 --budget K"
        )


def _check_demo_clip(path: Path, force: bool) -> None:
    from flashvlm_export.runtime.video import CONTAINERS

    not_a_folder(path, arg("demo_video", str(path)), "demo.mp4")
    if path.suffix.lower() not in CONTAINERS:
        raise UsageError(f"{arg('demo_video', str(path))} has an unknown container; end the name with {', '.join(CONTAINERS)}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass {switch('force')} to overwrite it, or use it as {arg('video', str(path))}")
    check_replaceable(path, f"use it as {arg('video', str(path))}, or choose another {arg('demo_video')}")


def _check_strip(path: Path, force: bool) -> None:
    """The strip's path: a .png, not over a file without force, in a folder that exists or can be made (made only
    when the strip is written: a refused run leaves nothing behind)."""
    import os

    not_a_folder(path, arg("heatmap", str(path)), "strip.png")
    if path.suffix.lower() != ".png":
        raise UsageError(f"{arg('heatmap', str(path))} must end in .png")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass {switch('force')} to overwrite it, or choose another {arg('heatmap')}")
    check_replaceable(path, f"move it away or choose another {arg('heatmap')}")
    folder = path.parent.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"the folder of {arg('heatmap', str(path))} cannot be written ({folder}); choose another path")


def group_counts(indices: np.ndarray, groups: int, n: int) -> list[int]:
    """Kept tokens in each temporal group (indices are group-major: group g holds g*n .. (g+1)*n - 1)."""
    return np.bincount(np.asarray(indices) // n, minlength=groups).tolist()


def clip_positions(selection, request, effective_fps: float, source: str, log) -> torch.Tensor:
    """The graph's positions checked against its own export-fps table; the kept tokens' positions at the clip's fps."""
    from flashvlm_export.models.positions import clip_token_positions, second_per_grid

    spec, frames = request.spec, request.frames
    if selection.positions is None:
        raise FlashVLMError(
            f"{source} returns no kept-token positions, which {spec.name} needs; re-export it with flashvlm-export"
        )
    kept = torch.from_numpy(selection.indices)
    want = clip_token_positions(spec, frames, request.second_per_grid_t)[kept]
    if not torch.equal(selection.positions, want):
        row = int(torch.any(selection.positions != want, dim=1).nonzero()[0])
        raise FlashVLMError(
            f"{source} returned position {selection.positions[row].tolist()} for token {int(kept[row])}, whose (t, h, w) at "
            f"{request.fps:g} fps is {want[row].tolist()}; re-export the graph with flashvlm-export"
        )
    table = clip_token_positions(spec, frames, second_per_grid(spec, effective_fps))
    if not torch.equal(table, clip_token_positions(spec, frames, request.second_per_grid_t)):
        groups = frames // spec.temporal_patch
        log(
            f"Run: the clip is sampled at {effective_fps:g} fps, the graph's positions assume {request.fps:g} fps: the kept "
            f"tokens' t rebuilt for {effective_fps:g} fps (groups at t = {table[:: spec.n_tokens, 0][:groups].tolist()}; h, w the graph's)"
        )
    return table[kept]


def _groups_text(counts: list[int], per_group: int | None) -> str:
    rows = ", ".join(f"g{g} {c}" for g, c in enumerate(counts))
    share = f" (per-group: {per_group} each)" if per_group is not None else " (joint: one selection over all groups)"
    return rows + share


def run_clip(graph, video, question, *, image=None, demo_image=None, demo_video=None, fps=None, model_path=None,
             random_weights=False, seed=None, engine=None, plugin_lib=None, manifest=None, budget=None, tensorrt=False,
             backend="onnxruntime", heatmap=None, answer=False, compare_full=False, max_new_tokens=64, llm_dtype="auto", llm_runtime="transformers",
             gguf=None, force=False, log=print) -> ClipRunResult:  # fmt: skip
    """runtime.run for a clip: see runtime/api.py; the kept tokens per temporal group, the strip, the answers."""
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.models.positions import clip_token_positions, second_per_grid
    from flashvlm_export.models.weights import weights_for_graph
    from flashvlm_export.runtime.answer import check_llm_dtype
    from flashvlm_export.runtime.clip import (
        clip_llm_input,
        clip_prompt_ids,
        clip_text_inputs,
        group_timestamps,
        placeholder_positions,
        read_clip,
    )
    from flashvlm_export.runtime.graph_info import GraphInfo
    from flashvlm_export.runtime.image import stretch_note
    from flashvlm_export.runtime.session import select
    from flashvlm_export.runtime.tokenizer import load_tokenizer

    check_inputs(video, demo_video, image, demo_image, fps)
    provider = steps.graph_provider(backend, engine, tensorrt)
    if max_new_tokens < 1:
        raise UsageError(f"{arg('max_new_tokens', max_new_tokens)} must be >= 1")
    check_llm_dtype(llm_dtype)
    answer = answer or compare_full
    from flashvlm_export.runtime.llama_cpp import check_llm_choice

    check_llm_choice(llm_runtime, gguf, answer)
    from flashvlm_export.runtime.shape_choice import chosen_manifest, clip_hw

    # several shapes: the processor's pick for the clip's frames
    manifest, chosen = chosen_manifest(manifest, lambda: clip_hw(video), log, what="clip")
    info, split, recorded, source = steps.open_source(graph, engine, manifest, budget, tensorrt)
    check_clip_graph(info.request, source)
    weights = weights_for_graph(recorded, random_weights, seed, model_path, source)
    info = GraphInfo(info.request, weights, source)
    spec, request = info.spec, info.request
    strip_path = Path(heatmap) if heatmap else None
    if strip_path is not None:
        _check_strip(strip_path, force)
    if demo_video is not None:
        _check_demo_clip(Path(demo_video), force)
    checkpoint = None if info.weights.random else Path(info.weights.path)
    if answer:  # before anything is loaded: the GGUF checked, or an LLM that cannot fit refused, in one line
        plan = steps.plan_answer(info, gguf, random_weights, llm_dtype, source)
    frames, n, groups = request.frames, spec.n_tokens, request.clip.groups
    if demo_video is not None:  # written only once every check above has passed
        from flashvlm_export.runtime.video import write_demo_clip

        target = Path(demo_video)
        target.parent.mkdir(parents=True, exist_ok=True)
        video = str(write_demo_clip(target, frames=frames, size=spec.image_shape, force=force, fps=request.fps))
        log(f"Input: wrote the demo clip ({frames} frames, {spec.shape_text} px, {request.fps:g} fps: the graph's) to {video}")
    clip = read_clip(video, spec, frames, fps, checkpoint)  # a missing, unreadable, still or short clip: one line
    parts = steps.load_parts(info, log)
    if answer and gguf is None:  # before the selection: a model that cannot answer fails fast
        llm = steps.load_llm(plan, info, parts, log)
    tokenizer, tokenizer_name = load_tokenizer(spec, checkpoint)
    # the Qwen3 generation: each frame group's timestamp, in the prompt before its tokens
    stamps = group_timestamps(clip.indices, clip.source_fps, spec.temporal_patch) if spec.timestamped_frames else None
    token_ids = clip_prompt_ids(tokenizer, question, spec, stamps)
    placeholder_positions(token_ids, spec, groups)  # the question must not add a clip token
    if answer and gguf is not None:  # before the selection: positions llama.cpp cannot mask as the model does, one line
        from flashvlm_export.runtime import llama_cpp

        table = clip_token_positions(spec, frames, second_per_grid(spec, clip.effective_fps))
        rows = torch.zeros(len(table), spec.text_hidden)
        layers = torch.zeros(spec.deepstack_layers, len(table), spec.text_hidden) if spec.deepstack_layers else None
        llama_cpp.llama_cpp_prompt(token_ids, spec, rows, table, int(table[:, 0].max()), layers, np.arange(len(table)))
    scope = request.config.text_scope
    text_embeds, text_mask = clip_text_inputs(parts.embed_tokens, token_ids, spec, request.t_max, scope=scope)
    sampled = f"at {fps:g} fps" if fps is not None else "evenly"
    log(
        f"Input: clip {video}: {frames} of its {clip.total_frames} frames ({clip.source_fps:g} fps) sampled {sampled}, "
        f"frames {clip.indices}, effective {clip.effective_fps:g} fps ({clip.processor}); question {question!r}: "
        f"{int(text_mask.sum())}/{request.t_max} text rows ({tokenizer_name})"
    )
    note = stretch_note(spec, *clip.frame_size, what="clip")
    if note:
        log(f"Input: {note}")

    runner = steps.selection_backend(info, graph, engine, plugin_lib, split, tensorrt, budget, provider)
    selection = select(runner, clip.pixel_values, text_embeds, text_mask, request.batch)
    total = request.tokens
    log(
        f"Run: selected {len(selection.indices)}/{total} tokens {selection.ms:.1f} ms ({selection.backend}, encoder + projector + selector)"
    )
    counts = group_counts(selection.indices, groups, n)
    per_group = len(selection.indices) // groups if request.video_budget == "per-group" else None
    log(f"Run: kept per frame group (group g = frames 2g, 2g+1; {n} tokens each): {_groups_text(counts, per_group)}")
    log(f"Run: kept indices {selection.indices.tolist()}")
    positions = clip_positions(selection, request, clip.effective_fps, source, log)
    origin = "its frame group's start (after the group's timestamp)" if spec.timestamped_frames else "the clip's start"
    log(f"Run: kept positions (t, h, w) from {origin}: {steps.positions_text(positions)}")
    result = ClipRunResult(
        selection.indices, total, selection.ms, selection.backend, positions=positions.numpy(), kept_per_group=counts, shape=chosen,
        effective_fps=clip.effective_fps, timestamps=list(clip.timestamps),
    )  # fmt: skip

    if strip_path is not None:
        from flashvlm_export.runtime.strip import clip_strip

        timer = StepTimer("Heatmap", log)
        kept = [[int(i) % n for i in selection.indices if i // n == g] for g in range(groups)]
        footer = f"{request.video_budget} rule, K={len(selection.indices)} of N={total}, {selection.backend}"
        strip_path.parent.mkdir(parents=True, exist_ok=True)
        steps.save_png(clip_strip(clip.shown, kept, spec.token_grid, clip.timestamps, footer=footer), strip_path)
        timer.done(f"kept tokens over the clip's {plural(groups, 'frame group')}", strip_path)
        result.heatmap = strip_path

    if answer:
        from flashvlm_export.runtime.answer import AnswerRun, greedy_answer

        if info.weights.random:
            log(f"Note: {RANDOM_NOTE}")
        pruned = f"pruned K={len(selection.indices)}"
        runs = {"pruned": AnswerRun(pruned, selection.visual_embeds, positions, selection.deepstack, selection.indices)}
        table = clip_token_positions(spec, frames, second_per_grid(spec, clip.effective_fps))  # the unpruned clip's
        if compare_full:  # every clip row at its own position: the model's own video input
            features = parts.reference_clip_features(clip.pixel_values)  # X, a, P(X) (1, N, Dl)[, DeepStack]
            deepstack = features[3][0] if len(features) > 3 else None
            runs["full"] = AnswerRun(f"full N={total}", features[2][0], table, deepstack, np.arange(total))
        last_t = int(table[:, 0].max())
        if gguf is not None:  # the same rows and positions through llama.cpp (runtime/llama_cpp.py)
            from flashvlm_export.runtime import llama_cpp

            timer = StepTimer("Answer", log)
            result.answers = llama_cpp.answers(
                plan.gguf, spec, token_ids, runs, tokenizer, max_new_tokens, log, clip_last_t=last_t
            )
            timer.done(f"greedy decoding through llama.cpp (arch {plan.gguf.arch}, {plan.gguf.path})")
        else:
            embed = llm.get_input_embeddings()
            for key, run in runs.items():
                inputs = clip_llm_input(
                    embed, token_ids, spec, run.rows, run.positions, last_t=last_t, indices=run.indices, deepstack=run.deepstack
                )
                result.answers[key] = greedy_answer(llm, inputs, tokenizer, max_new_tokens, run.label)
        steps.log_answers(result.answers, len(selection.indices), total, log)
    return result
