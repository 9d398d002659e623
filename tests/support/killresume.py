"""Kill-and-resume harness for ``gq-tf asr run`` (issue 16: interrupted runs recover).

Runs a recipe once without interruption (the reference), then, again and
again, starts the same command in a fresh directory in its own process
group, kills the whole group with SIGKILL after a random delay, starts the
same command again, ... until a start runs to the end. The finished run must
give the reference's results, and after every kill no file that a resumed
run would trust may be half written.

Each run draws its kill points (``--max-kills-per-run``, sorted) over the
reference's duration, half uniformly in time and half in a uniformly drawn
stage (:meth:`Profile.draw`: a report written in a second is hit as often as
a minute of training), and measures them on each start's :class:`Clock`
(the reference time of the stage the start is in, plus the time spent in
it): a resumed start skips in an instant what is done, so a kill point
lands at its place in the pipeline whatever was cached.

Usage::

    python -m tests.support.killresume --kills 50 [--seed 0] [--out runs/killresume] \\
        [--recipe tests/support/killresume_recipe.json]

What is compared (:func:`comparable`), exactly:

- ``table``: ``results.json``: the recipe, the command and every row with
  every key except timings, latency and memory (keys ending in ``_seconds``,
  ``_ms``, ``_rtf``, ``_mb``), the run directory written as ``<out>``; the row
  set is the rows' (model, variant) list in order. So: model, variant, kind,
  bits, file_bytes, packed_bytes, clustered_packed_bytes, the WERs
  (``wer_keras_*``, ``wer_tflite_*``, ``keras_on_same_*``),
  ``tflite_utterances_*``, ``stream_utterances``,
  ``stream_transcript_mismatches``, ``stream_dir``, ``command``. And
  ``results.md`` with only its non-timing columns (variant, bits, the four WER
  columns, size KB), every line outside the tables kept.
- ``transcripts``: every variant's ``hyps_<split>.txt`` (reference, Keras and
  ``.tflite`` transcript of every utterance) and the streaming benchmark's
  tokens. The tiny model's WER is 100% whatever its weights, so the WER
  columns alone would not see a resumed training that went wrong; its
  transcripts change with any weight.
- ``data``: the corpus (every audio, transcript and manifest file byte for
  byte; ``corpus.json`` and ``farfield-*.json`` without their generation time
  and tool versions), the feature caches and the far-field room bank (array
  contents: ``np.savez`` stamps the zip entries with the time) and every
  exported ``.tflite`` byte for byte.

Not compared: timings, latency, memory, dates, checkpoints and logs.

Determinism: the harness runs ``tests/support/killresume_recipe.json``, the tiny
recipe with a checkpoint after every batch (``save_every_s: 0``) so that
kills inside an epoch resume inside it. SpecAugment stays on: its masks
come from the trainer's own generator, seeded by the recipe and kept in
the checkpoints (until 2026-12-05 they came from TensorFlow's global
generator, which ``keras.utils.set_random_seed`` does not reseed, and two
uninterrupted runs trained other weights). Two uninterrupted runs are
equal in every compared field, so the comparison is exact: no tolerance,
none is needed. ``--table-only`` compares the table alone, for a recipe
whose transcripts are not reproducible.

After every kill, :func:`torn_files` checks what a resumed run would trust:
every JSON and JSONL file parses (a ``log.jsonl``'s last line excepted: an
append-only log), every ``.npz`` loads, every PNG ends with its IEND chunk,
every ``.tflite`` beside a ``streaming.json`` has the size the manifest
records, ``results.md`` ends its last line, every ``hyps_*.txt`` beside a
``result.json`` is whole lines, and once ``corpus.json`` exists every
manifest line names a whole audio file. Files with temporary names
(``.tmp``) are skipped: nothing reads them; those left in a finished run are
listed (:func:`leftovers`).

Stages (:func:`stage_of`, from the attempt's log and the files its stages
leave): startup (imports, before the first line), corpus, farfield,
features, train (float training and fine-tunes, inside epochs), export,
evaluate (Keras and ``.tflite`` WER), reports (``results.*`` after each
variant and at the end), bench (``android_bench --host``), streambench.

The report (printed, and ``<out>/report.json``): per stage, kills, resumes
(starts after a kill there), errors (a resumed start that failed on its own,
or a torn file found after a kill there) and mismatches (kills there in runs
whose final results differ from the reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = Path(__file__).with_name("killresume_recipe.json")
STAGES = ("startup", "corpus", "farfield", "features", "train", "export", "evaluate", "reports", "bench",
          "streambench", "done")
# results.json row keys that are timings, latency or memory (never compared).
TIMING_KEY = re.compile(r"(_seconds|_ms|_rtf|_mb)$")
# results.md table columns compared; the others are timings, latency and memory.
TABLE_COLUMNS = ("variant", "bits", "WER clean Keras", "WER clean .tflite", "WER far Keras", "WER far .tflite",
                 "size KB")


# ----------------------------------------------------------------- running and killing


def command(recipe, out) -> list[str]:
    """The command under test: ``gq-tf asr run RECIPE --out OUT``."""
    return [sys.executable, "-m", "gq_speech.cli", "run", str(recipe), "--out", str(out)]


class Attempt:
    """One start of the command in a new process group, its output in ``log_path``."""

    def __init__(self, recipe, out, log_path):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.t0 = time.monotonic()
        # start_new_session: the command and every process it starts (corpus
        # workers, far-field pool, benchmark children) share one process
        # group, which is killed at once and nothing else.
        self.proc = subprocess.Popen(command(recipe, out), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env, start_new_session=True)
        self._seen = 0
        self.lines: list[tuple[float, str]] = []  # (seconds since start, line)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll_lines(self) -> list[tuple[float, str]]:
        """Reads the lines written since the last call (stamped with the time they were seen)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._seen)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._seen += end
        now = self.elapsed()
        new = [(now, line) for line in data[:end].decode("utf-8", "replace").splitlines()]
        self.lines += new
        return new

    def kill(self) -> None:
        """SIGKILL to this attempt's process group, if its command is still running."""
        # While the command is not reaped its pid, the group's id, cannot be another's.
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.close()

    def close(self) -> None:
        self._log.close()

    def tail(self, n=15) -> str:
        self.poll_lines()
        return "\n".join(line for _, line in self.lines[-n:])


