"""Export choices shared by the CLI, the exporter and the graph declaration; torch-free, so --help is fast."""

DEFAULT_OPSET = 18  # LayerNormalization is one op from 17 on; 18 is what the dynamo exporter targets
MIN_OPSET = 17
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True | False)
DEFAULT_EXPORTER = "dynamo"
PRECISION_NAMES = ("fp32", "fp16", "bf16")  # encoder + projector; the selector is always fp32
LLM_DTYPE_NAMES = ("auto", *PRECISION_NAMES)  # run --llm-dtype: auto is bf16/fp16 on CUDA, fp32 on the CPU
REDUCED_PRECISIONS = PRECISION_NAMES[1:]  # below fp32: what the selector must never compute in
DEFAULT_FRAMES = 8  # export --video: frames per clip (4 temporal groups: 1,024 tokens at 448 px)
DEFAULT_FPS = 2.0  # Qwen's video processor samples 2 frames a second: second_per_grid_t = 1, group g at t = 2 g
