"""tfmot's private names, imported here and nowhere else.

tfmot exports ``QuantizeWrapperV2`` publicly only as a class to build, not
as the base class that every QAT wrapper (V1 and V2) derives from, which is
what a type check needs; its module path can move between tfmot releases,
so the project imports it in this one module.
"""

from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import (
    QuantizeWrapper,
)

__all__ = ["QuantizeWrapper", "is_wrapper", "unwrap"]


def is_wrapper(layer) -> bool:
    """True for a layer tfmot's ``quantize_apply`` wrapped."""
    return isinstance(layer, QuantizeWrapper)


def unwrap(layer):
    """The layer a QAT wrapper holds, or ``layer`` itself."""
    return layer.layer if isinstance(layer, QuantizeWrapper) else layer