# ----------------------------------------------------------------- where a run is


_RULES = (
    (re.compile(r"^corpus: "), "corpus"),
    (re.compile(r"^farfield: .* done"), "features"),
    (re.compile(r"^farfield: "), "farfield"),
    (re.compile(r"^  \S+: \d+ utterances, features"), "features"),
    (re.compile(r"^data: "), "train"),
    (re.compile(r"^\[[^/\]]+\] float: "), "train"),
    # The float model's fit is named "float"; the variants' fits by their names.
    (re.compile(r"^  \[float\] trained"), "float trained"),
    (re.compile(r"^\[[^/\]]+/(?P<v>[^\]]+)\] (fine-tune|tfmot clustering)"), "train"),
    (re.compile(r"^  \[(?P<v>[^\]]+)\] trained"), "export"),
    (re.compile(r"^  \[(?P<v>[^\]]+)\] "), "train"),
    (re.compile(r"^\[[^/\]]+/(?P<v>[^\]]+)\] (done before|WER test)"), "reports"),
    (re.compile(r"^benchmark \("), "bench"),
    (re.compile(r"^(streaming benchmark|  memory of)"), "streambench"),
    (re.compile(r"^wrote .*results\.md"), "done"),
)


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _begin(variants, i):
    """(stage, variant) at the start of the ``i``-th variant: a float one exports at once."""
    if i >= len(variants):
        return "bench", None
    name, kind = variants[i]
    return ("export" if kind == "float" else "train"), name


