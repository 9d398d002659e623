"""Which layers GQ quantizes, how policies select them, and ``quantize_model``.

All layer knowledge is in ``LAYER_TABLE``: one row per supported layer type
with the weights it quantizes and where they live on the layer. The
QuantizeConfig, the policy checks, codebook extraction and stripping all read
this table; nothing else lists layers.
"""

import functools
import logging
import re
import weakref

import tensorflow_model_optimization as tfmot

from gq_tf._keras import check_keras_model, keras, tf
from gq_tf._tfmot import (
    BUILTIN_QUANTIZERS,
    DEFAULT_8BIT_MODULE,
    ClusterWeights,
    OutputOnlyConfig,
    PruneLowMagnitude,
    QuantizeLayer,
    is_wrapper,
    unwrap,
)
from gq_tf.quantizers import GeneralQuantizer, Uniform, _KernelQuantizer, check_bits

__all__ = [
    "LAYER_TABLE",
    "FLOAT_LAYERS",
    "WEIGHT_NAMES",
    "GQQuantizeConfig",
    "QuantizeScheme",
    "Tfmot8Bit",
    "is_qat",
    "layer_scheme",
    "quantize_annotate_layer",
    "quantize_model",
    "quantize_scope",
    "register_layer",
    "resolve_policy",
    "unwrap_layer",
]

_log = logging.getLogger("gq_tf")
_tfq = tfmot.quantization.keras

L = keras.layers

# layer type -> {logical weight name: attribute path from the layer}
LAYER_TABLE = {
    L.Dense: {"kernel": ("kernel",)},
    L.Conv1D: {"kernel": ("kernel",)},
    L.Conv2D: {"kernel": ("kernel",)},
    L.DepthwiseConv1D: {"depthwise_kernel": ("depthwise_kernel",)},
    L.DepthwiseConv2D: {"depthwise_kernel": ("depthwise_kernel",)},
    L.LSTM: {
        "kernel": ("cell", "kernel"),
        "recurrent_kernel": ("cell", "recurrent_kernel"),
    },
    L.Embedding: {"embeddings": ("embeddings",)},
    L.MultiHeadAttention: {
        "query": ("_query_dense", "kernel"),
        "key": ("_key_dense", "kernel"),
        "value": ("_value_dense", "kernel"),
        "output": ("_output_dense", "kernel"),
    },
}

# Layers whose weights are not kernels (scales, offsets, statistics): they stay
# float when a pattern selects them, silently, like weightless layers.
FLOAT_LAYERS = (L.LayerNormalization, L.BatchNormalization, L.GroupNormalization)

WEIGHT_NAMES = tuple(sorted({n for row in LAYER_TABLE.values() for n in row}))


def table_row(layer):
    """The LAYER_TABLE row of ``layer`` (exact type match), or None.

    Exact types, because subclasses change what the weights mean
    (``Conv1DTranspose`` subclasses ``Conv1D``).
    """
    return LAYER_TABLE.get(type(layer))


def register_layer(cls, base):
    """Lets gq_tf quantize ``cls``, a subclass of ``base`` that keeps ``base``'s weights.

    Exact types are the rule (``table_row``); this is the way to add a
    subclass that only changes the call and keeps its parent's weights where
    the parent keeps them (for example an attention layer with a key/value
    cache for streaming). The subclass is quantized, exported and stripped
    like ``base``.

    Raises:
      TypeError: ``cls`` is not a subclass of ``base``.
      ValueError: ``base`` has no row in ``LAYER_TABLE``.
    """
    if base not in LAYER_TABLE:
        raise ValueError(
            f"Expected a base type with a LAYER_TABLE row ({', '.join(c.__name__ for c in LAYER_TABLE)}). "
            f"Received {getattr(base, '__name__', base)!r}."
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"Expected a subclass of {base.__name__}. Received {cls!r}.")
    LAYER_TABLE[cls] = LAYER_TABLE[base]
    return cls


