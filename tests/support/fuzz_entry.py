"""Fuzzing the public entry points with mutated files.

Four targets, each fed files mutated from a small valid corpus made at the
start (``build_bases``: an untrained tiny RNN-T, and with ``--conformer`` a
tiny Conformer, quantized with a mixed GQ/uniform policy, saved with
``gq_tf.save_qat`` and exported with ``deploy.export_streaming``; a log-mel
utterance; the repository's recipes and model configs):

- ``tflite``: one of the three step graphs with 1 to 32 random byte edits
  (half of them on the flatbuffer's structure, outside the weight buffers)
  or a truncation, through ``converters.make_interpreter`` (from the file or
  its bytes), ``set_tensor`` of every input (random values of its shape and
  dtype), ``invoke`` and ``get_tensor`` of every output.
- ``recognizer``: an export directory with ``streaming.json`` edited as JSON
  (keys dropped or renamed, values of the wrong type, shapes changed,
  subtrees swapped) or as bytes, or a step graph byte-edited, or a file
  deleted, through ``deploy.StreamingRecognizer``, which then streams a real
  utterance (log-mel frames of espeak-ng speech, ``features.log_mel``; random
  frames when espeak-ng is missing) in pieces of random size and
  ``finish()``es.
- ``qat``: a ``save_qat`` directory with ``gq_model.json`` edited (as JSON or
  bytes), the checkpoint files byte-edited or truncated, or a file deleted,
  through ``gq_tf.load_qat``.
- ``recipe``: a recipe and its model configs (copied with the model names
  turned into paths ``configs/<name>.json``), edited as JSON or as bytes,
  through the command ``gq-tf asr run recipe.json --check`` (``cli.main`` in
  the worker; ``--check`` validates and prints the plan, no training), with
  ``--models``/``--variants`` selections now and then. ``--real-runs N`` then
  runs the first N mutated recipes that passed the check and stay cheap
  (tiny corpus, at most 2 epochs) for real, each in a fresh process.

Outcomes per case: success; clean error (``ValueError``, ``RuntimeError``,
``FileNotFoundError`` or ``TypeError`` raised by a ``raise`` statement of
``gq_tf``/``converters``, or by the TFLite runtime's interpreter, whose
messages carry the delegate's; or a JSON syntax error from ``json``); an
*unexpected exception* (any other type or origin: a ``KeyError`` of ours,
a ``ValueError`` of NumPy's, TensorFlow's own errors... they are bugs too);
a crash (the worker died: signal, sanitizer report); a hang (no answer in the
target's time limit). For the CLI the exception is the one ``cli.main``
reports as ``error: ...`` (or the traceback it lets through).

The cases run in worker subprocesses, many per process, each case announced
on stdout before it starts, as in ``tests/support/fuzz_delegate.py`` (whose
sanitizer helpers this module uses): a worker that dies names the case that
killed it and a new worker continues after it. Every case is reproducible
from (target, seed, case number); ``--crash-dir`` saves the files of each
crashing, hanging or unexpected case with its description.

Long run, from the repository root:

    python -m tests.support.fuzz_entry --target tflite --cases 2000 [--jobs 2]
        [--seed 0] [--asan] [--crash-dir DIR] [--conformer] [--real-runs N]

``--target`` may be repeated, or ``all``. ``--asan`` loads the delegate
built with AddressSanitizer + UBSan (``tflite`` target only: the others
import TensorFlow). ``tests/gq_speech/test_fuzz_entry.py`` runs a few hundred cases in CI.
"""

import argparse
import collections
import contextlib
import io
import json
import linecache
import math
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from converters import flatbuf
from tests.support import fuzz_delegate as fz
from tests.support.asrmodels import emitting_net

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("tflite", "recognizer", "qat", "recipe")
PACKAGES = ("gq_tf", "converters", "android_bench", "gq_speech")  # errors raised here are ours
PARTS = ("encoder", "prediction", "joint")
# GQ at several depths (packed GQ_LSTM / GQ_FULLY_CONNECTED ops) and uniform
# 8-bit (int8 builtins) in each graph.
POLICY = {"encoder_lstm_0": {"kernel": 4, "recurrent_kernel": 2}, "encoder_lstm_.*": 3, "joint_enc": "u8",
          "joint_out": 8, ".*": 5}
# Seconds a case may take before it counts as a hang (the machine may be
# busy with a training run: generous), and a worker to start.
TIME_LIMIT = {"tflite": 60, "recognizer": 120, "qat": 180, "recipe": 300}
STARTUP_LIMIT = 600
# Cases per worker process (a fresh process bounds memory growth).
CHUNK = {"tflite": 1000, "recognizer": 400, "qat": 150, "recipe": 200}
# Address space a worker may allocate (RLIMIT_DATA): a mutated size that
# asks for more fails inside the worker instead of swapping the machine.
WORKER_MEMORY = 3 << 30
DOCUMENTED = (ValueError, RuntimeError, FileNotFoundError, TypeError)
_RUNTIME_FILES = ("ai_edge_litert/interpreter.py", "tensorflow/lite/python/interpreter.py")
_JSON_PACKAGE = Path(json.__file__).parent