def stage_of(lines: list[tuple[float, str]], out: Path, started_wall: float, variants: list[tuple[str, str]],
             model: str) -> tuple[str, str | None]:
    """(stage, variant) an attempt is in, from its log lines and the files its stages leave.

    Each stage that works says so in the log; one that finds its result on
    disk is silent, and some steps end without a line (export, reports), so
    the files settle what the last line cannot.

    Args:
      lines: the attempt's (seconds since its start, line).
      out: the run directory.
      started_wall: the attempt's start (``time.time()``).
      variants: the recipe's (name, kind) in order.
      model: the recipe's model.
    """
    names = [v for v, _ in variants]
    stage, variant, since = "startup", None, started_wall
    for t, line in lines:
        for pattern, s in _RULES:
            m = pattern.match(line)
            if m:
                since = started_wall + t
                if s == "float trained":
                    stage, variant = _begin(variants, 0)
                else:
                    v = m.groupdict().get("v")
                    # "[float] ..." lines are the float model's fit (the float variant does not fit).
                    stage, variant = s, (v if v in names and not line.startswith("  [float] ") else None)
                break
    if stage == "corpus" and (out / "corpus" / "corpus.json").exists():
        stage = "farfield"
    if stage == "farfield" and glob.glob(str(out / "corpus" / "farfield-*.json")):
        stage = "features"
    if stage == "export" and variant:
        manifest = _mtime(out / model / variant / "stream" / "streaming.json")
        if manifest is not None and manifest >= since - 0.2:
            stage = "evaluate"
    if stage == "reports" and variant:
        md = _mtime(out / "results.md")
        if md is not None and md >= since - 0.2:  # written: the next step, silent when cached
            stage, variant = _begin(variants, names.index(variant) + 1)
    if stage == "bench" and variant is None and (out / "bench" / "prediction" / "results.json").exists():
        bench = _mtime(out / "bench" / "prediction" / "results.json")
        if bench >= since - 0.2 or not any("benchmark (" in line for _, line in lines):
            stage = "streambench"
    if stage == "streambench":
        sb = _mtime(out / "streambench" / f"{model}.json")
        said = any(line.startswith("streaming benchmark") for _, line in lines)
        if sb is not None and (not said or sb >= since - 0.2):
            stage = "reports"
    return stage, variant


# ----------------------------------------------------------------- torn files


