"""Streaming deployment: three .tflite step graphs, a manifest, and recognizers that run them.

``export_streaming`` writes a directory::

    encoder.tflite      [1, chunk_frames, n_mels] features + states -> encoder frames + states
    prediction.tflite   [1, 1] token + states -> [1, P] prediction output + states
    joint.tflite        [1, D] encoder frame, [1, P] prediction output -> [1, V] logits
    streaming.json      the model config, chunk size and, per graph, every input and
                        output by name (tensor name, shape, dtype) in the order
                        of the .tflite file's tensors, and which names are states

Each graph's inputs and outputs are addressed by name through its TFLite
signature ("serving_default"); a state is an input and an output of the same
name, and the app feeds every output state back as the next input. The files
are plain .tflite models (``android_bench`` can time each one with the input
shapes listed in ``streaming.json``); GQ files need the project's delegate
(``converters.make_interpreter``).

``StreamingRecognizer`` runs such a directory chunk by chunk with greedy
decoding (``decoding.GreedyDecoder``); ``KerasStreamingRecognizer`` runs the
Keras step models with the same interface, so the two can be compared token
for token.

Example:
  >>> out = export_streaming(qat, cfg, "runs/rnnt/gq_stream")
  >>> rec = StreamingRecognizer("runs/rnnt/gq_stream")
  >>> for frames in feature_chunks:        # np [k, n_mels], any k
  ...     new = rec.push(frames)
  >>> tokens = rec.finish()
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from gq_speech import models
from gq_speech.decoding import GreedyDecoder
from gq_speech.text import Tokenizer
from gq_tf._keras import check_keras_model
from gq_tf.configs import is_qat
from gq_tf.fileio import atomic_json

__all__ = [
    "EXPORT_KINDS",
    "FORMAT",
    "MANIFEST",
    "PARTS",
    "KerasStreamingRecognizer",
    "StreamingExport",
    "StreamingRecognizer",
    "export_streaming",
    "load_manifest",
    "stream_timed",
]

EXPORT_KINDS = ("gq", "float", "int8")
PARTS = ("encoder", "prediction", "joint")
MANIFEST = "streaming.json"
# A serialized name: it keeps the package path of when it was introduced.
FORMAT = "gq_tf.asr.streaming/1"
PADDING = ("The last partial chunk is completed with frames equal to the feature mean (zeros after "
           "the model's normalization).")


@dataclasses.dataclass
class StreamingExport:
    """What ``export_streaming`` wrote.

    Attributes:
      paths: {"encoder" | "prediction" | "joint" | "streaming.json": path}.
      reports: {part: converters.ExportReport} (kernel rows, op counts, sizes).
      kind: "gq", "float" or "int8".
    """

    paths: dict
    reports: dict
    kind: str

    @property
    def total_bytes(self):
        """Bytes of the three .tflite files."""
        return sum(r.size_bytes for r in self.reports.values())

    @property
    def packed_bytes(self):
        """Bytes of packed indices + centroid tables in the GQ custom ops of the three files."""
        return sum(r.packed_bytes for r in self.reports.values())

    def table(self):
        """One line per graph: file size and op counts."""
        lines = [f"{'graph':<11} {'bytes':>10}  ops"]
        for part, r in self.reports.items():
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(r.op_counts.items()))
            lines.append(f"{part:<11} {r.size_bytes:>10,}  {ops}")
        lines.append(f"{'total':<11} {self.total_bytes:>10,}")
        return "\n".join(lines)


def _config_of_model(cfg, model):
    """``cfg`` with the feature normalization constants the trained model really uses."""
    try:
        norm = model.get_layer("feature_norm")
    except ValueError:
        return cfg
    if not isinstance(norm, models.FeatureNormalization):
        return cfg
    if norm.mean is None:
        return dataclasses.replace(cfg, feature_mean=None, feature_std=None)
    return dataclasses.replace(cfg, feature_mean=tuple(norm.mean), feature_std=tuple(norm.std))


def _io_table(interpreter):
    """(inputs, outputs): [{name, tensor, shape, dtype}] in the file's tensor order, by signature name."""
    runner = interpreter.get_signature_runner()

    def table(by_name, order):
        # One row per signature name: two names can share a tensor (the
        # converter gives a one-layer LSTM's output and its h state one).
        position = {d["index"]: i for i, d in enumerate(order)}
        tensor = {d["index"]: d["name"] for d in order}
        return [{"name": name, "tensor": tensor[d["index"]], "shape": [int(v) for v in d["shape"]],
                 "dtype": np.dtype(d["dtype"]).name}
                for name, d in sorted(by_name.items(), key=lambda item: (position[item[1]["index"]], item[0]))]

    return (table(runner.get_input_details(), interpreter.get_input_details()),
            table(runner.get_output_details(), interpreter.get_output_details()))


