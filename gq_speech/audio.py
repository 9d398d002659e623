"""Signal helpers of the corpus and its far-field copy: silence trimming, coloured noise,
mixing at a signal-to-noise ratio, 16-bit conversion. numpy only."""

from __future__ import annotations

import numpy as np

from gq_speech.librispeech import SAMPLE_RATE

__all__ = ["colored_noise", "mix_at_snr", "to_int16", "trim_silence"]


def trim_silence(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = -40.0,
                 margin_s: float = 0.15) -> np.ndarray:
    """``audio`` without leading/trailing frames quieter than ``threshold_db`` below the loudest.

    Args:
      audio: 1-D samples.
      sample_rate: their rate (frames are 10 ms).
      threshold_db: frames whose RMS is this far below the loudest frame's are silence.
      margin_s: seconds of the silence kept on each side.

    Returns:
      A slice of ``audio`` (all of it when nothing is loud).

    Example:
      >>> len(trim_silence(np.r_[np.zeros(16000), np.ones(1600), np.zeros(16000)]))
      6400
    """
    frame = sample_rate // 100
    n = len(audio) // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (threshold_db / 20))
    if len(loud) == 0:
        return audio
    margin = int(margin_s * sample_rate)
    return audio[max(0, loud[0] * frame - margin): min(len(audio), (loud[-1] + 1) * frame + margin)]


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: ``white`` (flat), ``pink`` (power ~ 1/f) or ``brown`` (~ 1/f^2).

    Pink and brown are white noise shaped in the frequency domain (no DC).

    Args:
      kind: ``white``, ``pink`` or ``brown``.
      n: number of samples.
      rng: the generator (the result is a function of its state).

    Returns:
      float32 samples with RMS 1.

    Raises:
      ValueError: an unknown ``kind``.
    """
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = np.inf  # no DC
        spectrum /= f ** (0.5 if kind == "pink" else 1.0)
        x = np.fft.irfft(spectrum, n)
    else:
        raise ValueError(f"Expected noise kind white, pink or brown. Received: {kind!r}")
    return (x / max(np.sqrt(np.mean(x**2)), 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with g such that 10 log10(P_speech / P_noise) = ``snr_db``.

    Powers are means over the whole signals (pauses included); ``noise`` is
    tiled or cut to the speech length.

    Args:
      speech, noise: 1-D samples.
      snr_db: the signal-to-noise ratio of the result.

    Returns:
      float32 samples, as long as ``speech``.

    Raises:
      ValueError: ``noise`` is all zeros.
    """
    noise = np.resize(noise, len(speech)).astype(np.float64)
    p_s, p_n = np.mean(speech.astype(np.float64) ** 2), np.mean(noise**2)
    if p_n == 0:
        raise ValueError("Expected noise with some power. Received silence")
    return (speech + noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))).astype(np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] as 16-bit PCM (clipped, rounded)."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
