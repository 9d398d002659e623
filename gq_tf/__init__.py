"""gq_tf: the General Quantizer (Zhen et al., SLT 2022) for tf_keras + tfmot QAT.

Importing gq_tf sets ``TF_USE_LEGACY_KERAS=1`` (before TensorFlow is imported,
if it was not yet) and exposes tf_keras as ``gq_tf.keras``; build models with it.

Example:
  >>> import gq_tf
  >>> from gq_tf import keras
  >>> qat = gq_tf.quantize_model(model, {"lstm": {"kernel": 4, "recurrent_kernel": 2}, ".*": 5})
  >>> qat.fit(x, y, callbacks=[gq_tf.GQAnnealing(anneal_every=50)])
  >>> books = gq_tf.extract_codebooks(qat)
"""

from gq_tf._keras import keras
from gq_tf.allocation import Allocation, allocate_bits
from gq_tf.annealing import GQAnnealing
from gq_tf.codebooks import Codebook, extract_codebooks, strip_quantization
from gq_tf.configs import (
    GQQuantizeConfig,
    QuantizeScheme,
    Tfmot8Bit,
    quantize_annotate_layer,
    quantize_model,
    quantize_scope,
)
from gq_tf.persistence import load_qat, save_qat
from gq_tf.quantizers import GQ, GeneralQuantizer, Uniform

__version__ = "0.1.0"

__all__ = [
    "keras",
    "quantize_model",
    "GQ",
    "GeneralQuantizer",
    "Uniform",
    "GQAnnealing",
    "Codebook",
    "extract_codebooks",
    "strip_quantization",
    "quantize_scope",
    "quantize_annotate_layer",
    "QuantizeScheme",
    "GQQuantizeConfig",
    "Tfmot8Bit",
    "save_qat",
    "load_qat",
    "allocate_bits",
    "Allocation",
]
