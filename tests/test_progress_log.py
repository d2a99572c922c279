"""Progress in a log: an export's opening line names no time it cannot know, and while the exporter runs a line
reaches a non-terminal stdout (a pipe, CI's log) every LOG_EVERY_S; the exporter's own prints stay out.

The export used to redirect all of stdout while torch.onnx ran, so the progress thread's lines went nowhere: a 126 s
export printed nothing through `| cat`. Its estimates were 3-9x low (docs/PERFORMANCE.md), so none is printed now.
"""

from __future__ import annotations

import re
import time

import torch

from flashvlm_export.export.graphs import ExportRequest, export_logged
from flashvlm_export.selector.config import SelectorConfig

from conftest import TINY

SLOW_S = 1.5  # the planted slow step; lines every 0.2 s must appear within it


def test_progress_lines_reach_a_non_terminal_stdout_while_the_exporter_runs(tmp_path, capsys, monkeypatch):
    from flashvlm_export import progress

    real_export = torch.onnx.export

    def slow_chatty_export(*args, **kwargs):
        print("exporter chatter")  # what the exporters print of their own: kept out of the log
        time.sleep(SLOW_S)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    monkeypatch.setattr(torch.onnx, "export", slow_chatty_export)
    request = ExportRequest(spec=TINY, budget=560, t_max=16, batch=1, config=SelectorConfig(), selector_only=True)
    capsys.readouterr()
    export_logged(request, tmp_path / "s.onnx", exporter="torchscript", log=lambda line: print(line, flush=True))
    out = capsys.readouterr().out.splitlines()  # capsys's stdout is not a terminal, as a pipe's is not
    ticks = [line for line in out if "still running" in line]
    assert len(ticks) >= 3, out  # about SLOW_S / 0.2 of them; 3 leaves room for a loaded machine
    assert "exporter chatter" not in out
    opening = out[0]
    assert opening.startswith("ONNX: exporting the selector graph") and not re.search(r"\d+(\.\d+)?\s*s\b", opening), opening


def test_a_slow_model_load_prints_lines_in_a_log(capsys, monkeypatch):
    """Loading a full-size checkpoint can take minutes before the first export line: it opens and ticks too."""
    from types import SimpleNamespace

    from flashvlm_export import progress
    from flashvlm_export.models import adapter
    from flashvlm_export.models.weights import WeightsSource

    def slow_load(spec, source, with_embeddings=False):
        time.sleep(SLOW_S)
        return SimpleNamespace(source="random weights, seed 0")

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    monkeypatch.setattr(adapter, "get_parts", slow_load)
    adapter.get_parts_logged(TINY, WeightsSource(seed=0), log=lambda line: print(line, flush=True))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Model: loading llava15-tiny" and out[-1].startswith("Model: loaded llava15-tiny"), out
    assert sum("still running" in line for line in out) >= 3, out
