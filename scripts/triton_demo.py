"""Serve a generated Triton repository on a real tritonserver, make one client call, stop the server.

python scripts/triton_demo.py --repository model_repository --manifest out/llava15-tiny_split/manifest.json --budget 16

The server and tritonclient come from scripts/fetch_triton.sh's cache. The call sends one corpus image of the
manifest's geometry over HTTP and prints the indices it gets back beside the in-process split chain's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    from flashvlm_export.errors import UsageError
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.parity.corpus import pipeline_corpus
    from flashvlm_export.parity.run import geometry_of
    from flashvlm_export.runtime.chain import SplitChain
    from flashvlm_export.serve.server import TritonServer, find_tritonserver, import_tritonclient

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repository", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--budget", type=int, required=True)
    args = p.parse_args()
    try:
        manifest = read_manifest(Path(args.manifest))
        manifest.check_budget(args.budget)
        if not (Path(args.repository) / "flashvlm_repository.json").is_file():
            raise UsageError(f"--repository {args.repository} is not a repository flashvlm-export triton wrote; write one first")
    except UsageError as exc:
        print(f"triton_demo: error: {exc}", file=sys.stderr)
        return 2
    binary, why = find_tritonserver()
    why = why if binary is None else import_tritonclient()
    if binary is None or why:
        print(f"triton_demo: {why}; run scripts/fetch_triton.sh first", file=sys.stderr)
        return 2
    import tritonclient.http as http

    request = manifest.request(manifest.budgets[0])
    feeds = {
        k: v[:1]
        for k, v in pipeline_corpus(geometry_of(request), request.spec.image_shape, repeats=1)[0].feeds.items()
        if k != "budget"
    }
    arrays = {**feeds, "budget": np.array([[args.budget]], dtype=np.int64)}
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="flashvlm-triton-") as scratch,
            TritonServer(binary, Path(args.repository), Path(scratch) / "server.log") as server,
        ):
            print(f"tritonserver ready at http://{server.http_url} serving {args.repository}")
            client = http.InferenceServerClient(server.http_url, network_timeout=60)
            inputs = []
            for name, array in arrays.items():
                inputs.append(http.InferInput(name, list(array.shape), types[array.dtype]))
                inputs[-1].set_data_from_numpy(array)
            served = client.infer("flashvlm", inputs).as_numpy("indices")[0]
            client.close()
    except Exception as exc:  # the server did not start, or answered with an error: one line
        print(f"triton_demo: error: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    local = SplitChain(manifest).infer(feeds, args.budget)["indices"][0]
    print(f"Triton  K={args.budget}: {served.tolist()}")
    print(f"in-process chain: {'the same indices' if np.array_equal(served, local) else local.tolist()}")
    return 0 if np.array_equal(served, local) else 1


if __name__ == "__main__":
    sys.exit(main())
