"""Reading the learned codebooks out of a QAT model, and stripping it to float."""

import dataclasses

import numpy as np

from gq_tf._keras import keras, tf
from gq_tf._tfmot import QuantizeWrapper
from gq_tf.configs import GQQuantizeConfig, _get_path, quantize_scope, table_row
from gq_tf.quantizers import GeneralQuantizer
from gq_tf.reference import packed_nbytes

__all__ = ["Codebook", "QuantizedWeight", "quantized_weights", "extract_codebooks", "strip_quantization"]


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """One quantized kernel of a QAT model, as tfmot built it."""

    layer_name: str  # the original model's layer name (no "quant_" prefix)
    weight_name: str  # logical name: "kernel", "recurrent_kernel", "query", ...
    variable: tf.Variable  # the float (latent) weight
    quantizer: object  # GeneralQuantizer or Uniform
    qvars: dict  # the quantizer's variables

    @property
    def key(self):
        return f"{self.layer_name}/{self.weight_name}"


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, QuantizeWrapper):
            yield from _flat_layers(layer)
        else:
            yield layer


def quantized_weights(qat_model):
    """Every quantized kernel of ``qat_model``, in layer order.

    A QAT model nested in another model (e.g. held by a training wrapper
    whose ``train_step`` computes a custom loss) is searched too, so
    ``GQAnnealing`` can drive it through the wrapper's ``fit``.

    Raises:
      ValueError: the model has no gq_tf-quantized layer.
    """
    out = []
    for layer in _flat_layers(qat_model):
        if not isinstance(layer, QuantizeWrapper):
            continue
        config = layer.quantize_config
        if not isinstance(config, GQQuantizeConfig):
            continue
        for name, (var, quantizer, qvars) in zip(config.quantizers, layer._weight_vars):
            out.append(QuantizedWeight(layer.layer.name, name, var, quantizer, qvars))
    if not out:
        raise ValueError(
            f"Expected a QAT model made by gq_tf.quantize_model. Received model "
            f"'{qat_model.name}' without gq_tf-quantized layers."
        )
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """The deployed form of one kernel (GQ_SPEC section 4).

    Attributes:
      bits: bit depth b.
      centroids: float32 [2**bits], ascending.
      indices: uint8, the shape of the float weight; ``centroids[indices]``
        is exactly the weight Keras uses at inference.
      method: "gq" or "uniform".
    """

    bits: int
    centroids: np.ndarray
    indices: np.ndarray
    method: str = "gq"

    def decode(self):
        """float32 weight equal to ``centroids[indices]``."""
        return self.centroids[self.indices]

    @property
    def used(self):
        """How many centroids at least one weight uses."""
        return int(np.unique(self.indices).size)

    @property
    def packed_nbytes(self):
        """Bytes of the densely packed indices plus the float32 centroid table."""
        return packed_nbytes(self.indices.size, self.bits) + 4 * self.centroids.size


def _codebook(qw):
    centroids, indices = qw.quantizer.codebook_tensors(tf.convert_to_tensor(qw.variable), qw.qvars)
    method = "gq" if isinstance(qw.quantizer, GeneralQuantizer) else "uniform"
    return Codebook(
        bits=qw.quantizer.bits,
        centroids=np.asarray(centroids, np.float32),
        indices=np.asarray(indices).astype(np.uint8),
        method=method,
    )


def extract_codebooks(qat_model):
    """{"<layer name>/<weight name>": Codebook} of every quantized kernel.

    Layer names are the original model's (not tfmot's ``quant_`` names).

    Example:
      >>> books = gq_tf.extract_codebooks(qat)
      >>> books["dense/kernel"].bits, books["dense/kernel"].decode().shape
    """
    return {qw.key: _codebook(qw) for qw in quantized_weights(qat_model)}


def strip_quantization(qat_model):
    """The original architecture with float weights = the hard-quantized values.

    ``strip_quantization(qat)(x)`` equals ``qat(x, training=False)`` up to
    float32 rounding, and every quantized weight has at most 2**bits values.
    """
    decoded = {id(qw.variable): qw for qw in quantized_weights(qat_model)}

    def unwrap(layer):
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        return inner.__class__.from_config(inner.get_config())

    with quantize_scope():
        float_model = keras.models.clone_model(qat_model, clone_function=unwrap)
    by_name = {layer.name: layer for layer in float_model.layers}
    for layer in qat_model.layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        target = by_name[inner.name]
        # tf_keras stops tracking a variable once tfmot replaces its attribute
        # with the quantized tensor, so quantized weights are found by their
        # table path and the rest (biases, norms) by order.
        replaced = {}
        for qw in decoded.values():
            if qw.layer_name == inner.name:
                var = _get_path(target, table_row(target)[qw.weight_name])
                replaced[id(var)] = _codebook(qw).decode()
        rest = iter(inner.weights)
        for var in target.weights:
            var.assign(replaced[id(var)] if id(var) in replaced else next(rest).numpy())
    return float_model
