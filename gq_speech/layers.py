"""The transducers' custom Keras layers and the building blocks both graphs are made of.

Helper layers without weights (``FeatureNormalization``, ``LeftPad``,
``FrameStacking``, the attention masks, ``TakeLast``, ``GLU``,
``ScaledResidual``, ``JointCombine``) and the step graphs' forms of two weight
layers (``CachedAttention``, ``SplitDepthwiseConv1D``, registered with gq_tf
so that it quantizes and exports them like the layers they extend). All are
Keras-serializable under ``package="gq_tf"``. The building blocks
(``_conformer_parts``, ``_feed_forward``, ...) make the named weight layers
that the training graph (``gq_speech.models``) and the step graphs
(``gq_speech.stepgraphs``) share.
"""

from __future__ import annotations

import numpy as np

from gq_tf._keras import keras, tf
from gq_tf.configs import register_layer

__all__ = [
    "GLU",
    "CachedAttention",
    "ChunkAttentionMask",
    "FeatureNormalization",
    "FrameStacking",
    "JointCombine",
    "LeftPad",
    "ScaledResidual",
    "SplitDepthwiseConv1D",
    "StepAttentionMask",
    "TakeLast",
]


# ----------------------------------------------------------------- helper layers (no weights)


def _register(cls):
    return keras.utils.register_keras_serializable(package="gq_tf")(cls)