# ------------------------------------------------------------------ bases


def _policy():
    import gq_tf

    def spec(v):
        if isinstance(v, dict):
            return {k: spec(x) for k, x in v.items()}
        return gq_tf.Uniform(int(v[1:])) if isinstance(v, str) else v

    return {k: spec(v) for k, v in POLICY.items()}


def _utterance(n_mels):
    """(log-mel frames [T, n_mels], what they are): espeak-ng speech, or random frames without it."""
    from gq_speech import corpus, features, transcribe

    cfg = features.FeatureConfig(n_mels=n_mels)
    try:
        voice = next(v for v in corpus.all_voices() if v.engine == "espeak")
        audio = corpus.synthesize(voice, "set a timer for ten minutes and call my brother")
        what = f"espeak-ng {voice.name}, {len(audio) / 16000:.1f} s"
        return transcribe.audio_features(audio, cfg).astype(np.float32), what
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        rng = np.random.default_rng(0)
        return (rng.normal(-4.0, 2.0, (300, n_mels)).astype(np.float32),
                f"random log-mel-like frames (no espeak-ng: {type(e).__name__})")


def structure_ranges(data):
    """Byte ranges of a .tflite file outside its buffers' data (tables, vectors, strings)."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(bytearray(data), 0)
    offsets = flatbuf.buffer_offsets(data)
    spans = sorted((off, off + root.Buffers(i).DataLength()) for i, off in offsets.items())
    out, start = [], 0
    for a, b in spans:
        if a > start:
            out.append((start, a))
        start = max(start, b)
    if start < len(data):
        out.append((start, len(data)))
    return out


def build_bases(out_dir, kinds=("rnnt",), recipes=("tiny",), log=print):
    """Writes the fuzz corpus to ``out_dir`` and returns its index (also ``bases.json``).

    Per model kind: ``<kind>/stream`` (export_streaming, kind "gq"; for the
    RNN-T also ``float_stream``, kind "float") and ``<kind>/qat`` (save_qat)
    of an untrained ``<kind>_tiny`` whose feature
    statistics are the utterance's and whose joint network is scaled so
    greedy decoding emits tokens (tests/support/asrmodels.py); the
    utterance's log-mel frames (``features.npy``); a small Conv1D/Dense QAT
    model (``small/qat``, most of the qat cases); and per recipe a folder
    with ``recipe.json`` (model names turned into ``configs/<name>.json``)
    and those configs.
    """
    import gq_tf
    from gq_speech import deploy, features, models
    from gq_tf._keras import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = {"exports": [], "qat": [], "tflite": [], "recipes": []}
    feats = None
    for kind in kinds:
        cfg = models.load_config(f"{kind}_tiny")
        if feats is None:
            feats, what = _utterance(cfg.n_mels)
            np.save(out / "features.npy", feats)
            index["features"] = what
        cfg = cfg.with_feature_stats(features.FeatureStats.compute([feats]))
        net = emitting_net(cfg)
        qat = gq_tf.quantize_model(net, _policy())
        gq_tf.save_qat(qat, out / kind / "qat")
        export = deploy.export_streaming(qat, cfg, out / kind / "stream")
        log(f"base {kind}_tiny: {export.total_bytes:,} bytes of .tflite, "
            + ", ".join(f"{p} {sorted(r.op_counts)}" for p, r in export.reports.items()))
        folders = [f"{kind}/stream"]
        if kind == "rnnt":
            # Float builtins (an unrolled LSTM whose output is also its h state).
            deploy.export_streaming(qat, cfg, out / kind / "float_stream", kind="float")
            folders.append(f"{kind}/float_stream")
        index["exports"] += folders
        index["qat"].append(f"{kind}/qat")
        for folder in folders:
            for part in PARTS:
                data = (out / folder / f"{part}.tflite").read_bytes()
                index["tflite"].append({"path": f"{folder}/{part}.tflite", "structure": structure_ranges(data)})
        keras.backend.clear_session()
    # A small QAT model that loads in half a second (an ASR one with LSTMs
    # takes 3-10 s: their graphs are traced twice): most of the qat cases.
    inputs = keras.Input([12, 6])
    x = keras.layers.Conv1D(8, 3, name="conv")(inputs)
    x = keras.layers.Dense(10, activation="relu", name="hidden")(x)
    small = keras.Model(inputs, keras.layers.Dense(4, name="out")(x), name="small")
    qat = gq_tf.quantize_model(small, {"conv": 3, "hidden": gq_tf.Uniform(8), "out": 8})
    gq_tf.save_qat(qat, out / "small" / "qat")
    index["qat"] = ["small/qat"] * 6 + index["qat"]
    keras.backend.clear_session()
    for name in recipes:
        recipe, _ = models.load_named_json(name, ROOT / "gq_speech/recipes", "recipe")
        folder = out / "recipes" / name
        (folder / "configs").mkdir(parents=True, exist_ok=True)
        rename = {m: f"configs/{m}.json" for m in recipe["models"]}
        for m in recipe["models"]:
            shutil.copy(ROOT / "gq_speech/configs" / f"{m}.json", folder / rename[m])
        recipe["models"] = [rename[m] for m in recipe["models"]]
        for spec in recipe["variants"].values():
            if "models" in spec:
                spec["models"] = [rename.get(m, m) for m in spec["models"]]
        for stage in ("float", "finetune"):
            if "per_model" in recipe[stage]:
                recipe[stage]["per_model"] = {rename.get(m, m): v for m, v in recipe[stage]["per_model"].items()}
        (folder / "recipe.json").write_text(json.dumps(recipe, indent=1))
        index["recipes"].append({"dir": f"recipes/{name}", "configs": sorted(rename.values())})
    (out / "bases.json").write_text(json.dumps(index, indent=1))
    return index


# -------------------------------------------------------------- mutations

_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
_INT32 = (0, 1, 2, 3, -1, 0x7FFFFFFF, -0x80000000, 0x10000, 255, 256)
_VALUES = (None, True, False, 0, 1, -1, 2, 3, 7, 8, 64, 1000, 2**31, 2**63, -(2**31), 0.5, -1.5, float("nan"),
           float("inf"), "", "x", "float32", "int8", "rnnt", "conformer", [], [1], [1, 2, 3], [-1, 0], {}, {"a": 1})


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def mutate_bytes(rng, data, structure=None):
    """1 to 32 random byte edits, or a truncation. Returns (bytes, description).

    ``structure``: byte ranges that get half of the edits (a flatbuffer's
    tables and vectors rather than its weights).
    """
    data = bytearray(data)
    if not data:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 16))).astype(np.uint8)), "random bytes for an empty file"
    r = rng.random()
    if r < 0.12:
        keep = int(rng.integers(0, len(data)))
        return bytes(data[:keep]), f"truncated to {keep} of {len(data)} bytes"
    if r < 0.18:
        a = int(rng.integers(0, len(data)))
        b = min(len(data), a + int(rng.integers(1, 64)))
        if rng.random() < 0.5:
            return bytes(data[:a] + data[b:]), f"bytes {a}..{b} deleted"
        extra = rng.integers(0, 256, b - a).astype(np.uint8).tobytes()
        return bytes(data[:a] + extra + data[a:]), f"{b - a} random bytes inserted at {a}"
    n = int(2 ** rng.uniform(0, 5))  # 1..32, log-uniform: few edits often reach invoke
    for _ in range(n):
        if structure and rng.random() < 0.5:
            lo, hi = _pick(rng, structure)
            pos = int(rng.integers(lo, hi))
        else:
            pos = int(rng.integers(len(data)))
        k = rng.random()
        if k < 0.35:
            data[pos] = int(rng.integers(0, 256))
        elif k < 0.6:
            data[pos] ^= 1 << int(rng.integers(8))
        elif k < 0.8:
            data[pos] = _pick(rng, _BYTES)
        else:
            pos -= pos % 4
            raw = int(_pick(rng, _INT32)).to_bytes(4, "little", signed=True)
            data[pos:pos + 4] = raw[:len(data) - pos]
    return bytes(data), f"{n} byte edit{'s' if n > 1 else ''}"


def _nodes(obj, path=()):
    """Every (path, value) of a JSON tree, the root included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def _set(obj, path, value):
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return obj