def _get_path(layer, path):
    obj = layer
    for attr in path:
        obj = getattr(obj, attr)
    return obj


def _set_path(layer, path, value):
    obj = _get_path(layer, path[:-1])
    setattr(obj, path[-1], value)


@keras.utils.register_keras_serializable(package="gq_tf")
class GQQuantizeConfig(_tfq.QuantizeConfig):
    """Weight-only QuantizeConfig driven by LAYER_TABLE.

    Use it with tfmot's own API (``quantize_annotate_layer(layer,
    quantize_config=GQQuantizeConfig(...))``), or through
    ``gq_tf.quantize_annotate_layer(layer, spec)``.

    Args:
      quantizers: {logical weight name: quantizer}; weights of the layer not
        named here stay float. Activations are never quantized.
      output_range: if True, the layer's output gets tfmot's 8-bit output
        quantizer (a learned moving-average range), which a following layer
        under tfmot's 8-bit scheme needs to run as an int8 op.
        ``QuantizeScheme`` sets it on exactly those GQ layers; it is off
        otherwise (GQ is weight-only).
    """

    def __init__(self, quantizers, output_range=False):
        self.quantizers = dict(quantizers)
        self.output_range = bool(output_range)

    def _row(self, layer):
        row = table_row(layer)
        if row is None:
            raise ValueError(
                f"Expected a layer of a type in gq_tf's LAYER_TABLE. Received layer "
                f"'{layer.name}' of class {type(layer).__name__}."
            )
        return row

    def get_weights_and_quantizers(self, layer):
        row = self._row(layer)
        pairs = []
        for name, quantizer in self.quantizers.items():
            # One fresh copy per kernel: the copy carries per-kernel facts.
            q = type(quantizer).from_config(quantizer.get_config())
            q.weight_name = name
            q.source = _get_path(layer, row[name])
            pairs.append((q.source, q))
        return pairs

    def set_quantize_weights(self, layer, quantize_weights):
        row = self._row(layer)
        for name, value in zip(self.quantizers, quantize_weights):
            _set_path(layer, row[name], value)

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.output_range:
            return []
        # What tfmot's default 8-bit scheme puts on a layer's output.
        return [_tfq.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                       narrow_range=False)]

    def get_config(self):
        config = {"quantizers": {n: keras.utils.serialize_keras_object(q) for n, q in self.quantizers.items()}}
        if self.output_range:
            config["output_range"] = True
        return config

    @classmethod
    def from_config(cls, config):
        with quantize_scope():
            return cls(
                {
                    n: keras.utils.deserialize_keras_object(q)
                    for n, q in config["quantizers"].items()
                },
                output_range=config.get("output_range", False),
            )

    def __eq__(self, other):
        return (isinstance(other, GQQuantizeConfig) and self.quantizers == other.quantizers
                and self.output_range == other.output_range)


class Tfmot8Bit:
    """Policy spec: tfmot's default 8-bit QAT for a layer (weights and activations).

    A layer a policy maps to ``Tfmot8Bit()`` is annotated with tfmot's own
    default 8-bit QuantizeConfig, as ``tfmot.quantization.keras.
    quantize_annotate_layer(layer)`` would; ``export_tflite`` turns it into
    what the TFLite converter makes of tfmot QAT (int8 builtin ops with the
    learned ranges). It applies to whole layers, not to single weights.

    Example:
      >>> qat = gq_tf.quantize_model(model, {"lstm.*": 4, "head": gq_tf.Tfmot8Bit(), ".*": None})
    """

    def __eq__(self, other):
        return isinstance(other, Tfmot8Bit)

    def __hash__(self):
        return hash(Tfmot8Bit)

    def __repr__(self):
        return "Tfmot8Bit()"


def _consumers(model):
    """{layer name: names of the layers that read its outputs}."""
    out = {}
    for layer in model.layers:
        for node in layer._outbound_nodes:  # noqa: SLF001 (tfmot reads the same)
            out.setdefault(layer.name, set()).add(node.outbound_layer.name)
    return out


