"""Export choices shared by the CLI, the exporter and the graph declaration; torch-free, so --help is fast."""

DEFAULT_OPSET = 18  # LayerNormalization is one op from 17 on; 18 is what the dynamo exporter targets
MIN_OPSET = 17
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True | False)
DEFAULT_EXPORTER = "dynamo"
# The graphs each exporter writes: the one table --help, the up-front check and the tests read. "plugin" is a graph with
# --plugin's ResidualPrune node, which only the dynamo exporter's custom translation writes. TorchScript's full and
# encoder graphs get their shape arithmetic folded (export/onnx_export.py fold_shape_constants), or the static-graph
# check refuses every LLaVA one.
GRAPH_KINDS = ("full", "encoder", "selector", "plugin")
EXPORTER_GRAPHS = {"dynamo": GRAPH_KINDS, "torchscript": ("full", "encoder", "selector")}
PRECISION_NAMES = ("fp32", "fp16", "bf16")  # encoder + projector; the selector is always fp32
QUANTIZED_PRECISIONS = ("int8", "fp8")  # encoders quantized after export, Q/DQ nodes (export/quantize.py)
ENCODER_PRECISIONS = PRECISION_NAMES + QUANTIZED_PRECISIONS  # what --precision takes
LLM_DTYPE_NAMES = ("auto", *PRECISION_NAMES)  # run --llm-dtype: auto is bf16/fp16 on CUDA, fp32 on the CPU
REDUCED_PRECISIONS = PRECISION_NAMES[1:]  # below fp32: what the selector must never compute in
DEFAULT_FRAMES = 8  # export --video: frames per clip (4 temporal groups: 1,024 tokens at 448 px)
DEFAULT_FPS = 2.0  # Qwen's video processor samples 2 frames a second: second_per_grid_t = 1, group g at t = 2 g


def exporter_help() -> str:
    """--exporter's help: which graphs each exporter writes, from EXPORTER_GRAPHS."""
    writes = "; ".join(f"{name} writes {', '.join(kinds)} graphs" for name, kinds in EXPORTER_GRAPHS.items())
    return f"torch.onnx exporter (default: {DEFAULT_EXPORTER}): {writes}; torchscript is quicker for many pruning rounds"


def exporter_refusal(exporter: str, kind: str) -> str | None:
    """The one-line refusal when `exporter` does not write `kind` graphs (GRAPH_KINDS), naming one that does; else None."""
    if kind in EXPORTER_GRAPHS[exporter]:
        return None
    able = next(name for name, kinds in EXPORTER_GRAPHS.items() if kind in kinds)
    what = "--plugin graphs (the ResidualPrune node)" if kind == "plugin" else f"{kind} graphs"
    return f"--exporter {exporter} does not write {what}; use --exporter {able}"
