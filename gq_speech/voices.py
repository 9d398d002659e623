"""The voices and presets of the built-in speech corpus (:mod:`gq_speech.corpus`).

The voice table (espeak-ng accents x variants, flite voices, piper settings
of the one ``joe`` speaker), each voice in exactly one split, with speaker
numbers fixed across presets; :class:`CorpusConfig`, what to generate, and
the presets (``tiny``, ``small``, ``full``). The table and the presets are
described in :mod:`gq_speech.corpus`. Pure data: no engine runs here, and
nothing imports TensorFlow (the corpus workers unpickle :class:`Voice`).

Example:
  >>> [v.id for v in preset_voices("tiny")["dev"]]
  ['espeak-en-gb-x-gbclan+m7', 'flite-awb', 'piper-joe-ls1.08-ns0.6-nw0.7']
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

__all__ = [
    "PRESETS",
    "CorpusConfig",
    "Voice",
    "all_voices",
    "preset_voices",
]

SPLITS = ("train", "dev", "test")
ENGINES = ("espeak", "flite", "piper")

# ----------------------------------------------------------------- the voice table

# "en" is espeak-ng's British English (the same audio as "en-gb"), named so
# because espeak-ng 1.51 ignores the variant of "en-gb+X" (every such voice is
# plain en-gb, exit status 0), while "en+X" honours it. corpus.check_voices_differ
# refuses a table in which two voices sound the same.
ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
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


def resolve_config(config) -> CorpusConfig:
    """A preset name, dict or :class:`CorpusConfig`, as a validated :class:`CorpusConfig`."""
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
    config = resolve_config(config)
    out = {s: [] for s in SPLITS}
    for engine in ENGINES:
        if config.engine_mix.get(engine, 0) <= 0:
            continue
        for split, n in zip(SPLITS, config.voices[engine]):
            out[split] += [v for v in all_voices() if (v.engine, v.split) == (engine, split)][:n]
    return out
