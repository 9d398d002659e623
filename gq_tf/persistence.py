"""Saving and restoring QAT models: float architecture + policy + TF checkpoint.

tfmot wrappers with custom quantizers do not round-trip through ``.keras``,
``.h5`` or SavedModel (see FINDINGS.md), so a saved QAT model is a directory:

    gq_model.json        {"format": "gq_tf.qat/1", "float_model": <model JSON>,
                          "policy": <serialized policy>, "scheme": "gq" | "tfmot"}
    weights.index, weights.data-*   TF checkpoint of every QAT variable: float
                          weights, centroids, scales, annealing state.

``load_qat`` rebuilds the float architecture, re-applies the policy and
restores the checkpoint, so outputs and annealing state are identical.

A model made with tfmot's own API (``quantize_annotate_layer`` +
``quantize_apply``, with ``gq_tf.QuantizeScheme`` or tfmot's default 8-bit
scheme) has no policy: ``save_qat`` reads one off its wrappers (each layer's
GQ quantizers or ``Tfmot8Bit()``), and the scheme ("scheme"; absent in older
files: "gq") under which re-applying it rebuilds exactly that model, which it
checks before writing anything.
"""

import json
import os
import re
import shutil

from gq_tf._keras import keras, tf
from gq_tf._tfmot import OutputOnlyConfig, unwrap
from gq_tf.codebooks import strip_quantization
from gq_tf.configs import _ORIGINS, SCHEMES, Tfmot8Bit, _quantize, layer_scheme, quantize_scope
from gq_tf.quantizers import _KernelQuantizer

__all__ = ["save_qat", "load_qat"]

FORMAT = "gq_tf.qat/1"
_META = "gq_model.json"
_WEIGHTS = "weights"


def _spec_to_json(spec):
    if isinstance(spec, Tfmot8Bit):
        return {"tfmot8bit": True}
    if isinstance(spec, _KernelQuantizer):
        return {"quantizer": keras.utils.serialize_keras_object(spec)}
    if isinstance(spec, dict):
        return {"weights": {k: _spec_to_json(v) for k, v in spec.items()}}
    return spec  # int or None


def _spec_from_json(obj):
    if isinstance(obj, dict) and obj.get("tfmot8bit") is True:
        return Tfmot8Bit()
    if isinstance(obj, dict) and "quantizer" in obj:
        with quantize_scope():
            return keras.utils.deserialize_keras_object(obj["quantizer"])
    if isinstance(obj, dict) and "weights" in obj:
        return {k: _spec_from_json(v) for k, v in obj["weights"].items()}
    return obj


def policy_to_json(policy):
    """A policy as JSON-able data (ordered list of [pattern, spec])."""
    if isinstance(policy, dict):
        return {"rules": [[p, _spec_to_json(s)] for p, s in policy.items()]}
    return {"bits": policy}


def policy_from_json(obj):
    """Inverse of ``policy_to_json``."""
    if "rules" in obj:
        return {p: _spec_from_json(s) for p, s in obj["rules"]}
    return obj["bits"]


def _signature(model):
    """What must be equal for a checkpoint of one QAT model to fit another."""
    out = []
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        out.append((type(layer).__name__, unwrap(layer).name if config is not None else None,
                    type(config).__name__, getattr(config, "output_range", None),
                    len(getattr(layer, "_weight_vars", []))))
    return [row for row in out if row[0] not in ("InputLayer", "QuantizeLayer")] + [
        sum(row[0] == "QuantizeLayer" for row in out)]


def _origin_of(qat_model):
    """{"float_model", "policy", "scheme"} read off a QAT model made with tfmot's
    API, checked by rebuilding it."""
    policy = {}
    for layer in qat_model.layers:
        kind = layer_scheme(layer)  # raises for wrappers gq_tf cannot rebuild
        if kind == "gq":
            policy[re.escape(layer.layer.name)] = dict(layer.quantize_config.quantizers)
        elif kind == "tfmot8" and not isinstance(layer.quantize_config, OutputOnlyConfig):
            policy[re.escape(layer.layer.name)] = Tfmot8Bit()
    if not any(isinstance(spec, dict) for spec in policy.values()):
        raise ValueError(
            f"Expected a QAT model with gq_tf layers, made by gq_tf.quantize_model, load_qat or tfmot's quantize_apply "
            f"on GQ annotations. Received model '{qat_model.name}' without any"
            + (" (a plain tfmot QAT model: save it with Keras, model.save inside "
               "tfmot.quantization.keras.quantize_scope())." if policy else "."))
    float_model = strip_quantization(qat_model)
    want = _signature(qat_model)
    for scheme in SCHEMES:
        if _signature(_quantize(float_model, policy, scheme=scheme)) == want:
            return {"float_model": float_model.to_json(), "policy": policy, "scheme": scheme}
    raise ValueError(
        f"Expected a QAT model gq_tf can rebuild from a policy (GQ and tfmot's default 8-bit layers, applied with "
        f"gq_tf.QuantizeScheme or tfmot's default scheme). Received model '{qat_model.name}', which re-applying its "
        "layers' quantizers under either scheme does not reproduce (e.g. a hand-set output_range or tfmot "
        "QuantizeConfig options): save it with model.save_weights and rebuild it in code.")