def export_streaming(model, cfg, out_dir, *, kind="gq", policy=None, weights="float"):
    """Exports a trained transducer as three streaming step graphs + ``streaming.json``.

    Builds the step models of ``cfg`` (``models.build_step_models``), copies
    the trained weights into them by layer name and exports each one:

    * ``kind="gq"``: ``model`` is a QAT model (``gq_tf.quantize_model``); the
      step models are quantized with the same policy (``policy``, default
      the model's own, ``models.policy_from_qat``), receive every QAT
      variable (weights, centroids, scales, annealing state) and go through
      ``converters.export_tflite``: GQ kernels become packed
      ``GQ_FULLY_CONNECTED`` / ``GQ_LSTM`` ops, ``gq_tf.Uniform`` kernels int8
      builtins. A step graph the policy leaves float is exported in float.
    * ``kind="float"`` / ``"int8"``: the baselines of
      ``converters.export_baseline`` (float32 weights / the TFLite
      converter's dynamic-range int8); a QAT ``model`` is first reduced to its
      hard-quantized float weights (``gq_tf.strip_quantization``).

    The feature normalization constants are taken from ``model`` (its
    ``feature_norm`` layer), whatever ``cfg`` says.

    Args:
      model: the model ``models.build_training_model(cfg)`` made, trained, float or QAT.
      cfg: its ModelConfig.
      out_dir: directory to write (created if missing); existing files of
        the same names are replaced.
      kind: "gq", "float" or "int8".
      policy: with kind="gq", the policy the training model was quantized
        with (default: read from the model).
      weights: with kind="gq", ``export_tflite``'s ``weights`` ("float", or
        "dynamic_int8" for int8 weights in the layers the policy leaves float).

    Returns:
      StreamingExport (paths, one ExportReport per graph).

    Raises:
      ValueError: unknown kind, kind="gq" with a float model, or weights
        that do not copy (a model not built from ``cfg``).
    """
    import converters
    import gq_tf

    check_keras_model(model, "model")
    if kind not in EXPORT_KINDS:
        raise ValueError(f"Expected kind in {EXPORT_KINDS}. Received: kind={kind!r}")
    qat = is_qat(model)
    if kind == "gq" and not qat:
        raise ValueError("Expected a QAT model (gq_tf.quantize_model) for kind='gq'. Received a float model: "
                         "quantize and fine-tune it first, or export it with kind='float' or 'int8'.")
    cfg = _config_of_model(cfg, model)
    steps = models.build_step_models(cfg)
    if kind == "gq":
        steps = models.quantize_step_models(steps, policy if policy is not None else models.policy_from_qat(model))
        models.copy_weights(model, steps)
    else:
        models.copy_weights(gq_tf.strip_quantization(model) if qat else model, steps)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The manifest is what makes a directory an export: gone while the graphs
    # are replaced (each one atomically), written last. An export interrupted
    # here leaves no manifest beside a mix of old and new graphs.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    paths, reports, graphs = {}, {}, {}
    specs = models.state_specs(cfg)
    for part in PARTS:
        path = str(out_dir / f"{part}.tflite")
        step = steps[part]
        if kind == "gq" and is_qat(step):
            with warnings.catch_warnings():
                # Listed in the report (and in streaming.json) instead.
                warnings.simplefilter("ignore", converters.NotPackedWarning)
                report = converters.export_tflite(step, path, weights=weights)
        else:
            base = kind if kind != "gq" else ("int8" if weights == "dynamic_int8" else "float")
            report = converters.export_baseline(step, path, kind=base)
        paths[part], reports[part] = path, report
        inputs, outputs = _io_table(converters.make_interpreter(path, kernel="reference"))
        graphs[part] = {
            "file": f"{part}.tflite",
            "bytes": report.size_bytes,
            "packed_bytes": report.packed_bytes,
            "op_counts": dict(report.op_counts),
            "inputs": inputs,
            "outputs": outputs,
            "states": list(specs.get(part, {})),
            "not_packed": list(report.warnings),
        }
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "config": cfg.to_dict(),
        "chunk_frames": cfg.chunk_frames,
        "encoder_frames_per_chunk": cfg.chunk_frames // models.reduction(cfg),
        "frame_ms": 10,
        "blank": 0,
        "padding": PADDING,
        "graphs": graphs,
    }
    vocabulary = Tokenizer().vocab
    if len(vocabulary) == cfg.vocab_size:  # the text of each token id, for readers without Python (gq_stream)
        manifest["vocabulary"] = vocabulary
    paths[MANIFEST] = str(out_dir / MANIFEST)
    atomic_json(paths[MANIFEST], manifest)
    return StreamingExport(paths=paths, reports=reports, kind=kind)


