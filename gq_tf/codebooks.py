"""Reading the learned codebooks out of a QAT model, and stripping it to float."""

import dataclasses

import numpy as np

from gq_tf._keras import keras, tf
from gq_tf._tfmot import QuantizeLayer, QuantizeWrapper
from gq_tf.configs import GQQuantizeConfig, quantize_scope
from gq_tf.quantizers import GeneralQuantizer
from gq_tf.reference import packed_nbytes

__all__ = ["Codebook", "QuantizedWeight", "quantized_weights", "extract_codebooks", "strip_quantization",
           "strip_gq", "float_config"]


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


def quantized_weights(qat_model, required=True):
    """Every GQ- or Uniform-quantized kernel of ``qat_model``, in layer order.

    A QAT model nested in another model (e.g. held by a training wrapper
    whose ``train_step`` computes a custom loss) is searched too, so
    ``GQAnnealing`` can drive it through the wrapper's ``fit``.

    Raises:
      ValueError: the model has no gq_tf-quantized layer (unless ``required``
        is False).
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
    if not out and required:
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


_WRAPPERS = ("QuantizeWrapperV2", "QuantizeWrapper")


def _is_ref(item):
    return (isinstance(item, list) and len(item) in (3, 4) and isinstance(item[0], str)
            and isinstance(item[1], int) and isinstance(item[2], int))


def float_config(qat_model):
    """The Keras config of ``qat_model``'s float architecture.

    tfmot's wrappers are replaced by the layers they hold (under their own
    names) and tfmot's input ``QuantizeLayer``s are removed (their readers
    read what they read), so ``Model.from_config`` builds the model the QAT
    model was made from.
    """
    with quantize_scope():
        config = qat_model.get_config()
    entries = config["layers"]
    rename, alias, layers = {}, {}, []
    for entry in entries:
        if entry["class_name"] in _WRAPPERS:
            inner = entry["config"]["layer"]
            name = inner["config"]["name"]
            rename[entry["config"]["name"]] = name
            layer = {k: v for k, v in entry.items() if k not in ("class_name", "config", "module", "registered_name")}
            layer.update({k: v for k, v in inner.items() if k in ("class_name", "config", "module", "registered_name")})
            if "name" in layer:
                layer["name"] = name
            layers.append(layer)
        elif entry["class_name"] == "QuantizeLayer":
            for index, node in enumerate(entry.get("inbound_nodes", [])):
                (ref,) = node  # one input per node
                alias[(entry["config"]["name"], index)] = ref[:3]
        else:
            layers.append(entry)

    def fix(item):
        if _is_ref(item):
            name, node, tensor = item[:3]
            while (name, node) in alias:
                name, node, tensor = alias[(name, node)]
            return [rename.get(name, name), node, tensor] + [fix(x) for x in item[3:]]
        if isinstance(item, list):
            return [fix(x) for x in item]
        if isinstance(item, dict):
            return {k: fix(v) for k, v in item.items()}
        return item

    for layer in layers:
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = fix(layer["inbound_nodes"])
    config = dict(config, layers=layers)
    for key in ("input_layers", "output_layers"):
        if key in config:
            config[key] = fix(config[key])
    return config


def _quantized_pairs(wrapper, target):
    """[(variable of ``target``, the wrapper's float variable it is)] for the
    weights the wrapper's QuantizeConfig quantizes (the same config names the
    same weights on a layer of the same class)."""
    mine = [w for w, _ in wrapper.quantize_config.get_weights_and_quantizers(target)]
    return list(zip(mine, [w for w, _, _ in wrapper._weight_vars]))  # noqa: SLF001


def strip_quantization(qat_model):
    """The original architecture with float weights = the hard-quantized values.

    ``strip_quantization(qat)(x)`` equals ``qat(x, training=False)`` up to
    float32 rounding, and every GQ- or Uniform-quantized weight has at most
    2**bits values. Layers under tfmot's 8-bit scheme get their float
    (latent) weights, and tfmot's input quantization is removed: their
    int8 form is what ``converters.export_tflite`` writes.
    """
    if any(isinstance(layer, QuantizeLayer) for layer in qat_model.layers):
        # A layer to remove: rebuild from the rewired config.
        cls = keras.Sequential if isinstance(qat_model, keras.Sequential) else keras.Model
        with quantize_scope():
            float_model = cls.from_config(float_config(qat_model))
    else:  # one layer for one layer: a clone keeps what a config would not (a Lambda's function)

        def unwrap(layer):
            inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
            return inner.__class__.from_config(inner.get_config())

        with quantize_scope():
            float_model = keras.models.clone_model(qat_model, clone_function=unwrap)
    _copy_weights(qat_model, float_model, qat_model.layers)
    return float_model


def strip_gq(qat_model):
    """``qat_model`` with only its GQ wrappers stripped: the layers they hold,
    with the hard-quantized weights; tfmot's 8-bit wrappers and input
    quantization are kept as they are (the same layer objects).

    Returns:
      (the model, {layer name: (min, max)} of the learned output ranges of GQ
      layers that had one, ``GQQuantizeConfig(output_range=True)``).
    """
    gq = [layer for layer in qat_model.layers
          if isinstance(layer, QuantizeWrapper) and isinstance(layer.quantize_config, GQQuantizeConfig)]
    ids = {id(layer) for layer in gq}

    def clone(layer):
        if id(layer) not in ids:
            return layer
        return layer.layer.__class__.from_config(layer.layer.get_config())

    with quantize_scope():
        model = keras.models.clone_model(qat_model, clone_function=clone)
    _copy_weights(qat_model, model, gq)
    ranges = {}
    for layer in gq:
        if layer.quantize_config.output_range:
            v = layer._output_quantizer_vars  # noqa: SLF001 (tfmot's MovingAverageQuantizer: min_var, max_var)
            ranges[layer.layer.name] = (float(v["min_var"].numpy()), float(v["max_var"].numpy()))
    return model, ranges


def _copy_weights(qat_model, model, layers):
    """Gives the layers of ``model`` named as the inner layers of ``layers`` (of
    ``qat_model``) their weights: GQ and Uniform kernels hard-quantized, the rest float."""
    decoded = {(qw.layer_name, id(qw.variable)): _codebook(qw).decode()
               for qw in quantized_weights(qat_model, required=False)}
    by_name = {layer.name: layer for layer in model.layers}
    for layer in layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        target = by_name.get(inner.name)
        if target is None:
            continue  # tfmot's input QuantizeLayer
        replaced = {}
        if isinstance(layer, QuantizeWrapper):
            # tf_keras stops tracking a variable once tfmot replaces its attribute
            # with the quantized tensor: quantized weights are paired through the
            # config, the rest (biases, norms) by order.
            for mine, theirs in _quantized_pairs(layer, target):
                key = (inner.name, id(theirs))
                replaced[id(mine)] = decoded[key] if key in decoded else theirs.numpy()
        rest = iter(w for w in inner.weights if not any(w is v for v, _, _ in getattr(layer, "_weight_vars", [])))
        for var in target.weights:
            var.assign(replaced[id(var)] if id(var) in replaced else next(rest).numpy())