def save_qat(qat_model, directory):
    """Saves a QAT model to ``directory``.

    The model comes from ``gq_tf.quantize_model`` or ``load_qat``, or from
    tfmot's ``quantize_apply`` on a model annotated with GQ configs and tfmot's
    default 8-bit scheme (see the module docstring). Writes to a temporary
    directory and renames it into place, so an interrupted save never leaves
    a half-written model where a good one was.

    Raises:
      ValueError: a model gq_tf cannot rebuild (layers of other tfmot schemes or
        wrappers, custom QuantizeConfigs); nothing is written.
    """
    origin = _ORIGINS.get(qat_model)
    if origin is None:
        origin = _origin_of(qat_model)
        _ORIGINS[qat_model] = origin
    directory = os.fspath(directory)
    tmp = directory.rstrip("/") + ".tmp-saving"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    qat_model.save_weights(os.path.join(tmp, _WEIGHTS), save_format="tf")
    meta = {"format": FORMAT, "float_model": json.loads(origin["float_model"]),
            "policy": policy_to_json(origin["policy"]), "scheme": origin.get("scheme", "gq")}
    with open(os.path.join(tmp, _META), "w") as f:
        json.dump(meta, f, indent=1)
    if os.path.exists(directory):
        old = directory.rstrip("/") + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:
        os.rename(tmp, directory)