class _MixedLayout:
    """GQ layers as they are; tfmot's default 8-bit layout transform for the rest.

    tfmot's transform (input QuantizeLayers, fusions) sees only the layers
    annotated for its 8-bit scheme and the model inputs that feed them, so a
    GQ layer is never fused and an input that only GQ layers read is not
    quantized. A GQ layer whose output an 8-bit layer reads gets an output
    range (``GQQuantizeConfig(output_range=True)``), so that layer's input
    has the learned range an int8 op needs (not for attention and layers with
    several outputs, whose outputs tfmot's wrapper cannot quantize: the 8-bit
    layer after them is exported with int8 weights and dynamic-range inputs).
    """

    def __init__(self, scheme):
        self._scheme = scheme

    def apply(self, model, layer_quantize_map):
        gq = {n: e for n, e in layer_quantize_map.items() if isinstance(e.get("quantize_config"), GQQuantizeConfig)}
        inputs = {layer.name for layer in model._input_layers}  # noqa: SLF001
        int8 = {n for n in layer_quantize_map if n not in gq and n not in inputs}
        consumers = _consumers(model)
        self._scheme._int8, self._scheme._consumers = set(), consumers
        if not int8:
            return model, gq
        rest = {n: e for n, e in layer_quantize_map.items()
                if n in int8 or (n in inputs and consumers.get(n, set()) & int8)}
        model, rest = self._scheme._default.get_layout_transformer().apply(model, rest)
        self._scheme._int8 = {n for n in rest if n not in inputs}
        self._scheme._consumers = _consumers(model)
        out = dict(rest)
        layers = {layer.name: layer for layer in model.layers}
        for name, entry in gq.items():
            config = entry["quantize_config"]
            if (self._scheme._consumers.get(name, set()) & self._scheme._int8 and not config.output_range
                    and _one_output(layers[name])):
                config = GQQuantizeConfig(config.quantizers, output_range=True)
            out[name] = {**entry, "quantize_config": config}
        return model, out


def _one_output(layer):
    """True if tfmot's wrapper can quantize the layer's output: one tensor, and a
    ``compute_output_shape`` of the input shape alone (attention needs the value's)."""
    if isinstance(layer, L.MultiHeadAttention) or not layer._inbound_nodes:  # noqa: SLF001
        return False
    return len(tf.nest.flatten(layer._inbound_nodes[0].outputs)) == 1  # noqa: SLF001


class _MixedRegistry:
    """tfmot's 8-bit registry, asked only about 8-bit layers and the layers that feed them."""

    def __init__(self, scheme):
        self._scheme = scheme
        self._default = scheme._default.get_quantize_registry()

    def supports(self, layer):
        s = self._scheme
        if layer.name in s._int8 or s._consumers.get(layer.name, set()) & s._int8:
            return self._default.supports(layer)
        return False  # feeds GQ layers only: no output quantization (GQ is weight-only)

    def get_quantize_config(self, layer):
        return self._default.get_quantize_config(layer)


class QuantizeScheme(_tfq.QuantizeScheme):
    """tfmot QuantizeScheme for models with GQ layers, alone or mixed with tfmot's 8-bit scheme.

    GQ layers (``GQQuantizeConfig``) are quantized weight-only, nothing fused
    or inserted around them; layers annotated for tfmot's default 8-bit
    scheme (``quantize_annotate_layer(layer)`` without a config, or
    ``gq_tf.Tfmot8Bit()`` in a policy) get exactly that scheme, with input
    quantization and output ranges where they border float or GQ layers.

    Example:
      >>> with gq_tf.quantize_scope():
      ...     qat = tfmot.quantization.keras.quantize_apply(annotated, gq_tf.QuantizeScheme())
    """

    def __init__(self):
        self._default = _tfq.default_8bit.Default8BitQuantizeScheme()
        self._int8, self._consumers = set(), {}

    def get_layout_transformer(self):
        return _MixedLayout(self)

    def get_quantize_registry(self):
        return _MixedRegistry(self)


