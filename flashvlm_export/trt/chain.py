"""A split export's engines as one pipeline: encoder engine -> the selector engine of a request's budget.

The encoder engine writes vision_features, cls_attention and projected_features (and, for Qwen3-VL,
deepstack_features (B, L, N, Dl)) into device buffers (torch CUDA tensors) that every selector context
reads through the same addresses; only the selected tensors (indices, visual_embeds, and positions and
deepstack_embeds (B, L, K, Dl) where the engines have them) are copied back to the host. Everything
runs on one CUDA stream.

What is verified, and how:
- The checks before TensorRT (sidecars present and readable, graph kinds, each selector's budget equals
  its key, batch, T_max and geometry agree, a budget the chain lacks) run in tests/test_trt_chain.py on
  hand-written sidecars. The checks of the deserialized engines' I/O tensors (`engine_io`, `check_io`)
  and which tensor each context binds (`bound_names`) run there on stand-ins for ICudaEngine and the
  tensorrt module's enums: our logic only.
- Every TensorRT Python name used here was read in NVIDIA/TensorRT python/src/infer/pyCore.cpp and
  pyFoundationalTypes.cpp on release/10.3 and release/11.1 (file:line in the comments below), and the
  device-memory rules in include/NvInferRuntime.h on both branches. The names and signatures used are
  the same on both branches; 10.3's deprecated `device_memory_size` is gone on 11.1, so only
  `device_memory_size_v2` is used.

What is not verified: this module has never run against TensorRT or on a GPU here (no TensorRT, no GPU
on the machine it was written on). Its test that builds and runs a real chain is skipped where either
is absent.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from flashvlm_export.errors import FlashVLMError, MissingDependencyError, UsageError
from flashvlm_export.export.interface import (
    DEEPSTACK_EMBEDS,
    DEEPSTACK_FEATURES,
    ENCODER_OUTPUTS,
    FEATURES,
    INDICES,
    PIPELINE_INPUTS,
    PIXEL_VALUES,
    POSITIONS,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISUAL_EMBEDS,
    encoder_outputs_among,
)
from flashvlm_export.trt.runner import check_engine_here, read_engine_record
from flashvlm_export.trt.sidecar import io_mismatch

SHARED = ENCODER_OUTPUTS  # encoder outputs = selector inputs: X, a, P(X), and deepstack_features (Qwen3-VL only)
ENCODER_IO = {PIXEL_VALUES, *FEATURES}  # every encoder engine's; deepstack_features besides where the model has DeepStack
SELECTOR_IO = {*FEATURES, TEXT_EMBEDS, TEXT_MASK, INDICES, VISUAL_EMBEDS}
# what a selector engine may return (positions: 3-axis rotary models; deepstack_embeds: Qwen3-VL), in this order
SELECTED = (INDICES, VISUAL_EMBEDS, POSITIONS, DEEPSTACK_EMBEDS)
K_AXIS = {INDICES: 1, VISUAL_EMBEDS: 1, POSITIONS: 1, DEEPSTACK_EMBEDS: 2}  # where each selected tensor has its K
INTEGER = (INDICES, POSITIONS)  # int64 on the host; the other selected tensors float32
DEEPSTACK = (DEEPSTACK_FEATURES, DEEPSTACK_EMBEDS)  # a selector engine of a DeepStack model has both, others neither


def selected_names(io: dict) -> tuple[str, ...]:
    """The outputs a selector engine returns, in order: indices, visual_embeds, and positions and deepstack_embeds where
    it has them."""
    return tuple(name for name in SELECTED if name in io)


def shared_names(enc_io: dict) -> tuple[str, ...]:
    """The device buffers the encoder writes and the selectors read, in order: X, a, P(X), and deepstack_features where
    the encoder engine has it."""
    return encoder_outputs_among(enc_io)


def bound_names(enc_io: dict, selector_io: dict) -> tuple[tuple[str, ...], dict]:
    """The tensors each context gets an address for: the encoder's (pixel_values and the shared buffers), and each
    budget's (inputs, outputs): the shared buffers and the text as inputs, its selected tensors as outputs.
    Every I/O tensor of every engine, once each, for an engine set that passed `check_io`."""
    shared = shared_names(enc_io)
    per_selector = {key: ((*shared, TEXT_EMBEDS, TEXT_MASK), selected_names(io)) for key, io in selector_io.items()}
    return (PIXEL_VALUES, *shared), per_selector


HOST_INPUTS = PIPELINE_INPUTS  # pixel_values, text_embeds, text_mask
GEOMETRY = ("n_tokens", "vision_hidden", "text_hidden")
REEXPORT = "export the encoder and its selectors together, from one model and batch, with flashvlm-export ... --engine"


def select_budget(budget, budgets: tuple[int, ...]) -> int:
    """`budget` when the chain has a selector for it, else a one-line error naming the budgets it has."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or int(budget) not in budgets:
        have = ", ".join(str(k) for k in budgets)
        raise UsageError(f"budget {budget!r} has no selector engine in this chain (it has K = {have}); ask for one of those")
    return int(budget)


