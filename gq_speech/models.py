"""RNN-T and Conformer transducers: the training graph and the streaming step graphs.

Every model here is a functional ``gq_tf.keras`` model, so ``gq_tf.quantize_model``
and the exporter work on it unchanged. Every layer with weights is a type of
gq_tf's ``LAYER_TABLE`` (Dense, LSTM, Conv1D, DepthwiseConv1D, Embedding,
MultiHeadAttention) or a LayerNormalization; the helper layers (``gq_speech.layers``)
have no weights. Layer names are stable and structured, so that a policy
addresses modules by regex::

    RNN-T encoder      encoder_lstm_{i}, encoder_proj
    Conformer encoder  subsample_conv_{0,1},
                       conformer_{i}_ff1_dense1 / _ff1_dense2, conformer_{i}_mhsa,
                       conformer_{i}_conv_pw1 / _conv_dw / _conv_pw2,
                       conformer_{i}_ff2_dense1 / _ff2_dense2, norms *_norm
    prediction         pred_embedding, pred_lstm_{i}
    joint              joint_enc, joint_pred, joint_out

Streaming is exact by construction: the step graphs (``build_step_models``)
share these layers and names with the training graph (``build_training_model``),
and the training graph only uses context a streaming step has:

* RNN-T: forward LSTMs; time reduction concatenates ``f`` consecutive frames
  before the first layer (``input_stack``) and after a layer (``stack_after``),
  so a chunk of ``chunk_frames`` (a multiple of the total reduction) reduces on
  its own.
* Conformer: two stride-2 convolutions over a left zero-padded input ("causal"
  padding; a step keeps the last ``kernel - 1`` input frames as its cache);
  attention over chunks: an encoder frame in chunk ``k`` sees chunks
  ``k - left_chunks .. k`` (a step keeps the projected keys and values of the
  last ``left_chunks`` chunks and a validity mask: ``CachedAttention``); causal depthwise
  convolution (cache of ``conv_kernel - 1`` frames); LayerNormalization
  everywhere (no BatchNorm statistics over time). There is no positional
  encoding: the causal convolutions before and inside every block give the
  attention its sense of order, and absolute positions would grow without
  bound in a stream.

Features are log-mel frames ``[B, T, n_mels]`` at a 10 ms hop; the model
normalizes them with the constant mean/std of its config
(``ModelConfig.with_feature_stats``), inside a weightless layer, so a policy
like ``{".*": 5}`` never selects it. Token ids: blank = 0, which is also the
prediction network's start-of-sequence input.

Example:
  >>> cfg = load_config("rnnt_small").with_feature_stats(stats)
  >>> net = build_training_model(cfg)        # [features, pred_tokens] -> logits
  >>> steps = build_step_models(cfg)         # encoder / prediction / joint
  >>> copy_weights(net, steps)

The code is in four modules; this one holds the training graph and the
timing, and re-exports the rest (``models.load_config``,
``models.build_step_models``, ...):

    gq_speech.modelconfig  configs: ModelConfig, load_config, reduction, ...
    gq_speech.layers       the custom layers and the shared building blocks
    gq_speech.stepgraphs   step graphs, states, copy_weights, their quantization
    gq_speech.models       build_training_model, split_training_model, timing
"""

from __future__ import annotations

import math
import time

import numpy as np

from gq_speech.layers import (
    GLU,
    CachedAttention,  # noqa: F401 (models.X as before the split)
    ChunkAttentionMask,
    FeatureNormalization,
    FrameStacking,
    JointCombine,
    LeftPad,
    ScaledResidual,
    SplitDepthwiseConv1D,  # noqa: F401 (models.X as before the split)
    StepAttentionMask,
    TakeLast,
    _conformer_parts,
    _conv_module_tail,
    _feed_forward,
    _input_stack,
    _joint_layers,
    _lstm,
    _maybe_dropout,
    _normalization,
    _subsample_convs,
)
from gq_speech.modelconfig import (
    CONFIG_DIR,
    KINDS,
    MAX_SIZE,  # noqa: F401 (models.X as before the split)
    SUBSAMPLING,
    ConformerEncoderConfig,
    ModelConfig,
    PredictionConfig,
    RNNTEncoderConfig,
    encoder_dim,
    encoder_lengths,
    feature_fill,  # noqa: F401 (models.X as before the split)
    load_config,
    load_named_json,  # noqa: F401 (models.X as before the split)
    reduction,
)
from gq_speech.stepgraphs import (
    STEP_GRAPHS,  # noqa: F401 (models.X as before the split)
    build_step_models,
    copy_weights,
    initial_states,
    policy_from_qat,
    quantize_step_models,
    state_specs,
)
from gq_tf._keras import keras, tf