def _default_8bit_config(config):
    """True for a QuantizeConfig of tfmot's default 8-bit scheme (or its output-only form)."""
    if isinstance(config, OutputOnlyConfig):
        config = config.quantize_config
    return type(config).__module__.startswith(DEFAULT_8BIT_MODULE)


def layer_scheme(layer):
    """How a layer of a QAT model is quantized: "gq", "tfmot8", "input" or None (float).

    "tfmot8" is tfmot's default 8-bit scheme (weights and activations),
    "input" tfmot's input ``QuantizeLayer``.

    Raises:
      ValueError: a tfmot wrapper gq_tf cannot deploy (pruning, clustering,
        tfmot's experimental and collaborative-optimization schemes, a custom
        QuantizeConfig), naming the layer and what to do.
    """
    name = getattr(layer, "name", "?")
    if isinstance(layer, PruneLowMagnitude):
        raise ValueError(
            f"Expected a QAT model of gq_tf and tfmot's default 8-bit layers. Received layer '{name}' wrapped in "
            "tfmot's pruning wrapper PruneLowMagnitude: strip it first (tfmot.sparsity.keras.strip_pruning), then "
            "quantize the pruned float model.")
    if isinstance(layer, ClusterWeights):
        raise ValueError(
            f"Expected a QAT model of gq_tf and tfmot's default 8-bit layers. Received layer '{name}' wrapped in "
            f"tfmot's clustering wrapper {type(layer).__name__}: GQ learns its own codebooks; strip the clustering "
            "(tfmot.clustering.keras.strip_clustering) and quantize the float model with gq_tf.")
    if isinstance(layer, QuantizeLayer):
        bits = getattr(layer.quantizer, "num_bits", None)
        if type(layer.quantizer) not in BUILTIN_QUANTIZERS or bits != 8:
            raise ValueError(
                f"Expected tfmot's 8-bit input quantization on QuantizeLayer '{name}'. Received "
                f"{type(layer.quantizer).__name__} with num_bits={bits} (an experimental tfmot scheme): "
                "gq_tf deploys its own layers and tfmot's default 8-bit scheme only.")
        return "input"
    if not is_wrapper(layer):
        return None
    config = layer.quantize_config
    if isinstance(config, GQQuantizeConfig):
        return "gq"
    if not _default_8bit_config(config):
        raise ValueError(
            f"Expected GQQuantizeConfig or a QuantizeConfig of tfmot's default 8-bit scheme on every quantized "
            f"layer. Received layer '{layer.layer.name}' with {type(config).__module__}.{type(config).__name__}: "
            "gq_tf deploys its own layers and tfmot's default 8-bit ones, not tfmot's experimental schemes or "
            "custom QuantizeConfigs; use gq_tf.Tfmot8Bit() or a GQ spec for it.")
    used = [q for _, q, _ in getattr(layer, "_weight_vars", [])]
    used += [a.quantizer for a in getattr(layer, "_quantize_activations", [])]
    used += list(getattr(layer, "_output_quantizers", []) or [])
    for q in used:
        if type(q) not in BUILTIN_QUANTIZERS or getattr(q, "num_bits", 8) != 8:
            raise ValueError(
                f"Expected tfmot's default 8-bit quantizers on layer '{layer.layer.name}'. Received "
                f"{type(q).__name__} (num_bits={getattr(q, 'num_bits', '?')}), from one of tfmot's collaborative-"
                "optimization or experimental schemes, which gq_tf does not deploy; quantize the layer with "
                "gq_tf.Tfmot8Bit() or a GQ spec.")
    return "tfmot8"


def quantize_scope(*args):
    """Scope with gq_tf's and tfmot's custom objects, for loading and cloning.

    Args:
      *args: extra ``{name: object}`` dicts of the user's own custom objects.
    """
    objects = {
        "GQQuantizeConfig": GQQuantizeConfig,
        "GeneralQuantizer": GeneralQuantizer,
        "Uniform": Uniform,
    }
    for extra in args:
        objects.update(extra)
    return _tfq.quantize_scope(objects)