def leftovers(out: Path) -> list[str]:
    """Temporary files and directories (``.tmp`` in the name) left under ``out``: harmless, but litter."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name)


def torn_files(out: Path) -> list[str]:
    """Files under ``out`` that a resumed run would trust but that are not whole (see the module doc)."""
    import soundfile as sf

    problems = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        # android_bench writes into bench/<part>/run/, which bench() empties first and
        # trusts only once its results.json is moved out.
        if not path.is_file() or path.is_symlink() or any(".tmp" in part for part in rel.parts) \
                or rel.parts[0] == "bench" and "run" in rel.parts:
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                lines = path.read_text().splitlines()
                if path.name == "log.jsonl":
                    lines = lines[:-1]  # an append-only log: a kill may cut its last line
                for line in lines:
                    json.loads(line)
            elif path.suffix == ".npz":
                with np.load(path) as z:
                    for k in z.files:
                        z[k]
            elif path.suffix == ".png":
                if not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
                    raise ValueError("no IEND chunk at the end")
            elif path.name == "results.md":
                if not path.read_text().endswith("\n"):
                    raise ValueError("does not end with a newline")
            elif path.name.startswith("hyps_") and (path.parent / "result.json").exists():
                # A test set's: id, reference, Keras, .tflite; a dev set's (Keras only): id, reference, Keras.
                fields = 3 if path.name.startswith("hyps_dev") else 4
                lines = path.read_text().split("\n")
                if lines[-1] != "" or any(len(line.split("\t")) != fields for line in lines[:-1]):
                    raise ValueError(f"not whole lines of {fields} tab-separated fields")
            elif path.suffix == ".tflite" and (path.parent / "streaming.json").exists():
                manifest = json.loads((path.parent / "streaming.json").read_text())
                want = manifest["graphs"][path.stem]["bytes"]
                if path.stat().st_size != want:
                    raise ValueError(f"{path.stat().st_size} bytes, the manifest says {want}")
        except Exception as e:  # noqa: BLE001  (any failure to read is the finding)
            problems.append(f"{rel}: {type(e).__name__}: {str(e)[:200]}")
    corpus = out / "corpus"
    if (corpus / "corpus.json").exists() and (corpus / "manifest.jsonl").exists():
        for line in (corpus / "manifest.jsonl").read_text().splitlines():
            try:
                e = json.loads(line)
                info = sf.info(str(corpus / e["path"]))
                if abs(info.frames / info.samplerate - e["duration_s"]) > 1e-3:
                    raise ValueError(f"{info.frames} frames, the manifest says {e['duration_s']} s")
            except Exception as e:  # noqa: BLE001
                problems.append(f"corpus/manifest.jsonl entry: {type(e).__name__}: {str(e)[:200]}")
    return problems


# ----------------------------------------------------------------- comparing results


def _arrays(path) -> dict:
    with np.load(path) as z:
        return {k: hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest()[:16] + str(z[k].shape)
                for k in z.files}


def _md_tables(text: str) -> list[str]:
    """``results.md`` with only the :data:`TABLE_COLUMNS` of its tables."""
    out, keep = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            out.append(line)
            keep = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if keep is None:  # the header row
            keep = [i for i, c in enumerate(cells) if c in TABLE_COLUMNS]
        if set(line) <= set("|-"):
            out.append("|---" * len(keep) + "|")
        else:
            out.append("| " + " | ".join(cells[i] for i in keep if i < len(cells)) + " |")
    return out


def comparable(out: Path) -> dict:
    """What a finished run is compared on: ``{"table": ..., "transcripts": ..., "data": ...}`` (module doc)."""
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    # The run directory, also as the command recorded it (a reference moved since keeps its old one).
    words = shlex.split(results["command"])
    names = {str(out.resolve()), str(out), words[words.index("--out") + 1]}

    def clean(value):
        text = json.dumps(value)
        for name in sorted(names, key=len, reverse=True):
            text = text.replace(name, "<out>")
        return json.loads(text)

    rows = [{k: v for k, v in row.items() if not TIMING_KEY.search(k)} for row in results["rows"]]
    table = {"recipe": results["recipe"], "command": results["command"], "rows": rows,
             "row_set": [[r["model"], r["variant"]] for r in results["rows"]],
             "results.md": _md_tables((out / "results.md").read_text())}
    transcripts = {}
    for row in results["rows"]:
        vdir = out / row["model"] / row["variant"]
        for hyps in sorted(vdir.glob("hyps_*.txt")):
            transcripts[f"{row['model']}/{row['variant']}/{hyps.name}"] = hyps.read_text()
    for bench in sorted((out / "streambench").glob("*.json")):
        res = json.loads(bench.read_text())
        transcripts[f"streambench/{bench.stem}"] = {v: r["tokens"] for v, r in res["variants"].items()}
    data = {}
    corpus = out / "corpus"
    for path in sorted(corpus.rglob("*")):
        rel = path.relative_to(corpus).as_posix()
        if not path.is_file() or rel.startswith(".") or ("/." in rel and not rel.endswith("/.farfield")):
            continue
        if path.suffix == ".npz":
            data[f"corpus/{rel}"] = _arrays(path)
        elif rel == "corpus.json":
            info = json.loads(path.read_text())
            data[f"corpus/{rel}"] = {k: info[k] for k in ("version", "seed", "config", "counts", "voices")}
        elif rel.startswith("farfield-") and rel.endswith(".json"):
            info = json.loads(path.read_text())
            data[f"corpus/{rel}"] = {k: v for k, v in info.items() if k not in ("generation_s",)}
        else:
            data[f"corpus/{rel}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    for path in sorted(p for p in (out / "features").glob("features_*.npz") if ".tmp" not in p.name):
        subset = path.stem.rsplit("_", 1)[0]  # the name's hash covers file times: compare by subset
        data.setdefault(f"features/{subset}", set()).add(json.dumps(_arrays(path), sort_keys=True))
    for key in [k for k in data if k.startswith("features/")]:
        data[key] = sorted(data[key])
    for row in results["rows"]:
        stream = out / Path(row["stream_dir"]).relative_to(words[words.index("--out") + 1])
        for path in sorted(stream.glob("*.tflite")):
            data[f"{row['model']}/{row['variant']}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return clean({"table": table, "transcripts": transcripts, "data": data})


def differences(ref: dict, got: dict, categories=("table", "transcripts", "data")) -> list[str]:
    """Human-readable differences between two :func:`comparable` results."""
    diffs = []

    def walk(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    diffs.append(f"{where}/{k}: only in the {'reference' if k in a else 'resumed run'}")
                else:
                    walk(a[k], b[k], f"{where}/{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            diffs.append(f"{where}: reference {str(a)[:120]!r}, resumed {str(b)[:120]!r}")

    for c in categories:
        walk(ref[c], got[c], c)
    return diffs


# ----------------------------------------------------------------- the harness


@dataclasses.dataclass
class Profile:
    """When the uninterrupted reference entered each (stage, variant), in seconds from its start."""

    total_s: float
    first_line_s: float
    marks: list  # [[seconds, stage, variant]]

    def span(self, stage, variant) -> tuple[float, float]:
        """(start, duration) of (stage, variant) in the reference; its stage's first if the variant
        was never seen there, (0, 0) if the stage was not."""
        found = [i for i, (_, s, v) in enumerate(self.marks) if (s, v) == (stage, variant)] or \
                [i for i, (_, s, _) in enumerate(self.marks) if s == stage]
        if not found:
            return 0.0, 0.0
        i = found[0]
        end = self.marks[i + 1][0] if i + 1 < len(self.marks) else self.total_s
        return self.marks[i][0], end - self.marks[i][0]

    def draw(self, rng: random.Random, stages=None) -> float:
        """A kill point in reference seconds: half uniform over the run, half in a stage drawn
        uniformly (then uniform inside it), so that stages of a second (reports, features) are hit too.
        ``stages``: only in these (each of their spans equally likely)."""
        marks = [m for m in self.marks if stages is None or m[1] in stages]
        if stages is None and (rng.random() < 0.5 or not marks):
            return rng.uniform(0, self.total_s)
        start, duration = self.span(*rng.choice(marks)[1:])
        return start + rng.uniform(0, duration)


class Clock:
    """Where an attempt is on the reference's time line: the reference start of the stage it is in,
    plus the time it has spent in that stage, at most the stage's reference duration.

    Stages found done on disk pass in an instant, so a resumed attempt's
    clock jumps to where the killed one was; a kill "at reference second
    t" thus lands at the same place of the pipeline whatever was cached.
    """

    def __init__(self, prof: Profile, attempt: Attempt):
        self.prof, self.attempt = prof, attempt
        self.now, self.entered = None, 0.0

    def __call__(self, stage, variant) -> float:
        if (stage, variant) != self.now:
            self.now, self.entered = (stage, variant), self.attempt.elapsed()
        start, duration = self.prof.span(stage, variant)
        return start + min(self.attempt.elapsed() - self.entered, duration)


def _recipe_info(recipe) -> tuple[list[tuple[str, str]], str]:
    """The recipe's (variant, kind) list and its model (read here: importing gq_tf would load TensorFlow)."""
    path = Path(recipe)
    if not path.is_file():
        path = ROOT / "gq_tf" / "asr" / "recipes" / f"{recipe}.json"
    data = json.loads(path.read_text())
    if len(data["models"]) != 1:
        raise SystemExit(f"error: expected a recipe with one model. Received {data['models']} in {path}")
    model = data["models"][0]
    return [(name, spec.get("kind", "qat")) for name, spec in data["variants"].items()
            if model in spec.get("models", [model])], model