def _json_edit(rng, obj):
    """One JSON-aware edit of ``obj`` (in place where possible); (obj, description)."""
    nodes = list(_nodes(obj))
    path, value = _pick(rng, nodes)
    where = "/".join(map(str, path)) or "(root)"
    r = rng.random()
    if r < 0.18 and path:
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict):
            if rng.random() < 0.5:
                del parent[path[-1]]
                return obj, f"drop {where}"
            new = _pick(rng, (path[-1] + "_", path[-1].upper(), "", path[-1][:-1] or "x", "name"))
            parent[new] = parent.pop(path[-1])
            return obj, f"rename {where} -> {new!r}"
        del parent[path[-1]]
        return obj, f"delete {where}"
    if r < 0.45:
        new = _pick(rng, _VALUES)
        new = json.loads(json.dumps(new))
        return _set(obj, path, new), f"{where} = {json.dumps(new)}"
    if r < 0.65 and isinstance(value, (int, float)) and not isinstance(value, bool):
        new = _pick(rng, (value + 1, value - 1, -value, 0, value * 2, value * 1000, value / 2, str(value)))
        return _set(obj, path, new), f"{where}: {value!r} -> {new!r}"
    if r < 0.8 and isinstance(value, list):
        v = list(value)
        k = rng.random()
        if k < 0.3 and v:
            del v[int(rng.integers(len(v)))]
            what = "element removed"
        elif k < 0.6:
            v.insert(int(rng.integers(len(v) + 1)), _pick(rng, (1, 2, 0, -1, 8, v[0] if v else 1)))
            what = "element added"
        elif len(v) >= 2:
            a, b = rng.choice(len(v), 2, replace=False)
            v[a], v[b] = v[b], v[a]
            what = "elements swapped"
        else:
            v = v * 2
            what = "doubled"
        return _set(obj, path, v), f"{where}: {what}"
    if r < 0.88 and isinstance(value, str):
        new = _pick(rng, ("", value + "x", value.upper(), value[:-1], "../" + value, value * 3, "\u00e9" + value))
        return _set(obj, path, new), f"{where}: {value!r} -> {new!r}"
    # A subtree copied over another: right-looking data in the wrong place.
    other_path, other = _pick(rng, nodes)
    return _set(obj, path, json.loads(json.dumps(other))), f"{where} = copy of {'/'.join(map(str, other_path))}"