__all__ = [
    "CONFIG_DIR",
    "GLU",
    "KINDS",
    "ChunkAttentionMask",
    "ConformerEncoderConfig",
    "FeatureNormalization",
    "FrameStacking",
    "JointCombine",
    "LeftPad",
    "ModelConfig",
    "PredictionConfig",
    "RNNTEncoderConfig",
    "ScaledResidual",
    "StepAttentionMask",
    "TakeLast",
    "build_step_models",
    "build_training_model",
    "copy_weights",
    "encoder_dim",
    "encoder_lengths",
    "initial_states",
    "load_config",
    "policy_from_qat",
    "quantize_step_models",
    "reduction",
    "split_training_model",
    "state_specs",
    "time_training_step",
]

# ----------------------------------------------------------------- training graph


def _rnnt_encoder(x, cfg):
    e = cfg.encoder
    x = _input_stack(x, cfg)
    for i in range(e.lstm_layers):
        x = _lstm(e.lstm_units, f"encoder_lstm_{i}")(x)
        if e.stack_after[i] > 1:
            x = FrameStacking(e.stack_after[i], name=f"encoder_stack_{i}")(x)
        x = _maybe_dropout(x, e.dropout, f"encoder_dropout_{i}")
    return keras.layers.Dense(e.output_dim, name="encoder_proj")(x)


def _conformer_encoder(x, cfg):
    e = cfg.encoder
    for j, conv in enumerate(_subsample_convs(cfg)):
        x = conv(LeftPad(e.subsample_kernel - 1, name=f"subsample_pad_{j}")(x))
    x = _maybe_dropout(x, e.dropout, "subsample_dropout")
    chunk = cfg.chunk_frames // SUBSAMPLING
    mask = ChunkAttentionMask(chunk, e.left_chunks, name="attention_mask")(x)
    for i in range(e.blocks):
        p, parts = f"conformer_{i}_", _conformer_parts(cfg, i)
        x = _feed_forward(x, parts, "ff1", e.dropout, p, True)
        y = parts["mhsa_norm"](x)
        y = parts["mhsa"](y, y, attention_mask=mask)
        y = _maybe_dropout(y, e.dropout, f"{p}mhsa_dropout")
        x = keras.layers.Add(name=f"{p}mhsa_residual")([x, y])
        y = GLU(name=f"{p}conv_glu")(parts["conv_pw1"](parts["conv_norm"](x)))
        y = parts["conv_dw"](LeftPad(e.conv_kernel - 1, name=f"{p}conv_pad")(y))
        x = _conv_module_tail(y, parts, x, e.dropout, p, True)
        x = _feed_forward(x, parts, "ff2", e.dropout, p, True)
        x = parts["out_norm"](x)
    return x


def _prediction(tokens, cfg):
    p = cfg.pred
    x = keras.layers.Embedding(cfg.vocab_size, p.embedding_dim, name="pred_embedding")(tokens)
    x = _maybe_dropout(x, p.dropout, "pred_dropout_embedding")
    for i in range(p.lstm_layers):
        x = _lstm(p.lstm_units, f"pred_lstm_{i}")(x)
        x = _maybe_dropout(x, p.dropout, f"pred_dropout_{i}")
    return x