def watch(attempt: Attempt, out: Path, variants, model, *, kill_at=None, timeout=None, on_stage=None, poll=0.05):
    """Follows an attempt until it ends, ``kill_at`` (seconds, or a predicate of (stage, variant, lines))
    says to kill it, or ``timeout`` passes. Returns (exit code or None if killed, stage, variant, hung)."""
    wall0 = time.time() - attempt.elapsed()
    stage = variant = None
    while True:
        attempt.poll_lines()
        now = stage_of(attempt.lines, out, wall0, variants, model)
        if now != (stage, variant):
            stage, variant = now
            if on_stage:
                on_stage(attempt.elapsed(), stage, variant)
        code = attempt.proc.poll()
        if code is not None:
            attempt.poll_lines()
            attempt.close()
            return code, stage, variant, False
        due = (callable(kill_at) and kill_at(stage, variant, attempt.lines)) or \
            (isinstance(kill_at, (int, float)) and attempt.elapsed() >= kill_at)
        hung = timeout is not None and attempt.elapsed() >= timeout
        if due or hung:
            # The stage at the moment of the kill, not the last poll's.
            attempt.poll_lines()
            stage, variant = stage_of(attempt.lines, out, wall0, variants, model)
            attempt.kill()
            return None, stage, variant, hung
        time.sleep(poll)