def mutate_json(rng, data):
    """1 to 4 JSON-aware edits of JSON text; (bytes, description)."""
    obj = json.loads(data)
    steps = []
    for _ in range(int(rng.integers(1, 5))):
        obj, what = _json_edit(rng, obj)
        steps.append(what)
    return json.dumps(obj, indent=1).encode(), "json: " + "; ".join(steps)


def _mutate_file(rng, files, name, json_share, structure=None):
    """Edits ``files[name]`` as JSON (``json_share`` of the time) or as bytes; returns the description."""
    if rng.random() < json_share:
        files[name], what = mutate_json(rng, files[name])
    else:
        files[name], what = mutate_bytes(rng, files[name], structure)
    return f"{name}: {what}"


def _read_dir(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def make_case(target, bases, seed, number):
    """Case ``number`` of ``target`` in the stream ``seed``.

    Returns:
      (files, params, description): ``files`` {relative path: bytes} of the
      case directory, ``params`` what the worker does with it.
    """
    root, index = Path(bases), json.loads(Path(bases, "bases.json").read_text())
    rng = np.random.default_rng([seed, TARGETS.index(target), number])
    if target == "tflite":
        base = _pick(rng, index["tflite"])
        data, what = mutate_bytes(rng, (root / base["path"]).read_bytes(), [tuple(s) for s in base["structure"]])
        params = {"kernel": _pick(rng, ("auto", "reference")), "as_bytes": bool(rng.random() < 0.5)}
        return {"model.tflite": data}, params, f"{base['path']}: {what}"
    if target == "recognizer":
        base = _pick(rng, index["exports"])
        files = _read_dir(root / base)
        r = rng.random()
        if r < 0.45:
            steps = [_mutate_file(rng, files, "streaming.json", 1.0)]
        elif r < 0.6:
            steps = [_mutate_file(rng, files, "streaming.json", 0.0)]
        elif r < 0.93:
            part = _pick(rng, PARTS)
            steps = [_mutate_file(rng, files, f"{part}.tflite", 0.0)]
        else:
            name = _pick(rng, sorted(files))
            del files[name]
            steps = [f"{name} deleted"]
        params = {"kernel": _pick(rng, ("auto", "reference")), "seed": int(rng.integers(2**31))}
        return files, params, f"{base}: " + "; ".join(steps)
    if target == "qat":
        base = _pick(rng, index["qat"])
        files = _read_dir(root / base)
        r = rng.random()
        if r < 0.45:
            step = _mutate_file(rng, files, "gq_model.json", 1.0)
        elif r < 0.6:
            step = _mutate_file(rng, files, "gq_model.json", 0.0)
        elif r < 0.95:
            name = _pick(rng, sorted(n for n in files if n != "gq_model.json"))
            step = _mutate_file(rng, files, name, 0.0)
        else:
            name = _pick(rng, sorted(files))
            del files[name]
            step = f"{name} deleted"
        return files, {}, f"{base}: {step}"
    if target == "recipe":
        base = _pick(rng, index["recipes"])
        files = _read_dir(root / base["dir"])
        r = rng.random()
        steps = []
        if r < 0.55 or r >= 0.95:
            steps.append(_mutate_file(rng, files, "recipe.json", 0.8))
        if r >= 0.55:
            steps.append(_mutate_file(rng, files, _pick(rng, base["configs"]), 0.75))
        argv = []
        if rng.random() < 0.1:
            argv += ["--models", *rng.choice(base["configs"] + ["configs/other.json"],
                                             int(rng.integers(1, 3))).tolist()]
        if rng.random() < 0.1:
            argv += ["--variants", *rng.choice(["float", "gq_mixed", "uniform8", "cluster16", "nope"],
                                               int(rng.integers(1, 3)), replace=False).tolist()]
        what = "; ".join(steps) + (f"; options {' '.join(argv)}" if argv else "")
        return files, {"argv": argv}, f"{base['dir']}: {what}"
    raise ValueError(f"Expected a target in {TARGETS}. Received {target!r}.")


def write_case(folder, files):
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def cheap_recipe(files):
    """True for a mutated recipe whose real run stays small: the tiny corpus, at most 2 epochs per stage."""
    try:
        recipe = json.loads(files["recipe.json"])
        corpus = recipe["corpus"]
        stages = [recipe["float"], recipe["finetune"]] + [
            s.get("finetune", {}) for s in recipe["variants"].values()]
        stages += [v for s in (recipe["float"], recipe["finetune"]) for v in s.get("per_model", {}).values()]
        return (corpus.get("preset") == "tiny" and "librispeech" not in corpus
                and all(isinstance(s.get("epochs", 1), int) and s.get("epochs", 1) <= 2 for s in stages)
                and recipe.get("eval", {}).get("bench_runs", 2) <= 5)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


# ----------------------------------------------------------------- worker


def _origin(exc):
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return "?", 0, "?"
    return last.tb_frame.f_code.co_filename, last.tb_lineno, last.tb_frame.f_code.co_name


def classify(exc):
    """("clean" | "unexpected" | "harness", one line) for an exception an entry point raised.

    Clean: a documented type raised by a ``raise`` statement of our packages,
    or by the TFLite interpreter module (the runtime's and the delegate's
    messages), or a syntax or encoding error of the ``json`` module (a file
    that is not JSON). Anything else is unexpected.
    """
    path, line, func = _origin(exc)
    text = fz._one_line(exc)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) and Path(path).parent == _JSON_PACKAGE:
        return "clean", text  # json.load of a file that is not JSON: the json module's message
    if isinstance(exc, DOCUMENTED):
        ours = any(Path(path).is_relative_to(ROOT / pkg) for pkg in PACKAGES)
        if ours and linecache.getline(path, line).lstrip().startswith("raise"):
            return "clean", text
        if path.endswith(_RUNTIME_FILES) and type(exc) in (RuntimeError, ValueError):
            return "clean", text  # not a subclass: a UnicodeDecodeError of a tensor name is no message
    shown = os.path.relpath(path, ROOT) if Path(path).is_relative_to(ROOT) else path
    if Path(path).resolve() == Path(__file__).resolve():  # this module's own fault, not the code under test
        return "harness", f"{text} [raised at {shown}:{line} in {func}]"
    return "unexpected", f"{text} [raised at {shown}:{line} in {func}]"


