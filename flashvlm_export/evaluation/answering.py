"""One question at every budget: the picture through the encoder once, each budget's selector on its outputs, then the
LLM's answer from each budget's kept rows and from all N (K = N, "full").

A split's chain in ONNX Runtime or OpenVINO (runtime/chain.py) runs its encoder once per picture and every selector on
the same buffers, and its encoder's P(X) is the "full" answer's input: nothing runs twice. A single graph (fixed or
budget-range) and a TensorRT chain run encoder and selector together, once per budget (their time is the selection's),
and "full" comes from the PyTorch reference encoder (its time is reported apart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.evaluation.budgets import FULL
from flashvlm_export.export.interface import DEEPSTACK_FEATURES, PROJECTED_FEATURES
from flashvlm_export.runtime.answer import AnswerRun
from flashvlm_export.runtime.session import read_selection, selection_feeds


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


@dataclass
class Selected:
    """What one picture gave at each budget: the selections, their times, and the full rows."""

    encoder_ms: float | None  # the split's encoder, once; None where encoder and selector run as one
    selections: dict[int, object] = field(default_factory=dict)  # K -> runtime/session.Selection
    selector_ms: dict[int, float] = field(default_factory=dict)
    full_rows: torch.Tensor | None = None  # (N, Dl) P(X)
    full_deepstack: torch.Tensor | None = None  # (L, N, Dl) Qwen3-VL
    full_ms: float = 0.0  # the reference encoder's time, where "full" needs it (not a split in ONNX Runtime/OpenVINO)


class Selector:
    """The artifact's selection at every budget asked for. `split`: a manifest (runtime/chain.SplitChain); else `graph`
    (runtime/session.OrtGraph: a fixed graph serves its K; a budget-range graph takes each K as its `budget` input)."""

    def __init__(self, info, split, graph: str | None, provider, tensorrt: bool, plugin_lib: str | None, parts):
        self.info, self.parts = info, parts
        request = info.request
        self.batch = request.batch
        self.range = None
        if split is not None:
            from flashvlm_export.runtime.chain import SplitChain

            # ONNX Runtime's threads sleep between runs: the LLM runs on the same cores right after (backend.ort_session)
            self.chain = SplitChain(split, tensorrt, Path(plugin_lib) if plugin_lib else None, provider, spin=False).chain
            self.name = self.chain.name
            # ONNX Runtime, OpenVINO: the encoder apart, once, and "full" from its P(X); TensorRT's chain runs both at once
            self.encode_once = hasattr(self.chain, "encode")
        else:
            from flashvlm_export.runtime.session import OrtGraph

            self.graph = OrtGraph(Path(graph), plugin=request.plugin, provider=provider, spin=False)
            self.name, self.encode_once, self.chain = self.graph.name, False, None
            if request.ranged:
                self.range = (request.budget_min, request.budget)
        self.source = info.source

    def _run(self, feeds: dict, k: int) -> dict:
        if self.chain is not None:
            return self.chain.infer(feeds, k)
        feeds = dict(feeds)
        if self.range is not None:
            from flashvlm_export.runtime.budgets import budget_feed

            feeds["budget"] = budget_feed(k, self.batch, *self.range, self.source)
        return self.graph.infer(feeds)

    def select(self, pixel_values, text_embeds, text_mask, ks: list[int], full: bool) -> Selected:
        feeds = selection_feeds(pixel_values, text_embeds, text_mask, self.batch)
        if self.encode_once:
            start = time.perf_counter()
            self.chain.encode(feeds)
            selected = Selected(_ms(start))
        else:
            selected = Selected(None)
        for k in ks:
            start = time.perf_counter()
            out = self.chain.select(feeds, k) if self.encode_once else self._run(feeds, k)
            ms = _ms(start)
            selected.selections[k] = read_selection(out, self.name, ms)
            selected.selector_ms[k] = ms
        if full:
            start = time.perf_counter()
            if self.encode_once:  # the encoder's own P(X): what every selector read
                features = self.chain.features_on_host()
                rows = torch.from_numpy(np.asarray(features[PROJECTED_FEATURES][0], dtype=np.float32))
                deep = features.get(DEEPSTACK_FEATURES)
                deep = None if deep is None else torch.from_numpy(np.asarray(deep[0], dtype=np.float32))
            else:
                clip = self.info.request.frames is not None  # a clip's rows through the clip encoder
                with torch.no_grad():
                    reference = (self.parts.reference_clip_features if clip else self.parts.reference_features)(pixel_values)
                rows = reference[2][0].float()
                deep = reference[3][0].float() if len(reference) > 3 else None
                selected.full_ms = _ms(start)
            selected.full_rows, selected.full_deepstack = rows, deep
        return selected


def answer_runs(selected: Selected, item, info, parts, budgets: list[str]) -> dict[str, AnswerRun]:
    """Each budget's rows as the LLM takes them, by budget name ("32", ..., "full"): the kept rows at their positions
    (evaluation/item.kept_positions), and all N at the model's own (LLaVA-NeXT: laid out with its image_newline rows,
    runtime/api.crops_layout)."""
    from flashvlm_export.evaluation.item import full_indices, kept_positions

    spec = info.spec
    runs = {}
    for budget in budgets:
        if budget == FULL:
            n = selected.full_rows.shape[0]
            run = AnswerRun(f"full N={n}", selected.full_rows, item.table, selected.full_deepstack, full_indices(item, n))
            indices = None
        else:
            s = selected.selections[int(budget)]
            run = AnswerRun(f"pruned K={len(s.indices)}", s.visual_embeds, kept_positions(item, s, info), s.deepstack, s.indices)
            indices = s.indices
        if spec.crops > 1:
            from flashvlm_export.runtime.api import crops_layout

            run.rows = crops_layout(spec, parts, item.prepared, run.rows, indices, log=lambda _: None)
        runs[budget] = run
    return runs


class Answerer:
    """The LLM answering each budget's rows: transformers (runtime/answer.py) or llama.cpp (runtime/llama_cpp.py), kept
    loaded across questions. Each prefill is timed as `run` times it: after an untimed forward of the same input (one
    prefill more per answer: timed cold, the first prefill after the selectors measured 44-170 ms against 3 ms on this
    2-core machine under load, its threads and caches left to the graphs); the decoding apart (Answer.decode_ms)."""

    def __init__(self, spec, tokenizer, max_new_tokens: int, llm=None, gguf=None):
        self.spec, self.tokenizer, self.max_new_tokens = spec, tokenizer, max_new_tokens
        self.llm, self.gguf = llm, gguf
        self.cpp, self.n_ctx = None, 0

    def answer(self, token_ids: list[int], runs: dict[str, AnswerRun], last_t: int | None = None) -> dict[str, object]:
        """budget -> runtime/answer.Answer. `last_t`: the rows are a clip's (the unpruned clip's last t), placed as
        `run --video` places them."""
        return {key: self._one(token_ids, run, last_t) for key, run in runs.items()}

    def _one(self, token_ids: list[int], run: AnswerRun, last_t: int | None):
        if self.gguf is not None:
            from flashvlm_export.runtime import llama_cpp

            prompt = llama_cpp.llama_cpp_prompt(token_ids, self.spec, run.rows, run.positions, last_t, run.deepstack, run.indices)
            self._context(prompt.length + self.max_new_tokens)
            return llama_cpp.llama_cpp_answer(self.cpp, prompt, self.tokenizer, self.max_new_tokens, run.label)
        from flashvlm_export.runtime.answer import greedy_answer, llm_input

        embed = self.llm.get_input_embeddings()
        if last_t is None:
            inputs = llm_input(embed, token_ids, self.spec, run.rows, run.positions, run.deepstack)
        else:
            from flashvlm_export.runtime.clip import clip_llm_input

            inputs = clip_llm_input(
                embed, token_ids, self.spec, run.rows, run.positions, last_t=last_t, indices=run.indices, deepstack=run.deepstack
            )
        return greedy_answer(self.llm, inputs, self.tokenizer, self.max_new_tokens, run.label)

    def _context(self, need: int) -> None:
        """A llama.cpp context of at least `need` positions, opened once and reopened (twice as long) if outgrown."""
        if self.cpp is not None and need <= self.n_ctx:
            return
        from flashvlm_export.runtime.llama_cpp import LlamaCppLLM

        self.close()
        self.n_ctx = max(need, 2 * self.n_ctx)
        self.cpp = LlamaCppLLM(self.gguf, n_ctx=self.n_ctx)

    def close(self) -> None:
        if self.cpp is not None:
            self.cpp.close()
            self.cpp = None