def check_chain_records(encoder: Path, selectors: dict[int, Path]) -> tuple[dict, dict[int, dict]]:
    """Everything the chain can check before TensorRT; the encoder's record and each budget's record."""
    if not selectors:
        raise UsageError(f"no selector engines given for the encoder {encoder}; pass at least one {{K: selector.plan}}")
    encoder_record = read_engine_record(Path(encoder), expect_kind="encoder")
    records = {}
    for key, path in sorted(selectors.items(), key=lambda item: str(item[0])):
        if isinstance(key, bool) or not isinstance(key, int):
            raise UsageError(f"selector {path} is keyed by {key!r}, not a whole budget K; key it by its budget")
        record = read_engine_record(Path(path), expect_kind="selector")
        if record["budget"] != key:
            raise UsageError(f"{path} keeps K={record['budget']} tokens but is keyed as K={key}; key it by {record['budget']}")
        records[key] = record
    expected = _geometry(Path(encoder), encoder_record)
    for key, record in records.items():
        got = _geometry(Path(selectors[key]), record)
        if got != expected:
            raise UsageError(
                f"{selectors[key]} was built for {_show(got)}, the encoder {encoder} for {_show(expected)}; {REEXPORT}"
            )
    t_max = {record.get("t_max") for record in records.values()}
    if len(t_max) > 1:
        paths = ", ".join(f"{selectors[k]} (t_max={r.get('t_max')})" for k, r in records.items())
        raise UsageError(f"the selectors disagree on T_max: {paths}; export them with one --t-max")
    return encoder_record, records


def _geometry(path: Path, record: dict) -> dict[str, str]:
    meta = record["onnx_metadata"]
    if not isinstance(meta, dict) or any(name not in meta for name in GEOMETRY) or "batch" not in record:
        raise UsageError(
            f"sidecar of {path} lacks batch or onnx_metadata {'/'.join(GEOMETRY)}; rebuild {path.name} with flashvlm-export"
        )
    return {"batch": str(record["batch"]), **{name: str(meta[name]) for name in GEOMETRY}}


def _show(geometry: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in geometry.items())


