"""The LibriSpeech on-disk layout: read it, write into it, load its audio.

Layout (as distributed at openslr.org/12, after unpacking)::

  <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
  <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "ID TEXT" lines

Transcripts are upper case in the files; :func:`read_librispeech` returns
them normalized (lower case, :func:`gq_speech.text.normalize`), the form the
tokenizer and WER use. The reader is strict: a transcript line without its
audio file, an audio file without a transcript line, or a malformed line is
an error naming the file (and line), never a silently shorter data set.

The built-in corpus (:mod:`gq_speech.corpus`) is written in this layout with
:func:`write_utterance`, and keeps a ``manifest.jsonl`` at the root; when
that file exists, each :class:`Utterance` gets its manifest line as ``meta``.
:class:`Manifest` reads a generated corpus (``corpus.json`` and the manifest).

Example:
  >>> utts = read_librispeech("/data/LibriSpeech", ["dev-clean"])  # doctest: +SKIP
  >>> audio = load_audio(utts[0].path)                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from gq_speech.text import normalize

__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST",
    "SAMPLE_RATE",
    "Manifest",
    "Utterance",
    "list_subsets",
    "load_audio",
    "read_librispeech",
    "write_utterance",
]

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".flac", ".wav")
MANIFEST = "manifest.jsonl"
_ID = re.compile(r"^([0-9A-Za-z_]+)-([0-9A-Za-z_]+)-([0-9]+)$")


@dataclasses.dataclass
class Utterance:
    """One utterance of a LibriSpeech-layout corpus.

    Attributes:
      id: ``<speaker>-<chapter>-<utt>``.
      path: absolute path of the audio file.
      text: normalized transcript (lower case).
      speaker: speaker directory name.
      chapter: chapter directory name.
      subset: subset directory name (``train-clean-100``, ``test``...).
      duration_s: audio length in seconds (from the file header).
      meta: extra information, e.g. the built-in corpus's manifest line.
    """

    id: str
    path: str
    text: str
    speaker: str
    chapter: str
    subset: str
    duration_s: float
    meta: dict = dataclasses.field(default_factory=dict)


def _is_subset(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*/*/*.trans.txt"))


def list_subsets(root) -> list[str]:
    """Subset directories of ``root``: those holding ``<speaker>/<chapter>/*.trans.txt``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if _is_subset(p)) if root.is_dir() else []


def _read_manifest(root: Path) -> dict[tuple[str, str], dict]:
    path = root / MANIFEST
    if not path.exists():
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    out[(d["subset"], d["id"])] = d
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with 'subset' and 'id'. "
                                     f"Received {line.strip()[:80]!r} ({e})") from None
    return out


def _read_chapter(chapter_dir: Path, subset: str) -> list[tuple[str, str, str, str, str]]:
    """(id, path, raw text, speaker, chapter) of one chapter directory."""
    speaker, chapter = chapter_dir.parent.name, chapter_dir.name
    trans_name = f"{speaker}-{chapter}.trans.txt"
    audio = {p.stem: p for p in chapter_dir.iterdir() if p.suffix in AUDIO_EXTENSIONS}
    trans = chapter_dir / trans_name
    others = sorted(p.name for p in chapter_dir.glob("*.trans.txt") if p.name != trans_name)
    if others:
        raise ValueError(f"{chapter_dir}: expected one transcript named {trans_name}. Received also: {others}")
    if not trans.exists():
        if audio:
            raise ValueError(f"{chapter_dir}: audio files without a transcript: expected {trans_name} "
                             f"next to {sorted(p.name for p in audio.values())[:3]}")
        return []
    rows, seen = [], set()
    with open(trans, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(" ", 1)
            m = _ID.match(parts[0])
            if len(parts) != 2 or not parts[1].strip() or m is None:
                raise ValueError(f"{trans}:{n}: expected '<speaker>-<chapter>-<utt> TEXT'. Received: {line.rstrip()!r}")
            if (m.group(1), m.group(2)) != (speaker, chapter):
                raise ValueError(f"{trans}:{n}: expected an id starting with {speaker}-{chapter}-. "
                                 f"Received: {parts[0]!r}")
            if parts[0] in seen:
                raise ValueError(f"{trans}:{n}: duplicate id {parts[0]!r}")
            seen.add(parts[0])
            if parts[0] not in audio:
                raise ValueError(f"{trans}:{n}: no audio file for {parts[0]!r}: expected "
                                 f"{chapter_dir / (parts[0] + '.flac')}")
            rows.append((parts[0], str(audio[parts[0]].resolve()), parts[1], speaker, chapter))
    orphans = sorted(set(audio) - seen)
    if orphans:
        raise ValueError(f"{trans}: no transcript line for audio file(s) "
                         f"{[audio[o].name for o in orphans[:5]]}{' ...' if len(orphans) > 5 else ''}")
    return rows


def read_librispeech(root, subsets=None) -> list[Utterance]:
    """All utterances of the given subsets, sorted by (subset, id).

    Args:
      root: the directory holding the subsets (``LibriSpeech/`` when unpacked
        from openslr.org, or a corpus made by :mod:`gq_speech.corpus`).
      subsets: names of subset directories, or None for every subset found.

    Returns:
      A list of :class:`Utterance` with normalized text.

    Raises:
      FileNotFoundError: ``root`` or a requested subset does not exist (the
        message lists the subsets that do).
      ValueError: a malformed transcript line (``file:line``), a transcript
        line without audio, audio without a transcript line, or text with
        digits.
    """
    import soundfile as sf

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected a LibriSpeech root directory. Received: {str(root)!r} does not exist")
    found = list_subsets(root)
    if subsets is None:
        subsets = found
        if not subsets:
            raise FileNotFoundError(f"Expected subset directories (<subset>/<speaker>/<chapter>/*.trans.txt) "
                                    f"under {root}. Received none")
    elif isinstance(subsets, str):
        subsets = [subsets]
    missing = [s for s in subsets if s not in found]
    if missing:
        raise FileNotFoundError(f"Expected subset(s) {missing} under {root}. Received: it has {found}")
    manifest = _read_manifest(root)
    out = []
    for subset in subsets:
        for speaker_dir in sorted(p for p in (root / subset).iterdir() if p.is_dir()):
            for chapter_dir in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
                for uid, path, raw, speaker, chapter in _read_chapter(chapter_dir, subset):
                    try:
                        text = normalize(raw)
                    except ValueError as e:
                        raise ValueError(f"{chapter_dir / f'{speaker}-{chapter}.trans.txt'}: {uid}: {e}") from None
                    meta = manifest.get((subset, uid), {})
                    duration = meta.get("duration_s")
                    if duration is None:
                        duration = sf.info(path).duration
                    out.append(Utterance(uid, path, text, speaker, chapter, subset, float(duration), dict(meta)))
    out.sort(key=lambda u: (u.subset, u.id))
    return out


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples of a mono audio file as float32 in [-1, 1].

    No resampling is done: a file at another rate is an error, so a data set
    at the wrong rate is noticed rather than silently converted.

    Args:
      path: a flac or wav file.
      sample_rate: the expected rate.

    Returns:
      A 1-D float32 array.

    Raises:
      ValueError: the file is not mono or not at ``sample_rate``.
    """
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate or audio.shape[1] != 1:
        raise ValueError(f"Expected {sample_rate} Hz mono audio in {path}. "
                         f"Received: {sr} Hz, {audio.shape[1]} channel(s)")
    return audio[:, 0]


def write_utterance(root, subset: str, speaker, chapter, idx: int, audio: np.ndarray, text: str,
                    sample_rate: int = SAMPLE_RATE) -> tuple[str, Path]:
    """Writes one utterance as 16-bit flac and appends its transcript line.

    Transcripts are stored upper case, like LibriSpeech's. Lines are appended
    in call order, so write a chapter's utterances in ``idx`` order.

    Args:
      root: corpus root.
      subset, speaker, chapter: directory names (speaker and chapter may be ints).
      idx: utterance number within the chapter (written with 4 digits).
      audio: 1-D float samples in [-1, 1] (clipped), or int16 samples.
      text: the transcript (normalized here).

    Returns:
      (id, path of the flac file).

    Raises:
      ValueError: bad names, audio that is not 1-D, or empty text.
    """
    import soundfile as sf

    speaker, chapter = str(speaker), str(chapter)
    uid = f"{speaker}-{chapter}-{int(idx):04d}"
    if _ID.match(uid) is None:
        raise ValueError(f"Expected speaker and chapter made of letters, digits or '_'. "
                         f"Received: speaker={speaker!r}, chapter={chapter!r}")
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"Expected 1-D audio. Received shape {audio.shape}")
    text = normalize(text)
    if not text:
        raise ValueError(f"Expected a non-empty transcript for {uid}")
    chapter_dir = Path(root) / subset / speaker / chapter
    chapter_dir.mkdir(parents=True, exist_ok=True)
    path = chapter_dir / f"{uid}.flac"
    if audio.dtype != np.int16:  # int16 is written as is; floats are clipped to [-1, 1]
        audio = np.clip(audio.astype(np.float64), -1.0, 1.0)
    sf.write(str(path), audio, sample_rate, subtype="PCM_16", format="FLAC")
    with open(chapter_dir / f"{speaker}-{chapter}.trans.txt", "a", encoding="utf-8") as f:
        f.write(f"{uid} {text.upper()}\n")
    return uid, path


class Manifest:
    """A generated corpus: ``corpus.json`` plus the lines of ``manifest.jsonl``.

    Attributes:
      root: the corpus directory.
      info: the content of ``corpus.json``.
      entries: the manifest lines (dicts), sorted by (subset, id).

    Example:
      >>> m = Manifest.load("runs/asr/corpus_small")  # doctest: +SKIP
      >>> m.counts()                                  # doctest: +SKIP
      {'dev': 200, 'test': 200, 'train': 1500}
    """

    def __init__(self, root, info: dict, entries: list[dict]):
        self.root = Path(root).resolve()
        self.info = info
        self.entries = sorted(entries, key=lambda e: (e["subset"], e["id"]))

    @classmethod
    def load(cls, root) -> Manifest:
        """Reads a corpus directory.

        Raises:
          FileNotFoundError: ``root`` has no ``corpus.json`` or ``manifest.jsonl``.
        """
        root = Path(root)
        for name in ("corpus.json", MANIFEST):
            if not (root / name).exists():
                raise FileNotFoundError(f"Expected a corpus made by gq_speech.corpus in {root}. "
                                        f"Received: no {name}")
        info = json.loads((root / "corpus.json").read_text(encoding="utf-8"))
        with open(root / MANIFEST, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return cls(root, info, entries)

    def subsets(self) -> list[str]:
        """Subset names, sorted."""
        return sorted({e["subset"] for e in self.entries})

    def counts(self) -> dict[str, int]:
        """Utterances per subset."""
        return dict(sorted(Counter(e["subset"] for e in self.entries).items()))

    def utterances(self, subset: str | None = None) -> list[Utterance]:
        """The utterances of ``subset`` (all when None), with their manifest line as ``meta``.

        Raises:
          ValueError: ``subset`` is not in the corpus (the message lists those that are).
        """
        if subset is not None and subset not in self.subsets():
            raise ValueError(f"Expected a subset in {self.subsets()}. Received: {subset!r}")
        return [Utterance(e["id"], str(self.root / e["path"]), e["text"], str(e["speaker"]), str(e["chapter"]),
                          e["subset"], e["duration_s"], dict(e))
                for e in self.entries if subset is None or e["subset"] == subset]

    def __repr__(self):
        return f"Manifest({str(self.root)!r}, {self.counts()})"
