"""ONNX export and import for lstmkit (needs the optional extra: ``pip install "lstmkit[onnx]"``).

    export(model, path_or_file, lengths=False, initial_state=False)   lstmkit -> ONNX LSTM nodes
    load(path_or_file)                                                 ONNX -> lstmkit module
    from_onnx_node(node, initializers)                                 one ONNX LSTM node -> module
    ReverseLSTM                                                        ONNX direction="reverse"
    onnx_outputs(module, X, ...)                                       a module run with ONNX's I/O

``import lstmkit`` does not import this package; docs/onnx.md lists, per option, what is
exported natively and what is refused, and where onnxruntime's semantics matter.
"""

try:
    import onnx  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError('lstmkit.onnx needs the optional dependencies onnx and onnxruntime: pip install "lstmkit[onnx]"') from error

from .export import export, to_model
from .load import from_onnx_node, load
from .reverse import ReverseLSTM, flip_time
from .runtime import onnx_outputs

__all__ = ["ReverseLSTM", "export", "flip_time", "from_onnx_node", "load", "onnx_outputs", "to_model"]
