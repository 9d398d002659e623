"""tfmot's private names, imported here and nowhere else.

tfmot exports ``QuantizeWrapperV2`` publicly only as a class to build, not
as the base class that every QAT wrapper (V1 and V2) derives from, which is
what a type check needs; the same holds for its input ``QuantizeLayer``, the
pruning and clustering wrappers and ``OutputOnlyConfig``. Their module paths
can move between tfmot releases, so the project imports them in this one
module.
"""

from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as _quantizers
from tensorflow_model_optimization.python.core.quantization.keras.quantize_config import OutputOnlyConfig
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import (
    QuantizeWrapper,
)
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

__all__ = ["QuantizeWrapper", "QuantizeLayer", "OutputOnlyConfig", "PruneLowMagnitude", "ClusterWeights",
           "DEFAULT_8BIT_MODULE", "BUILTIN_QUANTIZERS", "is_wrapper", "unwrap"]

# Where tfmot's default 8-bit scheme keeps its QuantizeConfigs.
DEFAULT_8BIT_MODULE = "tensorflow_model_optimization.python.core.quantization.keras.default_8bit"
# The quantizers tfmot's default 8-bit configs use (exact classes: tfmot's
# collaborative-optimization schemes subclass them).
BUILTIN_QUANTIZERS = (_quantizers.LastValueQuantizer, _quantizers.MovingAverageQuantizer,
                      _quantizers.AllValuesQuantizer)


def is_wrapper(layer) -> bool:
    """True for a layer tfmot's ``quantize_apply`` wrapped."""
    return isinstance(layer, QuantizeWrapper)


def unwrap(layer):
    """The layer a QAT wrapper holds, or ``layer`` itself."""
    return layer.layer if isinstance(layer, QuantizeWrapper) else layer