@_register
class FeatureNormalization(keras.layers.Layer):
    """``(x - mean) / std`` with constant vectors (part of the config, not weights).

    Args:
      mean, std: sequences of ``n_mels`` floats, or None for the identity.
    """

    def __init__(self, mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]

    def call(self, x):
        if self.mean is None:
            return x
        return (x - tf.constant(self.mean, x.dtype)) * tf.constant(1.0 / np.asarray(self.std), x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@_register
class LeftPad(keras.layers.Layer):
    """Zero-pads ``frames`` frames before the time axis (axis 1): causal convolution."""

    def __init__(self, frames, **kwargs):
        super().__init__(**kwargs)
        self.frames = int(frames)

    def call(self, x):
        return tf.pad(x, [[0, 0], [self.frames, 0], [0, 0]]) if self.frames else x

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@_register
class FrameStacking(keras.layers.Layer):
    """Concatenates every ``factor`` consecutive frames: [B, T, D] -> [B, ceil(T/f), f*D].

    A T that is not a multiple is zero-padded at the end first.
    """

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        f, d = self.factor, x.shape[-1]
        t = x.shape[1]
        if t is not None:  # static (step graphs): static reshape, no padding ops
            if t % f:
                x = tf.pad(x, [[0, 0], [0, f - t % f], [0, 0]])
            return tf.reshape(x, [-1, -(-t // f), f * d])
        pad = (-tf.shape(x)[1]) % f
        x = tf.pad(x, [[0, 0], [0, pad], [0, 0]])
        return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1] // f, f * d])

    def compute_output_shape(self, input_shape):
        t = input_shape[1]
        return tf.TensorShape([input_shape[0], None if t is None else -(-t // self.factor),
                               self.factor * input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@_register
class ChunkAttentionMask(keras.layers.Layer):
    """[B, T, D] -> float mask [B, T, T]: frame i sees frame j iff chunk(i) - left <= chunk(j) <= chunk(i)."""

    def __init__(self, chunk, left_chunks, **kwargs):
        super().__init__(**kwargs)
        self.chunk, self.left_chunks = int(chunk), int(left_chunks)

    def call(self, x):
        c = tf.range(tf.shape(x)[1]) // self.chunk
        diff = c[:, None] - c[None, :]
        mask = tf.cast((diff >= 0) & (diff <= self.left_chunks), x.dtype)
        return tf.tile(mask[None], [tf.shape(x)[0], 1, 1])

    def get_config(self):
        return {**super().get_config(), "chunk": self.chunk, "left_chunks": self.left_chunks}


@_register
class StepAttentionMask(keras.layers.Layer):
    """Step-graph mask: validity of the cached frames [B, S] -> (mask [B, chunk, S + chunk], new validity [B, S]).

    The current chunk is always valid; cached frames are valid once a chunk
    has really been seen (the state starts at zeros).
    """

    def __init__(self, chunk, **kwargs):
        super().__init__(**kwargs)
        self.chunk = int(chunk)

    def call(self, valid):
        row = tf.concat([valid, tf.ones([tf.shape(valid)[0], self.chunk], valid.dtype)], axis=1)
        mask = tf.tile(row[:, None, :], [1, self.chunk, 1])
        return mask, row[:, self.chunk:]

    def get_config(self):
        return {**super().get_config(), "chunk": self.chunk}


@_register
class TakeLast(keras.layers.Layer):
    """The last ``frames`` frames of axis 1 (a step graph's new cache)."""

    def __init__(self, frames, **kwargs):
        super().__init__(**kwargs)
        self.frames = int(frames)

    def call(self, x):
        return x[:, x.shape[1] - self.frames:]

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@_register
class CachedAttention(keras.layers.MultiHeadAttention):
    """Self-attention of a streaming step over the projected keys and values of earlier chunks.

    Inputs ``[x, key_cache, value_cache, mask]``: ``x`` [B, T, d] (the
    chunk's normalized frames), the keys and values of the last S frames
    [B, S, heads, key_dim] and the mask [B, T, S + T]. Returns ``(output [B,
    T, d], new key cache, new value cache)``: the same function as
    ``MultiHeadAttention()(x, concat(last S inputs, x), attention_mask=mask)``,
    but a frame's key and value are projected once, when it arrives, not
    once per chunk that sees it (``left_chunks + 1`` times).

    The weights are MultiHeadAttention's, under the same names (the training
    graph's layer copies in), and gq_tf quantizes and exports them the same
    way (``gq_tf.configs.register_layer``).
    """

    def call(self, inputs, training=None):
        x, key_cache, value_cache, mask = inputs
        if not self._built_from_signature:
            self._build_from_signature(query=x, value=x)
        keys = tf.concat([key_cache, self._key_dense(x)], axis=1)
        values = tf.concat([value_cache, self._value_dense(x)], axis=1)
        out, _ = self._compute_attention(self._query_dense(x), keys, values, mask, training)
        drop = keys.shape[1] - key_cache.shape[1]
        return self._output_dense(out), keys[:, drop:], values[:, drop:]


register_layer(CachedAttention, keras.layers.MultiHeadAttention)


@_register
class SplitDepthwiseConv1D(keras.layers.DepthwiseConv1D):
    """DepthwiseConv1D ("valid", stride 1) computed as a sum of convolutions of at most ``max_taps`` taps each.

    The step graph's form of the Conformer's depthwise convolution: XNNPACK
    runs a depthwise convolution of up to 25 taps with its depthwise
    kernels and a longer one as a general convolution, about 8x slower (one
    160 ms step of a 512-channel, 31-tap convolution: 54 us against 9 us as
    16 + 15 taps; docs/KERNELS.md). Same weights as DepthwiseConv1D, so the
    training graph's layer copies in and gq_tf quantizes it like one
    (``gq_tf.configs.register_layer``); with ``kernel_size <= max_taps``, or
    any padding, stride or dilation other than "valid", 1, 1, it is
    DepthwiseConv1D.
    """

    def __init__(self, *args, max_taps=25, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_taps = int(max_taps)

    def call(self, inputs):
        taps = self.kernel_size[0]
        plain = (self.padding != "valid" or self.strides != (1,) or self.dilation_rate != (1,)
                 or self.data_format != "channels_last")
        if taps <= self.max_taps or plain:
            return super().call(inputs)
        frames = inputs.shape[1] - taps + 1
        kernel = self.depthwise_kernel  # [taps, channels, multiplier]
        out = None
        for start in range(0, taps, self.max_taps):
            n = min(self.max_taps, taps - start)
            piece = tf.nn.depthwise_conv2d(inputs[:, None, start:start + frames + n - 1, :],
                                           kernel[None, start:start + n], strides=[1, 1, 1, 1], padding="VALID")
            out = piece if out is None else out + piece
        out = out[:, 0]
        if self.use_bias:
            out = tf.nn.bias_add(out, self.bias)
        return self.activation(out) if self.activation is not None else out

    def get_config(self):
        return {**super().get_config(), "max_taps": self.max_taps}


register_layer(SplitDepthwiseConv1D, keras.layers.DepthwiseConv1D)


@_register
class GLU(keras.layers.Layer):
    """Gated linear unit over the last axis: ``a * sigmoid(b)`` for ``[a, b] = x``."""

    def call(self, x):
        a, b = tf.split(x, 2, axis=-1)
        return a * tf.sigmoid(b)


@_register
class ScaledResidual(keras.layers.Layer):
    """``x + scale * y`` for inputs ``[x, y]`` (the Conformer's half-step feed-forward)."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        x, y = inputs
        return x + self.scale * y if self.scale != 1.0 else x + y

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@_register
class JointCombine(keras.layers.Layer):
    """``tanh(enc + pred)``: [B, T, J] x [B, U, J] -> [B, T, U, J], or [B, J] x [B, J] -> [B, J]."""

    def call(self, inputs):
        enc, pred = inputs
        if enc.shape.rank == 3:
            return tf.tanh(enc[:, :, None, :] + pred[:, None, :, :])
        return tf.tanh(enc + pred)


# ----------------------------------------------------------------- building blocks


def _lstm(units, name, **kwargs):
    # Keras' default activations and no masks: what GQ_LSTM runs (docs/EXPORT.md).
    return keras.layers.LSTM(units, return_sequences=True, name=name, **kwargs)


def _maybe_dropout(x, rate, name):
    return keras.layers.Dropout(rate, name=name)(x) if rate else x


def _conformer_parts(cfg, i, cached=None):
    """The weight layers of Conformer block ``i`` (shared by both graphs).

    ``cached``: None for the training graph; for a step graph, the frames of
    left context it keeps: with some, the attention is a ``CachedAttention``;
    the depthwise convolution is a ``SplitDepthwiseConv1D`` (same weights).
    """
    e = cfg.encoder
    d, p = e.d_model, f"conformer_{i}_"
    layers = {}
    for ff in ("ff1", "ff2"):
        layers[f"{ff}_norm"] = keras.layers.LayerNormalization(name=f"{p}{ff}_norm")
        layers[f"{ff}_dense1"] = keras.layers.Dense(d * e.ff_mult, activation="swish", name=f"{p}{ff}_dense1")
        layers[f"{ff}_dense2"] = keras.layers.Dense(d, name=f"{p}{ff}_dense2")
    layers["mhsa_norm"] = keras.layers.LayerNormalization(name=f"{p}mhsa_norm")
    attention = CachedAttention if cached else keras.layers.MultiHeadAttention
    layers["mhsa"] = attention(e.heads, d // e.heads, name=f"{p}mhsa")
    layers["conv_norm"] = keras.layers.LayerNormalization(name=f"{p}conv_norm")
    layers["conv_pw1"] = keras.layers.Dense(2 * d, name=f"{p}conv_pw1")
    depthwise = SplitDepthwiseConv1D if cached is not None else keras.layers.DepthwiseConv1D
    layers["conv_dw"] = depthwise(e.conv_kernel, padding="valid", name=f"{p}conv_dw")
    layers["conv_dw_norm"] = keras.layers.LayerNormalization(name=f"{p}conv_dw_norm")
    layers["conv_pw2"] = keras.layers.Dense(d, name=f"{p}conv_pw2")
    layers["out_norm"] = keras.layers.LayerNormalization(name=f"{p}out_norm")
    return layers


def _feed_forward(x, parts, ff, rate, prefix, training_graph):
    y = parts[f"{ff}_norm"](x)
    y = parts[f"{ff}_dense1"](y)
    if training_graph:
        y = _maybe_dropout(y, rate, f"{prefix}{ff}_dropout1")
    y = parts[f"{ff}_dense2"](y)
    if training_graph:
        y = _maybe_dropout(y, rate, f"{prefix}{ff}_dropout2")
    return ScaledResidual(0.5, name=f"{prefix}{ff}_residual")([x, y])


def _conv_module_tail(y, parts, x, rate, prefix, training_graph):
    """After the depthwise convolution: norm, swish, pointwise, residual."""
    y = parts["conv_dw_norm"](y)
    y = keras.layers.Activation("swish", name=f"{prefix}conv_swish")(y)
    y = parts["conv_pw2"](y)
    if training_graph:
        y = _maybe_dropout(y, rate, f"{prefix}conv_dropout")
    return keras.layers.Add(name=f"{prefix}conv_residual")([x, y])


def _subsample_convs(cfg):
    e = cfg.encoder
    return [keras.layers.Conv1D(e.d_model, e.subsample_kernel, strides=2, padding="valid", activation="relu",
                                name=f"subsample_conv_{j}") for j in range(2)]


def _joint_layers(cfg):
    return (keras.layers.Dense(cfg.joint_dim, name="joint_enc"),
            # One bias is enough: joint_enc carries it.
            keras.layers.Dense(cfg.joint_dim, use_bias=False, name="joint_pred"),
            keras.layers.Dense(cfg.vocab_size, name="joint_out"))


def _normalization(cfg):
    return FeatureNormalization(cfg.feature_mean, cfg.feature_std, name="feature_norm")


def _input_stack(x, cfg):
    f = cfg.encoder.input_stack
    return FrameStacking(f, name="encoder_input_stack")(x) if f > 1 else x
