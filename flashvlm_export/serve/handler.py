"""One Triton request through a split: its per-request budget checked against the manifest, its batch padded to the
graphs' static batch and cut back. Used inside the Python-backend models; importable (and tested) without Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import KEPT, PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK
from flashvlm_export.export.manifest import Manifest
from flashvlm_export.runtime.budgets import per_image

REQUEST_INPUTS = (PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK)


def request_budget(manifest: Manifest, budget: np.ndarray, images: int):
    """(selector key, the budget to run): one K for a split of fixed budgets (every image of a request the same),
    one per image for a budget-range split; a one-line UsageError for a budget the manifest does not serve."""
    values = per_image([int(k) for k in np.asarray(budget).reshape(-1)], images, f"{manifest.path}'s request")
    keys = [manifest.check_budget(k) for k in values]
    if manifest.budget_range is not None:
        return keys[0], values
    if len(set(values)) > 1:
        raise UsageError(
            f"budgets {values} in one request of {manifest.path}: a split of fixed budgets takes one budget per request "
            "(send one request per budget, or export with --budget-range)"
        )
    return keys[0], values[0]


def padded(feeds: dict[str, np.ndarray], batch: int) -> tuple[dict[str, np.ndarray], int]:
    """The request's inputs padded to the graphs' static batch (repeating the last image), and the request's image count."""
    images = len(feeds[TEXT_MASK])
    if not 0 < images <= batch:
        raise UsageError(f"a request of {images} images; this repository's graphs take 1..{batch} per request")
    if images == batch:
        return feeds, images
    return {name: np.concatenate([v, np.repeat(v[-1:], batch - images, axis=0)]) for name, v in feeds.items()}, images


def padded_budget(budget, images: int, batch: int):
    return budget if isinstance(budget, int) else list(budget) + [budget[-1]] * (batch - images)


def handler_for(manifest: Path):
    """The handler of a split: its chain (ChainHandler), or for a split of several shapes one routed by the pixels'
    shape (ShapeRouter)."""
    from flashvlm_export.export.shapes import is_shape_set

    return ShapeRouter(Path(manifest)) if is_shape_set(manifest) else ChainHandler(Path(manifest))


def pixel_dims(manifest: Manifest) -> tuple[int, ...]:
    """The pixel_values dims after the batch (3, H, W; crops, 3, S, S; F, 3, H, W) that the split's encoder takes."""
    from flashvlm_export.serve.layout import graph_tensors

    inputs, _ = graph_tensors(manifest.encoder_graph)
    return next(t.dims[1:] for t in inputs if t.name == PIXEL_VALUES)


def route_text(dims) -> str:
    return "x".join(str(d) for d in dims)


def pixel_routes(path: Path, keys: list[str], manifests: list[Manifest]) -> dict[tuple, str]:
    """{pixel_values dims: shape key} of a split of several shapes; a one-line error when two shapes take the same
    pixels, which an entry routing by the pixels' shape cannot tell apart (LLaVA-NeXT 1x2 and 2x1: 3 crops each)."""
    routes = {}
    for key, manifest in zip(keys, manifests, strict=True):
        dims = pixel_dims(manifest)
        if dims in routes:
            raise UsageError(
                f"{path}: shapes {routes[dims]} and {key} take the same pixel_values ({route_text(dims)}), so a Triton "
                "entry cannot tell their requests apart; export a split whose shapes differ in pixels (LLaVA-NeXT: grids "
                "of different crop counts, e.g. --aspects 2x2,1x3), or serve one shape's manifest"
            )
        routes[dims] = key
    return routes


class ShapeRouter:
    """A split of several shapes behind one Triton model: each request goes to the shape its pixel_values have (the
    client resized the photo to one, as `run --manifest` picks it); another shape is refused in one line."""

    def __init__(self, manifest: Path):
        from flashvlm_export.export.shapes import read_shape_set

        shape_set = read_shape_set(manifest)
        handlers = [ChainHandler(path) for path in shape_set.manifests]
        routes = pixel_routes(Path(manifest), shape_set.keys, [h.manifest for h in handlers])
        self.handlers = {dims: (key, handlers[shape_set.keys.index(key)]) for dims, key in routes.items()}
        self.manifest = next(iter(self.handlers.values()))[1].manifest

    def infer(self, feeds: dict[str, np.ndarray], budget: np.ndarray) -> dict[str, np.ndarray]:
        dims = tuple(np.shape(feeds[PIXEL_VALUES])[1:])
        if dims not in self.handlers:
            served = ", ".join(f"{key} ({route_text(d)})" for d, (key, _) in self.handlers.items())
            raise UsageError(
                f"pixel_values of shape {route_text(dims)} is none of this repository's shapes: {served}; resize the photo "
                "to one (run --manifest picks it as the model's processor would)"
            )
        return self.handlers[dims][1].infer(feeds, budget)


class ChainHandler:
    """The split chain (runtime/chain.py) behind one Triton model instance: the CPU flavour's whole model."""

    def __init__(self, manifest: Path):
        from flashvlm_export.runtime.chain import SplitChain

        self.chain = SplitChain(Path(manifest))  # reads and checks the manifest: every hash, every graph's metadata
        self.manifest = self.chain.manifest

    def infer(self, feeds: dict[str, np.ndarray], budget: np.ndarray) -> dict[str, np.ndarray]:
        images = len(feeds[TEXT_MASK])
        _, run = request_budget(self.manifest, budget, images)
        full, images = padded({name: feeds[name] for name in REQUEST_INPUTS}, self.manifest.record["batch"])
        outputs = self.chain.infer(full, padded_budget(run, images, self.manifest.record["batch"]))
        found = {name: np.ascontiguousarray(value[:images]) for name, value in outputs.items()}
        if KEPT in found:  # the entry's kept is (images, 1): Triton's batch dimension and one value
            found[KEPT] = found[KEPT].reshape(images, 1)
        return found