# ---------------------------------------------------------------------------
# Policies


def _normalize_spec(spec, where):
    """spec -> quantizer | None | Tfmot8Bit | {weight name: quantizer | None}."""
    if spec is None or isinstance(spec, (_KernelQuantizer, Tfmot8Bit)):
        return spec
    if isinstance(spec, dict):
        out = {}
        for name, sub in spec.items():
            if name not in WEIGHT_NAMES:
                raise ValueError(
                    f"Expected weight names from {list(WEIGHT_NAMES)} in {where}. "
                    f"Received unknown weight name {name!r}."
                )
            if isinstance(sub, Tfmot8Bit):
                raise TypeError(
                    f"Expected Tfmot8Bit() for a whole layer in {where}. Received it for weight {name!r}: "
                    "tfmot's 8-bit scheme quantizes a layer's weights and activations together.")
            if isinstance(sub, dict):
                raise TypeError(
                    f"Expected an int, gq_tf.GQ, gq_tf.Uniform or None for weight "
                    f"{name!r} in {where}. Received a nested dict."
                )
            out[name] = _normalize_spec(sub, f"{where}[{name!r}]")
        return out
    if isinstance(spec, bool) or not isinstance(spec, int):
        raise TypeError(
            f"Expected a spec (int bits, gq_tf.GQ(...), gq_tf.Uniform(...), gq_tf.Tfmot8Bit(), None or "
            f"{{weight name: spec}}) for {where}. Received {spec!r} of type "
            f"{type(spec).__name__}."
        )
    return GeneralQuantizer(check_bits(spec, where=where))


@functools.lru_cache(maxsize=1)
def _default_8bit_registry():
    return _tfq.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()


def _tfmot8_supports(layer):
    return _default_8bit_registry().supports(layer)


def _layer_quantizers(layer, spec, pattern):
    """{weight name: quantizer} for one layer, Tfmot8Bit, or {} when it stays float."""
    if isinstance(spec, Tfmot8Bit):
        if not _tfmot8_supports(layer):
            raise ValueError(
                f"Policy pattern {pattern!r} maps layer '{layer.name}' of class {type(layer).__name__} to "
                "Tfmot8Bit(), but tfmot's default 8-bit scheme has no QuantizeConfig for that class. Give it a "
                f"GQ spec or None, or annotate it yourself with a tfmot QuantizeConfig.")
        return spec
    row = table_row(layer)
    if row is None:
        if not layer.weights or isinstance(layer, FLOAT_LAYERS) or spec is None:
            return {}
        raise ValueError(
            f"Policy pattern {pattern!r} selects layer '{layer.name}' of class "
            f"{type(layer).__name__}, which gq_tf cannot quantize (supported: "
            f"{', '.join(c.__name__ for c in LAYER_TABLE)}). Map it to None with a "
            f"pattern placed before {pattern!r}, e.g. {{'{re.escape(layer.name)}': None}}."
        )
    if spec is None:
        return {}
    if isinstance(spec, dict):
        unknown = [n for n in spec if n not in row]
        if unknown:
            raise ValueError(
                f"Expected weight names of {type(layer).__name__} {list(row)} for layer "
                f"'{layer.name}' (pattern {pattern!r}). Received {unknown}."
            )
        return {n: q for n, q in spec.items() if q is not None}
    return {n: spec for n in row}


