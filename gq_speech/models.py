"""RNN-T and Conformer transducers: the training graph and the streaming step graphs.

Every model here is a functional ``gq_tf.keras`` model, so ``gq_tf.quantize_model``
and the exporter work on it unchanged. Every layer with weights is a type of
gq_tf's ``LAYER_TABLE`` (Dense, LSTM, Conv1D, DepthwiseConv1D, Embedding,
MultiHeadAttention) or a LayerNormalization; the helper layers defined below
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
  before the first layer (``input_stack``) and after a layer (``stack_after``), so a chunk of ``chunk_frames`` (a multiple
  of the total reduction) reduces on its own.
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np

from gq_tf._keras import keras, tf
from gq_tf.configs import register_layer, unwrap_layer

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

KINDS = ("rnnt", "conformer")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUBSAMPLING = 4  # the Conformer's two stride-2 convolutions
# Version of the step graphs' structure, for caches of exports: 2 = the
# Conformer's key/value cache (CachedAttention) and split depthwise
# convolution (SplitDepthwiseConv1D).
STEP_GRAPHS = 2


# ----------------------------------------------------------------- configs


def _from_dict(cls, d, where):
    if not isinstance(d, dict):
        raise TypeError(f"Expected a dict for {where}. Received {type(d).__name__}: {d!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"Expected keys of {where} in {names}. Received unknown keys {unknown}.")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in d
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"Expected {where} to have the keys {missing}. Received keys {sorted(d)}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Larger than any layer width, depth or vocabulary a speech model has (the
# paper's are at most a few thousand): a typo, caught before TensorFlow tries
# to allocate it.
MAX_SIZE = 1 << 16


def _positive_int(value, where, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= MAX_SIZE:
        raise ValueError(f"Expected {where} to be an int in [{minimum}, {MAX_SIZE}]. Received: {where}={value!r}")


def _dropout(value, where):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"Expected {where} in [0, 1). Received: {where}={value!r}")


@dataclasses.dataclass(frozen=True)
class RNNTEncoderConfig:
    """LSTM encoder with time reduction by frame stacking.

    Attributes:
      lstm_layers: number of LSTM layers.
      lstm_units: units of every LSTM layer.
      input_stack: feature frames concatenated before the first LSTM (1:
        none; 2: the first layer runs on 20 ms frames, half the sequential
        steps, which is most of the training time).
      stack_after: one factor per layer: after layer ``i`` every
        ``stack_after[i]`` consecutive frames are concatenated (1: none).
        ``input_stack=2, stack_after=(2, 1, 1)`` reduces time 4x (10 ms ->
        40 ms frames).
      output_dim: size of ``encoder_proj`` (the encoder output D).
      dropout: dropout after every LSTM layer (training only).
    """

    lstm_layers: int = 3
    lstm_units: int = 256
    input_stack: int = 2
    stack_after: tuple = (2, 1, 1)
    output_dim: int = 256
    dropout: float = 0.1

    def validate(self):
        _positive_int(self.lstm_layers, "encoder.lstm_layers")
        _positive_int(self.lstm_units, "encoder.lstm_units")
        _positive_int(self.output_dim, "encoder.output_dim")
        _positive_int(self.input_stack, "encoder.input_stack")
        _dropout(self.dropout, "encoder.dropout")
        if not isinstance(self.stack_after, (tuple, list)):
            raise ValueError(f"Expected encoder.stack_after to be a list of ints, one per LSTM layer. "
                             f"Received: encoder.stack_after={self.stack_after!r}")
        if len(self.stack_after) != self.lstm_layers:
            raise ValueError(
                f"Expected one encoder.stack_after factor per LSTM layer ({self.lstm_layers}). "
                f"Received stack_after={list(self.stack_after)}.")
        for f in self.stack_after:
            _positive_int(f, "encoder.stack_after[i]")


@dataclasses.dataclass(frozen=True)
class ConformerEncoderConfig:
    """Chunk-streaming Conformer encoder (4x convolution subsampling).

    Attributes:
      d_model: model width (the encoder output D).
      heads: attention heads (``d_model % heads == 0``).
      ff_mult: feed-forward expansion.
      conv_kernel: depthwise (causal) convolution kernel, in encoder frames.
      blocks: number of Conformer blocks.
      left_chunks: attention left context, in chunks of
        ``chunk_frames / 4`` encoder frames.
      subsample_kernel: kernel of the two stride-2 subsampling convolutions.
      dropout: dropout in every residual branch (training only).
    """

    d_model: int = 144
    heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15
    blocks: int = 6
    left_chunks: int = 4
    subsample_kernel: int = 3
    dropout: float = 0.1

    def validate(self):
        for name in ("d_model", "heads", "ff_mult", "conv_kernel", "blocks", "subsample_kernel"):
            _positive_int(getattr(self, name), f"encoder.{name}")
        _positive_int(self.left_chunks, "encoder.left_chunks", minimum=0)
        _dropout(self.dropout, "encoder.dropout")
        if self.d_model % self.heads:
            raise ValueError(f"Expected encoder.d_model divisible by encoder.heads. Received "
                             f"d_model={self.d_model}, heads={self.heads}.")


@dataclasses.dataclass(frozen=True)
class PredictionConfig:
    """Prediction network: embedding then LSTMs.

    Attributes:
      embedding_dim: token embedding size.
      lstm_units: units of every LSTM layer (the prediction output P).
      lstm_layers: number of LSTM layers.
      dropout: dropout after the embedding and every LSTM (training only).
    """

    embedding_dim: int = 128
    lstm_units: int = 256
    lstm_layers: int = 1
    dropout: float = 0.1

    def validate(self):
        for name in ("embedding_dim", "lstm_units", "lstm_layers"):
            _positive_int(getattr(self, name), f"pred.{name}")
        _dropout(self.dropout, "pred.dropout")


_ENCODERS = {"rnnt": RNNTEncoderConfig, "conformer": ConformerEncoderConfig}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One transducer: JSON data (``configs/<name>.json``) mapped to this class.

    Attributes:
      name: the config's name.
      kind: "rnnt" (LSTM encoder) or "conformer".
      n_mels: feature size.
      vocab_size: V, blank (id 0) included.
      chunk_frames: feature frames per streaming step (10 ms each); a
        multiple of ``reduction(cfg)``. For the Conformer it also sets the
        attention chunk (``chunk_frames / 4`` encoder frames).
      encoder: RNNTEncoderConfig or ConformerEncoderConfig (by ``kind``).
      pred: PredictionConfig.
      joint_dim: width J of the joint network.
      feature_mean, feature_std: ``n_mels`` floats each, or None (identity).
      notes: free text (sizes, measured step times).
    """

    name: str
    kind: str
    n_mels: int
    vocab_size: int
    chunk_frames: int
    encoder: object
    pred: PredictionConfig
    joint_dim: int
    feature_mean: tuple | None = None
    feature_std: tuple | None = None
    notes: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Expected kind in {KINDS}. Received: kind={self.kind!r}")
        for name in ("n_mels", "chunk_frames", "joint_dim"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.vocab_size, "vocab_size", minimum=2)
        if not isinstance(self.encoder, _ENCODERS[self.kind]):
            raise TypeError(f"Expected encoder of type {_ENCODERS[self.kind].__name__} for kind "
                            f"{self.kind!r}. Received {type(self.encoder).__name__}.")
        self.encoder.validate()
        self.pred.validate()
        r = reduction(self)
        if self.chunk_frames % r:
            raise ValueError(f"Expected chunk_frames to be a multiple of the time reduction {r}. "
                             f"Received: chunk_frames={self.chunk_frames}")
        if (self.feature_mean is None) != (self.feature_std is None):
            raise ValueError("Expected feature_mean and feature_std both set or both None.")
        if self.feature_mean is not None:
            mean, std = np.asarray(self.feature_mean), np.asarray(self.feature_std)
            if mean.shape != (self.n_mels,) or std.shape != (self.n_mels,):
                raise ValueError(f"Expected feature_mean and feature_std of {self.n_mels} values each. "
                                 f"Received {mean.size} and {std.size}.")
            if not np.all(std > 0):
                raise ValueError("Expected feature_std > 0 in every bin.")

    @classmethod
    def from_dict(cls, d):
        """Builds and validates a config from JSON data."""
        d = dict(d)
        for key in ("kind", "encoder", "pred"):
            if key not in d:
                raise ValueError(f"Expected key {key!r} in the model config. Received keys {sorted(d)}.")
        if d["kind"] not in KINDS:
            raise ValueError(f"Expected kind in {KINDS}. Received: kind={d['kind']!r}")
        d["encoder"] = _from_dict(_ENCODERS[d["kind"]], d["encoder"], "encoder")
        d["pred"] = _from_dict(PredictionConfig, d["pred"], "pred")
        d.setdefault("name", "unnamed")
        return _from_dict(cls, d, "the model config")

    def to_dict(self):
        """JSON-able data; ``ModelConfig.from_dict(cfg.to_dict()) == cfg``."""
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            return v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    def with_feature_stats(self, stats):
        """A copy normalizing with ``stats`` (a ``features.FeatureStats`` or anything with mean/std)."""
        mean = np.asarray(stats.mean, np.float32).reshape(-1)
        std = np.asarray(stats.std, np.float32).reshape(-1)
        return dataclasses.replace(self, feature_mean=tuple(float(v) for v in mean),
                                   feature_std=tuple(float(v) for v in std))

    def replace(self, **changes):
        """``dataclasses.replace``; nested ``encoder``/``pred`` may be given as dicts of changes."""
        for key in ("encoder", "pred"):
            if isinstance(changes.get(key), dict):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)


