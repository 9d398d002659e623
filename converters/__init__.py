"""converters: gq_tf QAT models to .tflite with packed GQ custom ops, and running them.

``export_tflite`` writes the file (``GQ_FULLY_CONNECTED`` custom ops with
packed b-bit weights, layout in ``converters.layout``); ``make_interpreter``
opens it in LiteRT or ``tf.lite`` with the project's delegate library
(``delegate_path()``), which runs the custom ops with its C kernels, after
``check_model`` has checked the model's structure (it refuses models that
would crash a runtime, e.g. a graph input that names a constant).

Example:
  >>> import converters
  >>> report = converters.export_tflite(qat, "model.tflite")
  >>> interpreter = converters.make_interpreter("model.tflite")
"""

import importlib

# Names resolve on first use: ``import converters`` stays light, and each
# module (``export`` and ``runtime`` pull in TensorFlow or LiteRT) loads when
# a name from it is first used.
_WHERE = {
    "export_tflite": "converters.export",
    "export_baseline": "converters.export",
    "deployed_sizes": "converters.export",
    "ExportReport": "converters.export",
    "KernelRow": "converters.export",
    "NotPackedWarning": "converters.export",
    "delegate_path": "converters.runtime",
    "make_interpreter": "converters.runtime",
    "check_model": "converters.modelcheck",
}

__all__ = [
    "export_tflite",
    "export_baseline",
    "deployed_sizes",
    "ExportReport",
    "KernelRow",
    "NotPackedWarning",
    "delegate_path",
    "make_interpreter",
    "check_model",
]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