def resolve_policy(model, policy, strict=False):
    """Maps every layer of ``model`` to its quantizers under ``policy``.

    Args:
      model: a built tf_keras Sequential/Functional model.
      policy: int bits (GQ on every supported weight) or {regex: spec}, where
        ``re.fullmatch`` is tried on each layer name and the first match wins.
      strict: if True, every pattern must match at least one layer.

    Returns:
      {layer name: {weight name: quantizer} or Tfmot8Bit()} for the layers
      that get quantized.

    Raises:
      TypeError, ValueError: for malformed policies and unsupported selections.
    """
    if isinstance(policy, dict):
        if not policy:
            raise ValueError("Expected a non-empty policy dict. Received {}.")
        rules = []
        for pattern, spec in policy.items():
            if not isinstance(pattern, str):
                raise TypeError(
                    f"Expected regex strings as policy keys. Received {pattern!r} "
                    f"of type {type(pattern).__name__}."
                )
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise ValueError(f"Expected a valid regex as policy key. Received {pattern!r}: {err}.") from None
            rules.append((pattern, regex, _normalize_spec(spec, f"policy[{pattern!r}]")))
    elif isinstance(policy, int) and not isinstance(policy, bool):
        rules = None
        everything = _normalize_spec(policy, "policy")
    else:
        raise TypeError(
            f"Expected a policy that is an int (bits) or a dict {{regex: spec}}. "
            f"Received {policy!r} of type {type(policy).__name__}."
        )

    plan, used, skipped = {}, set(), []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Expected a flat model. Received nested model '{layer.name}' inside "
                f"'{model.name}'; quantize the inner model on its own or flatten it."
            )
        if rules is None:
            if table_row(layer) is None:
                if layer.weights and not isinstance(layer, FLOAT_LAYERS):
                    skipped.append(f"{layer.name} ({type(layer).__name__})")
                continue
            quantizers = _layer_quantizers(layer, everything, "<int policy>")
        else:
            match = next(((p, s) for p, r, s in rules if r.fullmatch(layer.name)), None)
            if match is None:
                continue
            used.add(match[0])
            quantizers = _layer_quantizers(layer, match[1], match[0])
        if quantizers:
            plan[layer.name] = quantizers
    if skipped:
        _log.warning("gq_tf: policy %r leaves unsupported layers float: %s", policy, ", ".join(skipped))
    if rules is not None:
        unused = [p for p, _, _ in rules if p not in used]
        if unused and strict:
            names = [layer.name for layer in model.layers]
            raise ValueError(
                f"Expected every policy pattern to match a layer (strict=True). "
                f"Received patterns matching nothing: {unused}. Layer names: {names}."
            )
        if unused:
            _log.warning("gq_tf: policy patterns match no layer: %s", unused)
    if not plan:
        raise ValueError(
            f"Expected the policy to select at least one quantizable weight. Received "
            f"policy {policy!r}, which selects none of the layers "
            f"{[layer.name for layer in model.layers]}."
        )
    return plan


# The policy and float architecture behind each QAT model, for save/load.
_ORIGINS = weakref.WeakKeyDictionary()


def is_qat(model) -> bool:
    """True for a QAT model: one that ``quantize_model`` (or tfmot's
    ``quantize_apply``) made, whose layers are tfmot quantize wrappers."""
    return any(is_wrapper(layer) or isinstance(layer, QuantizeLayer) for layer in model.layers)


def unwrap_layer(layer):
    """The layer a QAT wrapper holds (``layer`` itself when it is not one)."""
    return unwrap(layer)


def quantize_model(model, policy, *, strict=False):
    """Float tf_keras model -> GQ QAT model, through tfmot's ``quantize_apply``.

    Args:
      model: a built tf_keras Sequential or Functional model (not modified).
      policy: ``int`` bits for GQ on every supported weight, or
        ``{regex: spec}`` (``re.fullmatch`` on layer names, first match wins,
        unmatched layers stay float). spec: int | ``gq_tf.GQ(bits, **options)``
        | ``gq_tf.Uniform(bits)`` | ``gq_tf.Tfmot8Bit()`` (tfmot's default
        8-bit QAT for the layer) | None | {weight name: spec}.
      strict: if True, a pattern that matches no layer is an error.

    Returns:
      The QAT model: selected layers wrapped in tfmot ``QuantizeWrapperV2``
      with ``GQQuantizeConfig`` (or tfmot's 8-bit config for ``Tfmot8Bit``),
      made by tfmot's ``quantize_apply`` with ``gq_tf.QuantizeScheme``;
      float weights copied from ``model``.

    Raises:
      TypeError: Keras 3 models, non-models, malformed policies.
      ValueError: subclassed or unbuilt models, bad bits, unknown weight
        names, unsupported layers selected by a pattern.

    Example:
      >>> qat = gq_tf.quantize_model(model, {"lstm.*": {"kernel": 4, "recurrent_kernel": 2},
      ...                                    "head": gq_tf.Uniform(8), ".*": 5})
    """
    return _quantize(model, policy, strict=strict, scheme="gq")


