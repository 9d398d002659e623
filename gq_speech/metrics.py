"""Word and character error rates (thin wrappers over jiwer 4).

Rates are corpus-level: total edits over the whole list divided by the total
number of reference words (characters), not a mean of per-utterance rates.
An individual empty reference is allowed (its hypothesis words count as
insertions); a corpus whose references are all empty has no defined rate and
is an error. jiwer's default transforms apply: surrounding and repeated
spaces are ignored; case and punctuation are compared as given.
"""

import jiwer
import numpy as np

__all__ = ["cer", "error_counts", "relative_difference", "utterance_errors", "wer", "wer_interval"]


def _as_lists(refs, hyps):
    if isinstance(refs, str):
        refs = [refs]
    if isinstance(hyps, str):
        hyps = [hyps]
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(
            "Expected as many hypotheses as references. Received "
            f"{len(refs)} references and {len(hyps)} hypotheses."
        )
    if not refs:
        raise ValueError("Expected at least one reference. Received an empty list.")
    for name, texts in (("references", refs), ("hypotheses", hyps)):
        bad = [type(x).__name__ for x in texts if not isinstance(x, str)]
        if bad:
            raise TypeError(f"Expected {name} to be strings. Received a {bad[0]}.")
    return refs, hyps


def _process(refs, hyps, unit):
    refs, hyps = _as_lists(refs, hyps)
    if unit == "word":
        if not any(r.split() for r in refs):
            raise ValueError("WER is undefined: every reference is empty (0 reference words).")
        return jiwer.process_words(refs, hyps)
    if unit == "char":
        if not any(r.strip() for r in refs):
            raise ValueError("CER is undefined: every reference is empty (0 reference characters).")
        return jiwer.process_characters(refs, hyps)
    raise ValueError(f"Expected unit 'word' or 'char'. Received: unit={unit!r}")


def error_counts(refs, hyps, unit="word"):
    """Edit counts of the minimum-edit-distance alignment.

    Args:
      refs: reference transcripts (a list of str, or one str).
      hyps: hypotheses, same length as ``refs``.
      unit: ``"word"`` or ``"char"``.

    Returns:
      dict with ``substitutions``, ``deletions``, ``insertions``, ``hits``
      and the number of reference units under ``"words"`` (unit "word") or
      ``"chars"`` (unit "char"); ``(S + D + I) / words`` is the WER.

    Raises:
      ValueError: length mismatch, no references, or all references empty.
      TypeError: a non-string entry.

    Example:
      >>> error_counts(["a b c"], ["a x c d"])
      {'substitutions': 1, 'deletions': 0, 'insertions': 1, 'hits': 2, 'words': 3}
    """
    out = _process(refs, hyps, unit)
    counts = {
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
    }
    counts["words" if unit == "word" else "chars"] = out.hits + out.substitutions + out.deletions
    return counts


def wer(refs, hyps):
    """Corpus word error rate ``(S + D + I) / N`` (may exceed 1).

    Args:
      refs: reference transcripts (a list of str, or one str).
      hyps: hypotheses, same length.

    Returns:
      float.

    Raises:
      ValueError: length mismatch, no references, or all references empty.

    Example:
      >>> wer(["turn on the light"], ["turn the lights"])
      0.5
    """
    return float(_process(refs, hyps, "word").wer)


def cer(refs, hyps):
    """Corpus character error rate (spaces count as characters).

    Args:
      refs: reference transcripts (a list of str, or one str).
      hyps: hypotheses, same length.

    Returns:
      float.

    Raises:
      ValueError: length mismatch, no references, or all references empty.
    """
    return float(_process(refs, hyps, "char").cer)


def utterance_errors(refs, hyps):
    """Per utterance: (word edits, reference words), two int arrays; their sums' ratio is the WER.

    Raises:
      ValueError, TypeError: as :func:`wer`.
    """
    out = _process(refs, hyps, "word")
    edits, words = [], []
    for chunks, ref in zip(out.alignments, out.references):
        e = 0
        for c in chunks:
            if c.type == "substitute" or c.type == "delete":
                e += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                e += c.hyp_end_idx - c.hyp_start_idx
        edits.append(e)
        words.append(len(ref))
    return np.asarray(edits, np.int64), np.asarray(words, np.int64)


def _resample(n, resamples, seed):
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def wer_interval(refs, hyps, *, confidence=0.95, resamples=2000, seed=0) -> dict:
    """The WER and its bootstrap confidence interval over utterances (percentile method).

    Returns:
      ``{"wer", "low", "high", "utterances", "resamples", "confidence"}``.

    Example:
      >>> r = wer_interval(["a b", "c d", "e f"], ["a b", "c x", "e f"])
      >>> round(r["wer"], 3), r["low"] <= r["wer"] <= r["high"]
      (0.167, True)
    """
    edits, words = utterance_errors(refs, hyps)
    idx = _resample(len(edits), resamples, seed)
    sampled = edits[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    tail = 100 * (1 - confidence) / 2
    return {"wer": float(edits.sum() / words.sum()), "low": float(np.percentile(sampled, tail)),
            "high": float(np.percentile(sampled, 100 - tail)), "utterances": int(len(edits)),
            "resamples": int(resamples), "confidence": float(confidence)}


def relative_difference(refs, hyps_base, hyps, *, confidence=0.95, resamples=2000, seed=0) -> dict:
    """``(WER(hyps) - WER(hyps_base)) / WER(hyps_base)`` and its paired bootstrap interval.

    Both systems are scored on the same resampled utterances each time, so
    what they share (hard utterances) does not widen the interval.

    Returns:
      ``{"relative", "low", "high", ...}``; ``relative`` is None when the base WER is 0.
    """
    base_e, words = utterance_errors(refs, hyps_base)
    other_e, _ = utterance_errors(refs, hyps)
    info = {"utterances": int(len(words)), "resamples": int(resamples), "confidence": float(confidence)}
    if base_e.sum() == 0:
        return {"relative": None, "low": None, "high": None, **info}
    idx = _resample(len(words), resamples, seed)
    b, o = base_e[idx].sum(1), other_e[idx].sum(1)
    sampled = (o - b) / np.maximum(b, 1)  # the words cancel: same utterances in both
    tail = 100 * (1 - confidence) / 2
    return {"relative": float((other_e.sum() - base_e.sum()) / base_e.sum()),
            "low": float(np.percentile(sampled, tail)), "high": float(np.percentile(sampled, 100 - tail)), **info}