def feature_fill(cfg):
    """The frame that stands for "no input": the feature mean (zeros after the
    model's normalization), float32 [n_mels]. Pads partial chunks and fills
    SpecAugment's masks."""
    if cfg.feature_mean is None:
        return np.zeros(cfg.n_mels, np.float32)
    return np.asarray(cfg.feature_mean, np.float32)


def load_named_json(path_or_name, folder, what):
    """``(data, path)`` of a JSON file given by path, or by name as ``folder/<name>.json``;
    ``data["name"]`` defaults to the file's stem.

    Raises:
      FileNotFoundError: neither a file nor a known name (the message lists the names).
      ValueError: not UTF-8 JSON holding an object.
    """
    path = Path(path_or_name)
    if not path.is_file():
        path = Path(folder) / f"{path_or_name}.json"
        if not path.is_file():
            known = sorted(p.stem for p in Path(folder).glob("*.json"))
            raise FileNotFoundError(f"Expected a {what} file or one of {known}. Received {str(path_or_name)!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"Expected a UTF-8 JSON {what} file. Received {path}, whose byte {e.start} "
                         "is not UTF-8.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"Expected a JSON {what} file. Received {path}: {e}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"Expected a JSON object in {what} file {path}. Received a {type(data).__name__}.")
    data.setdefault("name", path.stem)
    return data, path