def _manifest_error(path, what, received):
    return ValueError(f"Expected {what} in {str(path)!r}. Received {received}.")


def _check_rows(path, part, key, rows):
    """A graph's ``inputs`` or ``outputs`` table: [{name, shape, dtype}] with unique names."""
    where = f"graphs.{part}.{key}"
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _manifest_error(path, f"{where} to be a list of {{name, shape, dtype}} objects", repr(rows)[:200])
    for r in rows:
        name, shape, dtype = r.get("name"), r.get("shape"), r.get("dtype")
        if not isinstance(name, str):
            raise _manifest_error(path, f"a tensor name (string) in every row of {where}", f"name {name!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise _manifest_error(path, f"the shape of {where} {name!r} to be a list of ints >= 0",
                                  f"shape {shape!r}")
        try:
            if not isinstance(dtype, str):
                raise TypeError(dtype)
            np.dtype(dtype)
        except (TypeError, ValueError):
            raise _manifest_error(path, f"a NumPy dtype name for {where} {name!r}", f"dtype {dtype!r}") from None
    names = [r["name"] for r in rows]
    # Exports before the fix of _io_table listed an output that shares its
    # tensor with a state (a one-layer LSTM's output and h) twice under one
    # name: identical rows, accepted.
    unique = {json.dumps(r, sort_keys=True) for r in rows} if key == "outputs" else names
    if len(set(names)) != len(unique):
        raise _manifest_error(path, f"unique names in {where}", f"names {names}")


