"""Streaming latency and memory of deployed recognizers: what a user feels.

Two measurements, both on ``deploy.export_streaming`` directories (one per
variant: float, int8, GQ, ...), run interleaved so that machine drift hits
every variant alike, and compared against a baseline variant (int8 by
default):

* :func:`bench_streaming`: the whole ``deploy.StreamingRecognizer`` (greedy
  decoding) on real utterances' features, fed one chunk at a time as audio
  would arrive. Per variant: per-chunk latency (the encoder step plus the
  prediction and joint calls and the decoding the chunk triggered), the
  user-perceived latency (UPL: from the end of the audio to the final
  transcript), the real-time factor and the recognizer's peak memory, measured
  in a fresh child process per variant.
* :func:`paper`: paper-scale configs (``rnnt_paper``, ``conformer_paper``),
  built untrained (latency does not depend on the weight values), exported
  float / int8 / GQ 4-bit / the full recipe's GQ mixed policy (cached on
  disk), each step graph timed interleaved at several thread counts, plus the
  recognizer's peak memory per variant. Command line::

      python -m gq_speech.streambench paper [--models rnnt_paper conformer_paper] [--threads 1 2] [--out DIR]

Example:
  >>> res = bench_streaming({"float": "runs/f", "int8": "runs/i", "gq4": "runs/g"}, features)
  >>> print(table(res))
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = [
    "METRICS",
    "PAPER_MODELS",
    "PAPER_VARIANTS",
    "bench_steps",
    "bench_streaming",
    "chunk_latency_from_steps",
    "export_variants",
    "machine",
    "main",
    "mixed_policy",
    "paper",
    "paper_table",
    "recognizer_peak_memory",
    "stream_utterance",
    "table",
]

# (key in a variant's result, column head, format): the metrics table() shows, each with its ratio.
METRICS = (
    ("chunk_p50_ms", "chunk P50 ms", "{:.3f}"),
    ("chunk_p90_ms", "chunk P90 ms", "{:.3f}"),
    ("upl_p50_ms", "UPL P50 ms", "{:.3f}"),
    ("upl_p90_ms", "UPL P90 ms", "{:.3f}"),
    ("rtf", "RTF", "{:.4f}"),
    ("mem_mb", "mem MB", "{:.1f}"),
)
PAPER_MODELS = ("rnnt_paper", "conformer_paper")
PAPER_VARIANTS = ("float", "int8", "gq4", "gq_mixed")
PARTS = ("encoder", "prediction", "joint")
MB = 1e6


def _log_default(message):
    print(message, flush=True)


# ----------------------------------------------------------------- the whole recognizer


def stream_utterance(rec, features, frame_ms=10):
    """Streams one utterance through a recognizer as audio would arrive (``deploy.stream_timed``).

    Frame ``i`` is ready at ``(i + 1) * frame_ms`` and the audio ends at
    ``T * frame_ms``: the features' own clock, for feature arrays without
    their audio.

    Args:
      rec: a ``deploy.StreamingRecognizer`` (or anything ``stream_timed`` takes).
      features: log-mel frames [T, n_mels].
      frame_ms: the feature hop.

    Returns:
      dict: ``stream_timed``'s (``tokens``, ``chunk_s``, ``upl_s``,
      ``busy_s``), ``audio_s`` (``T * frame_ms``) and ``calls`` ({step
      graph: how many times this utterance ran it}).
    """
    from gq_speech import deploy

    feats = np.asarray(features, np.float32).reshape(-1, rec.cfg.n_mels)
    audio = len(feats) * frame_ms / 1000
    out = deploy.stream_timed(rec, feats, lambda j: (j + 1) * frame_ms / 1000, audio)
    out["audio_s"] = audio
    # stream_timed cleared the per-graph timings: what is there now is this utterance's calls.
    out["calls"] = {part: len(t) for part, t in getattr(rec, "timings", {}).items()}
    return out


def _percentiles_ms(seconds):
    s = 1000 * np.asarray(seconds, np.float64)
    return (float(np.percentile(s, 50)), float(np.percentile(s, 90))) if len(s) else (None, None)


def _ratios(variants, baseline, keys):
    base = variants[baseline]
    return {name: {k: (v[k] / base[k] if v.get(k) is not None and base.get(k) else None) for k in keys}
            for name, v in variants.items()}


def bench_streaming(export_dirs, utterances, *, baseline="int8", num_threads=1, kernel="auto", runtime="litert",
                    warmup=1, memory=True, memory_utterances=3, make_recognizer=None, log=None) -> dict:
    """Whole-recognizer streaming latency, real-time factor and memory of several variants.

    Every variant's ``deploy.StreamingRecognizer`` is opened in this process
    and the utterances are run interleaved: utterance 0 through every
    variant in turn, then utterance 1, ... After the timing, each variant's
    peak memory is measured in its own child process
    (:func:`recognizer_peak_memory`), one after the other.

    Args:
      export_dirs: {variant name: ``export_streaming`` directory}, in table order.
      utterances: feature arrays [T, n_mels] (the same for every variant).
      baseline: the variant the ratios are against.
      num_threads, kernel, runtime: as in ``deploy.StreamingRecognizer``.
      warmup: utterances run through every variant before timing (not counted).
      memory: measure the peak memory (a child process per variant, a few
        seconds each for the imports).
      memory_utterances: utterances the memory child runs.
      make_recognizer: ``f(name, directory) -> recognizer`` instead of
        ``StreamingRecognizer(directory, ...)`` (tests wrap it to log calls).
      log: progress messages (default: none).

    Returns:
      dict: ``baseline``, ``settings``, ``order`` (variant names),
      ``variants`` ({name: {"chunk_p50_ms", "chunk_p90_ms", "upl_p50_ms",
      "upl_p90_ms", "rtf", "mem_mb", "chunks", "utterances", "audio_s",
      "busy_s", "memory" (bytes, see :func:`recognizer_peak_memory`),
      "calls_per_chunk" ({step graph: mean calls per chunk}, for
      :func:`chunk_latency_from_steps`), "tokens" (one list per
      utterance)}}) and ``ratios`` ({name: {metric: value / baseline's}}).

    Raises:
      ValueError: no variants, no utterances, or a baseline not among them.
    """
    from gq_speech.deploy import StreamingRecognizer

    log = log or (lambda m: None)
    names = list(export_dirs)
    if not names or not len(utterances):
        raise ValueError(f"Expected at least one variant and one utterance. Received {len(names)} variants, "
                         f"{len(utterances)} utterances.")
    if baseline not in export_dirs:
        raise ValueError(f"Expected baseline among the variants {names}. Received: baseline={baseline!r}")
    if make_recognizer is None:
        def make_recognizer(name, directory):
            return StreamingRecognizer(directory, runtime=runtime, kernel=kernel, num_threads=num_threads)
    recs = {name: make_recognizer(name, export_dirs[name]) for name in names}
    frame_ms = {name: getattr(rec, "manifest", {}).get("frame_ms", 10) for name, rec in recs.items()}
    feats = [np.asarray(f, np.float32) for f in utterances]
    for i in range(warmup):
        for name in names:
            stream_utterance(recs[name], feats[i % len(feats)], frame_ms[name])
    runs = {name: [] for name in names}
    t0 = time.time()
    for i, f in enumerate(feats):
        for name in names:
            runs[name].append(stream_utterance(recs[name], f, frame_ms[name]))
        if time.time() - t0 > 10 and i % 20 == 19:
            log(f"  streaming {i + 1}/{len(feats)} utterances x {len(names)} variants")
    del recs
    gc.collect()
    variants = {}
    for name in names:
        chunk_s = [s for r in runs[name] for s in r["chunk_s"]]
        upl_s = [r["upl_s"] for r in runs[name]]
        busy, audio = sum(r["busy_s"] for r in runs[name]), sum(r["audio_s"] for r in runs[name])
        c50, c90 = _percentiles_ms(chunk_s)
        u50, u90 = _percentiles_ms(upl_s)
        calls = {}
        for r in runs[name]:
            for part, n in r.get("calls", {}).items():
                calls[part] = calls.get(part, 0) + n
        variants[name] = {"chunk_p50_ms": c50, "chunk_p90_ms": c90, "upl_p50_ms": u50, "upl_p90_ms": u90,
                          "rtf": busy / audio if audio else None, "mem_mb": None, "chunks": len(chunk_s),
                          "utterances": len(feats), "audio_s": audio, "busy_s": busy, "memory": None,
                          "calls_per_chunk": {p: n / len(chunk_s) for p, n in calls.items()} if chunk_s else {},
                          "tokens": [r["tokens"] for r in runs[name]]}
    if memory:
        for name in names:
            log(f"  memory of {name} (a child process)")
            mem = recognizer_peak_memory(export_dirs[name], feats[:max(1, memory_utterances)],
                                         num_threads=num_threads, kernel=kernel, runtime=runtime)
            variants[name]["memory"] = mem
            variants[name]["mem_mb"] = mem["growth"] / MB
    return {"baseline": baseline, "order": names,
            "settings": {"num_threads": num_threads, "kernel": kernel, "runtime": runtime, "warmup": warmup,
                         "utterances": len(feats), "memory_utterances": memory_utterances if memory else 0},
            "variants": variants, "ratios": _ratios(variants, baseline, [k for k, _, _ in METRICS])}


def chunk_latency_from_steps(step_ms, calls_per_chunk) -> float:
    """The per-chunk latency a device gives, from its step-graph timings and the decoder's call counts.

    On a phone ``android_bench run`` times each step graph alone (the stock
    ``benchmark_model`` runs one graph); how often a chunk runs each one
    depends on the transcripts, not on the device, so it is taken from a
    host run of the real recognizer on the same utterances
    (:func:`bench_streaming`'s ``calls_per_chunk``): ``sum over graphs of
    step_ms[graph] * calls_per_chunk[graph]``. The host's decoding loop
    (Python) is not in it; on the host the measured chunk latency is the
    figure to use.

    Args:
      step_ms: {"encoder" | "prediction" | "joint": ms per call} (e.g. the
        P50s of ``android_bench run`` on the three files of an export).
      calls_per_chunk: {graph: mean calls per chunk}.

    Returns:
      float: ms per chunk.

    Raises:
      ValueError: a graph with calls but no timing.

    Example:
      >>> chunk_latency_from_steps({"encoder": 1.2, "prediction": 0.1, "joint": 0.01},
      ...                          {"encoder": 1.0, "prediction": 0.4, "joint": 2.4})
      1.264
    """
    missing = sorted(p for p, n in calls_per_chunk.items() if n and p not in step_ms)
    if missing:
        raise ValueError(f"Expected a step time for every graph a chunk calls ({sorted(calls_per_chunk)}). "
                         f"Received none for {missing}.")
    return float(sum(step_ms[p] * n for p, n in calls_per_chunk.items() if n))


def _cell(value, ratio, fmt):
    if value is None:
        return "-"
    return fmt.format(value) + ("" if ratio is None else f" ({ratio:.2f}x)")


def _grid(heads, cells, markdown):
    if markdown:
        return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + \
               ["| " + " | ".join(c) + " |" for c in cells]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    return ["  ".join(h.rjust(w) for h, w in zip(heads, widths))] + \
           ["  ".join(c.rjust(w) for c, w in zip(cs, widths)) for cs in cells]


def table(result, markdown=True) -> str:
    """A :func:`bench_streaming` result as a table: one row per variant, each
    metric as ``value (ratio to the baseline)``."""
    heads = ["variant"] + [h for _, h, _ in METRICS]
    cells = [[name] + [_cell(v.get(k), result["ratios"][name].get(k), f) for k, _, f in METRICS]
             for name, v in result["variants"].items()]
    return "\n".join(_grid(heads, cells, markdown))


# ----------------------------------------------------------------- memory (a child process)

_CHILD = r"""
import json, sys
import numpy as np
from ai_edge_litert import interpreter as _litert  # noqa: F401  (imported before the baseline)
from ai_edge_litert import schema_py_generated as _schema  # noqa: F401
from converters import runtime
from gq_speech import deploy
from converters.memory import proc_status_bytes as status
from gq_speech.streambench import stream_utterance

directory, features, threads, kernel, runtime_name = sys.argv[1:6]
with np.load(features) as z:
    utterances = [z[k] for k in sorted(z.files, key=lambda k: int(k[1:]))]
runtime.delegate_path()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
rec = deploy.StreamingRecognizer(directory, runtime=runtime_name, kernel=kernel, num_threads=int(threads))
after_init = status("VmHWM")
for u in utterances:
    stream_utterance(rec, u)
print(json.dumps({"rss_before": before, "peak_after_init": after_init, "peak": status("VmHWM")}))
"""


def recognizer_peak_memory(export_dir, utterances, *, num_threads=1, kernel="auto", runtime="litert") -> dict:
    """Peak RSS growth of a ``StreamingRecognizer`` running ``utterances``, in a fresh process.

    As ``converters.memory.peak_rss_growth``: the child imports everything
    first, resets the kernel's peak counter (``/proc/self/clear_refs`` with
    5), reads its RSS, opens the recognizer (three interpreters, the GQ
    delegate, the mapped model files) and streams the utterances.

    Returns:
      {"rss_before", "peak_after_init", "peak", "growth"} in bytes; growth =
      peak - rss_before.

    Raises:
      RuntimeError: the child failed (its stderr is in the message).
    """
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "features.npz")
        np.savez(path, **{f"u{i}": np.asarray(u, np.float32) for i, u in enumerate(utterances)})
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        proc = subprocess.run([sys.executable, "-c", _CHILD, os.fspath(export_dir), path, str(num_threads), kernel,
                               runtime], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Measuring the recognizer of {export_dir} failed:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["growth"] = out["peak"] - out["rss_before"]
    return out


# ----------------------------------------------------------------- paper-scale models


def mixed_policy(cfg, recipe="full") -> dict:
    """The recipe's ``gq_mixed`` policy (JSON form) for a model of ``cfg.kind``.

    Recipes name variants per model (``"models": [...]``); the ``full``
    recipe's models are named by kind (``rnnt``, ``conformer``).

    Raises:
      ValueError: the recipe has no ``gq_mixed`` variant for that model.
    """
    from gq_speech.recipe import load_recipe, variants_of

    rec = load_recipe(recipe)
    found = dict(variants_of(rec, cfg.kind)).get("gq_mixed")
    if found is None or "policy" not in found:
        raise ValueError(f"Expected a 'gq_mixed' variant with a policy for model {cfg.kind!r} in recipe "
                         f"{rec['name']!r}. Received variants {sorted(rec['variants'])}.")
    return found["policy"]


def _variant_specs(cfg, variants, recipe):
    specs = {"float": {"kind": "float"}, "int8": {"kind": "int8"}, "gq4": {"kind": "gq", "policy": {".*": 4}}}
    if "gq_mixed" in variants:
        specs["gq_mixed"] = {"kind": "gq", "policy": mixed_policy(cfg, recipe)}
    unknown = [v for v in variants if v not in specs]
    if unknown:
        raise ValueError(f"Expected variants among {PAPER_VARIANTS}. Received {unknown}.")
    return {v: specs[v] for v in variants}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def export_variants(model_name, out_dir, *, variants=PAPER_VARIANTS, recipe="full", seed=0, log=None) -> dict:
    """Builds ``model_name`` untrained and exports each variant with ``deploy.export_streaming``, cached.

    Variants: ``float`` and ``int8`` (the baselines), ``gq4`` (GQ 4-bit
    everywhere, ``{".*": 4}``) and ``gq_mixed`` (:func:`mixed_policy`). A
    variant is exported to ``out_dir/<variant>/`` and stamped with
    ``export.json`` (config, policy, seed, parameters) when done; a later
    call with the same stamp reuses it, so an interrupted run resumes.

    Returns:
      {variant: {"dir": path, "parameters": int, "file_bytes": int, "seconds": float}}.
    """
    import warnings

    import converters
    import gq_tf
    from gq_speech import deploy, models
    from gq_speech.recipe import parse_policy
    from gq_tf._keras import keras
    from gq_tf.fileio import atomic_json

    log = log or (lambda m: None)
    cfg = models.load_config(model_name)
    out_dir = Path(out_dir)
    done, net = {}, None
    for variant, spec in _variant_specs(cfg, variants, recipe).items():
        vdir = out_dir / variant
        # As JSON reads it back (nested tuples become lists), to compare with the stamp.
        key = json.loads(json.dumps({"config": cfg.to_dict(), "spec": spec, "seed": seed,
                                     "step_graphs": models.STEP_GRAPHS}))
        stamp = vdir / "export.json"
        if stamp.exists():
            old = json.loads(stamp.read_text())
            # Compared as JSON text: a policy's pattern order is its meaning.
            if json.dumps(old.get("key")) == json.dumps(key) and (vdir / deploy.MANIFEST).exists():
                log(f"[{model_name}/{variant}] exported before: {vdir}")
                done[variant] = {"dir": str(vdir), **{k: old[k] for k in ("parameters", "file_bytes", "seconds")}}
                continue
            stamp.unlink()
        if net is None:
            keras.utils.set_random_seed(seed)
            net = models.build_training_model(cfg)
            log(f"[{model_name}] built untrained: {net.count_params():,} parameters "
                f"(peak RSS {_peak_rss_mb():.0f} MB)")
        t0 = time.time()
        log(f"[{model_name}/{variant}] exporting ({spec['kind']}"
            + (f", policy {json.dumps(spec['policy'])}" if "policy" in spec else "") + ")")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", converters.NotPackedWarning)
            if spec["kind"] == "gq":
                qat = gq_tf.quantize_model(net, parse_policy(spec["policy"]))
                export = deploy.export_streaming(qat, cfg, vdir, kind="gq")
                del qat
            else:
                export = deploy.export_streaming(net, cfg, vdir, kind=spec["kind"])
        seconds = time.time() - t0
        info = {"parameters": int(net.count_params()), "file_bytes": int(export.total_bytes), "seconds": seconds}
        atomic_json(stamp, {"key": key, **info})
        done[variant] = {"dir": str(vdir), **info}
        log(f"[{model_name}/{variant}] {export.total_bytes / MB:.1f} MB in {seconds:.0f} s "
            f"(peak RSS {_peak_rss_mb():.0f} MB)")
        del export
        gc.collect()
    del net
    keras.backend.clear_session()
    gc.collect()
    return done


def _step_feeds(manifest, part, rng):
    """Inputs of one step graph by name: random features / encoder frame / prediction output, zero
    (initial) states, token 1."""
    from gq_speech import deploy

    states = deploy.manifest_states(manifest, part)
    feeds = {}
    for row in manifest["graphs"][part]["inputs"]:
        name, shape, dtype = row["name"], row["shape"], np.dtype(row["dtype"])
        if name in states:
            feeds[name] = states[name].astype(dtype)
        elif dtype.kind in "iu":
            feeds[name] = np.ones(shape, dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def bench_steps(export_dirs, *, threads=(1, 2), rounds=100, warmup=10, baseline="int8", kernel="auto",
                runtime="litert", log=None) -> dict:
    """P50/P90 of one invoke of each step graph, variants interleaved, per thread count.

    For each thread count and graph (encoder chunk, prediction step, joint),
    every variant's interpreter is opened with the same inputs (random
    features, zero states), warmed up, then timed round-robin: each round
    invokes every variant once, starting with a different one each round.
    Only ``invoke()`` is timed (as ``android_bench``).

    Args:
      export_dirs: {variant name: ``export_streaming`` directory}.
      threads: the interpreters' ``num_threads`` values to time.
      rounds: timed invokes per variant, graph and thread count.
      warmup: untimed invokes of each interpreter first.
      baseline: the variant the ratios are against.
      kernel, runtime: as in ``converters.make_interpreter``.
      log: progress messages (default: none).

    Returns:
      {threads (int): {part: {variant: {"p50_ms", "p90_ms", "ratio_p50", "ratio_p90"}}}};
      ratios are against ``baseline``.
    """
    from converters import make_interpreter
    from gq_speech import deploy

    log = log or (lambda m: None)
    names = list(export_dirs)
    if baseline not in names:
        raise ValueError(f"Expected baseline among the variants {names}. Received: baseline={baseline!r}")
    manifests = {n: deploy.load_manifest(d) for n, d in export_dirs.items()}
    out = {}
    for t in threads:
        out[t] = {}
        for part in PARTS:
            its, samples = {}, {n: [] for n in names}
            for n in names:
                m = manifests[n]
                it = make_interpreter(Path(export_dirs[n]) / m["graphs"][part]["file"], num_threads=t,
                                      kernel=kernel, runtime=runtime)
                by_name = it.get_signature_runner().get_input_details()
                feeds = _step_feeds(m, part, np.random.default_rng(0))
                for name, value in feeds.items():
                    it.set_tensor(by_name[name]["index"], value)
                for _ in range(warmup):
                    it.invoke()
                its[n] = it
            clock = time.perf_counter
            for r in range(rounds):
                for j in range(len(names)):
                    n = names[(r + j) % len(names)]
                    t0 = clock()
                    its[n].invoke()
                    samples[n].append(clock() - t0)
            del its
            gc.collect()
            stats = {}
            for n in names:
                p50, p90 = _percentiles_ms(samples[n])
                stats[n] = {"p50_ms": p50, "p90_ms": p90}
            for n in names:
                stats[n]["ratio_p50"] = stats[n]["p50_ms"] / stats[baseline]["p50_ms"]
                stats[n]["ratio_p90"] = stats[n]["p90_ms"] / stats[baseline]["p90_ms"]
            out[t][part] = stats
            log(f"  {part} step, {t} thread(s): " + ", ".join(
                f"{n} {s['p50_ms']:.3f} ms ({s['ratio_p50']:.2f}x)" for n, s in stats.items()))
    return out


def _random_utterances(cfg, n, seconds, seed=0):
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * 100))
    return [rng.standard_normal((frames, cfg.n_mels)).astype(np.float32) for _ in range(n)]


def paper(model_names=PAPER_MODELS, *, threads=(1, 2), out="runs/paper_latency", variants=PAPER_VARIANTS,
          rounds=100, memory=True, recipe="full", baseline="int8", log=_log_default) -> dict:
    """Exports (cached) and measures paper-scale models; writes ``out/paper.json`` and ``out/paper.md``.

    For each model: :func:`export_variants` into ``out/<model>/<variant>/``,
    :func:`bench_steps` at each thread count, and per variant the
    recognizer's peak memory (:func:`recognizer_peak_memory`, 1 thread, two
    2-second utterances of random features). The exports are reused by a
    later run; the timings are always measured again (the runtime and the
    delegate's kernels change, the files do not). ``paper.json`` and
    ``paper.md`` are rewritten after each model.

    Args:
      model_names: model configs (names in ``gq_speech/configs`` or paths).
      threads: thread counts to time the step graphs with.
      out: directory of the exports (``out/<model>/<variant>/``) and reports.
      variants: a subset of ``PAPER_VARIANTS`` (``int8``, the baseline, included).
      rounds: timed invokes per variant, graph and thread count.
      memory: measure each recognizer's peak memory (a child process each).
      recipe: the recipe whose ``gq_mixed`` policy is exported.
      baseline: the variant the ratios are against.
      log: progress messages.

    Returns:
      The ``paper.json`` data: ``{"date", "command", "machine", "settings", "models": {model: {...}}}``.
    """
    from gq_speech import models as asr_models
    from gq_tf.fileio import atomic_json, atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in threads]
    command = ["python -m gq_speech.streambench paper --models", *model_names, "--threads", *map(str, threads),
               "--rounds", str(rounds), "--out", str(out)]
    if tuple(variants) != PAPER_VARIANTS:
        command += ["--variants", *variants]
    if not memory:
        command.append("--no-memory")
    if recipe != "full":
        command += ["--recipe", str(recipe)]
    result = {"date": datetime.date.today().isoformat(),
              "command": " ".join(command),
              "machine": machine(),
              "settings": {"rounds": rounds, "threads": threads, "variants": list(variants), "recipe": recipe,
                           "baseline": baseline},
              "models": {}}
    for name in model_names:
        t0 = time.time()
        log(f"[{name}] exports into {out / name}")
        exports = export_variants(name, out / name, variants=variants, recipe=recipe, log=log)
        dirs = {v: e["dir"] for v, e in exports.items()}
        load = os.getloadavg()[0]
        log(f"[{name}] timing the step graphs ({rounds} rounds, threads {threads}; load average {load:.2f})")
        steps = bench_steps(dirs, threads=threads, rounds=rounds, baseline=baseline, log=log)
        mem = {}
        if memory:
            cfg = asr_models.load_config(name)
            utts = _random_utterances(cfg, 2, 2.0)
            for v, d in dirs.items():
                log(f"[{name}/{v}] peak memory (a child process)")
                mem[v] = recognizer_peak_memory(d, utts)
        result["models"][name] = {
            "parameters": next(iter(exports.values()))["parameters"],
            "variants": {v: {"file_bytes": e["file_bytes"], "export_seconds": e["seconds"], "dir": e["dir"],
                             "memory": mem.get(v), "mem_mb": mem[v]["growth"] / MB if v in mem else None}
                         for v, e in exports.items()},
            "steps": {str(t): s for t, s in steps.items()},
            # The 1-minute load average before and after the timing: other work on the machine.
            "load_average": [load, os.getloadavg()[0]],
        }
        atomic_json(out / "paper.json", result)
        atomic_write(out / "paper.md", paper_table(result) + "\n")
        log(f"[{name}] done in {(time.time() - t0) / 60:.1f} min")
    log("\n" + paper_table(result))
    log(f"wrote {out / 'paper.json'}, {out / 'paper.md'}")
    return result


def machine() -> str:
    """A one-line description of this host (CPU model, cores, memory)."""
    from android_bench.targets import cpu_model

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_text = f", {mem:.0f} GiB RAM"
    except (ValueError, OSError):
        mem_text = ""
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores available{mem_text}, "
            f"{platform.system()} {platform.machine()}")


def paper_table(result, markdown=True) -> str:
    """The :func:`paper` result as one table per model and thread count: each
    step graph's P50 / P90 in ms with the ratio to the baseline, the three
    files' size and the recognizer's peak memory."""
    base = result["settings"]["baseline"]
    lines = []
    for name, m in result["models"].items():
        mems = {v: x["mem_mb"] for v, x in m["variants"].items()}
        for t, steps in m["steps"].items():
            lines += [f"**{name}** ({m['parameters'] / 1e6:.1f}M parameters, untrained), {t} thread(s); "
                      f"ratios vs {base}", ""]
            heads = ["variant", "size MB"] + [f"{p} {q} ms" for p in PARTS for q in ("P50", "P90")] + ["mem MB"]
            cells = []
            for v, x in m["variants"].items():
                row = [v, _cell(x["file_bytes"] / MB, x["file_bytes"] / m["variants"][base]["file_bytes"],
                                "{:.1f}")]
                for p in PARTS:
                    s = steps[p][v]
                    row += [_cell(s["p50_ms"], s["ratio_p50"], "{:.3f}"), _cell(s["p90_ms"], s["ratio_p90"], "{:.3f}")]
                b = mems.get(base)
                row.append(_cell(mems[v], mems[v] / b if mems[v] is not None and b else None, "{:.0f}"))
                cells.append(row)
            lines += _grid(heads, cells, markdown) + [""]
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------- command line


def main(argv=None) -> int:
    """``python -m gq_speech.streambench paper ...``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m gq_speech.streambench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("paper", help="export paper-scale models untrained and time their step graphs")
    pp.add_argument("--models", nargs="+", default=list(PAPER_MODELS), help="model configs (names or paths)")
    pp.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    pp.add_argument("--out", default="runs/paper_latency", help="exports (cached) and paper.json / paper.md")
    pp.add_argument("--variants", nargs="+", default=list(PAPER_VARIANTS), choices=PAPER_VARIANTS)
    pp.add_argument("--rounds", type=int, default=100, help="timed invokes per variant, graph and thread count")
    pp.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    pp.add_argument("--recipe", default="full", help="the recipe whose gq_mixed policy to export")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.rounds < 1:
        p.error(f"expected --threads >= 1 and --rounds >= 1. Received {args.threads}, {args.rounds}.")
    if "int8" not in args.variants:
        p.error("expected int8 among --variants (the ratios are against it)")
    paper(args.models, threads=args.threads, out=args.out, variants=args.variants, rounds=args.rounds,
          memory=not args.no_memory, recipe=args.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
