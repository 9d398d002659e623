"""Model configs of the transducers: the dataclasses, their JSON files and what follows from them.

``ModelConfig`` (with ``RNNTEncoderConfig`` / ``ConformerEncoderConfig`` and
``PredictionConfig``) is the JSON data of ``configs/<name>.json``, validated on
construction; ``load_config`` and ``load_named_json`` read such files by path
or by name; ``reduction``, ``encoder_dim``, ``encoder_lengths`` and
``feature_fill`` are the sizes and constants a config implies. Plain Python
and NumPy: nothing here builds a Keras layer (``gq_speech.models`` does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = [
    "CONFIG_DIR",
    "KINDS",
    "MAX_SIZE",
    "SUBSAMPLING",
    "ConformerEncoderConfig",
    "ModelConfig",
    "PredictionConfig",
    "RNNTEncoderConfig",
    "encoder_dim",
    "encoder_lengths",
    "feature_fill",
    "load_config",
    "load_named_json",
    "reduction",
]

KINDS = ("rnnt", "conformer")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUBSAMPLING = 4  # the Conformer's two stride-2 convolutions


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
        for name in ("name", "notes"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"Expected {name} to be a string. Received: {name}={getattr(self, name)!r}")
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
