"""The streaming step graphs of the transducers, and moving weights into them.

``build_step_models`` makes the encoder, prediction and joint step models
with explicit states (``state_specs``, ``initial_states``); ``copy_weights``
copies a trained model's weights into them by layer name;
``quantize_step_models`` and ``policy_from_qat`` quantize them as the
training model was. ``STEP_GRAPHS`` versions their structure.
"""

from __future__ import annotations

import re

import numpy as np

from gq_speech.layers import (
    GLU,
    FeatureNormalization,
    FrameStacking,
    JointCombine,
    StepAttentionMask,
    TakeLast,
    _conformer_parts,
    _conv_module_tail,
    _feed_forward,
    _input_stack,
    _joint_layers,
    _lstm,
    _normalization,
    _subsample_convs,
)
from gq_speech.modelconfig import SUBSAMPLING, encoder_dim
from gq_tf._keras import keras
from gq_tf.configs import unwrap_layer

__all__ = [
    "STEP_GRAPHS",
    "build_step_models",
    "copy_weights",
    "initial_states",
    "policy_from_qat",
    "quantize_step_models",
    "state_specs",
]

# Version of the step graphs' structure, for caches of exports: 2 = the
# Conformer's key/value cache (CachedAttention) and split depthwise
# convolution (SplitDepthwiseConv1D).
STEP_GRAPHS = 2


# ----------------------------------------------------------------- step graphs


