"""Log-mel filterbank front-end, shared by training and deployment.

The front-end is a pure function of the audio (``log_mel``), written with
``tf.signal`` so that the training pipeline and the on-device app compute the
same numbers. It is deliberately *not* part of the exported TFLite graphs: the
streaming app runs it itself through ``StreamingFeatures``, which feeds the
same ``log_mel`` computation chunk by chunk. This keeps the exported encoder a
plain ``[frames, n_mels] -> [frames, D]`` network (no FFT ops to convert or
quantize) and makes the front-end easy to test for streaming exactness.

Framing uses no padding and no centering: frame ``i`` covers samples
``[i * frame_step, i * frame_step + frame_length)``. Hence the features of a
prefix of the audio are exactly the first frames of the features of the whole
audio, which is what makes ``StreamingFeatures`` exact.

Feature normalization (``FeatureStats``) is a per-mel-bin affine map with
constants computed once over a training set; the models apply it as fixed
constants.

Example:
  >>> cfg = FeatureConfig(n_mels=80)
  >>> feats = log_mel(audio, cfg)                 # [frames, 80]
  >>> stats = FeatureStats.compute(log_mel(a, cfg) for a in corpus)
  >>> normed = stats.apply(feats)
"""

import dataclasses

import numpy as np

from gq_tf._keras import tf

__all__ = [
    "FeatureConfig",
    "FeatureStats",
    "StreamingFeatures",
    "log_mel",
    "num_frames",
]


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the log-mel front-end.

    Attributes:
      sample_rate: audio sample rate in Hz (audio is float32 mono in [-1, 1]).
      frame_length: window length in samples (400 = 25 ms at 16 kHz).
      frame_step: hop in samples (160 = 10 ms at 16 kHz).
      fft_length: FFT size (>= frame_length).
      n_mels: number of mel bins.
      fmin: lowest mel edge in Hz.
      fmax: highest mel edge in Hz (<= sample_rate / 2).
      log_floor: mel energies are clamped to at least this before the log.
    """

    sample_rate: int = 16000
    frame_length: int = 400
    frame_step: int = 160
    fft_length: int = 512
    n_mels: int = 80
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6

    def __post_init__(self):
        for name in ("sample_rate", "frame_length", "frame_step", "fft_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(
                    f"Expected {name} to be a positive integer. Received: {name}={value!r}"
                )
        if self.fft_length < self.frame_length:
            raise ValueError(
                "Expected fft_length >= frame_length. Received: "
                f"fft_length={self.fft_length}, frame_length={self.frame_length}"
            )
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                "Expected 0 <= fmin < fmax <= sample_rate / 2. Received: "
                f"fmin={self.fmin}, fmax={self.fmax}, sample_rate={self.sample_rate}"
            )
        if not self.log_floor > 0:
            raise ValueError(f"Expected log_floor > 0. Received: log_floor={self.log_floor}")

    def to_dict(self):
        """Returns the config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        """Builds a config from ``to_dict`` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(
                f"Unknown FeatureConfig keys: {unknown}. Expected a subset of {sorted(names)}."
            )
        return cls(**config)


def num_frames(num_samples, cfg=None):
    """Number of feature frames ``log_mel`` gives for ``num_samples`` samples.

    ``max(0, 1 + (num_samples - frame_length) // frame_step)``: only whole
    frames, no padding.

    Args:
      num_samples: a Python int, NumPy array or int tensor.
      cfg: a ``FeatureConfig`` (default: ``FeatureConfig()``).

    Returns:
      Same kind as ``num_samples``.
    """
    cfg = cfg or FeatureConfig()
    if tf.is_tensor(num_samples):
        n = num_samples - cfg.frame_length
        return tf.maximum(n // cfg.frame_step + 1, 0)
    if isinstance(num_samples, (int, np.integer)):
        return max(0, 1 + (int(num_samples) - cfg.frame_length) // cfg.frame_step)
    n = np.asarray(num_samples) - cfg.frame_length
    return np.maximum(n // cfg.frame_step + 1, 0)


def _mel_matrix(cfg):
    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=cfg.n_mels,
        num_spectrogram_bins=cfg.fft_length // 2 + 1,
        sample_rate=cfg.sample_rate,
        lower_edge_hertz=cfg.fmin,
        upper_edge_hertz=cfg.fmax,
    )


def log_mel(audio, cfg=None):
    """Log-mel filterbank features of float32 audio.

    ``log(max(|rfft(hann * frame)|^2 @ M, log_floor))`` with ``M`` the
    ``tf.signal`` (HTK-style) mel weight matrix and a periodic Hann window.
    Frames are taken without padding, so frame ``i`` depends only on samples
    ``[i * frame_step, i * frame_step + frame_length)``.

    Args:
      audio: ``[S]`` or ``[B, S]`` float audio (tensor or NumPy) at
        ``cfg.sample_rate``, in [-1, 1].
      cfg: a ``FeatureConfig`` (default: ``FeatureConfig()``).

    Returns:
      float32 tensor ``[..., num_frames(S), n_mels]``.
    """
    cfg = cfg or FeatureConfig()
    audio = tf.convert_to_tensor(audio, dtype=tf.float32)
    if audio.shape.rank not in (1, 2):
        raise ValueError(f"Expected audio of shape [S] or [B, S]. Received shape {audio.shape}.")
    frames = tf.signal.frame(audio, cfg.frame_length, cfg.frame_step, pad_end=False)
    frames = frames * tf.signal.hann_window(cfg.frame_length, periodic=True)
    # Zero-padding to fft_length by hand rather than inside the FFT op, which
    # rejects inputs with zero frames (audio shorter than one frame).
    pad = [[0, 0]] * (frames.shape.rank - 1) + [[0, cfg.fft_length - cfg.frame_length]]
    stft = tf.signal.rfft(tf.pad(frames, pad), fft_length=[cfg.fft_length])
    power = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
    mel = tf.tensordot(power, _mel_matrix(cfg), axes=1)
    mel.set_shape(power.shape[:-1].concatenate([cfg.n_mels]))
    return tf.math.log(tf.maximum(mel, cfg.log_floor))


class StreamingFeatures:
    """Incremental ``log_mel`` for audio that arrives in chunks.

    Keeps the samples not yet covered by a whole frame. The frames returned by
    successive ``push`` calls, concatenated, equal ``log_mel`` of the whole
    audio (up to float rounding of the FFT). Trailing samples that never fill a
    frame produce nothing, exactly as in ``log_mel``.

    This is the front-end of the on-device app: the exported graphs take
    feature frames, not audio.

    Args:
      cfg: a ``FeatureConfig`` (default: ``FeatureConfig()``).

    Example:
      >>> fe = StreamingFeatures(cfg)
      >>> for chunk in microphone():
      ...     frames = fe.push(chunk)        # np [k, n_mels], k may be 0
    """

    def __init__(self, cfg=None):
        self.cfg = cfg or FeatureConfig()
        cfg = self.cfg
        self._fn = tf.function(
            lambda x: log_mel(x, cfg),
            input_signature=[tf.TensorSpec([None], tf.float32)],
        )
        self.reset()

    def reset(self):
        """Forgets buffered samples (start of a new utterance)."""
        self._buffer = np.zeros([0], np.float32)
        self.frames_emitted = 0

    def push(self, samples):
        """Adds samples and returns the frames they complete.

        Args:
          samples: 1-D float audio chunk (any length, may be empty).

        Returns:
          float32 NumPy array ``[k, n_mels]``, ``k >= 0``.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"Expected a 1-D chunk of samples. Received shape {samples.shape}.")
        buffer = np.concatenate([self._buffer, samples])
        k = num_frames(len(buffer), self.cfg)
        if k == 0:
            self._buffer = buffer
            return np.zeros([0, self.cfg.n_mels], np.float32)
        used = (k - 1) * self.cfg.frame_step + self.cfg.frame_length
        frames = self._fn(tf.constant(buffer[:used])).numpy()
        self._buffer = buffer[k * self.cfg.frame_step :]
        self.frames_emitted += k
        return frames