def _read_meta(meta_path):
    """The JSON save_qat wrote, checked for its format and keys."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"Expected {meta_path} to hold the JSON gq_tf.save_qat writes. Received a file that does not "
            f"parse ({e}): it is truncated or damaged; save the model again."
        ) from e
    if not isinstance(meta, dict):
        raise ValueError(f"Expected a JSON object in {meta_path}. Received a JSON {type(meta).__name__}.")
    if meta.get("format") != FORMAT:
        raise ValueError(f"Expected format {FORMAT!r} in {meta_path}. Received {meta.get('format')!r}.")
    missing = [k for k in ("float_model", "policy") if k not in meta]
    if missing:
        raise ValueError(f"Expected keys 'float_model' and 'policy' in {meta_path}. Received keys {sorted(meta)}.")
    return meta


def _check_graph(model_config, where):
    """Refuses a functional model config whose layers Keras could never connect.

    Keras rebuilds a functional model by creating each layer's nodes once the
    nodes they read exist, and loops until all are made: a node that reads
    one that is never made (a deleted or renumbered inbound node) made it loop
    forever (tests/support/fuzz_entry.py's qat target). This replays that
    order on the config alone and names the first node that cannot be made.
    Nested functional models are checked too; anything else is Keras's to judge.
    """
    if not isinstance(model_config, dict) or model_config.get("class_name") not in ("Functional", "Model"):
        return
    config = model_config.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return  # Keras's own errors say what is wrong with the list
    made, pending = {}, []
    for layer in layers:
        name = layer.get("name", layer.get("config", {}).get("name") if isinstance(layer.get("config"), dict) else None)
        nodes = layer.get("inbound_nodes")
        if isinstance(nodes, (dict, str)):
            nodes = list(nodes)  # what Keras iterates: a dict's keys ({}: no node at all), a string's characters
        if not isinstance(name, str) or not isinstance(nodes, list):
            return
        _check_graph(layer, f"layer {name!r} of {where}")
        made[name] = 1 if layer.get("class_name") == "InputLayer" else 0
        pending.append((name, list(nodes)))

    def is_ref(item):  # what Keras reads as a reference (tf_utils' "serialized node data")
        return isinstance(item, list) and len(item) in (3, 4) and isinstance(item[0], str)

    def index_of(ref):  # a node index, or None for one Keras can never find (a string, -1, ...)
        return ref[1] if isinstance(ref[1], int) and not isinstance(ref[1], bool) and ref[1] >= 0 else None

    def reads(node):
        """(layer, node index) pairs a node reads (its inputs and the tensors in their
        keyword arguments, as Keras waits for both), or None when its format is not one checked."""
        refs = []

        def walk(item, in_kwargs):
            if is_ref(item):
                if item[0] != "_CONSTANT_VALUE":
                    refs.append((item[0], index_of(item), item[1]))
                if len(item) == 4 and not in_kwargs:
                    return walk(item[3], True)
                return True
            if isinstance(item, (list, tuple)):
                return all(walk(x, in_kwargs) for x in item)
            if isinstance(item, dict):
                return all(walk(x, in_kwargs) for x in item.values())
            return in_kwargs  # plain values are fine as keyword arguments, not as inputs

        return refs if isinstance(node, list) and walk(node, False) else None

    progress = True
    while progress and any(nodes for _, nodes in pending):
        progress = False
        for name, nodes in pending:
            while nodes:
                refs = reads(nodes[0])
                if refs is None:
                    return
                missing = [ref for ref in refs if ref[1] is None or made.get(ref[0], 0) <= ref[1]]
                if missing:
                    break
                nodes.pop(0)
                made[name] += 1
                progress = True
    for name, nodes in pending:
        if nodes:
            layer, index, raw = next(ref for ref in reads(nodes[0]) if ref[1] is None or made.get(ref[0], 0) <= ref[1])
            received = (f"layer {layer!r}, which the model does not have" if layer not in made
                        else f"node {raw!r} of layer {layer!r}, which is not a node index" if index is None
                        else f"node {index} of layer {layer!r}, which has {made[layer]} node(s)")
            raise ValueError(f"Expected every inbound node of {where} to read a node that is built. Received: "
                             f"layer {name!r} reads {received}.")


def load_qat(directory, custom_objects=None):
    """Restores a QAT model saved by ``save_qat``.

    Args:
      directory: the directory ``save_qat`` wrote.
      custom_objects: the user's own custom layers/objects, if any.

    Returns:
      The QAT model with every weight and the annealing state restored.

    Raises:
      FileNotFoundError: ``gq_model.json`` or the weights checkpoint is missing.
      ValueError: a damaged or foreign file (not JSON, another format, a
        float model Keras cannot build, a policy that does not fit it, a
        truncated, altered or foreign weights checkpoint); the message names
        the file.
    """
    directory = os.fspath(directory)
    meta_path = os.path.join(directory, _META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(
            f"Expected a directory written by gq_tf.save_qat containing {_META}. "
            f"Received {directory!r}, which has no {_META}."
        )
    meta = _read_meta(meta_path)
    _check_graph(meta.get("float_model"), f"'float_model' in {meta_path}")
    try:
        with quantize_scope(custom_objects or {}):
            model = keras.models.model_from_json(json.dumps(meta["float_model"]))
    # Keras rebuilding a damaged config fails in many ways (tests/support/fuzz_entry.py's
    # qat target met these besides the first four: an unbound local in its node
    # reconstruction, a failed assertion, an initializer seed TensorFlow rejects).
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NameError, AssertionError,
            tf.errors.OpError) as e:
        raise ValueError(
            f"Expected a Keras model config under 'float_model' in {meta_path}. Received one Keras cannot "
            f"build: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a Keras model config under 'float_model' in {meta_path}. Received one that Keras "
            f"builds into a {type(model).__name__}, not a model."
        )
    try:
        policy = policy_from_json(meta["policy"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(
            f"Expected a policy as save_qat writes it under 'policy' in {meta_path} "
            f"({{\"rules\": [[pattern, spec], ...]}} or {{\"bits\": n}}). Received "
            f"{json.dumps(meta['policy'])[:200]} ({type(e).__name__}: {e})."
        ) from e
    scheme = meta.get("scheme", "gq")
    if scheme not in SCHEMES:
        raise ValueError(f"Expected 'scheme' in {meta_path} to be one of {list(SCHEMES)}. Received {scheme!r}.")
    try:
        qat = _quantize(model, policy, scheme=scheme)
    except (ValueError, TypeError) as e:
        raise ValueError(f"Expected the policy in {meta_path} to fit its float model. Received: {e}") from e
    weights = os.path.join(directory, _WEIGHTS)
    shards = [f for f in os.listdir(directory) if f.startswith(_WEIGHTS + ".data-")]
    if not os.path.exists(weights + ".index") or not shards:
        raise FileNotFoundError(
            f"Expected the weights checkpoint {_WEIGHTS}.index and {_WEIGHTS}.data-* written by gq_tf.save_qat "
            f"in {directory!r}. Received files {sorted(os.listdir(directory))}."
        )
    try:
        # Every variable of the rebuilt model must get a value: a checkpoint of
        # another model would otherwise leave some at their initial values.
        qat.load_weights(weights).assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, IndexError, ValueError, AssertionError) as e:
        text = e.message if isinstance(e, tf.errors.OpError) else str(e)
        raise ValueError(
            f"Expected {weights}.index and {weights}.data-* to be a whole checkpoint of the model in "
            f"{meta_path}. Received one that cannot be restored ({type(e).__name__}: "
            f"{text.strip().splitlines()[0] if text.strip() else ''}): it is truncated, damaged or of another "
            f"model; save the model again."
        ) from e
    return qat