class EngineChain:
    """Encoder engine -> the selector engine of the budget a request asks for, on one CUDA stream.
    The encoder's outputs (X, a, P(X), and Qwen3-VL's deepstack_features) live in device buffers that the selector
    contexts read directly (no host copy); only the selected tensors (B, K, ...) come back to the host.

    Activation scratch: the selector contexts are created with ExecutionContextAllocationStrategy.USER_MANAGED
    and all get one torch allocation sized to the largest selector's device_memory_size_v2 (present with the
    same names on release/10.3 and release/11.1). NvInferRuntime.h (setDeviceMemoryV2, both branches) makes
    using the memory "in another execution context running in parallel" undefined; here only one selector
    runs at a time, on one stream, and `infer` holds a lock, so no two selector runs overlap. The encoder
    context keeps TensorRT's own (STATIC) allocation. Where the bindings lack these names (TensorRT before
    10.1), every context gets its own allocation instead.

    One request at a time: the I/O buffers are the chain's, so `infer` serialises callers.
    """

    def __init__(self, encoder: Path, selectors: dict[int, Path], plugin_library: Path | None = None):
        encoder = Path(encoder)
        selectors = dict(selectors)
        encoder_record, records = check_chain_records(encoder, selectors)
        trt = check_engine_here(encoder, encoder_record, None, plugin_library)
        for key, record in records.items():
            check_engine_here(Path(selectors[key]), record, key, plugin_library)
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError(
                f"torch {torch.__version__} has no CUDA device: the chain's buffers need a CUDA build of torch on a GPU host"
            )
        self.record = encoder_record
        self.records = records
        self.precision = encoder_record["precision"]
        plugin = encoder_record["plugin"] or any(r["plugin"] for r in records.values())
        self.name = f"tensorrt chain[{self.precision}{', plugin' if plugin else ''}]"
        self._lock = threading.Lock()
        self._torch = torch
        self._stream = torch.cuda.Stream()
        self._dtypes = _torch_dtypes(trt, torch)

        # trt.Logger: pyCore.cpp:757 (10.3), :996 (11.1); trt.Runtime(logger): pyCore.cpp:1537-1538 (10.3), :1833-1836 (11.1).
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._encoder = self._deserialize(trt, encoder)
        self._selectors = {key: self._deserialize(trt, Path(path)) for key, path in sorted(selectors.items())}

        enc_io = engine_io(trt, self._encoder, encoder, "encoder", self._dtypes)
        selector_io = {
            key: engine_io(trt, engine, Path(selectors[key]), "selector", self._dtypes) for key, engine in self._selectors.items()
        }
        check_io(encoder, enc_io, selectors, selector_io, torch.bfloat16)
        encoder_names, selector_names = bound_names(enc_io, selector_io)

        with torch.cuda.stream(self._stream):  # the buffers belong to the chain's stream
            self._device = {name: self._empty(*enc_io[name][1:]) for name in encoder_names}
            first = min(selector_io)
            for name in (TEXT_EMBEDS, TEXT_MASK):
                self._device[name] = self._empty(*selector_io[first][name][1:])
            self._outputs = {
                key: {name: self._empty(*io[name][1:]) for name in selected_names(io)} for key, io in selector_io.items()
            }
            self._pinned = {name: self._host(self._device[name]) for name in HOST_INPUTS}
            self._pinned_out = {key: {name: self._host(t) for name, t in outs.items()} for key, outs in self._outputs.items()}

        # create_execution_context(strategy): pyCore.cpp:1165-1166 (10.3), :1422-1424 (11.1; the other overload,
        # :1541, takes an IRuntimeConfig). The default strategy is STATIC on both.
        self._encoder_context = self._context(self._encoder, encoder)
        self._scratch = None
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        shared = strategy is not None and all(hasattr(e, "device_memory_size_v2") for e in self._selectors.values())
        if shared:
            # ExecutionContextAllocationStrategy.USER_MANAGED: pyCore.cpp:1102-1108 (10.3), :1270-1276 (11.1).
            # ICudaEngine.device_memory_size_v2: pyCore.cpp:1181 (10.3), :1428 (11.1); 10.3's deprecated
            # device_memory_size (:1178) is gone on 11.1, so it is not used.
            size = max(int(e.device_memory_size_v2) for e in self._selectors.values())
            self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")
            if self._scratch.data_ptr() % 256:  # NvInferRuntime.h setDeviceMemoryV2: CUDA memory alignment
                raise FlashVLMError(
                    f"torch gave the selectors' scratch an address not 256-byte aligned ({self._scratch.data_ptr():#x})"
                )
        self._selector_contexts = {}
        for key, engine in self._selectors.items():
            path = Path(selectors[key])
            if shared:
                context = self._context(engine, path, strategy)
                # IExecutionContext.set_device_memory(memory, size) -> setDeviceMemoryV2:
                # pyCore.cpp:1042 and lambda :339 (10.3), :1301 and lambda :349 (11.1).
                context.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            else:
                context = self._context(engine, path)
            self._selector_contexts[key] = context

        # set_tensor_address(name, memory: int): pyCore.cpp:1057, lambda :116 (10.3); :1316, lambda :118 (11.1).
        for name in encoder_names:
            self._bind(self._encoder_context, name, self._device[name].data_ptr(), encoder)
        for key, context in self._selector_contexts.items():
            inputs, outputs = selector_names[key]
            for name in inputs:
                self._bind(context, name, self._device[name].data_ptr(), selectors[key])
            for name in outputs:
                self._bind(context, name, self._outputs[key][name].data_ptr(), selectors[key])

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(sorted(self._selectors))

    def infer(self, feeds: dict[str, np.ndarray], budget: int) -> dict[str, np.ndarray]:
        """{"indices": (B, K) int64, "visual_embeds": (B, K, Dl) float32[, "positions": (B, K, 3) int64]
        [, "deepstack_embeds": (B, L, K, Dl) float32]} for pixel_values, text_embeds, text_mask."""
        k = select_budget(budget, self.budgets)
        missing = [name for name in HOST_INPUTS if name not in feeds]
        if missing:
            raise UsageError(f"the chain needs feeds {', '.join(HOST_INPUTS)}; {', '.join(missing)} missing")
        with self._lock:
            for name in HOST_INPUTS:
                host = self._pinned[name].numpy()
                value = np.asarray(feeds[name])
                if value.shape != host.shape:
                    raise UsageError(f"feed {name} has shape {value.shape}, the engines take {host.shape}; pass that shape")
                try:
                    np.copyto(host, value, casting="same_kind" if host.dtype != np.bool_ else "unsafe")
                except TypeError:
                    raise UsageError(f"feed {name} is {value.dtype}, the engines take {host.dtype}; pass {host.dtype}") from None
            torch, stream = self._torch, self._stream
            with torch.cuda.stream(stream):
                for name in HOST_INPUTS:
                    self._device[name].copy_(self._pinned[name], non_blocking=True)
                self._execute(self._encoder_context, "encoder")
                self._execute(self._selector_contexts[k], f"selector K={k}")
                for name, tensor in self._outputs[k].items():
                    self._pinned_out[k][name].copy_(tensor, non_blocking=True)
            stream.synchronize()
            return {  # copies: the pinned buffers are the next request's
                name: np.array(tensor.numpy(), dtype=np.int64 if name in INTEGER else np.float32)
                for name, tensor in self._pinned_out[k].items()
            }

    # ------------------------------------------------------------------ helpers

    def _deserialize(self, trt, path: Path):
        # Runtime.deserialize_cuda_engine(serialized_engine: buffer): pyCore.cpp:1539, lambda :163 (10.3); :1838, lambda :165 (11.1).
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise FlashVLMError(
                f"TensorRT {trt.__version__} cannot load {path} on this GPU; rebuild it on this machine with this TensorRT"
            )
        return engine

    def _empty(self, shape: tuple, dtype):
        return self._torch.empty(shape, dtype=dtype, device="cuda")

    def _host(self, device_tensor):
        """A pinned host twin of a device buffer: what makes the non_blocking copies asynchronous."""
        return self._torch.empty(tuple(device_tensor.shape), dtype=device_tensor.dtype, pin_memory=True)

    def _context(self, engine, path: Path, strategy=None):
        context = engine.create_execution_context() if strategy is None else engine.create_execution_context(strategy)
        if context is None:
            raise FlashVLMError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        return context

    @staticmethod
    def _bind(context, name: str, address: int, path) -> None:
        if not context.set_tensor_address(name, address):
            raise FlashVLMError(f"TensorRT refused the address of {name} for {path} (set_tensor_address returned False)")

    def _execute(self, context, what: str) -> None:
        # execute_async_v3(stream_handle: int) -> enqueueV3: pyCore.cpp:1074, lambda :111 (10.3); :1333, lambda :113 (11.1).
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise FlashVLMError(
                f"TensorRT could not enqueue the {what} engine (execute_async_v3 returned False); see TensorRT's log above"
            )


