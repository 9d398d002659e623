"""Word and character error rates (thin wrappers over jiwer 4).

Rates are corpus-level: total edits over the whole list divided by the total
number of reference words (characters), not a mean of per-utterance rates.
An individual empty reference is allowed (its hypothesis words count as
insertions); a corpus whose references are all empty has no defined rate and
is an error. jiwer's default transforms apply: surrounding and repeated
spaces are ignored; case and punctuation are compared as given.
"""

import jiwer

__all__ = ["cer", "error_counts", "wer"]


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