def _input_value(rng, d):
    shape = [int(v) for v in d["shape"]]
    if any(v < 0 for v in shape) or math.prod(shape) > 1 << 24:
        return None  # nothing sensible to set: run on what is there
    dtype = np.dtype(d["dtype"])
    if dtype.kind == "f":
        v = rng.normal(size=shape)
        if v.size and rng.random() < 0.05:
            v.flat[int(rng.integers(v.size))] = _pick(rng, (np.nan, np.inf, -np.inf, 1e30))
        return v.astype(dtype)
    if dtype.kind in "iu":
        high = 29 if rng.random() < 0.9 else 2**15
        return rng.integers(0, high, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return None


def _run_tflite(folder, params, library):
    from converters import runtime as rt

    if library:
        rt.delegate_path = lambda: library  # the sanitizer build
    path = Path(folder) / "model.tflite"
    source = path.read_bytes() if params["as_bytes"] else path
    interpreter = rt.make_interpreter(source, kernel=params["kernel"])
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        value = _input_value(rng, d)
        if value is not None:
            interpreter.set_tensor(d["index"], value)
    interpreter.invoke()
    for d in interpreter.get_output_details():
        interpreter.get_tensor(d["index"])


def _run_recognizer(folder, params, features):
    from gq_speech import deploy

    rec = deploy.StreamingRecognizer(folder, kernel=params["kernel"])
    rng = np.random.default_rng(params["seed"])
    start = 0
    while start < len(features):
        step = int(rng.integers(0, 3 * rec.chunk_frames))
        rec.push(features[start:start + step])
        start += step
    rec.finish()


def _run_qat(folder):
    import gq_tf

    gq_tf.load_qat(folder)


class _Stream(io.StringIO):
    """A stderr that remembers the exception being handled when ``error: ...`` is written."""

    handled = None

    def write(self, text):
        if self.handled is None and text.startswith("error: "):
            self.handled = sys.exc_info()[1]
        return super().write(text)


def _run_recipe(folder, params):
    """``gq-tf asr run recipe.json --check`` in ``folder``: (status, message)."""
    from gq_speech import cli

    out, err = io.StringIO(), _Stream()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["run", "recipe.json", "--check", *params["argv"]])
            except SystemExit as e:  # argparse: usage errors
                code = e.code
    finally:
        os.chdir(cwd)
    if code == 0:
        return "ok", ""
    if err.handled is not None and code == 2:
        return classify(err.handled)
    line = err.getvalue().strip().splitlines()[-1:] or [""]
    if code == 2 and "usage:" in err.getvalue():
        return "clean", f"usage: {line[0][:300]}"
    return "unexpected", f"exit {code}: {line[0][:300]}"