def load_manifest(directory):
    """The ``streaming.json`` of an export directory, checked.

    Checks what the recognizers and benchmarks read: a JSON object of format
    :data:`FORMAT` with a valid model config, a ``blank`` id in the
    vocabulary, and for each step graph a file that exists, its input and
    output tables (name, shape, dtype) and its states (inputs, which the
    graph also outputs). Whether the files' own signatures agree is checked
    by ``StreamingRecognizer`` when it opens them.

    Raises:
      FileNotFoundError: no manifest there, or a graph file it names is missing.
      ValueError: not a manifest of this format, or a malformed one (the
        message names the entry).
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"Expected {MANIFEST} in {directory} (written by export_streaming).")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Expected {MANIFEST} in {str(directory)!r} to be JSON. Received invalid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"Expected {MANIFEST} in {str(directory)!r} to be JSON. Received JSON nested too "
                         "deeply to read.") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"Expected {MANIFEST} in {str(directory)!r} to hold a JSON object. "
                         f"Received a JSON {type(manifest).__name__}.")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"Expected {MANIFEST} of format {FORMAT!r}. Received format {manifest.get('format')!r}.")
    try:
        cfg = models.ModelConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Expected a model config in {str(path)!r}. Received: {type(e).__name__}: {e}") from None
    for key in ("feature_mean", "feature_std"):
        # ModelConfig checks their lengths only; the recognizer computes with them.
        values = getattr(cfg, key)
        if values is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v) for v in values):
            raise _manifest_error(path, f"config.{key} to be {cfg.n_mels} finite numbers", repr(list(values))[:200])
    blank = manifest.get("blank", 0)
    if not isinstance(blank, int) or isinstance(blank, bool) or not 0 <= blank < cfg.vocab_size:
        raise _manifest_error(path, f"'blank' to be a token id in 0..{cfg.vocab_size - 1}", repr(blank))
    if manifest.get("chunk_frames", cfg.chunk_frames) != cfg.chunk_frames:
        raise _manifest_error(path, f"'chunk_frames' equal to the model config's ({cfg.chunk_frames})",
                              repr(manifest["chunk_frames"]))
    frame_ms = manifest.get("frame_ms", 10)
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, (int, float)) or not 0 < frame_ms < float("inf"):
        raise _manifest_error(path, "'frame_ms' to be a positive number", repr(frame_ms))
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or any(not isinstance(graphs.get(p), dict) for p in PARTS):
        received = sorted(graphs) if isinstance(graphs, dict) else graphs
        raise _manifest_error(path, f"'graphs' with an object for each of {list(PARTS)}", repr(received)[:200])
    for part in PARTS:
        graph = graphs[part]
        file = graph.get("file")
        if not isinstance(file, str) or not file:
            raise _manifest_error(path, f"graphs.{part}.file to name a .tflite file", repr(file))
        if not (Path(directory) / file).is_file():
            raise FileNotFoundError(f"Expected the {part} graph {str(Path(directory) / file)!r} named by "
                                    f"{MANIFEST}. Received: no such file.")
        for key in ("inputs", "outputs"):
            _check_rows(path, part, key, graph.get(key))
        states = graph.get("states")
        if not isinstance(states, list) or not all(isinstance(n, str) for n in states):
            raise _manifest_error(path, f"graphs.{part}.states to be a list of input names", repr(states)[:200])
        inputs = {r["name"] for r in graph["inputs"]}
        missing = [n for n in states if n not in inputs]
        if missing:
            raise ValueError(f"Expected every state of the {part} graph among its inputs {sorted(inputs)} in "
                             f"{str(path)!r}. Received states {missing} without an input.")
    return manifest


def manifest_states(manifest, part):
    """Zero states of one step graph of an export, ``{name: float32 array}``, from its ``streaming.json``.

    The manifest lists the graph's state inputs and their shapes, so an
    export keeps working when a later version changes ``models.state_specs``
    (e.g. the Conformer's attention cache).
    """
    graph = manifest["graphs"][part]
    shapes = {row["name"]: row["shape"] for row in graph["inputs"]}
    missing = [name for name in graph["states"] if name not in shapes]
    if missing:
        raise ValueError(f"Expected every state of the {part} graph among its inputs "
                         f"{sorted(shapes)}. Received states {missing} without an input.")
    return {name: np.zeros(shapes[name], np.float32) for name in graph["states"]}


# ----------------------------------------------------------------- recognizers


class _Recognizer:
    """Chunk buffering, states and greedy decoding over three step graphs.

    ``graphs``: {"encoder" | "prediction" | "joint": callable({input name:
    array}) -> {output name: array}}, batch 1, NumPy in and out.

    Attributes:
      timings: {"encoder" | "prediction" | "joint": [seconds per call]} since
        construction (or ``clear_timings``): each entry times one run of that
        step graph, decoding excluded.
      chunk_timings: [seconds per chunk] since construction (or
        ``clear_timings``), filled by ``push`` and ``finish``: each entry
        times all the processing one chunk triggered, the encoder step, the
        prediction and joint calls of its frames and the greedy decoding
        between them (what a user waits for per chunk).
      tokens: the tokens of the current utterance so far.
    """

    def __init__(self, cfg, graphs, blank=0, max_symbols_per_frame=5, states=None):
        self.cfg = cfg
        self._graphs = graphs
        # Zero states by part; an export's own (its streaming.json) may differ
        # from what this version's state_specs(cfg) builds.
        self._initial = models.initial_states(cfg) if states is None else states
        self.blank = int(blank)
        self.chunk_frames = cfg.chunk_frames
        self._pad = models.feature_fill(cfg)
        self.timings = {part: [] for part in PARTS}
        self.chunk_timings = []
        self._decoder = GreedyDecoder(self._pred_step, self._joint_fn, self._initial["prediction"],
                                      blank=self.blank, max_symbols_per_frame=max_symbols_per_frame)
        self.reset()

    def _timed(self, part, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[part].append(time.perf_counter() - t0)
        return out

    def _pred_step(self, token, states):
        out = self._timed("prediction", self._graphs["prediction"], {"token": np.array([[token]], np.int32), **states})
        return out.pop("pred_out")[0], out

    def _joint_fn(self, enc, pred):
        return self._timed("joint", self._graphs["joint"], {"enc": enc[None], "pred": pred[None]})["logits"][0]

    @property
    def tokens(self):
        return list(self._decoder.tokens)

    def clear_timings(self):
        """Empties ``timings`` and ``chunk_timings``."""
        for v in self.timings.values():
            v.clear()
        self.chunk_timings.clear()

    def reset(self):
        """Starts a new utterance: zero states, empty buffer, no tokens."""
        self._states = {k: v.copy() for k, v in self._initial["encoder"].items()}
        self._buffer = np.zeros((0, self.cfg.n_mels), np.float32)
        self._decoder.reset()

    def _run_chunk(self, chunk):
        t0 = time.perf_counter()
        out = self._timed("encoder", self._graphs["encoder"], {"features": chunk[None], **self._states})
        enc = out.pop("encoder_out")[0]
        self._states = out
        new = self._decoder.push(enc)
        self.chunk_timings.append(time.perf_counter() - t0)
        return new

    def push(self, feature_frames):
        """Adds log-mel frames [k, n_mels] (any k >= 0); runs every complete chunk.

        Returns:
          list of int: the tokens the new chunks produced.
        """
        frames = np.asarray(feature_frames, np.float32)
        if frames.size % self.cfg.n_mels or (frames.ndim > 1 and frames.shape[-1] != self.cfg.n_mels):
            raise ValueError(f"Expected log-mel frames [k, n_mels={self.cfg.n_mels}]. "
                             f"Received an array of shape {list(frames.shape)}.")
        frames = frames.reshape(-1, self.cfg.n_mels)
        self._buffer = np.concatenate([self._buffer, frames])
        new = []
        while len(self._buffer) >= self.chunk_frames:
            chunk, self._buffer = self._buffer[: self.chunk_frames], self._buffer[self.chunk_frames:]
            new += self._run_chunk(chunk)
        return new

    def finish(self):
        """Ends the utterance: a partial last chunk is completed and run.

        The missing frames are copies of the feature mean (zeros after the
        model's normalization). Call ``reset()`` before the next utterance.

        Returns:
          list of int: all tokens of the utterance.
        """
        if len(self._buffer):
            missing = self.chunk_frames - len(self._buffer)
            chunk = np.concatenate([self._buffer, np.tile(self._pad, (missing, 1))])
            self._buffer = self._buffer[:0]
            self._run_chunk(chunk)
        return self.tokens


def stream_timed(rec, features, frame_ready_s, end_s, on_new=None):
    """Streams one utterance through a recognizer as its audio arrives, timing what a user waits for.

    The features are pushed one whole chunk at a time (each push runs that
    chunk), then the remaining frames and ``finish()`` (the padded last
    chunk). The measured processing times are replayed against the audio
    clock: a chunk starts when the audio of its last frame has arrived
    (``frame_ready_s(j)`` for frame ``j``) and the previous chunk is done;
    the end starts when the audio ends (``end_s``). The user-perceived
    latency (UPL) is when ``finish()`` is done minus ``end_s``: for a
    recognizer that keeps up (RTF < 1) the last chunk and ``finish()``, for
    one that falls behind its backlog too.

    Args:
      rec: a recognizer of this module (``reset``, ``clear_timings``,
        ``push``, ``finish``, ``tokens``, ``chunk_frames``, ``chunk_timings``).
      features: log-mel frames [T, n_mels].
      frame_ready_s: ``frame_ready_s(j)`` -> seconds from the start of the
        audio at which frame ``j`` can be computed.
      end_s: seconds of audio.
      on_new: ``on_new(new_tokens, audio_time_s)`` after each push that
        produced tokens (outside the timed calls).

    Returns:
      dict: ``tokens``, ``chunk_s`` (seconds per chunk, ``rec.chunk_timings``:
      each the encoder step plus that chunk's prediction/joint calls and
      decoding), ``upl_s`` and ``busy_s`` (all pushes and ``finish()``).
    """
    feats = np.asarray(features, np.float32).reshape(len(features), -1)
    c = rec.chunk_frames
    full = len(feats) // c
    rec.reset()
    rec.clear_timings()
    clock = busy = 0.0
    for k in range(full):
        t0 = time.perf_counter()
        new = rec.push(feats[k * c:(k + 1) * c])
        dt = time.perf_counter() - t0
        busy += dt
        ready = frame_ready_s((k + 1) * c - 1)
        clock = max(clock, ready) + dt
        if new and on_new is not None:
            on_new(new, ready)
    before = len(rec.tokens)
    t0 = time.perf_counter()
    rec.push(feats[full * c:])  # fewer than c frames: only buffered
    tokens = rec.finish()
    dt = time.perf_counter() - t0
    busy += dt
    clock = max(clock, end_s) + dt
    if len(tokens) > before and on_new is not None:
        on_new(tokens[before:], end_s)
    return {"tokens": [int(t) for t in tokens], "chunk_s": list(rec.chunk_timings), "upl_s": clock - end_s,
            "busy_s": busy}


class _TFLiteGraph:
    """One step graph in an interpreter, called with and returning {name: array}."""

    def __init__(self, path, **interpreter_kwargs):
        from converters import make_interpreter

        self.path = str(path)
        self.interpreter = make_interpreter(self.path, **interpreter_kwargs)
        signatures = self.interpreter.get_signature_list()
        if list(signatures) != ["serving_default"]:
            raise ValueError(f"Expected one signature 'serving_default' in {self.path} (export_streaming writes "
                             f"it). Received signatures {sorted(signatures)}.")
        runner = self.interpreter.get_signature_runner()
        by_name = {"inputs": runner.get_input_details(), "outputs": runner.get_output_details()}
        self.inputs = {name: d["index"] for name, d in by_name["inputs"].items()}
        self.outputs = {name: d["index"] for name, d in by_name["outputs"].items()}
        # {"inputs" | "outputs": {name: (shape, dtype name)}}, to compare with streaming.json.
        self.signature = {key: {name: ([int(v) for v in d["shape"]], np.dtype(d["dtype"]).name)
                                for name, d in details.items()} for key, details in by_name.items()}
        self._set, self._get = self.interpreter.set_tensor, self.interpreter.get_tensor

    def __call__(self, feeds):
        unknown = set(feeds) - set(self.inputs)
        if unknown or len(feeds) != len(self.inputs):
            raise ValueError(f"Expected inputs {sorted(self.inputs)} for {self.path}. Received {sorted(feeds)}.")
        for name, value in feeds.items():
            self._set(self.inputs[name], value)
        self.interpreter.invoke()
        return {name: self._get(index) for name, index in self.outputs.items()}


def _check_graphs(manifest, cfg, graphs):
    """Checks that each opened step graph has the inputs, outputs and states of ``streaming.json``
    and the shapes the recognizer feeds and reads; raises ValueError naming the file and tensor."""
    for part in PARTS:
        graph, sig = manifest["graphs"][part], graphs[part].signature
        for key in ("inputs", "outputs"):
            listed = {r["name"]: (r["shape"], np.dtype(r["dtype"]).name) for r in graph[key]}
            # Older manifests may miss a state among the outputs (see _check_rows).
            unlisted = set(graph["states"]) if key == "outputs" else set()
            diff = sorted(n for n in set(listed) | set(sig[key]) - unlisted if listed.get(n) != sig[key].get(n))
            if diff:
                raise ValueError(f"Expected the {key} of {graphs[part].path} to be those {MANIFEST} lists. "
                                 f"Received for {diff}: {MANIFEST} {[listed.get(n) for n in diff]}, the file "
                                 f"{[sig[key].get(n) for n in diff]}.")
    sig = {part: graphs[part].signature for part in PARTS}
    enc_out = sig["encoder"]["outputs"].get("encoder_out", ([], ""))[0]
    pred_out = sig["prediction"]["outputs"].get("pred_out", ([], ""))[0]
    f32, frames = "float32", cfg.chunk_frames // models.reduction(cfg)
    dim = enc_out[-1] if len(enc_out) == 3 else -1
    units = pred_out[-1] if len(pred_out) == 2 else -1
    wanted = {
        "encoder": ({"features": ([1, cfg.chunk_frames, cfg.n_mels], f32)}, {"encoder_out": ([1, frames, dim], f32)}),
        "prediction": ({"token": ([1, 1], "int32")}, {"pred_out": ([1, units], f32)}),
        "joint": ({"enc": ([1, dim], f32), "pred": ([1, units], f32)}, {"logits": ([1, cfg.vocab_size], f32)}),
    }
    for part, (inputs, outputs) in wanted.items():
        states = manifest["graphs"][part]["states"]
        for key, fixed in (("inputs", inputs), ("outputs", outputs)):
            got, other = sig[part][key], sig[part]["outputs" if key == "inputs" else "inputs"]
            # Every other input and output is a state: an output fed back to the input of the same name.
            expected = {**{n: other[n] for n in states if n in other}, **fixed}
            diff = sorted(n for n in set(got) | set(expected) if got.get(n) != expected.get(n))
            if diff:
                raise ValueError(
                    f"Expected the {part} graph's {key} to be {sorted(expected)} with the shapes and dtypes "
                    f"of model config {cfg.name!r} (states {states} as inputs and as outputs). Received "
                    f"{graphs[part].path} with {', '.join(f'{n}: {got.get(n)}' for n in diff)} "
                    f"(expected {', '.join(f'{n}: {expected.get(n)}' for n in diff)}).")


class StreamingRecognizer(_Recognizer):
    """Streams features through an ``export_streaming`` directory (LiteRT + the GQ delegate).

    Args:
      directory: the export directory (three .tflite files + streaming.json).
      runtime, kernel, num_threads: as in ``converters.make_interpreter``
        (``kernel="reference"``: exact float32 GQ kernels; the default ones
        round activations to int8).
      max_symbols_per_frame: greedy decoding's cap per encoder frame.

    Attributes:
      graphs: {part: object with ``.interpreter`` and ``.inputs`` /
        ``.outputs`` ({name: tensor index})}, to benchmark single invokes.
      timings: {part: [seconds per call]}; one call is ``set_tensor`` of
        every input, ``invoke`` and ``get_tensor`` of every output (the
        tensor copies cost about a microsecond).
      chunk_timings: [seconds per chunk], each the encoder step plus the
        prediction and joint calls and the decoding the chunk triggered.
      manifest: the directory's ``streaming.json``.

    Example:
      >>> rec = StreamingRecognizer("runs/rnnt/gq_stream")
      >>> rec.push(frames); tokens = rec.finish()
      >>> np.median(rec.timings["encoder"])
    """

    def __init__(self, directory, *, runtime="litert", kernel="auto", num_threads=1, max_symbols_per_frame=5):
        self.manifest = load_manifest(directory)
        cfg = models.ModelConfig.from_dict(self.manifest["config"])
        self.graphs = {part: _TFLiteGraph(Path(directory) / self.manifest["graphs"][part]["file"],
                                          runtime=runtime, kernel=kernel, num_threads=num_threads)
                       for part in PARTS}
        _check_graphs(self.manifest, cfg, self.graphs)
        super().__init__(cfg, self.graphs, blank=self.manifest.get("blank", 0),
                         max_symbols_per_frame=max_symbols_per_frame,
                         states={part: manifest_states(self.manifest, part) for part in ("encoder", "prediction")})


class KerasStreamingRecognizer(_Recognizer):
    """The same streaming recognizer on Keras step models (float or QAT, inference mode).

    Args:
      step_models: ``models.build_step_models(cfg)`` (weights copied in with
        ``models.copy_weights``), or their QAT versions.
      cfg: the ModelConfig they were built from.
      max_symbols_per_frame: greedy decoding's cap per encoder frame.
    """

    def __init__(self, step_models, cfg, *, max_symbols_per_frame=5):
        self.step_models = dict(step_models)

        def run(model):
            return lambda feeds: {k: v.numpy() for k, v in model(feeds, training=False).items()}

        super().__init__(cfg, {part: run(self.step_models[part]) for part in PARTS}, blank=0,
                         max_symbols_per_frame=max_symbols_per_frame)