SCHEMES = ("gq", "tfmot")  # gq_tf.QuantizeScheme, tfmot's default 8-bit scheme


def _quantize(model, policy, *, strict=False, scheme="gq"):
    """``quantize_model`` under ``scheme`` (``SCHEMES``): "tfmot" rebuilds a model
    a user made with tfmot's own ``quantize_apply(model)`` (``load_qat``)."""
    check_keras_model(model)
    if is_qat(model):
        raise ValueError(
            f"Expected a float model. Received model '{model.name}', which is already "
            "quantized; quantize the float model, or use strip_quantization() first."
        )
    plan = resolve_policy(model, policy, strict=strict)

    def annotate(layer):
        if layer.name in plan:
            return _annotate(layer, plan[layer.name])
        return layer

    with quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        qat = _tfq.quantize_apply(annotated, QuantizeScheme()) if scheme == "gq" else _tfq.quantize_apply(annotated)
    _ORIGINS[qat] = {"float_model": model.to_json(), "policy": policy, "scheme": scheme}
    return qat


def _annotate(layer, quantizers):
    if isinstance(quantizers, Tfmot8Bit):
        return _tfq.quantize_annotate_layer(layer)  # tfmot's registry picks its 8-bit config
    return _tfq.quantize_annotate_layer(layer, GQQuantizeConfig(quantizers))


def quantize_annotate_layer(layer, spec):
    """tfmot's ``quantize_annotate_layer`` for a GQ spec, as policies write them.

    Args:
      layer: a tf_keras layer of a type in ``LAYER_TABLE`` (any type tfmot's
        8-bit scheme supports for ``Tfmot8Bit()``).
      spec: int bits | ``gq_tf.GQ(...)`` | ``gq_tf.Uniform(...)`` |
        ``gq_tf.Tfmot8Bit()`` | {weight name: spec}.

    Returns:
      tfmot's ``QuantizeAnnotate`` wrapper: call it in the functional model,
      then ``tfmot.quantization.keras.quantize_apply(model,
      gq_tf.QuantizeScheme())`` inside ``gq_tf.quantize_scope()``. (tfmot's
      wrapper passes only its first positional input on: call an attention
      layer as ``layer(query, value=value)``.)

    Example:
      >>> x = gq_tf.quantize_annotate_layer(keras.layers.Dense(32), 3)(x)
      >>> x = tfmot.quantization.keras.quantize_annotate_layer(keras.layers.Dense(16))(x)  # 8-bit
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"Expected a tf_keras layer. Received {layer!r} of type {type(layer).__name__}.")
    if spec is None:
        raise ValueError(f"Expected a spec that quantizes layer '{layer.name}'. Received None: leave the layer "
                         "unannotated to keep it float.")
    spec = _normalize_spec(spec, f"the spec of layer '{layer.name}'")
    if table_row(layer) is None and not isinstance(spec, Tfmot8Bit):
        raise ValueError(
            f"Expected a layer gq_tf can quantize ({', '.join(c.__name__ for c in LAYER_TABLE)}). Received layer "
            f"'{layer.name}' of class {type(layer).__name__}: give it gq_tf.Tfmot8Bit() or leave it float.")
    quantizers = _layer_quantizers(layer, spec, "<quantize_annotate_layer>")
    if not quantizers:
        raise ValueError(f"Expected a spec that quantizes at least one weight of layer '{layer.name}'. "
                         f"Received {spec!r}.")
    return _annotate(layer, quantizers)