def worker(target, bases, seed, first, count, library):
    """Runs cases first..first+count-1; one line per event on stdout.

    The events go to the original stdout; the worker's own fd 1 is pointed at
    stderr, so nothing the code under test prints can garble them.
    """
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if not library:  # ASan reserves its shadow memory as data
        resource.setrlimit(resource.RLIMIT_DATA, (WORKER_MEMORY, WORKER_MEMORY))
    features = np.load(Path(bases) / "features.npy") if target == "recognizer" else None
    if target in ("recognizer", "qat", "recipe"):
        import gq_tf  # noqa: F401  (the imports before the first case, not inside it)
        from gq_speech import cli, deploy  # noqa: F401
        from gq_tf._keras import keras
    scratch = Path(tempfile.mkdtemp(prefix=f"gq_fuzz_{target}_"))
    try:
        for number in range(first, first + count):
            out.write(f"BEGIN {number}\n")
            out.flush()
            folder = scratch / "case"
            try:
                files, params, description = make_case(target, bases, seed, number)
                write_case(folder, files)
            except Exception as e:  # noqa: BLE001  (a bug of this fuzzer, reported as such)
                out.write(f"END {number} harness {fz._one_line(e)}\n")
                out.flush()
                continue
            out.write(f"CASE {number} {description}\n")
            out.flush()
            status, message = "ok", ""
            if str(number) == os.environ.get("GQ_FUZZ_SELFTEST_CRASH"):
                os.kill(os.getpid(), signal.SIGSEGV)  # tests/gq_speech/test_fuzz_entry.py: crash detection
            if str(number) == os.environ.get("GQ_FUZZ_SELFTEST_HANG"):
                time.sleep(3600)  # tests/gq_speech/test_fuzz_entry.py: hang detection
            try:
                if target == "tflite":
                    _run_tflite(folder, params, library)
                elif target == "recognizer":
                    _run_recognizer(folder, params, features)
                elif target == "qat":
                    _run_qat(folder)
                else:
                    status, message = _run_recipe(folder, params)
            except Exception as e:  # noqa: BLE001  (every exception is classified)
                status, message = classify(e)
            if target in ("qat", "recipe"):
                keras.backend.clear_session()
            out.write(f"END {number} {status} {message}\n")
            out.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------- driver


class Result:
    """Outcome counts of one target's run."""

    def __init__(self, target):
        self.target = target
        self.status = collections.Counter()
        self.messages = collections.Counter()  # clean errors by kind
        self.error_types = collections.Counter()
        self.findings = []  # (status, case number, description, message or stderr tail)
        self.real = []  # (case number, description, status, message) of --real-runs
        self.passed = []  # case numbers that succeeded

    @property
    def cases(self):
        return sum(self.status.values())

    def summary(self, show=5):
        s = self.status
        lines = [
            f"target {self.target}: {self.cases} cases",
            f"  clean errors: {s['clean']} (" + ", ".join(f"{k} {v}" for k, v in self.error_types.most_common())
            + ")",
            f"  successes: {s['ok']}",
            f"  crashes: {s['crash']}",
            f"  hangs: {s['hang']}",
            f"  unexpected exceptions: {s['unexpected']}",
        ]
        kinds = collections.Counter(_kind(m) for st, _, _, m in self.findings if st == "unexpected")
        for kind, n in kinds.most_common(15):
            example = next((c, d, m) for st, c, d, m in self.findings if st == "unexpected" and _kind(m) == kind)
            lines.append(f"    {n:5d} x {example[2][:400]}\n            e.g. case {example[0]}: {example[1][:300]}")
        if s["harness"]:
            lines.append(f"  FUZZER ERRORS (bugs of this harness): {s['harness']}")
        for st, number, description, message in self.findings:
            if st in ("crash", "hang", "harness"):
                lines.append(f"  {st.upper()} case {number}: {description}\n{message}")
        for number, description, st, message in self.real:
            lines.append(f"  real run, case {number}: {st} {message[:300]} ({description[:200]})")
        return "\n".join(lines)


