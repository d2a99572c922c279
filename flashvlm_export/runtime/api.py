"""From a photo and a question to the kept tokens, a picture of them, and the LLM's answer.

from flashvlm_export.runtime import run
result = run("graphs/llava15-tiny_b64.onnx", "photo.jpg", "What is on the table?", random_weights=True,
             heatmap="kept.png", answer=True, compare_full=True)
result.indices, result.selection_ms, result.answers["pruned"].text

A clip (a Qwen2.5-VL clip graph, runtime/clip_run.py): run(graph, None, question, video="clip.mp4", heatmap="strip.png")
or demo_video="demo.mp4"; its result also has kept_per_group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flashvlm_export.artifact_paths import not_a_folder
from flashvlm_export.artifacts.ownership import check_replaceable
from flashvlm_export.artifacts.timing import StepTimer
from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.models.weights import weights_for_graph
from flashvlm_export.runtime.graph_info import GraphInfo
from flashvlm_export.runtime.run_steps import (
    RANDOM_NOTE,
    RunResult,
    check_output,
    check_positions,
    graph_provider,
    load_llm,
    load_parts,
    log_answers,
    open_source,
    plan_answer,
    positions_text,
    save_png,
    selection_backend,
)


def run(
    graph: str | None,
    image: str | None,
    question: str,
    *,
    demo_image: str | None = None,
    model_path: str | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    engine: str | None = None,
    plugin_lib: str | None = None,
    manifest: str | None = None,
    budget: int | None = None,
    tensorrt: bool = False,
    backend: str = "onnxruntime",
    heatmap: str | None = None,
    answer: bool = False,
    compare_full: bool = False,
    max_new_tokens: int = 64,
    llm_dtype: str = "auto",
    llm_runtime: str = "transformers",
    gguf: str | None = None,
    force: bool = False,
    log=print,
    video: str | None = None,
    demo_video: str | None = None,
    fps: float | None = None,
    max_image_pixels: int | None = None,
) -> RunResult:
    if video is not None or demo_video is not None:  # a clip: runtime/clip_run.py
        _no_pixel_limit(max_image_pixels, "a clip's frames are decoded by FFmpeg")
        from flashvlm_export.runtime.clip_run import run_clip

        return run_clip(
            graph, video, question, image=image, demo_image=demo_image, demo_video=demo_video, fps=fps, model_path=model_path,
            random_weights=random_weights, seed=seed, engine=engine, plugin_lib=plugin_lib, manifest=manifest, budget=budget,
            tensorrt=tensorrt, backend=backend, heatmap=heatmap, answer=answer, compare_full=compare_full, max_new_tokens=max_new_tokens,
            llm_dtype=llm_dtype, llm_runtime=llm_runtime, gguf=gguf, force=force, log=log,
        )  # fmt: skip
    if fps is not None:
        raise UsageError(f"{arg('fps', fps)} samples a clip; pass {arg('video', 'FILE')} or drop {arg('fps')}")
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.models.registry import adapter
    from flashvlm_export.runtime.answer import check_llm_dtype, image_position
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.photo import check_max_pixels
    from flashvlm_export.runtime.session import select
    from flashvlm_export.runtime.tokenizer import load_tokenizer

    if (image is None) == (demo_image is None):
        raise UsageError(f"pass one of {arg('image', 'FILE')} or {arg('demo_image', 'FILE')}")
    provider = graph_provider(backend, engine, tensorrt)
    if max_new_tokens < 1:
        raise UsageError(f"{arg('max_new_tokens', max_new_tokens)} must be >= 1")
    check_llm_dtype(llm_dtype)
    check_max_pixels(max_image_pixels)
    if demo_image is not None:
        _no_pixel_limit(max_image_pixels, "the demo picture is the tool's own")
    answer = answer or compare_full
    from flashvlm_export.runtime.llama_cpp import check_llm_choice

    check_llm_choice(llm_runtime, gguf, answer)
    from flashvlm_export.runtime.shape_choice import chosen_manifest, photo_hw

    # several shapes: the processor's pick for this photo
    manifest, chosen = chosen_manifest(manifest, lambda: photo_hw(image, demo_image, max_image_pixels), log)
    info, split, recorded, source = open_source(graph, engine, manifest, budget, tensorrt)
    weights = weights_for_graph(recorded, random_weights, seed, model_path, source)
    info = GraphInfo(info.request, weights, source)
    spec, request = info.spec, info.request
    if request.frames is not None:  # a clip graph takes frames, not a picture
        from flashvlm_export.runtime.clip_run import refuse_clip_graph

        refuse_clip_graph(request, source)
    heatmap_path = Path(heatmap) if heatmap else None
    if heatmap_path is not None:
        check_output(heatmap_path, force)
    if demo_image is not None:
        _check_demo_target(Path(demo_image), force)
    checkpoint = None if info.weights.random else Path(info.weights.path)
    if answer:  # before anything is loaded: the GGUF checked, or an LLM that cannot fit refused, in one line
        plan = plan_answer(info, gguf, random_weights, llm_dtype, source)
    if demo_image is not None:  # written only once every check above has passed
        image = write_demo_image(demo_image, force, log=log)
    prepared = prepare_image(image, spec, checkpoint, max_image_pixels)
    parts = load_parts(info, log)
    if answer and gguf is None:  # before the selection: a model that cannot answer fails fast
        llm = load_llm(plan, info, parts, log)
    tokenizer, tokenizer_name = load_tokenizer(spec, checkpoint)
    token_ids = prompt_token_ids(tokenizer, question, spec)
    placeholder = adapter(spec).IMAGE_PLACEHOLDER
    image_position(token_ids, spec.image_token_index, placeholder)  # exactly one image token: the question must not add one
    scope = request.config.text_scope
    text_embeds, text_mask = text_inputs(parts.embed_tokens, token_ids, request.t_max, spec.image_token_index, scope=scope)
    scoped = "" if scope == "all" else f", text scope {scope}"
    log(
        f"Input: image {image} ({prepared.processor}), question {question!r}: "
        f"{int(text_mask.sum())}/{request.t_max} text rows{scoped} ({tokenizer_name})"
    )
    if prepared.note:
        log(f"Input: {prepared.note}")

    runner = selection_backend(info, graph, engine, plugin_lib, split, tensorrt, budget, provider)
    feed = None
    if request.ranged and split is None:  # a budget-range graph takes the budget as an input (checked above)
        from flashvlm_export.runtime.budgets import budget_feed

        feed = budget_feed(budget, request.batch, request.budget_min, request.budget, source)
    selection = select(runner, prepared.pixel_values, text_embeds, text_mask, request.batch, feed)
    n = request.tokens
    log(
        f"Run: selected {len(selection.indices)}/{n} tokens {selection.ms:.1f} ms ({selection.backend}, encoder + projector + selector)"
    )
    log(f"Run: kept indices {selection.indices.tolist()}")
    if spec.has_positions:
        check_positions(selection, spec, source)
        log(f"Run: kept positions (t, h, w) from the image's start, from the graph: {positions_text(selection.positions)}")
    positions = None if selection.positions is None else selection.positions.numpy()
    result = RunResult(selection.indices, n, selection.ms, selection.backend, positions=positions, shape=chosen)

    if heatmap_path is not None:
        from flashvlm_export.runtime.heatmap import render_heatmap, score_maps

        timer = StepTimer("Heatmap", log)
        k_imp = request.schedule_of(len(selection.indices)).k_imp if request.ranged else request.schedule.k_imp
        if spec.crops > 1:  # the base image and the crops, each with its own kept tokens
            from flashvlm_export.runtime.heatmap import render_crops_heatmap

            text_rows = text_embeds[0][text_mask[0]]
            picture = render_crops_heatmap(
                prepared.shown, selection.indices, parts, prepared.pixel_values, text_rows, request.config, spec.grid, k_imp,
                selection.backend,
            )  # fmt: skip
        else:
            maps = score_maps(parts, prepared.pixel_values, text_embeds[0][text_mask[0]], request.config)
            picture = render_heatmap(prepared.shown, selection.indices, maps, k_imp, selection.backend)
        save_png(picture, heatmap_path)
        timer.done("kept tokens over the image; S_int, s, S_ext, F from the PyTorch reference", heatmap_path)
        result.heatmap = heatmap_path

    if answer:
        from flashvlm_export.models.positions import token_positions
        from flashvlm_export.runtime.answer import AnswerRun, greedy_answer, llm_input

        if info.weights.random:
            log(f"Note: {RANDOM_NOTE}")
        pruned = f"pruned K={len(selection.indices)}"
        runs = {"pruned": AnswerRun(pruned, selection.visual_embeds, selection.positions, selection.deepstack)}
        if compare_full:  # every image row at its own position: the model's own input
            features = parts.reference_features(prepared.pixel_values)  # X, a, P(X) (1, N, Dl)[, DeepStack (1, L, N, Dl)]
            table = token_positions(spec) if spec.has_positions else None
            runs["full"] = AnswerRun(f"full N={n}", features[2][0], table, features[3][0] if len(features) > 3 else None)
        if spec.crops > 1:  # base, unpadded grid, image_newline rows (models/anyres.py), for either LLM runtime
            for key, run in runs.items():
                run.rows = crops_layout(spec, parts, prepared, run.rows, selection.indices if key == "pruned" else None, log)
        if gguf is not None:  # the same rows and positions through llama.cpp (runtime/llama_cpp.py)
            from flashvlm_export.runtime import llama_cpp

            timer = StepTimer("Answer", log)
            result.answers = llama_cpp.answers(plan.gguf, spec, token_ids, runs, tokenizer, max_new_tokens, log)
            timer.done(f"greedy decoding through llama.cpp (arch {plan.gguf.arch}, {plan.gguf.path})")
        else:
            embed = llm.get_input_embeddings()
            for key, run in runs.items():
                inputs = llm_input(embed, token_ids, spec, run.rows, run.positions, run.deepstack)
                result.answers[key] = greedy_answer(llm, inputs, tokenizer, max_new_tokens, run.label)
        log_answers(result.answers, len(selection.indices), n, log)
    return result


def crops_layout(spec, parts, prepared, rows: torch.Tensor, indices, log) -> torch.Tensor:
    """LLaVA-NeXT: the graph's rows (or all N, indices None) as the LLM takes them; says what unpadding drops (run and
    eval)."""
    from flashvlm_export.models.anyres import dropped_by_unpadding, llm_rows

    indices = np.arange(rows.shape[0]) if indices is None else indices
    dropped = dropped_by_unpadding(indices, spec, prepared.image_hw)
    laid = llm_rows(rows, indices, parts.image_newline.row, spec, prepared.image_hw)
    log(
        f"Answer: {len(indices)} kept rows laid out as LLaVA-NeXT's input: {laid.shape[0]} rows (image_newline rows included"
        + (f"; {dropped} kept tokens over the grid's padding dropped by unpadding)" if dropped else ")")
    )
    return laid


def _no_pixel_limit(max_image_pixels: int | None, why: str) -> None:
    """--max-image-pixels bounds a picture the user passes with --image; elsewhere it is refused, not ignored."""
    if max_image_pixels is not None:
        raise UsageError(
            f"{arg('max_image_pixels', max_image_pixels)} limits the size of a picture passed with {arg('image', 'FILE')}; "
            f"{why}: drop {arg('max_image_pixels')}"
        )


def _check_demo_target(target: Path, force: bool) -> None:
    not_a_folder(target, arg("demo_image", str(target)), "demo.png")
    if target.exists() and not force:
        raise UsageError(
            f"{target} already exists; pass {switch('force')} to overwrite it, or use it as {arg('image', str(target))}"
        )
    check_replaceable(target, f"use it as {arg('image', str(target))}, or choose another {arg('demo_image')}")


def write_demo_image(path: str, force: bool = False, log=print) -> str:
    """The repository's synthetic picture, written to `path` (never over a file without force)."""
    from flashvlm_export.runtime.image import demo_picture

    target = Path(path)
    _check_demo_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_png(demo_picture(), target)
    log(f"Input: wrote the demo picture to {target}")
    return str(target)