def load_config(path_or_name):
    """Loads a ModelConfig from a JSON file, or by name from ``gq_speech/configs/<name>.json``.

    Raises:
      FileNotFoundError: neither a file nor a known config name.
      ValueError, TypeError: malformed config.
    """
    data, _ = load_named_json(path_or_name, CONFIG_DIR, "model config")
    return ModelConfig.from_dict(data)


def reduction(cfg):
    """Total time reduction of the encoder (feature frames per encoder frame)."""
    if cfg.kind == "rnnt":
        return int(cfg.encoder.input_stack * np.prod(cfg.encoder.stack_after))
    return SUBSAMPLING


def encoder_dim(cfg):
    """D, the size of an encoder frame."""
    return cfg.encoder.output_dim if cfg.kind == "rnnt" else cfg.encoder.d_model


def encoder_lengths(frame_lengths, cfg):
    """Encoder frames T' = ceil(T / reduction) for T feature frames (tensor or array)."""
    r = reduction(cfg)
    return (frame_lengths + (r - 1)) // r


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


# ----------------------------------------------------------------- training graph


def _input_stack(x, cfg):
    f = cfg.encoder.input_stack
    return FrameStacking(f, name="encoder_input_stack")(x) if f > 1 else x


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
                                 f"Received layers {[unwrap_layer(l).name for l in src.layers]}.")
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
