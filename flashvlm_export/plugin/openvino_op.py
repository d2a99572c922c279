"""flashvlm::ResidualPrune and flashvlm::ResidualPruneRange in OpenVINO (CPU): the same op given to OpenVINO.

Each is an OpenVINO Python operation (`openvino.Op`) whose evaluate() runs the very functions the ONNX Runtime
op runs (plugin/ort_op.py: the reference loop, the range plugin's rule per image), and an ONNX frontend
ConversionExtension maps the graph's node onto it, with its attributes. OpenVINO's CPU plugin executes an
operation it has no kernel for through its evaluate(). Like the ONNX Runtime op, it is there for checking a
plugin graph's wiring and indices off the GPU, not for speed: the loop runs in Python.
"""

from __future__ import annotations

import numpy as np

from flashvlm_export.plugin import PLUGIN_DOMAIN, PLUGIN_NAME, RANGE_PLUGIN_NAME

RANGE_FIELDS = ("k_min", "k_max", "k_div_max", "step", "max_rounds")
_extensions = None


def _op_classes():
    import openvino as ov

    from flashvlm_export.plugin.ort_op import _run, _run_range

    class _Prune(ov.Op):
        """kept (B, width) int32 from gram (B, N, N) and residual (B, |R0|) [and budget (B,)]."""

        name, fields, run = PLUGIN_NAME, ("k_div", "step"), staticmethod(_run)

        def __init__(self, inputs=None, attrs=None):
            self.attrs = dict(attrs or {})  # before the base, which infers the output's type from them
            super().__init__(self, inputs)

        def width(self) -> int:
            return int(self.attrs["k_div"])

        def validate_and_infer_types(self):
            batch = self.get_input_partial_shape(1)[0]
            self.set_output_type(0, ov.Type.i32, ov.PartialShape([batch, ov.Dimension(self.width())]))

        def clone_with_new_inputs(self, new_inputs):
            return type(self)(new_inputs, self.attrs)

        def get_type_info(self):
            return ov.DiscreteTypeInfo(self.name, PLUGIN_DOMAIN)

        def visit_attributes(self, visitor):
            return True

        def has_evaluate(self):
            return True

        def evaluate(self, outputs, inputs):
            arrays = [np.array(t.data) for t in inputs]
            outputs[0].data[:] = self.run(*arrays, **self.attrs)
            return True

    class _RangePrune(_Prune):
        name, fields, run = RANGE_PLUGIN_NAME, RANGE_FIELDS, staticmethod(_run_range)

        def width(self) -> int:
            return int(self.attrs["k_div_max"])

    return _Prune, _RangePrune


def extensions() -> list:
    """The ONNX frontend's ConversionExtensions that read both plugin nodes as the ops above (made once)."""
    global _extensions
    if _extensions is None:
        from openvino.frontend.onnx import ConversionExtension

        def converter(op_class):
            def convert(node):
                attrs = {field: int(node.get_attribute(field)) for field in op_class.fields}
                inputs = [node.get_input(i) for i in range(node.get_input_size())]
                return op_class(inputs, attrs).outputs()

            return convert

        _extensions = [ConversionExtension(op.name, PLUGIN_DOMAIN, converter(op)) for op in _op_classes()]
    return _extensions
