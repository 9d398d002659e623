"""Transcribing audio files with an exported streaming model, as an app would.

``transcribe_file`` reads any file ``soundfile`` reads (wav, flac, ogg, ...;
any sample rate and channel count), downmixes it to mono, resamples it to the
model's 16 kHz with a polyphase filter (``scipy.signal.resample_poly``) and
computes its log-mel features with exactly the path the model was trained
and evaluated on (``features.log_mel`` of the whole utterance, rounded to
float16 as ``train.load_split`` caches them; the model config's ``n_mels``).
It then feeds the features to a ``deploy.StreamingRecognizer`` chunk by
chunk, in real-time order, and measures what a user of a streaming app would
notice:

* per-chunk latency: the time of each ``push()`` of one chunk of frames, i.e.
  the encoder step plus the prediction and joint calls of the greedy decoding
  that chunk triggers;
* UPL (user-perceived latency): the time from the end of the audio to the
  final transcript. Each chunk can start once its last frame's audio has
  arrived (real time) and the previous chunk is done; what is still pending
  when the audio ends (the last, partial chunk completed with mean frames by
  ``finish()``, and any backlog of slower-than-real-time chunks) is the UPL;
* RTF (real-time factor): the recognizer's processing time (every chunk and
  ``finish()``) over the audio's duration.

The front-end is not in those numbers (it runs over the whole file before
streaming; ``features_ms`` reports it).

Example:
  >>> rec = open_recognizer("runs/asr_demo/rnnt_small/gq_mixed/stream")
  >>> res = transcribe_file(rec, "hello.wav", stream_callback=lambda t, text: print(f"{t:.2f} {text}"))
  >>> res.text, res.chunk_ms_p50, res.upl_ms, res.rtf
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np

__all__ = [
    "AudioError",
    "TranscriptResult",
    "audio_features",
    "open_recognizer",
    "read_audio",
    "transcribe_file",
]


class AudioError(ValueError):
    """An input file that cannot be transcribed (not audio, empty, too short, not finite)."""


@dataclasses.dataclass
class TranscriptResult:
    """The transcript of one file and the timings of its streaming.

    Attributes:
      path: the audio file.
      text: the final transcript.
      tokens: its token ids (``text.Tokenizer``).
      duration_s: the audio's duration.
      sample_rate: the file's sample rate (Hz), before resampling.
      channels: the file's channel count, before the downmix.
      frames: log-mel feature frames (10 ms each).
      chunk_ms: processing time of each chunk in streaming order, ms (the
        last entry is the partial last chunk run by ``finish()``, if any).
      upl_ms: user-perceived latency, ms (see the module docstring).
      processing_ms: all of the recognizer's processing (chunks + ``finish()``), ms.
      features_ms: the front-end over the whole file (resampled audio ->
        features), ms; not part of the latencies (the first file of a
        process also pays for tracing the front-end's graph).
      partials: ``[(audio time s, text)]``: each new partial hypothesis, at
        the audio time its chunk was complete; the last one is at the end of
        the audio and equals ``text`` when ``finish()`` added tokens.
    """

    path: str
    text: str
    tokens: list
    duration_s: float
    sample_rate: int
    channels: int
    frames: int
    chunk_ms: list
    upl_ms: float
    processing_ms: float
    features_ms: float
    partials: list

    @property
    def chunks(self) -> int:
        """Number of encoder chunks run."""
        return len(self.chunk_ms)

    @property
    def chunk_ms_p50(self) -> float:
        """Median per-chunk latency, ms."""
        return float(np.percentile(self.chunk_ms, 50))

    @property
    def chunk_ms_p90(self) -> float:
        """90th percentile of the per-chunk latency, ms."""
        return float(np.percentile(self.chunk_ms, 90))

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration."""
        return self.processing_ms / 1000.0 / self.duration_s

    def summary(self) -> str:
        """One line: chunks, chunk latency P50/P90, UPL and RTF."""
        return (f"chunks {self.chunks}, chunk latency P50 {self.chunk_ms_p50:.3f} ms, "
                f"P90 {self.chunk_ms_p90:.3f} ms, UPL {self.upl_ms:.3f} ms, RTF {self.rtf:.4f}")

    def to_dict(self) -> dict:
        """JSON-serialisable dict: every field plus chunks, the percentiles and RTF."""
        d = dataclasses.asdict(self)
        d["partials"] = [{"time_s": t, "text": s} for t, s in self.partials]
        d.update(chunks=self.chunks, chunk_ms_p50=self.chunk_ms_p50, chunk_ms_p90=self.chunk_ms_p90, rtf=self.rtf)
        return d


# ----------------------------------------------------------------- audio and features


def read_audio(path, sample_rate: int) -> tuple[np.ndarray, int, int, float]:
    """The samples of an audio file as float32 mono at ``sample_rate``.

    Channels are averaged; another rate is converted with
    ``scipy.signal.resample_poly`` (a Kaiser-windowed polyphase FIR at the
    reduced ratio ``sample_rate / rate``: anti-aliased, no images). A file
    already at ``sample_rate`` and mono is returned as ``soundfile`` reads
    it, like ``librispeech.load_audio`` in training.

    Args:
      path: any file ``soundfile`` reads (wav, flac, ogg, ...).
      sample_rate: the rate to return, Hz.

    Returns:
      ``(audio [S] float32 at sample_rate, the file's rate, the file's
      channel count, the duration in seconds)``.

    Raises:
      FileNotFoundError: no such file.
      AudioError: a directory, not audio, no samples, or non-finite samples.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Expected an audio file. Received {str(path)!r}: no such file.")
    if path.is_dir():
        raise AudioError(f"Expected an audio file. Received {str(path)!r}: a directory.")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"Expected an audio file soundfile reads (wav, flac, ogg, ...). "
                         f"Received {str(path)!r}: {e}") from None
    if audio.shape[0] == 0:
        raise AudioError(f"Expected audio samples. Received {str(path)!r}: 0 samples "
                         f"({rate} Hz, {audio.shape[1]} channel(s)).")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"Expected finite samples. Received {str(path)!r}: NaN or infinite samples.")
    channels = audio.shape[1]
    mono = audio[:, 0] if channels == 1 else audio.mean(axis=1, dtype=np.float64)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        mono = resample_poly(np.asarray(mono, np.float64), sample_rate // g, rate // g)
    return np.asarray(mono, np.float32), int(rate), int(channels), audio.shape[0] / rate


@functools.lru_cache(maxsize=4)
def _log_mel_fn(feature_cfg):
    from gq_speech import features
    from gq_tf._keras import tf

    # One traced graph for every length, as in train.load_split.
    return tf.function(lambda audio: features.log_mel(audio, feature_cfg),
                       input_signature=[tf.TensorSpec([None], tf.float32)])


def audio_features(audio, feature_cfg) -> np.ndarray:
    """Log-mel features of 16 kHz mono audio, exactly as the model was trained and evaluated on.

    ``features.log_mel`` of the whole utterance, rounded to float16 (the
    precision ``train.load_split`` caches training and test features in),
    returned as float32.

    Args:
      audio: 1-D float32 audio at ``feature_cfg.sample_rate``.
      feature_cfg: ``features.FeatureConfig`` (``n_mels`` of the model).

    Returns:
      float32 ``[frames, n_mels]``.
    """
    from gq_tf._keras import tf

    feats = _log_mel_fn(feature_cfg)(tf.constant(np.asarray(audio, np.float32)))
    return np.asarray(feats, np.float16).astype(np.float32)


# ----------------------------------------------------------------- the recognizer


def _feature_config(recognizer):
    from gq_speech import features

    # The model's front-end: the defaults with its n_mels (experiment.prepare).
    return features.FeatureConfig(n_mels=recognizer.cfg.n_mels)


def open_recognizer(export_dir, *, kernel="auto", num_threads=1, warm_up=True):
    """A ``deploy.StreamingRecognizer`` on an export directory, checked and warmed up.

    Args:
      export_dir: a directory written by ``deploy.export_streaming``.
      kernel, num_threads: as in ``converters.make_interpreter``.
      warm_up: run one chunk of mean frames first (and forget it), so that the
        first file's first chunk does not pay the interpreters' first-invoke
        costs.

    Returns:
      The recognizer.

    Raises:
      FileNotFoundError: no such directory, no ``streaming.json``, or a
        ``.tflite`` file it names is missing.
      ValueError: ``streaming.json`` is not JSON, not of the format
        ``deploy.FORMAT`` or without a valid model config and graph table; a
        bad kernel or thread count; a file the runtime cannot load.
    """
    from gq_speech import deploy, models

    directory = Path(export_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"Expected an export directory (deploy.export_streaming). "
                                f"Received {str(directory)!r}: no such directory.")
    manifest_path = directory / deploy.MANIFEST
    if manifest_path.is_file():
        # deploy.load_manifest assumes a JSON object; anything else is reported here.
        try:
            data = json.loads(manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"Expected {deploy.MANIFEST} in {str(directory)!r} to be JSON. Received invalid JSON: "
                             f"{e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"Expected {deploy.MANIFEST} in {str(directory)!r} to hold a JSON object. "
                             f"Received a JSON {type(data).__name__}.")
    manifest = deploy.load_manifest(directory)
    try:
        models.ModelConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Expected a model config in {str(manifest_path)!r}. Received: {type(e).__name__}: {e}") \
            from None
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or any(not isinstance(graphs.get(p), dict) or "file" not in graphs[p]
                                           for p in deploy.PARTS):
        received = sorted(graphs) if isinstance(graphs, dict) else graphs
        raise ValueError(f"Expected {deploy.MANIFEST} in {str(directory)!r} to name a file for each graph "
                         f"{list(deploy.PARTS)}. Received graphs: {received!r}")
    for part in deploy.PARTS:
        file = directory / graphs[part]["file"]
        if not file.is_file():
            raise FileNotFoundError(f"Expected the {part} graph {str(file)!r} named by {deploy.MANIFEST}. "
                                    f"Received: no such file.")
    rec = deploy.StreamingRecognizer(directory, kernel=kernel, num_threads=num_threads)
    if warm_up:
        rec.push(np.tile(models.feature_fill(rec.cfg), (rec.chunk_frames, 1)))
        rec.finish()
        rec.reset()
        rec.clear_timings()
    return rec


# ----------------------------------------------------------------- streaming


def _stream(recognizer, feats, duration_s, tokenizer, stream_callback):
    """Streams ``feats`` through ``recognizer`` in real-time order (``deploy.stream_timed``).

    Frame ``j`` can be computed once the audio up to ``j * frame_step +
    frame_length`` samples has arrived; the audio ends at ``duration_s``.

    Returns:
      dict of TranscriptResult's fields tokens, text, chunk_ms, upl_ms,
      processing_ms and partials.
    """
    from gq_speech.deploy import stream_timed

    fc = _feature_config(recognizer)
    partials = []

    def on_new(new, audio_time):
        partials.append((round(audio_time, 4), tokenizer.decode(recognizer.tokens)))
        if stream_callback is not None:
            stream_callback(*partials[-1])

    out = stream_timed(recognizer, feats, lambda j: (j * fc.frame_step + fc.frame_length) / fc.sample_rate,
                       duration_s, on_new)
    return {"tokens": out["tokens"], "text": tokenizer.decode(out["tokens"]),
            "chunk_ms": [1000.0 * s for s in out["chunk_s"]], "upl_ms": 1000.0 * out["upl_s"],
            "processing_ms": 1000.0 * out["busy_s"], "partials": partials}


def transcribe_file(recognizer, path, stream_callback=None, *, tokenizer=None) -> TranscriptResult:
    """Transcribes one audio file by streaming its features through ``recognizer``.

    Reads, downmixes and resamples the file (``read_audio``), computes its
    features (``audio_features``), then pushes them one chunk at a time in
    real-time order and ends with ``finish()``; see the module docstring for
    what the latencies measure.

    Args:
      recognizer: from ``open_recognizer`` (reset here; reusable for the next file).
      path: any file ``soundfile`` reads; any rate and channel count.
      stream_callback: ``stream_callback(audio_time_s, partial_text)``, called
        with each new partial hypothesis as the chunks are processed.
      tokenizer: ``text.Tokenizer`` (default: a new one).

    Returns:
      TranscriptResult.

    Raises:
      FileNotFoundError: no such file.
      AudioError: not audio, no samples, or shorter than one feature frame (25 ms).

    Example:
      >>> rec = open_recognizer("runs/asr_demo/rnnt_small/gq4/stream")
      >>> res = transcribe_file(rec, "turn_on_the_lights.flac")
      >>> print(res.text); print(res.summary())
    """
    from gq_speech.text import Tokenizer

    fc = _feature_config(recognizer)
    audio, rate, channels, duration_s = read_audio(path, fc.sample_rate)
    t0 = time.perf_counter()
    feats = audio_features(audio, fc)
    features_ms = 1000.0 * (time.perf_counter() - t0)
    if len(feats) == 0:
        raise AudioError(f"Expected at least {1000 * fc.frame_length / fc.sample_rate:g} ms of audio (one feature "
                         f"frame). Received {str(path)!r}: {1000 * duration_s:.1f} ms.")
    streamed = _stream(recognizer, feats, duration_s, tokenizer or Tokenizer(), stream_callback)
    return TranscriptResult(path=str(path), duration_s=duration_s, sample_rate=rate, channels=channels,
                            frames=len(feats), features_ms=features_ms, **streamed)