def _kind(message):
    """A message with paths, numbers and quoted values blanked (and where it was raised), for tallies."""
    text, _, where = message.partition(" [raised at ")
    kind = fz._message_kind(re.sub(r"0x[0-9a-f]+", "N", re.sub(r"/[^\s'\"]+", "PATH", text)))
    return kind + (f" @ {where.rstrip(']')}" if where else "")


def _worker_env(library):
    env = dict(fz.sanitizer_env() if library else os.environ)
    if library:
        # A mutated shape can ask for 100 GB of activations: the runtime
        # reports the failed allocation, unless ASan aborts on it first.
        env["ASAN_OPTIONS"] += ":allocator_may_return_null=1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_range(target, bases, seed, first, count, library, events, limit):
    """Runs a range of cases in workers, starting a new one after each crash or hang."""
    number, end, idle_starts = first, first + count, 0
    while number < end:
        cmd = [sys.executable, "-m", "tests.support.fuzz_entry", "--worker", target, "--bases", str(bases),
               "--seed", str(seed), "--first", str(number), "--cases", str(end - number)]
        if library:
            cmd += ["--library", library]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_worker_env(library), stdout=subprocess.PIPE, stderr=err,
                                    text=True, start_new_session=True)
            lines = queue.Queue()
            threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                             daemon=True).start()
            begun, described, deadline, outcome = None, "?", time.monotonic() + STARTUP_LIMIT, None
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    outcome = "hang"
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                if line is None:
                    outcome = "crash"
                    break
                parts = line.rstrip("\n").split(" ", 3)
                if parts[0] == "BEGIN":
                    begun, described = int(parts[1]), "?"
                    deadline = time.monotonic() + limit
                elif parts[0] == "CASE":
                    described = parts[2] + (" " + parts[3] if len(parts) > 3 else "")
                elif parts[0] == "END":
                    events.append((int(parts[1]), parts[2], parts[3] if len(parts) > 3 else "", described))
                    number, begun = int(parts[1]) + 1, None
            code = proc.wait()
            err.seek(0)
            tail = "\n".join(err.read().strip().splitlines()[-30:])
            if outcome == "crash" and code < 0:
                tail = f"worker killed by {signal.Signals(-code).name}\n{tail}"
            elif outcome == "crash":
                tail = f"worker exited with status {code}\n{tail}"
        if number >= end:
            break
        if begun is None:
            # Died outside a case (starting, or between two): try again, but not forever.
            idle_starts += 1
            if idle_starts > 2:
                raise RuntimeError(f"fuzz worker failed to start or stopped between cases: {cmd}\n{tail}")
            continue
        idle_starts = 0
        events.append((begun, outcome, tail, described))
        number = begun + 1