def run_reference(recipe, out: Path, log=print) -> Profile:
    """Runs the reference uninterrupted (or reuses a finished one with its profile)."""
    variants, model = _recipe_info(recipe)
    ref, prof_path = out / "reference", out / "reference.profile.json"
    if (ref / "results.json").exists() and prof_path.exists():
        prof = json.loads(prof_path.read_text())
        if prof.get("recipe") == str(recipe):
            log(f"reference: reusing {ref} ({prof['total_s']:.0f} s uninterrupted)")
            return Profile(prof["total_s"], prof["first_line_s"], prof["marks"])
    shutil.rmtree(ref, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    marks = []
    attempt = Attempt(recipe, ref, out / "reference.log")
    log(f"reference: {' '.join(command(recipe, ref))}")
    code, *_ = watch(attempt, ref, variants, model, on_stage=lambda t, s, v: marks.append([round(t, 2), s, v]))
    if code != 0:
        raise RuntimeError(f"The reference run failed (exit {code}):\n{attempt.tail()}")
    first = next((t for t, line in attempt.lines if line.startswith("corpus: ")), 0.0)
    prof = Profile(round(attempt.elapsed(), 2), round(first, 2), marks)
    prof_path.write_text(json.dumps({"recipe": str(recipe), **dataclasses.asdict(prof)}, indent=1))
    log(f"reference: {prof.total_s:.0f} s uninterrupted; stages: "
        + ", ".join(f"{s}{'/' + v if v else ''} {t:.0f}s" for t, s, v in marks))
    return prof


def kill_resume_run(recipe, run_dir: Path, prof: Profile, rng: random.Random, stats, *, kills: int,
                    stages=None, log=print) -> dict:
    """One run: ``kills`` kills, each followed by the same command, until a start runs to the end.

    The kills are placed at times drawn uniformly over the reference run
    (sorted), measured on each attempt's :class:`Clock`: they spread over
    the stages in proportion to their length, whatever a resumed attempt
    finds done. Returns the run's record (kills, errors, torn files,
    completed).
    """
    variants, model = _recipe_info(recipe)
    out = run_dir / "out"
    targets = sorted(prof.draw(rng, stages) for _ in range(kills))
    record = {"dir": str(run_dir), "kills": [], "errors": [], "torn": [], "completed": False}
    for k in range(kills + 3):  # at most 2 failed starts on top of the kills
        target = targets[len(record["kills"])] if len(record["kills"]) < kills else None
        attempt = Attempt(recipe, out, run_dir / f"attempt-{k:02d}.log")
        clock = Clock(prof, attempt)
        due = (lambda stage, variant, lines: clock(stage, variant) >= target) if target is not None else None
        code, stage, variant, hung = watch(attempt, out, variants, model, kill_at=due,
                                           timeout=4 * prof.total_s + 120)
        previous = record["kills"][-1]["stage"] if record["kills"] else None
        if previous is not None:
            stats[previous]["resumes"] += 1
        if code is None and not hung:
            record["kills"].append({"stage": stage, "variant": variant, "target_s": round(target, 2),
                                    "after_s": round(attempt.elapsed(), 2),
                                    "last_line": attempt.lines[-1][1][:200] if attempt.lines else ""})
            stats[stage]["kills"] += 1
            log(f"  kill {len(record['kills'])}: {stage}{'/' + variant if variant else ''} "
                f"(reference second {target:.0f}) after {attempt.elapsed():.1f} s")
            torn = torn_files(out)
            if torn:
                record["torn"].append({"stage": stage, "files": torn})
                stats[stage]["errors"] += 1
                log(f"  TORN after a kill at {stage}: {torn}")
            continue
        if code == 0:
            record["completed"] = True
            return record
        error = f"hung at {stage} for {attempt.elapsed():.0f} s" if hung else f"exit {code} at {stage}"
        record["errors"].append({"after": previous, "error": error, "tail": attempt.tail()})
        if previous is not None:
            stats[previous]["errors"] += 1
        log(f"  ERROR: {error} (after a kill at {previous}):\n{attempt.tail()}")
        if hung or len(record["errors"]) >= 2:
            return record
        # Otherwise the same command once more: does it recover?
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.killresume", description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, required=True, help="total kills over all runs")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    p.add_argument("--out", default="runs/killresume", help="reference, runs and report.json")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe name or JSON file")
    p.add_argument("--max-kills-per-run", type=int, default=6)
    p.add_argument("--stages", nargs="+", choices=STAGES,
                   help="kill only in these stages (default: anywhere; see Profile.draw)")
    p.add_argument("--table-only", action="store_true",
                   help="compare only the table (recipes whose training is not bit-reproducible)")
    p.add_argument("--keep", action="store_true", help="keep every run's directory (default: failed ones only)")
    a = p.parse_args(argv)
    if a.kills < 0 or a.max_kills_per_run < 1:
        raise SystemExit(f"error: expected --kills >= 0 and --max-kills-per-run >= 1. "
                         f"Received {a.kills}, {a.max_kills_per_run}")
    recipe = a.recipe if not Path(a.recipe).is_file() else str(Path(a.recipe).resolve())
    out = Path(a.out).resolve()
    rng = random.Random(a.seed)
    prof = run_reference(recipe, out)
    ref = comparable(out / "reference")
    categories = ("table",) if a.table_only else ("table", "transcripts", "data")
    stats = defaultdict(lambda: {"kills": 0, "resumes": 0, "errors": 0, "mismatches": 0})
    runs, done, t0 = [], 0, time.time()
    while done < a.kills:
        run_dir = out / f"run-{len(runs):03d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        print(f"run {len(runs)}: {run_dir} ({done}/{a.kills} kills so far, {(time.time() - t0) / 60:.0f} min)",
              flush=True)
        record = kill_resume_run(recipe, run_dir, prof, rng, stats, kills=min(a.max_kills_per_run, a.kills - done),
                                 stages=a.stages, log=lambda m: print(m, flush=True))
        done += len(record["kills"])
        if record["completed"]:
            diffs = differences(ref, comparable(run_dir / "out"), categories)
            record["mismatches"] = diffs
            record["leftovers"] = leftovers(run_dir / "out")
            for stage in {kill["stage"] for kill in record["kills"]}:
                stats[stage]["mismatches"] += bool(diffs)
            print(f"  finished: {'MISMATCH ' + str(len(diffs)) if diffs else 'equal to the reference'}"
                  + "".join(f"\n    {d}" for d in diffs[:20]), flush=True)
        ok = record["completed"] and not record.get("mismatches") and not record["errors"] and not record["torn"]
        if ok and not a.keep:
            shutil.rmtree(run_dir / "out", ignore_errors=True)
        runs.append(record)
        report = {"recipe": recipe, "seed": a.seed, "reference_s": prof.total_s, "categories": categories,
                  "stages": stats, "runs": runs}
        (out / "report.json.tmp").write_text(json.dumps(report, indent=1))
        os.replace(out / "report.json.tmp", out / "report.json")
    print(f"\n{len(runs)} runs, {done} kills in {(time.time() - t0) / 60:.1f} min (reference: "
          f"{prof.total_s:.0f} s uninterrupted); compared: {', '.join(categories)}")
    print(f"{'stage':<12} {'kills':>5} {'resumes':>7} {'errors':>6} {'mismatches':>10}")
    for stage in STAGES:
        if stage in stats:
            s = stats[stage]
            print(f"{stage:<12} {s['kills']:>5} {s['resumes']:>7} {s['errors']:>6} {s['mismatches']:>10}")
    litter = sorted({f for r in runs for f in r.get("leftovers", [])})
    print(f"temporary files left in finished runs: {litter or 'none'}")
    bad = sum(s["errors"] + s["mismatches"] for s in stats.values()) + sum(not r["completed"] for r in runs)
    print(f"report: {out / 'report.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