def engine_io(trt, engine, path: Path, kind: str, dtypes: dict) -> dict[str, tuple]:
    """{name: (is_input, shape, torch dtype)} of an engine's I/O tensors, checked against the graph kind's names
    ("encoder" or "selector"; the DeepStack tensors and positions where the engine has them)."""
    # num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_shape, get_tensor_dtype:
    # pyCore.cpp:1187-1192 (10.3), :1434-1439 (11.1). TensorIOMode: :1149-1152 (10.3), :1405-1408 (11.1).
    # Dims has __len__/__getitem__: pyFoundationalTypes.cpp:246-247 (10.3), :248-249 (11.1).
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype = engine.get_tensor_dtype(name)
        if dtype not in dtypes:
            raise UsageError(f"{path} has {name} of TensorRT type {dtype}, which the chain cannot hold; {REEXPORT}")
        if any(d < 0 for d in shape):
            raise UsageError(f"{path} has {name} of dynamic shape {shape}; the chain needs static-shape engines ({REEXPORT})")
        io[name] = (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, shape, dtypes[dtype])
    if kind == "encoder":
        expected = ENCODER_IO | ({DEEPSTACK_FEATURES} & set(io))  # an encoder of a DeepStack model also writes its rows
    else:
        expected = SELECTOR_IO | ({POSITIONS} & set(io))  # a selector of a 3-axis rotary model also returns positions
        if set(DEEPSTACK) & set(io):  # a selector of a DeepStack model takes its rows and returns the kept ones: both
            expected |= set(DEEPSTACK)
    differs = io_mismatch(set(io), expected)
    if differs:
        differs = differs.replace("the graph", "its graph kind")
        raise UsageError(f"{path} does not have the I/O tensors of its graph kind: {differs}; {REEXPORT}")
    return io