class FeatureStats:
    """Per-mel-bin mean and standard deviation for feature normalization.

    ``apply(x) = (x - mean) / std``. ``std`` is floored at ``min_std`` so that
    a constant bin does not blow up.

    Args:
      mean: ``[n_mels]`` means.
      std: ``[n_mels]`` standard deviations.
      count: number of frames the statistics were computed over.
    """

    def __init__(self, mean, std, count=0):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"Expected mean and std of the same shape. Received {self.mean.shape} and {self.std.shape}."
            )
        if not np.all(self.std > 0):
            raise ValueError("Expected std > 0 in every bin.")
        self.count = int(count)

    @property
    def n_mels(self):
        return self.mean.shape[0]

    @classmethod
    def compute(cls, features, min_std=1e-3):
        """Statistics over an iterable of feature arrays.

        Uses Chan et al.'s pairwise merge of (count, mean, M2) in float64, so it
        is stable over long iterators.

        Args:
          features: iterable of ``[frames, n_mels]`` or ``[B, frames, n_mels]``
            arrays/tensors, or of ``(features [B, frames, n_mels], lengths [B])``
            pairs, in which case only the first ``lengths[b]`` frames of item b
            count (padding is ignored).
          min_std: floor for the standard deviation.

        Returns:
          a ``FeatureStats``.

        Raises:
          ValueError: no frames at all, or inconsistent ``n_mels``.
        """
        n, mean, m2 = 0, None, None
        for item in features:
            if isinstance(item, tuple):
                feats, lengths = item
                feats = np.asarray(feats, np.float64)
                lengths = np.asarray(lengths).reshape(-1)
                mask = np.arange(feats.shape[1])[None, :] < lengths[:, None]
                x = feats[mask]
            else:
                x = np.asarray(item, np.float64)
                x = x.reshape(-1, x.shape[-1])
            if x.shape[0] == 0:
                continue
            if mean is not None and x.shape[1] != mean.shape[0]:
                raise ValueError(
                    f"Expected features with {mean.shape[0]} mel bins. Received {x.shape[1]}."
                )
            nb, mb = x.shape[0], x.mean(axis=0)
            m2b = ((x - mb) ** 2).sum(axis=0)
            if mean is None:
                n, mean, m2 = nb, mb, m2b
                continue
            delta = mb - mean
            total = n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + m2b + delta**2 * (n * nb / total)
            n = total
        if n == 0:
            raise ValueError("Expected at least one feature frame. Received none.")
        std = np.maximum(np.sqrt(m2 / n), min_std)
        return cls(mean, std, n)

    def apply(self, features):
        """Normalizes ``[..., n_mels]`` features (NumPy in, NumPy out; tensor in, tensor out)."""
        if tf.is_tensor(features):
            mean = tf.constant(self.mean, dtype=features.dtype)
            std = tf.constant(self.std, dtype=features.dtype)
            return (features - mean) / std
        features = np.asarray(features, np.float32)
        return (features - self.mean) / self.std

    def to_dict(self):
        """JSON-serialisable dict."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, config):
        """Inverse of ``to_dict``."""
        return cls(config["mean"], config["std"], config.get("count", 0))

    def __repr__(self):
        return f"FeatureStats(n_mels={self.n_mels}, count={self.count})"