def run(target, bases, seed, cases, *, first=0, jobs=2, library=None, chunk=None, limit=None):
    """Runs ``cases`` cases of ``target`` (numbers ``first``...) in ``jobs`` workers; returns a Result.

    ``library``: a delegate build to load instead of the installed one (with
    the sanitizer environment); ``limit``: seconds per case before a hang
    (default ``TIME_LIMIT[target]``).
    """
    import concurrent.futures

    chunk = max(1, min(chunk or CHUNK[target], -(-cases // max(1, jobs))))
    ranges = [(a, min(chunk, first + cases - a)) for a in range(first, first + cases, chunk)]
    results = []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = []
        for a, n in ranges:
            events = []
            results.append(events)
            futures.append(pool.submit(_run_range, target, bases, seed, a, n, library, events,
                                       limit or TIME_LIMIT[target]))
        for f in futures:
            f.result()
    result = Result(target)
    for events in results:
        for number, status, message, description in sorted(events):
            result.status[status] += 1
            if status == "clean":
                result.error_types[message.split(":", 1)[0]] += 1
                result.messages[_kind(message)] += 1
            elif status == "ok":
                result.passed.append(number)
            else:  # unexpected, crash, hang, harness
                result.findings.append((status, number, description, message))
    return result


def sanitized_delegate(cache_dir=ROOT / "build" / "asan_delegate"):
    """The delegate built with ASan + UBSan (``fuzz_delegate.build_sanitized_delegate``), cached.

    The build takes about two CPU minutes; it is kept under ``cache_dir`` in
    a folder named by a hash of every C source and header of ``converters/``,
    ``cbuild.py`` and the compiler's version, so any change rebuilds it.
    """
    import hashlib

    h = hashlib.sha256(subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.encode())
    for path in sorted((ROOT / "converters").rglob("*")):
        if path.suffix in (".c", ".h") or path.name == "cbuild.py":
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    folder = Path(cache_dir) / h.hexdigest()[:16]
    library = folder / "libgq_delegate_asan.so"
    if not library.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building_"))
        try:
            fz.build_sanitized_delegate(tmp)
            for obj in tmp.glob("*.o"):
                obj.unlink()
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(library)


def real_runs(bases, seed, numbers, out_dir, log=print, timeout=2400):
    """Runs mutated recipes for real (``gq-tf asr run``, no --check) in fresh processes.

    Returns:
      [(case number, description, "ok" | "unexpected" | "hang", message)]:
      the recipes passed ``--check``, so a failed run is a finding.
    """
    done = []
    for number in numbers:
        files, params, description = make_case("recipe", bases, seed, number)
        folder = Path(out_dir) / f"recipe_case_{number}"
        write_case(folder, files)
        cmd = [sys.executable, "-m", "gq_speech.cli", "run", "recipe.json", "--out", "out", *params["argv"]]
        log(f"real run of recipe case {number}: {description}")
        # Its own session: a timeout ends the run with every process it started.
        proc = subprocess.Popen(cmd, cwd=folder, env=_worker_env(None), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
            last = (stderr.strip().splitlines() or [""])[-1]
            # These recipes passed --check: any failure is one the check missed.
            status = "ok" if proc.returncode == 0 else "unexpected"
            message = f"exit {proc.returncode}: {last}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            status, message = "hang", f"no end in {timeout} s"
        done.append((number, description, status, message))
    return done


def save_case(crash_dir, target, bases, seed, number, text):
    files, params, description = make_case(target, bases, seed, number)
    folder = Path(crash_dir) / f"{target}_case_{number}"
    write_case(folder / "files", files)
    (folder / "case.txt").write_text(
        f"target {target}, seed {seed}, case {number}\n{description}\nparams {json.dumps(params)}\n\n{text}\n"
        f"\nrerun: python -m tests.support.fuzz_entry --target {target} --seed {seed} --first {number} --cases 1\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=TARGETS + ("all",),
                        help="target to fuzz (repeatable; default all)")
    parser.add_argument("--cases", type=int, default=int(os.environ.get("GQ_FUZZ_CASES", "500")),
                        help="cases per target")
    parser.add_argument("--first", type=int, default=0, help="number of the first case (to rerun one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--asan", action="store_true",
                        help="tflite target: load a delegate built with -fsanitize=address,undefined")
    parser.add_argument("--crash-dir", help="save the files of crashing, hanging and unexpected cases here")
    parser.add_argument("--conformer", action="store_true", help="add a tiny Conformer export to the bases")
    parser.add_argument("--real-runs", type=int, default=0,
                        help="recipe target: run this many cheap mutated recipes that passed --check for real")
    parser.add_argument("--bases", help="a folder build_bases wrote, reused; built there when it has no "
                        "bases.json (default: a temporary one)")
    parser.add_argument("--top", type=int, default=10, help="show the N most frequent clean errors")
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.bases, args.seed, args.first, args.cases, args.library)
        return 0

    targets = list(TARGETS) if not args.target or "all" in args.target else list(dict.fromkeys(args.target))
    if args.asan and targets != ["tflite"]:
        parser.error("--asan fuzzes the tflite target only (the others import TensorFlow)")
    tmp = Path(tempfile.mkdtemp(prefix="gq_fuzz_entry_"))
    try:
        t0 = time.time()
        bases = Path(args.bases) if args.bases else tmp / "bases"
        if not (bases / "bases.json").is_file():
            if bases.exists() and any(bases.iterdir()):
                parser.error(f"--bases: expected a folder with bases.json (from an earlier run) or an empty or "
                             f"new one. Received {bases}, which holds other files.")
            build_bases(bases, kinds=("rnnt", "conformer") if args.conformer else ("rnnt",),
                        recipes=("tiny", "demo", "full"))
        index = json.loads(Path(bases, "bases.json").read_text())
        print(f"bases: {bases} ({time.time() - t0:.0f} s); recognizer features: {index.get('features')}", flush=True)
        if args.asan and fz.sanitizer_env() is None:
            print("no gcc libasan found", file=sys.stderr)
            return 2
        library = sanitized_delegate() if args.asan else None
        failed = False
        for target in targets:
            t1 = time.time()
            result = run(target, bases, args.seed, args.cases, first=args.first, jobs=args.jobs, library=library)
            if target == "recipe" and args.real_runs:
                cheap = [n for n in result.passed if cheap_recipe(make_case("recipe", bases, args.seed, n)[0])]
                result.real = real_runs(bases, args.seed, cheap[:args.real_runs], tmp)
            print(result.summary(), flush=True)
            print(f"  time: {time.time() - t1:.0f} s (seed {args.seed}, jobs {args.jobs}"
                  f"{', ASan+UBSan delegate' if library else ''})")
            if args.top:
                print("  most frequent clean errors:")
                for text, n in result.messages.most_common(args.top):
                    print(f"    {n:6d}  {text}")
            if args.crash_dir:
                for status, number, description, message in result.findings:
                    save_case(args.crash_dir, target, bases, args.seed, number, f"{status}: {message}")
            failed |= bool(result.findings) or any(r[2] in ("unexpected", "hang") for r in result.real)
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
