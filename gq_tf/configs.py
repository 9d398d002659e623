"""Which layers GQ quantizes, how policies select them, and ``quantize_model``.

All layer knowledge is in ``LAYER_TABLE``: one row per supported layer type
with the weights it quantizes and where they live on the layer. The
QuantizeConfig, the policy checks, codebook extraction and stripping all read
this table; nothing else lists layers.
"""

import logging
import re
import weakref

import tensorflow_model_optimization as tfmot

from gq_tf._keras import check_keras_model, keras
from gq_tf._tfmot import is_wrapper, unwrap
from gq_tf.quantizers import GeneralQuantizer, Uniform, _KernelQuantizer, check_bits

__all__ = [
    "LAYER_TABLE",
    "FLOAT_LAYERS",
    "WEIGHT_NAMES",
    "GQQuantizeConfig",
    "is_qat",
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

    Args:
      quantizers: {logical weight name: quantizer}; weights of the layer not
        named here stay float. Activations and outputs are never quantized.
    """

    def __init__(self, quantizers):
        self.quantizers = dict(quantizers)

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
        return []

    def get_config(self):
        return {
            "quantizers": {
                n: keras.utils.serialize_keras_object(q) for n, q in self.quantizers.items()
            }
        }

    @classmethod
    def from_config(cls, config):
        with quantize_scope():
            return cls(
                {
                    n: keras.utils.deserialize_keras_object(q)
                    for n, q in config["quantizers"].items()
                }
            )

    def __eq__(self, other):
        return isinstance(other, GQQuantizeConfig) and self.quantizers == other.quantizers


class _IdentityLayout:
    """No layout transform: GQ is weight-only, nothing is fused or inserted."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _GQRegistry:
    """Registry for tfmot's output-quantization pass: GQ adds none."""

    def supports(self, layer):
        return False

    def get_quantize_config(self, layer):
        return None


class _GQScheme(_tfq.QuantizeScheme):
    def get_layout_transformer(self):
        return _IdentityLayout()

    def get_quantize_registry(self):
        return _GQRegistry()


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
    """spec -> quantizer | None | {weight name: quantizer | None}."""
    if spec is None or isinstance(spec, _KernelQuantizer):
        return spec
    if isinstance(spec, dict):
        out = {}
        for name, sub in spec.items():
            if name not in WEIGHT_NAMES:
                raise ValueError(
                    f"Expected weight names from {list(WEIGHT_NAMES)} in {where}. "
                    f"Received unknown weight name {name!r}."
                )
            if isinstance(sub, dict):
                raise TypeError(
                    f"Expected an int, gq_tf.GQ, gq_tf.Uniform or None for weight "
                    f"{name!r} in {where}. Received a nested dict."
                )
            out[name] = _normalize_spec(sub, f"{where}[{name!r}]")
        return out
    if isinstance(spec, bool) or not isinstance(spec, int):
        raise TypeError(
            f"Expected a spec (int bits, gq_tf.GQ(...), gq_tf.Uniform(...), None or "
            f"{{weight name: spec}}) for {where}. Received {spec!r} of type "
            f"{type(spec).__name__}."
        )
    return GeneralQuantizer(check_bits(spec, where=where))


def _layer_quantizers(layer, spec, pattern):
    """{weight name: quantizer} for one layer, or {} when it stays float."""
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
      {layer name: {weight name: quantizer}} for the layers that get quantized.

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
    return any(is_wrapper(layer) for layer in model.layers)


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
        | ``gq_tf.Uniform(bits)`` | None | {weight name: spec}.
      strict: if True, a pattern that matches no layer is an error.

    Returns:
      The QAT model: supported layers wrapped in tfmot ``QuantizeWrapperV2``
      with ``GQQuantizeConfig``; float weights copied from ``model``.

    Raises:
      TypeError: Keras 3 models, non-models, malformed policies.
      ValueError: subclassed or unbuilt models, bad bits, unknown weight
        names, unsupported layers selected by a pattern.

    Example:
      >>> qat = gq_tf.quantize_model(model, {"lstm.*": {"kernel": 4, "recurrent_kernel": 2},
      ...                                    "head": gq_tf.Uniform(8), ".*": 5})
    """
    check_keras_model(model)
    if is_qat(model):
        raise ValueError(
            f"Expected a float model. Received model '{model.name}', which is already "
            "quantized; quantize the float model, or use strip_quantization() first."
        )
    plan = resolve_policy(model, policy, strict=strict)

    def annotate(layer):
        if layer.name in plan:
            return _tfq.quantize_annotate_layer(layer, GQQuantizeConfig(plan[layer.name]))
        return layer

    with quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        qat = _tfq.quantize_apply(annotated, _GQScheme())
    _ORIGINS[qat] = {"float_model": model.to_json(), "policy": policy}
    return qat