def state_specs(cfg):
    """``{"encoder": {name: shape}, "prediction": {name: shape}}`` of the step states (batch 1).

    Names are the step models' input names and the keys of their outputs.
    """
    enc = {}
    if cfg.kind == "rnnt":
        e = cfg.encoder
        for i in range(e.lstm_layers):
            enc[f"encoder_lstm_{i}_h"] = (1, e.lstm_units)
            enc[f"encoder_lstm_{i}_c"] = (1, e.lstm_units)
    else:
        e = cfg.encoder
        cached = e.left_chunks * cfg.chunk_frames // SUBSAMPLING
        enc["subsample_conv_0_cache"] = (1, e.subsample_kernel - 1, cfg.n_mels)
        enc["subsample_conv_1_cache"] = (1, e.subsample_kernel - 1, e.d_model)
        if cached:
            enc["attention_valid"] = (1, cached)
        for i in range(e.blocks):
            if cached:  # projected keys and values (CachedAttention)
                enc[f"conformer_{i}_mhsa_key_cache"] = (1, cached, e.heads, e.d_model // e.heads)
                enc[f"conformer_{i}_mhsa_value_cache"] = (1, cached, e.heads, e.d_model // e.heads)
            enc[f"conformer_{i}_conv_cache"] = (1, e.conv_kernel - 1, e.d_model)
        enc = {k: v for k, v in enc.items() if all(v)}  # kernel 1: no cache
    pred = {}
    for i in range(cfg.pred.lstm_layers):
        pred[f"pred_lstm_{i}_h"] = (1, cfg.pred.lstm_units)
        pred[f"pred_lstm_{i}_c"] = (1, cfg.pred.lstm_units)
    return {"encoder": enc, "prediction": pred}


def initial_states(cfg):
    """Zero states: ``{"encoder": {name: array}, "prediction": {name: array}}`` (float32)."""
    return {part: {k: np.zeros(s, np.float32) for k, s in specs.items()}
            for part, specs in state_specs(cfg).items()}


def _state_inputs(specs, batch_size=1):
    return {k: keras.Input(s[1:], batch_size=batch_size, name=k) for k, s in specs.items()}


def _cached(x, states, key, frames, name):
    """(concat(cache, x) along time, new cache); no cache when ``key`` has none."""
    if key not in states:
        return x, None
    z = keras.layers.Concatenate(axis=1, name=f"{name}_concat")([states[key], x])
    return z, TakeLast(frames, name=f"{name}_keep")(z)


def _rnnt_encoder_step(x, cfg, states):
    e = cfg.encoder
    new = {}
    x = _input_stack(x, cfg)
    for i in range(e.lstm_layers):
        h, c = states[f"encoder_lstm_{i}_h"], states[f"encoder_lstm_{i}_c"]
        x, h, c = _lstm(e.lstm_units, f"encoder_lstm_{i}", return_state=True, unroll=True)(x, initial_state=[h, c])
        new[f"encoder_lstm_{i}_h"], new[f"encoder_lstm_{i}_c"] = h, c
        if e.stack_after[i] > 1:
            x = FrameStacking(e.stack_after[i], name=f"encoder_stack_{i}")(x)
    return keras.layers.Dense(e.output_dim, name="encoder_proj")(x), new


def _conformer_encoder_step(x, cfg, states):
    e = cfg.encoder
    new = {}
    for j, conv in enumerate(_subsample_convs(cfg)):
        key = f"subsample_conv_{j}_cache"
        z, keep = _cached(x, states, key, e.subsample_kernel - 1, f"subsample_{j}")
        if keep is not None:
            new[key] = keep
        x = conv(z)
    chunk = cfg.chunk_frames // SUBSAMPLING
    cached = e.left_chunks * chunk
    mask = None
    if cached:
        mask, new["attention_valid"] = StepAttentionMask(chunk, name="attention_mask")(states["attention_valid"])
    for i in range(e.blocks):
        p, parts = f"conformer_{i}_", _conformer_parts(cfg, i, cached)
        x = _feed_forward(x, parts, "ff1", 0, p, False)
        y = parts["mhsa_norm"](x)
        if cached:
            keys, values = f"{p}mhsa_key_cache", f"{p}mhsa_value_cache"
            y, new[keys], new[values] = parts["mhsa"]([y, states[keys], states[values], mask])
        else:
            y = parts["mhsa"](y, y)
        x = keras.layers.Add(name=f"{p}mhsa_residual")([x, y])
        y = GLU(name=f"{p}conv_glu")(parts["conv_pw1"](parts["conv_norm"](x)))
        z, keep = _cached(y, states, f"{p}conv_cache", e.conv_kernel - 1, f"{p}conv")
        if keep is not None:
            new[f"{p}conv_cache"] = keep
        x = _conv_module_tail(parts["conv_dw"](z), parts, x, 0, p, False)
        x = _feed_forward(x, parts, "ff2", 0, p, False)
        x = parts["out_norm"](x)
    return x, new


def build_step_models(cfg, batch_size=1):
    """Streaming step graphs with explicit states, sharing layer names with the training graph.

    Batch 1 (``batch_size``) is what is exported; ``batch_size=None`` gives
    the same graphs for a batch of independent streams (batched greedy
    decoding of Keras models in evaluation).

    * ``encoder``: inputs ``features`` [1, chunk_frames, n_mels] and the
      encoder states (``state_specs(cfg)["encoder"]``); outputs a dict with
      ``encoder_out`` [1, chunk_frames / reduction, D] and the new states
      under the same names.
    * ``prediction``: inputs ``token`` [1, 1] int32 and the prediction
      states; outputs ``pred_out`` [1, P] and the new states.
    * ``joint``: inputs ``enc`` [1, D] and ``pred`` [1, P]; output ``logits`` [1, V].

    LSTMs take their state as ``initial_state`` and return it
    (``return_state=True``; unrolled, the step length is static), which the
    exporter lowers to one ``GQ_LSTM`` when both kernels are GQ. Copy the
    trained weights in with ``copy_weights``.

    Returns:
      ``dict(encoder=..., prediction=..., joint=...)`` of functional models.
    """
    specs = state_specs(cfg)
    features = keras.Input((cfg.chunk_frames, cfg.n_mels), batch_size=batch_size, name="features")
    enc_states = _state_inputs(specs["encoder"], batch_size)
    x = _normalization(cfg)(features)
    step = _rnnt_encoder_step if cfg.kind == "rnnt" else _conformer_encoder_step
    enc, new = step(x, cfg, enc_states)
    enc = keras.layers.Activation("linear", name="encoder_output")(enc)
    encoder = keras.Model([features, *enc_states.values()], {"encoder_out": enc, **new}, name="encoder_step")

    token = keras.Input((1,), batch_size=batch_size, dtype="int32", name="token")
    pred_states = _state_inputs(specs["prediction"], batch_size)
    p = cfg.pred
    x = keras.layers.Embedding(cfg.vocab_size, p.embedding_dim, name="pred_embedding")(token)
    new = {}
    for i in range(p.lstm_layers):
        h, c = pred_states[f"pred_lstm_{i}_h"], pred_states[f"pred_lstm_{i}_c"]
        x, h, c = _lstm(p.lstm_units, f"pred_lstm_{i}", return_state=True, unroll=True)(x, initial_state=[h, c])
        new[f"pred_lstm_{i}_h"], new[f"pred_lstm_{i}_c"] = h, c
    # The output is the LSTM's one-step sequence output (equal to its new h):
    # a GQ_LSTM whose sequence output nobody reads is refused by the delegate
    # ("output 0 has no data").
    out = keras.layers.Reshape((p.lstm_units,), name="pred_output")(x)
    prediction = keras.Model([token, *pred_states.values()], {"pred_out": out, **new}, name="prediction_step")

    enc_in = keras.Input((encoder_dim(cfg),), batch_size=batch_size, name="enc")
    pred_in = keras.Input((p.lstm_units,), batch_size=batch_size, name="pred")
    joint_enc, joint_pred, joint_out = _joint_layers(cfg)
    h = JointCombine(name="joint_combine")([joint_enc(enc_in), joint_pred(pred_in)])
    joint = keras.Model([enc_in, pred_in], {"logits": joint_out(h)}, name="joint_step")
    return {"encoder": encoder, "prediction": prediction, "joint": joint}


# ----------------------------------------------------------------- weights


def _short_name(var, layer):
    """A variable's name relative to its layer: 'lstm_cell/kernel', 'kernel_gq_theta', ...

    Drops the layer's own scope and tfmot's uniquified ``quantize_annotate_N``
    scope, which differ from model to model.
    """
    parts = var.name.split(":")[0].split("/")
    drop = {layer.name, unwrap_layer(layer).name}
    while len(parts) > 1 and (parts[0] in drop or re.fullmatch(r"quantize_annotate(_\d+)?", parts[0])):
        parts = parts[1:]
    return "/".join(parts)


def copy_weights(src, dst_models):
    """Copies weights layer by layer, by layer name, from ``src`` into every model of ``dst_models``.

    Works between float models, and between QAT models made by
    ``gq_tf.quantize_model`` with the same policy: a QAT layer's variables
    (the float weights, the GQ centroids ``theta``, scale and annealing state
    with its temperature and hard-phase flag, tfmot's step counter) all copy,
    so the QAT step models run the same hard-quantized weights.

    Args:
      src: the trained model (e.g. ``build_training_model``'s, float or QAT).
      dst_models: a model, a list of models or a dict of them (``build_step_models``).

    Raises:
      ValueError: a destination layer with weights has no source layer of that
        name, one side is quantized and the other not, the weights differ in
        names or shapes, or the feature normalization constants differ.
    """
    if isinstance(dst_models, dict):
        dst_models = list(dst_models.values())
    elif isinstance(dst_models, keras.Model):
        dst_models = [dst_models]
    sources = {unwrap_layer(layer).name: layer for layer in src.layers}
    for model in dst_models:
        for layer in model.layers:
            name = unwrap_layer(layer).name
            if isinstance(layer, FeatureNormalization) and isinstance(sources.get(name), FeatureNormalization):
                s = sources[name]
                if (s.mean, s.std) != (layer.mean, layer.std):
                    raise ValueError(
                        f"Expected the same feature normalization in '{src.name}' and '{model.name}'. "
                        "Build the step models from the config the model was trained with "
                        "(cfg.with_feature_stats(stats)).")
            if not layer.weights:
                continue
            if name not in sources:
                raise ValueError(f"Expected a layer named '{name}' in '{src.name}' (for '{model.name}'). "
                                 f"Received layers {[unwrap_layer(src_layer).name for src_layer in src.layers]}.")
            s = sources[name]
            if (unwrap_layer(s) is not s) != (unwrap_layer(layer) is not layer):
                which = "source" if (unwrap_layer(s) is not s) else "destination"
                raise ValueError(
                    f"Expected layer '{name}' quantized in both models or in neither. Only the {which} "
                    "is: quantize the step models with the training model's policy, or "
                    "gq_tf.strip_quantization the source.")
            sw, dw = s.weights, layer.weights
            s_names = [(_short_name(v, s), tuple(v.shape)) for v in sw]
            d_names = [(_short_name(v, layer), tuple(v.shape)) for v in dw]
            if s_names != d_names:
                by_name = dict(s_names)
                if sorted(s_names) != sorted(d_names) or len(by_name) != len(s_names):
                    raise ValueError(f"Expected the same weights in layer '{name}' of '{src.name}' and "
                                     f"'{model.name}'. Received {s_names} and {d_names}.")
                order = {n: v for (n, _), v in zip(s_names, sw)}
                sw = [order[n] for n, _ in d_names]
            for d, v in zip(dw, sw):
                d.assign(v)


def _selects_something(model, policy):
    """True when ``policy`` (a dict, first full match wins) quantizes some weight of ``model``."""
    from gq_tf.configs import LAYER_TABLE

    for layer in model.layers:
        if type(layer) not in LAYER_TABLE:
            continue
        spec = next((s for p, s in policy.items() if re.fullmatch(p, layer.name)), None)
        if isinstance(spec, dict):
            spec = next((v for v in spec.values() if v is not None), None)
        if spec is not None:
            return True
    return False


def quantize_step_models(step_models, policy):
    """``gq_tf.quantize_model`` on every step model, with the policy the training model was quantized with.

    A dict policy is first restricted to the patterns that match a layer of
    each step model (the others belong to other parts; this keeps
    quantize_model from warning about them); a step model the policy leaves
    entirely float is returned unchanged.

    Args:
      step_models: ``build_step_models``'s dict.
      policy: the training model's policy, or ``policy_from_qat(qat)``.

    Returns:
      dict with the same keys: QAT models (or the float model, see above).
    """
    import gq_tf

    out = {}
    for key, model in step_models.items():
        if isinstance(policy, dict):
            names = [layer.name for layer in model.layers]
            mine = {p: s for p, s in policy.items() if any(re.fullmatch(p, n) for n in names)}
            out[key] = gq_tf.quantize_model(model, mine) if mine and _selects_something(model, mine) else model
        else:
            out[key] = gq_tf.quantize_model(model, policy)
    return out


def policy_from_qat(qat_model):
    """The exact per-layer policy of a QAT model: ``{escaped layer name: {weight: quantizer}}``.

    Applied to a model with the same layer names (the step models) it
    quantizes the same kernels with the same quantizer types and options.

    Raises:
      ValueError: ``qat_model`` has no gq_tf-quantized layer.
    """
    from gq_tf.configs import GQQuantizeConfig

    policy = {}
    for layer in qat_model.layers:
        config = getattr(layer, "quantize_config", None)
        if (unwrap_layer(layer) is not layer) and isinstance(config, GQQuantizeConfig):
            policy[re.escape(unwrap_layer(layer).name)] = dict(config.quantizers)
    if not policy:
        raise ValueError(f"Expected a QAT model made by gq_tf.quantize_model. Received model "
                         f"'{qat_model.name}' without gq_tf-quantized layers.")
    return policy