def check_io(encoder: Path, enc_io: dict, selectors: dict, selector_io: dict, bfloat16) -> None:
    """The engines' I/O tensors fit together: the encoder writes what each selector reads (DeepStack rows included,
    or on neither side), in the same shapes and types; inputs and outputs where the chain puts them; every selected
    tensor K wide; nothing the host side sees in `bfloat16` (torch.bfloat16: numpy has none). One line otherwise."""
    for name, (is_input, _, _) in enc_io.items():
        if is_input != (name == PIXEL_VALUES):
            raise UsageError(f"{encoder} has {name} as an {'input' if is_input else 'output'}; {REEXPORT}")
    first = min(selector_io)
    for key, io in selector_io.items():
        path = selectors[key]
        if (DEEPSTACK_FEATURES in io) != (DEEPSTACK_FEATURES in enc_io):
            takes, writes = ("takes", "does not write") if DEEPSTACK_FEATURES in io else ("does not take", "writes")
            raise UsageError(
                f"{path} {takes} {DEEPSTACK_FEATURES} (Qwen3-VL's DeepStack rows), the encoder {encoder} {writes} it: "
                f"engines of two models; {REEXPORT}"
            )
        for name, (is_input, shape, dtype) in io.items():
            if is_input != (name not in SELECTED):
                raise UsageError(f"{path} has {name} as an {'input' if is_input else 'output'}; {REEXPORT}")
            if name in SHARED and (shape, dtype) != enc_io[name][1:]:
                raise UsageError(
                    f"{path} takes {name} {shape} {dtype}, the encoder {encoder} writes {enc_io[name][1]} {enc_io[name][2]}; {REEXPORT}"
                )
            if name in (TEXT_EMBEDS, TEXT_MASK) and (shape, dtype) != selector_io[first][name][1:]:
                raise UsageError(
                    f"{path} takes {name} {shape} {dtype}, {selectors[first]} takes {selector_io[first][name][1:]}; {REEXPORT}"
                )
        for name in selected_names(io):
            shape, axis = io[name][1], K_AXIS[name]
            if shape[axis : axis + 1] != (key,):
                raise UsageError(f"{path} outputs {name} {shape}, not K={key} wide on axis {axis}; key it by its budget")
    host_side = [(encoder, PIXEL_VALUES, enc_io)]
    host_side += [
        (selectors[k], name, io) for k, io in selector_io.items() for name in (TEXT_EMBEDS, TEXT_MASK, *selected_names(io))
    ]
    for path, name, io in host_side:  # numpy, on the host side, has no bfloat16
        if io[name][2] == bfloat16:
            raise UsageError(f"{path} has {name} as bfloat16, which numpy on the host cannot hold; {REEXPORT}")


def _torch_dtypes(trt, torch) -> dict:
    """TensorRT DataType -> torch dtype, for the types the chain holds (pyFoundationalTypes.cpp:179-188 on both branches)."""
    pairs = [
        ("FLOAT", "float32"),
        ("HALF", "float16"),
        ("BF16", "bfloat16"),
        ("INT32", "int32"),
        ("INT64", "int64"),
        ("BOOL", "bool"),
    ]
    table = {}
    for trt_name, torch_name in pairs:
        trt_type, torch_type = getattr(trt.DataType, trt_name, None), getattr(torch, torch_name, None)
        if trt_type is not None and torch_type is not None:
            table[trt_type] = torch_type
    return table
