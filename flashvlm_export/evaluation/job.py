"""flashvlm-export eval: every question of a local benchmark through an exported artifact and the LLM, at each budget
and at K = N, scored by the benchmark's own rule; results written as they come, a table and a plot at the end.

Every check runs before anything is loaded or written: the artifact and the budgets it must serve, the dataset (its
layout, every picture it names), the output folder (earlier results: --resume or --force), the LLM (fits, or the
GGUF), every prompt against the graph's T_max. Then one question at a time: the picture prepared, the encoder once,
each budget's selector, each budget's answer; the question's line appended to results.jsonl before the next starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flashvlm_export.errors import Terminated, UsageError, arg
from flashvlm_export.evaluation import results as store_module
from flashvlm_export.evaluation.budgets import FULL, check_servable, default_budgets, parse_budgets
from flashvlm_export.progress import clock, plural

DEFAULT_OUT = "eval-results"
RESULTS_NOTE = "results.jsonl holds every answer; --resume writes the report"


@dataclass
class EvalResult:
    rows: list = field(default_factory=list)  # evaluation/report.BudgetRow, one per budget
    header: dict = field(default_factory=dict)
    folder: Path | None = None
    answered: int = 0  # questions this run answered (earlier ones of a resumed run not counted)


def _artifact(manifest: str | None, graph: str | None, tensorrt: bool):
    """(GraphInfo of the recorded request, the split or None, recorded weights tag, source, what it serves, ranged)."""
    from flashvlm_export.runtime import run_steps

    if (manifest is None) == (graph is None):
        raise UsageError(f"pass one of {arg('manifest', 'JSON')} (a split: the encoder once) or {arg('graph', 'ONNX')}")
    if manifest is not None:
        from flashvlm_export.export.manifest import read_manifest

        split = read_manifest(Path(manifest), engines=tensorrt)
        ranged = split.budget_range is not None
        serves = split.budget_range if ranged else split.budgets
        info, split = run_steps.manifest_info(manifest, serves[-1] if ranged else serves[0], tensorrt)
        return info, split, split.weights, manifest, serves, ranged
    if tensorrt:
        raise UsageError(f"{arg('tensorrt')} runs a manifest's engines; pass {arg('manifest')}")
    from flashvlm_export.runtime import graph_info as graph_info_module

    meta, source = run_steps.graph_metadata_of(graph, None)
    info = graph_info_module.graph_info(meta, source)
    request = info.request
    serves = (request.budget_min, request.budget) if request.ranged else [request.budget]
    return info, None, meta.get("weights"), source, serves, request.ranged


def _prompts(dataset, rule, tokenizer, info) -> dict[str, list[int] | None]:
    """Each question's prompt token ids, checked before anything runs: its placeholder, its text within T_max (a
    Qwen3-generation clip's prompt holds the clip's timestamps: None here, built and checked once the clip is read)."""
    from flashvlm_export.evaluation.item import check_text_rows, needs_clip_first, prompt_ids

    spec, request = info.spec, info.request
    ids = {}
    for q in dataset.questions:
        if needs_clip_first(q, spec):  # checked with the widest timestamps (<9999.9 seconds>), built once the clip is read
            groups = request.clip.groups
            check_text_rows(q, prompt_ids(q, rule, tokenizer, spec, groups, [9999.9] * groups), spec, request, info.source)
            ids[q.qid] = None
            continue
        ids[q.qid] = prompt_ids(q, rule, tokenizer, spec)
        check_text_rows(q, ids[q.qid], spec, request, info.source)
    return ids


def _check_media(dataset, request, source: str) -> None:
    """A clip graph answers a benchmark of clips (a `video` column), an image graph one of pictures."""
    clips = sum(q.video is not None for q in dataset.questions)
    if request.frames is not None and clips < len(dataset.questions):
        raise UsageError(
            f"{source} is a clip graph ({request.frames} frames) but {dataset.name} has {len(dataset.questions) - clips} "
            "questions on a picture; pass a benchmark whose rows name a clip (a video column), or an image graph"
        )
    if request.frames is None and clips:
        raise UsageError(
            f"{dataset.name} has {clips} questions on a clip (its video column); pass a clip graph "
            "(flashvlm-export --video --frames F) or a benchmark of pictures"
        )


def _stamp(path) -> list:
    """A file as it is now: its path, size and modification time (a re-export or an edited file is another run)."""
    path = Path(path).resolve()
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _identity(source, info, dataset, budgets, backend, tensorrt, llm_runtime, gguf, llm_dtype, max_new_tokens) -> dict:
    """What a resumed run must share with the earlier one (the question limit may grow)."""
    return {
        "artifact": _stamp(source),
        "model": info.spec.name,
        "weights": info.weights.tag,
        "dataset": dataset.name,
        "layout": dataset.layout,
        "files": [_stamp(f) for f in dataset.files],
        "budgets": budgets,
        "backend": "tensorrt" if tensorrt else backend,
        "llm_runtime": llm_runtime,
        "gguf": _stamp(gguf) if gguf else None,
        "llm_dtype": llm_dtype,
        "max_new_tokens": max_new_tokens,
    }


def evaluate(
    data: str | None,
    *,
    manifest: str | None = None,
    graph: str | None = None,
    budgets: str | None = None,
    layout: str = "auto",
    data_split: str | None = None,
    images: str | None = None,
    limit: int | None = None,
    out: str = DEFAULT_OUT,
    resume: bool = False,
    force: bool = False,
    model_path: str | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    backend: str = "onnxruntime",
    tensorrt: bool = False,
    plugin_lib: str | None = None,
    llm_runtime: str = "transformers",
    gguf: str | None = None,
    llm_dtype: str = "auto",
    max_new_tokens: int | None = None,
    llm_layers: int | None = None,
    max_image_pixels: int | None = None,
    log=print,
) -> EvalResult:
    """The benchmark `data` through the artifact at each budget; see the module docstring and docs/EVAL.md."""
    from flashvlm_export.backend import ort_provider, runtime_label
    from flashvlm_export.evaluation.layouts import read_dataset
    from flashvlm_export.evaluation.scoring import DEFAULT_MAX_NEW_TOKENS
    from flashvlm_export.evaluation.scoring import rule as rule_of
    from flashvlm_export.models.weights import weights_for_graph
    from flashvlm_export.runtime.answer import check_llm_dtype, dtype_name
    from flashvlm_export.runtime.graph_info import GraphInfo
    from flashvlm_export.runtime.llama_cpp import check_llm_choice
    from flashvlm_export.runtime.run_steps import graph_provider, plan_answer

    if data is None:
        raise UsageError(
            f"pass {arg('data', 'PATH')}: a benchmark's files, a folder of them, or a Hugging Face dataset id in the local cache"
        )
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise UsageError(f"{arg('max_new_tokens', max_new_tokens)} must be >= 1")
    check_llm_dtype(llm_dtype)
    check_llm_choice(llm_runtime, gguf, True)
    provider = graph_provider(backend, None, tensorrt)
    if plugin_lib is not None and not tensorrt:
        raise UsageError(f"{arg('plugin_lib')} loads the plugin into TensorRT's engines; add {arg('tensorrt')} or drop it")
    info, split, recorded, source, serves, ranged = _artifact(manifest, graph, tensorrt)
    request, spec = info.request, info.spec
    chosen = default_budgets(serves, ranged) if budgets is None else parse_budgets(budgets)
    check_servable(chosen, serves, ranged, request.tokens, source)
    weights = weights_for_graph(recorded, random_weights, seed, model_path, source)
    info = GraphInfo(request, weights, source)
    dataset = read_dataset(data, layout, data_split, images, limit)
    rule = rule_of(dataset.layout)
    _check_media(dataset, request, source)
    from flashvlm_export.evaluation.item import check_pictures
    from flashvlm_export.runtime.photo import check_max_pixels

    check_max_pixels(max_image_pixels)
    started = time.perf_counter()
    check_pictures(dataset, max_image_pixels)
    if time.perf_counter() - started > 5:
        log(f"Eval: every picture of {dataset.name} decoded and checked in {clock(time.perf_counter() - started)}")
    folder = Path(out)
    store_module.check_outputs(folder, resume, force)
    plan = plan_answer(info, gguf, random_weights, llm_dtype, source, llm_layers)
    from flashvlm_export.runtime.tokenizer import load_tokenizer

    checkpoint = None if weights.random else Path(weights.path)
    tokenizer, tokenizer_name = load_tokenizer(spec, checkpoint)
    prompts = _prompts(dataset, rule, tokenizer, info)
    identity = _identity(source, info, dataset, chosen, backend, tensorrt, llm_runtime, gguf, llm_dtype, max_new_tokens)
    identity.update(
        llm_layers=llm_layers, images=str(Path(images).resolve()) if images else None, max_image_pixels=max_image_pixels,
        llm=None if plan.gguf else f"{plan.device.type} {dtype_name(plan.dtype)}",  # auto: fp32 on a CPU, bf16 on a GPU
        runtime="tensorrt" if tensorrt else runtime_label(ort_provider(provider)),  # onnxruntime: CUDA where it has one
    )  # fmt: skip
    store = store_module.open_store(folder, identity, resume, log)  # written from the first answer on
    todo = [q for q in dataset.questions if q.qid not in store.records]
    synthetic = " (synthetic: written by eval --demo-data)" if dataset.synthetic else ""
    log(
        f"Eval: {dataset.name}{synthetic}, layout {dataset.layout}: {plural(len(dataset.questions), 'question')}, "
        f"{len(todo)} to answer; budgets {', '.join(chosen)}; {source}; rule: {rule.source}"
    )
    if weights.random or dataset.synthetic:
        from flashvlm_export.evaluation.report import RANDOM_WARNING

        log(f"Note: {RANDOM_WARNING}")
    header = {
        "dataset": dataset.name, "layout": dataset.layout, "synthetic": dataset.synthetic, "random_weights": weights.random,
        "model": spec.name, "artifact": source, "tokenizer": tokenizer_name, "llm_runtime": llm_runtime,
        "n_tokens": request.tokens, "questions_total": len(dataset.questions), "rule": rule.source,
    }  # fmt: skip
    result = EvalResult(header=header, folder=folder)
    try:
        if todo:
            _answer_all(todo, prompts, info, split, graph, provider, tensorrt, plugin_lib, plan, gguf, tokenizer, chosen,
                        rule, store, max_new_tokens, result, header, log, max_image_pixels)  # fmt: skip
    except BaseException as exc:  # Ctrl-C, SIGTERM (cli/guard.py raises Terminated), an error: what is done is kept
        done = len(store.records)
        exc.kept = (  # cli/guard.py says it on an interruption's line
            f"{plural(done, 'answered question')} kept in {store.path}; the same command with --resume goes on from there"
            if done
            else f"no question was answered, nothing was written to {folder}"
        )
        if not isinstance(exc, (KeyboardInterrupt, Terminated)):
            log(f"Eval: stopped: {exc.kept}")
        try:
            _report(dataset, store, chosen, rule, header, result, log, partial=True)
        except Exception as failed:  # the report of what is done must not hide why the run stopped
            log(f"Eval: the partial report was not written ({type(failed).__name__}: {failed}); {RESULTS_NOTE}")
        raise
    _report(dataset, store, chosen, rule, header, result, log)
    return result


def _answer_all(todo, prompts, info, split, graph, provider, tensorrt, plugin_lib, plan, gguf, tokenizer, budgets, rule,
                store, max_new_tokens, result, header, log, max_pixels=None) -> None:  # fmt: skip
    """Load the vision parts, the selection and the LLM, then answer `todo` one question at a time."""
    from flashvlm_export.evaluation.answering import Answerer, Selector
    from flashvlm_export.runtime.run_steps import load_llm, load_parts

    spec = info.spec
    parts = load_parts(info, log)
    llm = load_llm(plan, info, parts, log) if gguf is None else None
    selector = Selector(info, split, graph, provider, tensorrt, plugin_lib, parts)
    answerer = Answerer(spec, tokenizer, max_new_tokens, llm=llm, gguf=plan.gguf)
    header["selection"] = selector.name
    header["full_rows"] = "the encoder graph's P(X)" if selector.encode_once else "the PyTorch reference encoder's P(X)"
    started, checked = time.perf_counter(), False
    try:
        for number, q in enumerate(todo, 1):
            record = _question(
                q, prompts[q.qid], info, parts, selector, answerer, tokenizer, budgets, rule, not checked, max_pixels
            )
            checked = True
            store.append(record)
            result.answered += 1
            elapsed = time.perf_counter() - started
            left = elapsed / number * (len(todo) - number)
            said = ", ".join(f"{b} {record['budgets'][b]['key']!r}" for b in budgets)
            log(
                f"Eval [{len(store.records)}/{header['questions_total']}] {q.qid}: {said} ({record['seconds']:.1f} s; "
                f"{clock(elapsed)} elapsed, about {clock(left)} left)"
            )
    finally:
        answerer.close()


def _question(q, token_ids, info, parts, selector, answerer, tokenizer, budgets, rule, warm: bool, max_pixels=None) -> dict:
    """One question at every budget: its line of results.jsonl."""
    from flashvlm_export.evaluation.answering import answer_runs
    from flashvlm_export.evaluation.item import prepare
    from flashvlm_export.evaluation.scoring import answer_key

    item = prepare(q, token_ids, info, parts, tokenizer, rule, max_pixels)
    ks = [int(b) for b in budgets if b != FULL]
    if warm:  # the first question: every session allocates on its first run (untimed)
        selector.select(item.pixel_values, item.text_embeds, item.text_mask, ks, FULL in budgets)
    selected = selector.select(item.pixel_values, item.text_embeds, item.text_mask, ks, FULL in budgets)
    answers = answerer.answer(item.token_ids, answer_runs(selected, item, info, parts, budgets), item.last_t)
    shared = item.input_ms + (selected.encoder_ms or 0.0)
    per_budget, spent_ms = {}, shared
    for budget in budgets:
        answer = answers[budget]
        step_ms = selected.full_ms if budget == FULL else selected.selector_ms[int(budget)]
        decode_ms = answer.decode_ms
        per_budget[budget] = {
            "kept": int(selected.full_rows.shape[0]) if budget == FULL else len(selected.selections[int(budget)].indices),
            "text": answer.text, "key": answer_key(rule.layout, q, answer.text), "score": None if q.answer is None else float(rule.score(q, answer.text)),
            "prompt_tokens": answer.prompt_tokens, "tokens": answer.token_ids, "prefill_ms": answer.prefill_ms, "decode_ms": decode_ms,
            "selector_ms": step_ms, "kv_bytes": answer.kv_bytes, "seconds": (shared + step_ms + answer.prefill_ms + decode_ms) / 1e3,
        }  # fmt: skip
        spent_ms += step_ms + answer.prefill_ms + decode_ms
    return {
        "qid": q.qid, "input_ms": item.input_ms, "encoder_ms": selected.encoder_ms, "budgets": per_budget,
        "seconds": spent_ms / 1e3, "category": q.category,
    }  # fmt: skip


def _report(dataset, store, budgets, rule, header, result, log, partial: bool = False) -> None:
    """The table (Markdown, JSON) and the plot from every question answered so far; nothing when none was."""
    from flashvlm_export.evaluation.summary import write_report

    if not store.records:
        return
    result.rows = write_report(dataset, store, budgets, rule, header, partial, log)
