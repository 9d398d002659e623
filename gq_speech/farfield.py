"""The far-field condition: a corpus subset replayed in simulated rooms, with noise.

The paper's second data set is far-field speech. Here a subset of the
built-in corpus (``test`` by default) is convolved with room impulse
responses simulated by ``pyroomacoustics`` (image source method, shoebox
rooms), then noise is added at fixed SNRs and the peak is normalized:

- rooms: ``3 x 3 x 2.5`` to ``10 x 8 x 4`` m, RT60 0.2-0.9 s (Sabine
  target; the manifest records the RT60 measured on the response, 0.23-1.33 s
  for the default bank), the source 1-5 m from the microphone, both at least
  0.5 m from the walls. Draws whose image-source order would exceed
  ``max_order`` (small rooms with long RT60, several seconds each to
  simulate) are redrawn.
- a bank of ``n_rooms`` responses, computed once (16 in 1.4-2 s on 2 cores) and
  cached in ``<corpus>/farfield/rirs-<hash>.npz``; each utterance uses one.
- noise: pink, brown, or babble (a sum of other utterances of the subset),
  at an SNR from ``snrs`` relative to the reverberant speech; the SNRs are
  dealt evenly over the utterances (each utterance appears once; the
  manifest's ``snr_db`` lets results be broken down by SNR).
- output: peak at -3 dBFS, written as another LibriSpeech subset of the
  corpus (``test_far``: same speakers, chapter = 100 + room index) plus
  manifest lines (source_id, room, rt60, rt60_target, distance_m, snr_db,
  noise, rir) and ``farfield-<out_subset>.json``.

About 10 ms per utterance once the bank exists (the small preset's 200 test
utterances: 3.7 s in all). Deterministic for a seed, cached (same config and
seed: nothing to do), and written to a temporary directory renamed at the
end. ``make_farfield`` with other settings replaces the subset it made.

Example:
  >>> from gq_speech.corpus import make_corpus
  >>> make_corpus("runs/asr/corpus_small", "small")           # doctest: +SKIP
  >>> make_farfield("runs/asr/corpus_small", subset="test")   # doctest: +SKIP

CLI: ``python -m gq_speech.farfield --corpus DIR [--subset test] [--out-subset test_far] [--seed N]``
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from gq_speech.audio import colored_noise, mix_at_snr
from gq_speech.librispeech import MANIFEST, SAMPLE_RATE, Manifest, load_audio, write_utterance
from gq_tf.fileio import remove_stale_tmp

__all__ = ["FARFIELD_VERSION", "TRAINING_ROOMS", "FarfieldConfig", "make_farfield", "reverberate", "rir_bank"]

FARFIELD_VERSION = 1
_MARKER = ".farfield"  # marks a subset directory this module made (safe to replace)


@dataclasses.dataclass
class FarfieldConfig:
    """The simulated conditions (all part of the cache key)."""

    n_rooms: int = 16
    room_min: tuple = (3.0, 3.0, 2.5)
    room_max: tuple = (10.0, 8.0, 4.0)
    rt60: tuple = (0.2, 0.9)
    distance: tuple = (1.0, 5.0)
    snrs: tuple = (0.0, 5.0, 10.0, 20.0)
    noises: tuple = ("pink", "brown", "babble")
    babble_talkers: int = 4
    max_order: int = 90
    peak_dbfs: float = -3.0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.n_rooms < 1:
            raise ValueError(f"Expected n_rooms >= 1. Received: {self.n_rooms}")
        if not self.snrs:
            raise ValueError("Expected at least one SNR. Received none")
        if any(lo > hi for lo, hi in zip(self.room_min, self.room_max)) or min(self.room_min) < 1.5:
            raise ValueError(f"Expected 1.5 m <= room_min <= room_max. Received: {self.room_min}, {self.room_max}")
        if not 0.1 <= self.rt60[0] <= self.rt60[1]:
            raise ValueError(f"Expected 0.1 <= rt60 low <= high. Received: {self.rt60}")
        if not 0 < self.distance[0] <= self.distance[1]:
            raise ValueError(f"Expected 0 < distance low <= high. Received: {self.distance}")
        bad = [n for n in self.noises if n not in ("white", "pink", "brown", "babble")]
        if bad or not self.noises:
            raise ValueError(f"Expected noises among white, pink, brown, babble. Received: {self.noises}")


# The training (multi-condition) and dev rooms: drawn with other seeds than the test set's and
# from wider ranges (smaller and larger rooms, talkers nearer and farther, more SNRs), so the
# test rooms are neither the same rooms nor the same distribution.
TRAINING_ROOMS = FarfieldConfig(n_rooms=32, room_min=(2.5, 2.5, 2.4), room_max=(12.0, 9.0, 4.5), rt60=(0.15, 1.0),
                                distance=(0.5, 5.5), snrs=(0.0, 3.0, 6.0, 10.0, 15.0, 20.0, 30.0))


# ----------------------------------------------------------------- rooms


def _draw_room(rng: np.random.Generator, cfg: FarfieldConfig):
    """(dims, rt60, mic, source, distance, absorption, max_order) of one room, redrawn until valid."""
    import pyroomacoustics as pra

    lo, hi = np.array(cfg.room_min), np.array(cfg.room_max)
    for _ in range(1000):
        dims = np.round(rng.uniform(lo, hi), 2)
        rt60 = round(float(rng.uniform(*cfg.rt60)), 3)
        distance = round(float(rng.uniform(*cfg.distance)), 2)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # the room is too small for this RT60 under Sabine's formula
            continue
        if max_order > cfg.max_order:
            continue
        margin = 0.5
        mic = np.array([rng.uniform(margin, dims[0] - margin), rng.uniform(margin, dims[1] - margin),
                        rng.uniform(0.7, min(1.6, dims[2] - margin))])
        angle = rng.uniform(0, 2 * np.pi)
        height = rng.uniform(1.2, min(1.9, dims[2] - margin))  # a standing or seated talker
        dz = height - mic[2]
        horizontal = np.sqrt(max(distance**2 - dz**2, 0.0))
        source = np.array([mic[0] + horizontal * np.cos(angle), mic[1] + horizontal * np.sin(angle), height])
        if np.all(source[:2] >= margin) and np.all(source[:2] <= dims[:2] - margin):
            return dims, rt60, mic, source, float(np.linalg.norm(source - mic)), float(absorption), int(max_order)
    raise ValueError(f"Expected rooms that fit a {cfg.distance} m source distance. Received room sizes "
                     f"{cfg.room_min}..{cfg.room_max}: no valid draw in 1000 tries")


def _simulate(room: tuple) -> np.ndarray:
    import pyroomacoustics as pra

    dims, _, mic, source, _, absorption, max_order = room
    r = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=max_order)
    r.add_source(source)
    r.add_microphone(mic)
    r.compute_rir()
    return np.asarray(r.rir[0][0], np.float32)


def rir_bank(cfg: FarfieldConfig, seed: int, cache_dir=None, workers: int = 2, log=print) -> dict:
    """The bank of room impulse responses (cached as ``rirs-<hash>.npz`` in ``cache_dir``).

    Returns:
      ``{"rirs": list of float32 arrays, "rooms": list of dicts (dims,
      rt60_target, rt60, distance_m, mic, source, absorption, max_order),
      "path": the cache file or None}``.
    """
    import pyroomacoustics as pra

    key = json.dumps({"v": FARFIELD_VERSION, "seed": seed, "n": cfg.n_rooms, "room_min": cfg.room_min,
                      "room_max": cfg.room_max, "rt60": cfg.rt60, "distance": cfg.distance,
                      "max_order": cfg.max_order, "pra": pra.__version__}, sort_keys=True)
    path = Path(cache_dir) / f"rirs-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            lengths = z["lengths"]
            flat = z["flat"]
            rooms = json.loads(str(z["rooms"]))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return {"rirs": [flat[bounds[i]:bounds[i + 1]] for i in range(len(lengths))], "rooms": rooms,
                "path": str(path)}
    rng = np.random.default_rng([seed, 23])
    draws = [_draw_room(rng, cfg) for _ in range(cfg.n_rooms)]
    t0 = time.time()
    log(f"farfield: simulating {len(draws)} room impulse responses")
    if workers > 1 and len(draws) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(min(workers, len(draws))) as pool:
            rirs = pool.map(_simulate, draws)
    else:
        rirs = [_simulate(d) for d in draws]
    rooms = []
    for (dims, rt60, mic, source, distance, absorption, max_order), rir in zip(draws, rirs):
        rooms.append({"dims": [float(x) for x in dims], "rt60_target": rt60,
                      "rt60": round(float(pra.experimental.measure_rt60(rir, fs=SAMPLE_RATE)), 3),
                      "distance_m": round(distance, 2), "mic": [round(float(x), 3) for x in mic],
                      "source": [round(float(x), 3) for x in source], "absorption": round(absorption, 4),
                      "max_order": max_order})
    log(f"farfield: {len(rirs)} responses in {time.time() - t0:.1f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path, log, "farfield")
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}.npz"
        np.savez(tmp, flat=np.concatenate(rirs), lengths=np.array([len(r) for r in rirs], np.int64),
                 rooms=np.array(json.dumps(rooms)))
        os.replace(tmp, path)
    return {"rirs": rirs, "rooms": rooms, "path": str(path) if path else None}


def reverberate(audio: np.ndarray, rir: np.ndarray, tail_s: float = 0.3) -> np.ndarray:
    """``audio`` convolved with ``rir``, keeping ``tail_s`` seconds of the reverberant tail."""
    from scipy.signal import fftconvolve

    out = fftconvolve(audio.astype(np.float64), rir.astype(np.float64))
    return out[: len(audio) + int(tail_s * SAMPLE_RATE)].astype(np.float32)


# ----------------------------------------------------------------- the subset


def _key(cfg: FarfieldConfig, seed: int, subset: str, corpus_info: dict) -> dict:
    source = {k: corpus_info.get(k) for k in ("version", "seed", "config")}
    return {"version": FARFIELD_VERSION, "seed": int(seed), "subset": subset, "config": cfg.to_dict(),
            "corpus": source}


def _babble(utts: list, i: int, n: int, talkers: int, rng: np.random.Generator) -> np.ndarray:
    others = [j for j in range(len(utts)) if j != i] or [i]
    mix = np.zeros(n, np.float64)
    for j in rng.choice(others, size=min(talkers, len(others)), replace=False):
        x = load_audio(utts[int(j)].path).astype(np.float64)
        x = np.roll(np.resize(x, max(n, len(x))), -int(rng.integers(len(x))))[:n]
        mix += x / max(np.sqrt(np.mean(x**2)), 1e-9)
    return mix.astype(np.float32)


def make_farfield(corpus_dir, subset: str = "test", out_subset: str = "test_far", seed: int = 0,
                  snrs=None, n_rooms: int | None = None, config: FarfieldConfig | None = None,
                  workers: int = 2, log=print) -> Manifest:
    """Adds the far-field version of ``subset`` to the corpus as ``out_subset``.

    Args:
      corpus_dir: a corpus made by :func:`gq_speech.corpus.make_corpus`.
      subset: the source subset.
      out_subset: the new subset's name.
      seed: picks rooms, the room of each utterance, noise and SNR order.
      snrs, n_rooms: shortcuts overriding ``config``'s fields.
      config: a :class:`FarfieldConfig` (defaults otherwise).
      workers: processes simulating the room responses.
      log: receives progress lines.

    Returns:
      The corpus :class:`~gq_speech.librispeech.Manifest`, now with ``out_subset``.

    Raises:
      ValueError: ``subset`` is missing, ``out_subset`` equals it or names a
        subset this module did not make, or the config is invalid.
    """
    cfg = dataclasses.replace(config or FarfieldConfig())
    if snrs is not None:
        cfg.snrs = tuple(float(s) for s in snrs)
    if n_rooms is not None:
        cfg.n_rooms = int(n_rooms)
    cfg.validate()
    corpus_dir = Path(corpus_dir)
    manifest = Manifest.load(corpus_dir)
    if out_subset == subset:
        raise ValueError(f"Expected out_subset different from subset. Received both {subset!r}")
    utts = manifest.utterances(subset)
    key = _key(cfg, seed, subset, manifest.info)
    info_path = corpus_dir / f"farfield-{out_subset}.json"
    out_path = corpus_dir / out_subset
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if {k: info.get(k) for k in key} == key and out_path.is_dir():
            return manifest
        log(f"farfield: {out_subset} was made with other settings: remaking it")
    if out_path.exists() and not (out_path / _MARKER).exists():
        raise ValueError(f"Expected {out_subset!r} to be a new subset name. Received: {out_path} exists and "
                         f"was not made by gq_speech.farfield")

    # What a killed run left: its subset, manifest and info files in the making.
    for name in (out_subset, MANIFEST, info_path.name):
        remove_stale_tmp(corpus_dir / name, log, "farfield")
    t0 = time.time()
    bank = rir_bank(cfg, seed, corpus_dir / "farfield", workers, log)
    rng = np.random.default_rng([seed, 29])
    order = rng.permutation(len(utts))
    snr_of = {int(u): cfg.snrs[k % len(cfg.snrs)] for k, u in enumerate(order)}
    tmp = corpus_dir / f".{out_subset}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    entries, next_idx, last = [], {}, time.time()
    peak_target = 10 ** (cfg.peak_dbfs / 20)
    log(f"farfield: {len(utts)} utterances of {subset} -> {out_subset}")
    try:
        for i, u in enumerate(utts):
            room = int(rng.integers(len(bank["rirs"])))
            kind = cfg.noises[int(rng.integers(len(cfg.noises)))]
            noise_rng = np.random.default_rng([seed, 31, i])
            rev = reverberate(load_audio(u.path), bank["rirs"][room])
            if kind == "babble":
                noise = _babble(utts, i, len(rev), cfg.babble_talkers, noise_rng)
            else:
                noise = colored_noise(kind, len(rev), noise_rng)
            mix = mix_at_snr(rev, noise, snr_of[i])
            mix = mix * (peak_target / max(float(np.max(np.abs(mix))), 1e-9))
            chapter = 100 + room
            idx = next_idx.get((u.speaker, chapter), 0)
            next_idx[(u.speaker, chapter)] = idx + 1
            uid, path = write_utterance(tmp, out_subset, u.speaker, chapter, idx, mix, u.text)
            meta = bank["rooms"][room]
            entries.append({
                "id": uid, "subset": out_subset, "path": path.relative_to(tmp).as_posix(),
                "text": u.text, "duration_s": round(len(mix) / SAMPLE_RATE, 4), "source_id": u.id,
                "engine": u.meta.get("engine"), "voice": u.meta.get("voice"),
                "speaker": u.meta.get("speaker", u.speaker),
                "chapter": chapter, "noise": kind, "snr_db": snr_of[i], "rir": room, "room": meta["dims"],
                "rt60": meta["rt60"], "rt60_target": meta["rt60_target"], "distance_m": meta["distance_m"],
            })
            if time.time() - last >= 5:
                last = time.time()
                rate = (i + 1) / (last - t0)
                log(f"farfield: {i + 1}/{len(utts)} utterances, {rate:.1f} utt/s, "
                    f"ETA {(len(utts) - i - 1) / rate:.0f} s")
        (tmp / out_subset / _MARKER).write_text("made by gq_speech.farfield\n")
        # Swap the subset in, then the manifest, then the info file that marks completion.
        if out_path.exists():
            # Out of the way at once, removed with ``tmp``: deleted in place, a kill could leave
            # part of it without its marker, which the next run would refuse to replace.
            os.rename(out_path, tmp / f"{out_subset}.old")
        os.rename(tmp / out_subset, out_path)
        kept = [e for e in manifest.entries if e["subset"] != out_subset]
        all_entries = sorted(kept + entries, key=lambda e: (e["subset"], e["id"]))
        man_tmp = corpus_dir / f".{MANIFEST}.tmp-{os.getpid()}"
        with open(man_tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in all_entries)
        os.replace(man_tmp, corpus_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t0
    info = {**key, "out_subset": out_subset, "utterances": len(entries),
            "hours": round(sum(e["duration_s"] for e in entries) / 3600, 4),
            "per_snr": {str(s): sum(1 for e in entries if e["snr_db"] == s) for s in cfg.snrs},
            "rir_bank": bank["path"] and os.path.relpath(bank["path"], corpus_dir), "rooms": bank["rooms"],
            "generation_s": round(elapsed, 1)}
    info_tmp = info_path.with_name(f".{info_path.name}.tmp-{os.getpid()}")
    info_tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(info_tmp, info_path)
    log(f"farfield: {out_subset} done: {len(entries)} utterances in {elapsed:.1f} s")
    return Manifest.load(corpus_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gq_speech.farfield", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="a corpus made by gq_speech.corpus")
    p.add_argument("--subset", default="test")
    p.add_argument("--out-subset", default="test_far")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rooms", type=int, default=None, help="size of the impulse response bank")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    print(make_farfield(a.corpus, a.subset, a.out_subset, seed=a.seed, n_rooms=a.rooms, workers=a.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