def build_training_model(cfg, name=None):
    """The full transducer for training and offline evaluation.

    Args:
      cfg: a ModelConfig.
      name: model name (default ``cfg.name``).

    Returns:
      A functional keras.Model with inputs ``features`` [B, T, n_mels] float32
      and ``pred_tokens`` [B, U+1] int32 (blank, then the labels), and output
      the joint logits [B, T', U+1, V], ``T' = encoder_lengths(T, cfg)``.
      The layers named ``encoder_output`` and ``pred_output`` (weightless)
      carry the encoder frames [B, T', D] and prediction outputs [B, U+1, P]
      (``split_training_model``).

    Example:
      >>> net = build_training_model(load_config("rnnt_tiny"))
      >>> net([features, tokens]).shape   # [B, T', U+1, V]
    """
    features = keras.Input((None, cfg.n_mels), name="features")
    tokens = keras.Input((None,), dtype="int32", name="pred_tokens")
    x = _normalization(cfg)(features)
    x = _rnnt_encoder(x, cfg) if cfg.kind == "rnnt" else _conformer_encoder(x, cfg)
    enc = keras.layers.Activation("linear", name="encoder_output")(x)
    pred = keras.layers.Activation("linear", name="pred_output")(_prediction(tokens, cfg))
    joint_enc, joint_pred, joint_out = _joint_layers(cfg)
    h = JointCombine(name="joint_combine")([joint_enc(enc), joint_pred(pred)])
    logits = joint_out(h)
    return keras.Model([features, tokens], logits, name=name or cfg.name)


def split_training_model(model):
    """``dict(encoder=features -> [B, T', D], prediction=pred_tokens -> [B, U+1, P])``.

    Sub-models sharing the layers (and weights) of a model made by
    ``build_training_model``, float or QAT.
    """
    by_name = {t.name.split(":")[0]: t for t in model.inputs}
    features, tokens = by_name["features"], by_name["pred_tokens"]
    return {"encoder": keras.Model(features, _output_in(model, "encoder_output"), name="encoder"),
            "prediction": keras.Model(tokens, _output_in(model, "pred_output"), name="prediction")}


def _output_in(model, layer_name):
    """The output of ``layer_name`` in ``model``'s own graph.

    ``quantize_model`` reuses the weightless layers of the float model in
    the QAT clone, so such a layer has one call per model and ``.output``
    would be the float model's tensor.
    """
    layer = model.get_layer(layer_name)
    nodes = getattr(model, "_network_nodes", None)
    for i, node in enumerate(layer.inbound_nodes):
        if nodes is None or f"{layer.name}_ib-{i}" in nodes:
            return node.outputs
    raise ValueError(f"Expected layer '{layer_name}' to be called in model '{model.name}'.")


# ----------------------------------------------------------------- timing


def time_training_step(cfg, batch_size=16, seconds=4.0, labels=50, steps=5, seed=0):
    """Seconds per training step (forward + backward, dummy loss), after one warm-up step.

    The loss is the mean of the logits' log-softmax at a random label per
    position: the cost of the RNN-T loss itself is not included. Used for
    the "notes" of the configs.

    Returns:
      (seconds per step, parameter count).
    """
    keras.utils.set_random_seed(seed)
    net = build_training_model(cfg)
    frames = round(seconds * 100)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch_size, frames, cfg.n_mels)).astype(np.float32))
    y = tf.constant(rng.integers(0, cfg.vocab_size, size=(batch_size, labels + 1)).astype(np.int32))
    opt = keras.optimizers.Adam(1e-4)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = net([x, y], training=True)
            loss = -tf.reduce_mean(tf.nn.log_softmax(logits)[..., 1])
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    step(x, y).numpy()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y).numpy()
    return (time.perf_counter() - t0) / steps, int(net.count_params())


def _main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Parameters and training-step time of model configs.")
    p.add_argument("configs", nargs="+")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    for name in args.configs:
        cfg = load_config(name)
        secs, params = time_training_step(cfg, args.batch_size, args.seconds)
        print(f"{cfg.name}: {params:,} params, {secs:.3f} s/step (batch {args.batch_size}, "
              f"{args.seconds:g} s utterances, {math.ceil(args.seconds * 100 / reduction(cfg))} encoder frames)")


if __name__ == "__main__":
    _main()
