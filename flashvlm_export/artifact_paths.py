"""The one rule for files an artifact names: they live where it says, inside its own folder.

A split folder, a graph, an engine and their sidecars come from elsewhere (copied, downloaded,
shared): untrusted input. Whatever one of them names (a manifest its graphs and engines, a graph
its external data, an engine its sidecar) is resolved against the naming artifact's folder and
must stay inside it: no absolute path, no `..`, no symbolic link leading out (one leading to
another file inside is fine). It must be a regular file (not a folder, FIFO, device or socket)
of a plausible size for what it claims to be (BOUNDS) and, where the artifact records its size,
of exactly that size. All of it is checked with stat before the file is opened, hashed or
parsed; a breach is one UsageError line naming the file and the rule (docs/ARTIFACTS.md).

Files the user names on the command line (--manifest, --graph, --engine, --plugin-lib) are the
user's own choice: `own_file` checks only that each is a regular file of a plausible size (a FIFO
there would block the read; a 50 GB "manifest" would fill memory). `input_file` checks a picture, a clip
or a GGUF the same way, without a size bound: a folder or a FIFO is named as one, not as missing; `not_a_folder`
refuses a folder where a file is to be written.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from flashvlm_export.errors import UsageError

MiB, GiB = 1 << 20, 1 << 30
BOUNDS = {  # the largest file each kind can plausibly be
    "json": 4 * MiB,  # manifests and sidecars: a few KB each
    "graph": 2 * GiB,  # protobuf cannot parse a larger file: weights past it go to external data
    "engine": 32 * GiB,  # an fp32 engine of a 7B-class vision tower is ~1.3 GB; this is far past any real one
    "inputs": 2 * GiB,  # parity --load-inputs records
    "data": 64 * GiB,  # a split's shared encoder weights (export/shapes.py): one 7B-class tower's, a few GB
}
SHARED_DATA = "encoder_weights.data"  # a split of several shapes: every encoder's weights, once (export/shapes.py)
EXTERNAL_DATA_SLACK = 64 * 1024  # onnx's largest alignment padding (external_data_helper._MAX_EXTERNAL_DATA_PADDING)

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def _regular(path: Path, st: os.stat_result) -> str | None:
    """Why `st` is not a regular file, or None."""
    if stat.S_ISREG(st.st_mode):
        return None
    return "is " + _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file") + ", not a regular file"


def _size_problem(st: os.stat_result, kind: str, expect_bytes: int | None, max_bytes: int | None) -> str | None:
    if expect_bytes is not None and st.st_size != expect_bytes:
        return f"is {st.st_size} bytes where the record says {expect_bytes}"
    bound = BOUNDS[kind] if max_bytes is None else max_bytes
    if st.st_size > bound:
        return f"is {_size(st.st_size)}, more than a {kind} file can plausibly be ({_size(bound)})"
    return None


def named_file(
    artifact: Path,
    folder: Path,
    name: object,
    what: str,
    kind: str,
    *,
    expect_bytes: int | None = None,
    max_bytes: int | None = None,
    fix: str = "re-export it with flashvlm-export",
) -> Path:
    """The file `artifact` names as `name`, checked by the rule; its resolved path. Opens nothing.

    `folder` is the artifact's own folder, `what` the role ("encoder graph", "external data of w"),
    `kind` a key of BOUNDS; `expect_bytes` the size the artifact records, `max_bytes` a tighter bound.
    """

    def breach(rule: str) -> UsageError:
        return UsageError(f"{artifact}: names {str(name)[:200]!r} as its {what}, which {rule}; {fix}")

    if not isinstance(name, str) or not name or "\0" in name:
        raise breach("is not a file name")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise breach("is an absolute path (an artifact names files relative to its own folder)")
    if ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        raise breach(f"climbs out of {folder} with '..'")
    root = Path(os.path.realpath(folder))
    target = Path(folder) / name
    real = Path(os.path.realpath(target))
    if not real.is_relative_to(root):
        raise breach(f"is a symbolic link leading out of {folder} (to {real})")
    try:
        st = os.stat(real)  # follows nothing further: realpath resolved every link, and it stays inside
    except FileNotFoundError:
        raise breach("does not exist") from None
    except OSError as exc:
        raise breach(f"cannot be examined ({exc.strerror})") from None
    problem = _regular(real, st) or _size_problem(st, kind, expect_bytes, max_bytes)
    if problem:
        raise breach(problem)
    return real


def input_file(path: Path, given: str, fix: str, kind: str | None = None) -> Path:
    """A file the user passes as input (a picture, a clip, a GGUF, an artifact): it must exist and be a regular file,
    so a folder or a FIFO is named as such, and of a plausible size for `kind` (a key of BOUNDS; None: any size);
    `given` names the flag and its value, `fix` says what to pass instead."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{given} does not exist; {fix}") from None
    except OSError as exc:
        raise UsageError(f"{given} cannot be examined ({exc.strerror}); {fix}") from None
    problem = _regular(path, st) or (_size_problem(st, kind, None, None) if kind else None)
    if problem:
        raise UsageError(f"{given} {problem}; {fix}")
    return path


