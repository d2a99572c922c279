"""The parser every command uses and the flag groups several commands share, each declared once.

The selector's hyperparameter flags are SelectorConfig's fields: name, type, default, range and help
all come from selector/config.py.
"""

from __future__ import annotations

import argparse
import dataclasses

from flashvlm_export.errors import UsageError
from flashvlm_export.models.registry import MODELS, model_name
from flashvlm_export.models.zoo.llava15 import LLAVA15
from flashvlm_export.models.zoo.qwen2_5_vl import QWEN25_VL_7B
from flashvlm_export.models.zoo.qwen3_vl import QWEN3_VL_2B


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help wrapped at spaces only: a model name (llava-next-vicuna-7b) or a flag is never cut at one of its hyphens."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, exit code 2, and no prefix matching (--imag is not --image-size)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message}; see {self.prog} --help")


def log(message: str) -> None:
    print(message, flush=True)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def given_flags(argv: list[str]) -> set[str]:
    """The long flags the user typed (prefix matching is off, so each is a flag's full name)."""
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and weights")
    g.add_argument(
        "--model",
        default=LLAVA15.name,
        type=model_name,
        help=f"model spec name (any case), one of {', '.join(MODELS)} (default: {LLAVA15.name}; the -tiny ones are test-size models; docs/MODELS.md)",
    )
    g.add_argument(
        "--model-path",
        metavar="DIR",
        help="local checkpoint directory (config.json + *.safetensors); default: the local HF cache",
    )
    g.add_argument(
        "--random-weights", action="store_true", help="build the exact architecture with seeded random weights, offline"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default: 0)")


def add_graph_flags(p: argparse.ArgumentParser, many_budgets: bool) -> list[str]:
    """The flags that shape a graph; returns their names."""
    g = p.add_argument_group("graph shape")
    several = (
        "; a comma list exports several from one model load: one encoder and a selector per budget "
        "(--split, the default for several; --fused for a full graph each)"
    )
    added = [
        g.add_argument(
            "--budget",
            help=f"visual tokens kept, K (2 <= K <= N; default: {_budget_defaults()})" + (several if many_budgets else ""),
        ),
        g.add_argument(
            "--budget-range",
            metavar="KMIN..KMAX",
            help="one selector for every budget KMIN..KMAX, a budget per image at run time (e.g. 16..256; excludes --budget; "
            "docs/BUDGETS.md)",
        ),
        g.add_argument(
            "--t-max",
            type=int,
            help=f"padded text rows T_max of the static graph (default: the model's, {LLAVA15.t_max} for {LLAVA15.name}); "
            "bounded by memory",
        ),
        g.add_argument("--batch", type=int, default=1, help="static batch size B (default: 1; bounded by memory)"),
        g.add_argument(
            "--image-size",
            metavar="SIDE|HxW",
            help=f"input image side, or HEIGHTxWIDTH for a non-square shape (default: the model's); {LLAVA15.name} takes "
            f"{LLAVA15.image_size} only, Qwen2.5-VL multiples of {QWEN25_VL_7B.image_size_step} (default "
            f"{QWEN25_VL_7B.image_size}, e.g. 364x504), the Qwen3 generation multiples of {QWEN3_VL_2B.image_size_step} "
            f"(default {QWEN3_VL_2B.image_size})",
        ),
        g.add_argument(
            "--grid",
            metavar="ROWSxCOLS",
            help="LLaVA-NeXT: the grid of crops beside the base image, fixed at export (default 2x2: 1 + 4 crops, N = 2880); "
            "one of the checkpoint's pinpoints (1x2, 2x1, 2x2, 3x1, 1x3)",
        ),
        g.add_argument(
            "--selector-only", action="store_true", help="export the selection core alone (inputs X, a, P(X), T, mask)"
        ),
        g.add_argument(
            "--n-tokens", type=int, help="with --selector-only: visual tokens N per image if not the model's (own encoder, video)"
        ),
    ]
    return [a.option_strings[0] for a in added]


def _budget_defaults() -> str:
    """--budget's default, which follows the model (ModelSpec.default_budget), as --help says it."""
    found: dict[int, list[str]] = {}
    for spec in MODELS.values():
        if not spec.name.endswith("-tiny"):
            found.setdefault(spec.default_budget(), []).append(spec.name)
    listed = ", ".join(f"{k} for {', '.join(names)}" for k, names in found.items())
    return f"the model's: {listed}; the same share of each image, crop or frame group at another --image-size, --grid or clip"


_TYPES = {"float": float, "int": int, "int | None": int, "str": str}  # SelectorConfig's field annotations


def add_selector_flags(p: argparse.ArgumentParser) -> list[str]:
    """One flag per SelectorConfig field; returns their names."""
    from flashvlm_export.selector.config import MODEL_DEFAULTS, SelectorConfig, interval_text

    g = p.add_argument_group("selector hyperparameters (docs/ALGORITHM.md; defaults are the authors')")
    flags = []
    for field in dataclasses.fields(SelectorConfig):
        meta, flag = field.metadata, flag_of(field.name)
        where = f", in {interval_text(meta['range'])}" if meta["range"] else ""
        default = "none" if field.default is None else field.default
        if field.name in MODEL_DEFAULTS:
            default = "the model's: " + ", ".join(
                f"{gate} for {', '.join(names)}" for gate, names in _model_defaults(field.name).items()
            )
        kind = {"choices": meta["choices"]} if meta["choices"] else {"type": _TYPES[field.type]}
        value = None if field.name in MODEL_DEFAULTS else field.default
        g.add_argument(flag, default=value, help=f"{meta['help']}{where} (default: {default})", **kind)
        flags.append(flag)
    return flags


def _model_defaults(name: str) -> dict[str, list[str]]:
    """value -> the models whose spec sets it, for a field whose default is the model's."""
    from flashvlm_export.models.registry import MODELS

    found: dict[str, list[str]] = {}
    for spec in MODELS.values():
        if not spec.name.endswith("-tiny"):
            found.setdefault(getattr(spec, name), []).append(spec.name)
    return found


def selector_config(args, spec=None):
    """SelectorConfig from the hyperparameter flags, the model's defaults where a flag was not given (--gate); a value
    out of range is an error naming its flag."""
    from flashvlm_export.selector.config import MODEL_DEFAULTS, SelectorConfig, SettingError

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SelectorConfig)}
    for name in MODEL_DEFAULTS:
        if values[name] is None:
            values.pop(name)  # the model's (ModelSpec.selector_config), or SelectorConfig's without a model
    try:
        return spec.selector_config(**values) if spec is not None else SelectorConfig(**values)
    except SettingError as exc:
        raise UsageError(exc.named(flag_of(exc.name))) from None


def add_backend_flag(p, what: str = "the graph") -> None:
    """--backend: the runtime of an exported graph (backend.py's GRAPH_BACKENDS)."""
    from flashvlm_export.backend import GRAPH_BACKENDS, ONNXRUNTIME_BACKEND

    p.add_argument(
        "--backend",
        choices=GRAPH_BACKENDS,
        default=ONNXRUNTIME_BACKEND,
        help=f"what runs {what}: onnxruntime (CUDA where onnxruntime-gpu offers it, else CPU) or openvino (OpenVINO "
        "Runtime on the CPU, f32; pip install openvino) (default: onnxruntime)",
    )