def not_a_folder(path: Path, given: str, example: str) -> None:
    """A file the tool will write (--heatmap, --demo-image, --demo-video, --out): a folder there is refused in one
    line, with or without --force (which replaces a file, never a folder); `example` is a file name to suggest."""
    if Path(path).is_dir():
        raise UsageError(f"{given} is a folder, not a file; name a file to write, e.g. {Path(path) / example}")


def own_file(path: Path, what: str, kind: str, fix: str = "pass a file flashvlm-export wrote") -> Path:
    """A file the user named themselves: it must exist, be a regular file and be of a plausible size."""
    return input_file(path, f"{what} {path}", fix, kind)


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of a file already checked to be regular; non-blocking open (a FIFO swapped in since cannot hang us)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path} is not a regular file; pass a file flashvlm-export wrote")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UsageError(f"{path} grew past {_size(max_bytes)} while it was read; pass a file flashvlm-export wrote")
    return data


# ---------------------------------------------------------------- ONNX graphs and their external data


def _tensor_bytes(tensor) -> int | None:
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        itemsize = tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return itemsize * math.prod(tensor.dims)


def check_external_data(graph: Path, proto) -> list[Path]:
    """Every tensor's external data: named by the rule (inside the graph's folder) and within its file's size.

    onnx 1.23's own loader refuses absolute and `..` locations and checks offset+length against the
    file (onnx/external_data_helper.py, `_open_external_data_fd`, GHSA-538c-55jv-c5g9), and ONNX Runtime
    has its own checks; older releases of either did not, so every location is checked here first.
    """
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors  # initializers, attribute and subgraph tensors

    folder = Path(graph).parent
    ends: dict[Path, tuple[str, int]] = {}
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        what = f"external data of tensor {tensor.name[:80]!r}"
        fix = "re-export the graph with flashvlm-export"
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else _tensor_bytes(tensor)
        except ValueError:
            raise UsageError(f"{graph}: the {what} has a non-numeric offset or length; {fix}") from None
        if length is None or offset < 0 or length < 0:
            raise UsageError(f"{graph}: the {what} has no valid offset and length; {fix}")
        path = named_file(graph, folder, info.get("location"), what, "graph", max_bytes=2**62, fix=fix)
        end = max(ends.get(path, ("", 0))[1], offset + length)
        ends[path] = (info.get("location"), end)
    for path, (location, end) in ends.items():
        size = path.stat().st_size
        if size < end:
            raise UsageError(
                f"{graph}: its external data {location!r} is {size} bytes, shorter than the {end} its tensors need; re-export the graph"
            )
        if size > end + EXTERNAL_DATA_SLACK and Path(location).name != SHARED_DATA:  # the shared file holds every shape's
            raise UsageError(
                f"{graph}: its external data {location!r} is {_size(size)}, more than its tensors can plausibly need "
                f"({end} bytes and alignment); re-export the graph with flashvlm-export"
            )
    return list(ends)


def load_graph(path: Path, what: str = "graph", *, external_data: bool = False):
    """The ModelProto of a graph the user named, after the rule: the file itself (regular, at most 2 GiB) and
    every location its external data names; with external_data=True, the tensors' data loaded too."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = own_file(path, what, "graph", "export it with flashvlm-export or pass the right path")
    try:
        proto = onnx.load_from_string(read_bounded(path, BOUNDS["graph"]))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path} is not an ONNX graph ({type(exc).__name__}); pass a graph flashvlm-export exported") from None
    data = check_external_data(path, proto)
    _CHECKED_GRAPHS[_identity(path)] = [(d, _identity(d)) for d in data]
    if external_data:
        load_external_data_for_model(proto, str(path.parent))
    return proto


# Graphs load_graph has passed in this process, by file identity, with the identities of the external-data
# files it checked: check_graph need not parse a 1.25 GB graph again just before ONNX Runtime opens it (run
# and parity read its metadata through load_graph first). A graph or data file changed since is checked anew.
_CHECKED_GRAPHS: dict[tuple, list[tuple[Path, tuple]]] = {}


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_graph(path: Path, what: str = "graph") -> Path:
    """The rule for a graph a runtime (ONNX Runtime, TensorRT's parser) is about to open by path: the file is
    checked every time; it is parsed for its external data unless load_graph already passed this very file."""
    own_file(path, what, "graph", "export it with flashvlm-export or pass the right path")
    data = _CHECKED_GRAPHS.get(_identity(path))
    if data is None or any(not d.exists() or _identity(d) != known for d, known in data):
        load_graph(path, what)
    return Path(path)
