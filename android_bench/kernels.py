"""Kernel benchmark: GQ_FULLY_CONNECTED against XNNPACK's float32 and int8.

``python -m android_bench kernels`` times, in one process, on this machine,
with LiteRT and one thread, the same fully connected layers three ways:

- ``float32``: TFLite FULLY_CONNECTED with float32 weights (XNNPACK);
- ``int8``: the TFLite converter's dynamic-range quantization, int8 weights
  and int8 activations quantized per batch row at run time (XNNPACK's qd8
  kernels): the peer the targets are stated against;
- ``gq b``: GQ_FULLY_CONNECTED with b-bit packed weights through our delegate
  (``kernel=auto``: the fastest variant this CPU runs).

Three groups of shapes: an in-cache layer (512x512), an LSTM-sized layer
(2048x8192: the 4 gates of 2048 units), and a stack of layers whose int8
weights exceed the last-level cache (16 x 2048x2048 = 64 MiB at int8), run as
one model. Every model of a group gets the same weights (the GQ codebook's
values, decoded for float32 and int8) and the same input.

Protocol: every model is warmed up, then the models of a group are timed in
interleaved rounds (A B C ... A B C ...) so that drift (frequency, other
load) hits all of them alike; each sample is one ``invoke()`` timed with
``perf_counter_ns`` (about 0.3 us of Python overhead, the same for all).
The table gives the median and P90 per model, the ratio of medians to int8,
and the memory-bandwidth bound: weight bytes / copy bandwidth, the copy
bandwidth measured here with STREAM's convention (a copy of N bytes moves 2N).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

GROUPS = {
    # name: (in, out, layers, batches)
    "in-cache": (512, 512, 1),
    "lstm": (2048, 8192, 1),
    "stack": (2048, 2048, 16),
}
DEFAULT_BITS = (1, 2, 3, 4, 5, 8)
DEFAULT_BATCHES = {"in-cache": (1, 16), "lstm": (1, 16), "stack": (1,)}
# Targets of the fast-kernels issue: (group, batch, bits) -> max ratio to int8.
TARGETS = {
    ("stack", 1, 4): 0.6,
    ("stack", 1, 2): 0.4,
    ("stack", 1, 1): 0.3,
    ("in-cache", 1, None): 1.0,
    ("in-cache", 16, 4): 1.5,
    ("lstm", 16, 4): 1.5,
}
BOUND_TARGET = 1.5  # out of cache: within 1.5x of the bandwidth bound
MIB = 1 << 20


@dataclass
class Row:
    group: str
    shape: str
    batch: int
    model: str
    bits: int | None
    weight_bytes: int
    file_bytes: int
    samples: int
    median_us: float
    p90_us: float
    mean_us: float
    min_us: float
    ratio_int8: float | None = None
    bound_us: float | None = None
    ratio_bound: float | None = None
    target: str = ""


@dataclass
class Report:
    machine: dict
    copy_bandwidth_gbs: float
    gq_kernel: str
    rows: list[Row] = field(default_factory=list)

    def table(self):
        head = (f"{'group':<9} {'shape':<14} {'batch':>5} {'model':<8} {'weights':>10} {'median us':>10} "
                f"{'p90 us':>9} {'x int8':>7} {'bound us':>9} {'x bound':>8}  target")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.group:<9} {r.shape:<14} {r.batch:>5} {r.model:<8} {r.weight_bytes / MIB:>6.2f} MiB "
                f"{r.median_us:>10.1f} {r.p90_us:>9.1f} {_fmt(r.ratio_int8):>7} {_fmt(r.bound_us, 1):>9} "
                f"{_fmt(r.ratio_bound):>8}  {r.target}"
            )
        return "\n".join(lines)


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


# ------------------------------------------------------------------ models


def _gq_layers(rng, n_in, n_out, layers, bits):
    """Random codebooks and indices; centroids scaled so activations keep
    their magnitude through a stack (no overflow in the float peers)."""
    out = []
    for _ in range(layers):
        centroids = np.sort(rng.normal(size=2**bits)).astype(np.float32) / np.float32(np.sqrt(n_in))
        out.append({
            "bits": bits,
            "indices": rng.integers(0, 2**bits, size=(n_out, n_in), dtype=np.int64),
            "centroids": centroids,
            "bias": (rng.normal(size=n_out) * 0.1).astype(np.float32),
        })
    return out


def _convert(layers, batch, kind):
    """A chain of fully connected layers as .tflite bytes.

    ``kind``: "gq" (GQ_FULLY_CONNECTED, packed), "float32" or "int8"
    (builtin FULLY_CONNECTED; int8 by the converter's dynamic range).
    """
    import gq_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    from converters import layout, tfops
    from gq_tf._keras import tf

    n_in = layers[0]["indices"].shape[1]

    class _Chain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([batch, n_in], tf.float32)])
        def f(self, x):
            for layer in layers:
                idx, cent = layer["indices"], layer["centroids"]
                if kind == "gq":
                    x = tfops.gq_fully_connected(
                        x, tf.constant(layout.pack(idx, layer["bits"])), tf.constant(cent),
                        tf.constant(layer["bias"]), bits=layer["bits"], in_features=idx.shape[1],
                        out_features=idx.shape[0], activation="NONE")
                else:
                    x = tf.matmul(x, tf.constant(cent[idx].T)) + tf.constant(layer["bias"])
            return x

    module = _Chain()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    if kind == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    data = converter.convert()
    if kind == "gq":
        # As export_tflite writes it: packed weights 64-byte aligned.
        from converters import flatbuf

        data = flatbuf.write(flatbuf.read(data))
    return data


def _interpreter(data, kind):
    if kind == "gq":
        from converters.runtime import make_interpreter

        return make_interpreter(data, num_threads=1)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    return interp


# ------------------------------------------------------------------ timing


def copy_bandwidth(nbytes=256 * MIB, repeats=5):
    """Bytes moved per second by a large copy (STREAM convention: 2N per copy
    of N bytes), best of ``repeats``."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _time_group(interps, seconds, log):
    """Interleaved rounds; returns {name: samples in us}."""
    names = list(interps)
    invokes = {}
    for name, it in interps.items():
        for _ in range(3):
            it.invoke()
        t = time.perf_counter()
        it.invoke()
        invokes[name] = time.perf_counter() - t
    rounds = 5
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            it = interps[name]
            count = int(min(2000, max(10, seconds / rounds / max(invokes[name], 1e-7))))
            buf = samples[name]
            for _ in range(count):
                t0 = time.perf_counter_ns()
                it.invoke()
                buf.append((time.perf_counter_ns() - t0) / 1000.0)
        log(f"  round {r + 1}/{rounds} done")
    return samples


def _target(group, batch, bits):
    for key in ((group, batch, bits), (group, batch, None)):
        if key in TARGETS:
            return TARGETS[key]
    return None


def _shape_group(name):
    """(in, out, 1) of a ``--shapes`` entry "INxOUT", or None when ``name`` is not one."""
    parts = name.split("x")
    if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1]), 1
    return None


def run(groups=tuple(GROUPS), bits=DEFAULT_BITS, batches=None, seconds=1.0, seed=0, log=print):
    """Runs the benchmark and returns a ``Report``.

    A group is one of ``GROUPS`` or a single layer "INxOUT" (``--shapes``:
    the shapes of a model's kernels, for ``gq-tf allocate --latency-table``).
    """
    from converters import layout
    from converters.runtime import auto_kernel

    log("measuring copy bandwidth...")
    bw = copy_bandwidth()
    report = Report(machine=_machine(), copy_bandwidth_gbs=bw / 1e9, gq_kernel=auto_kernel())
    log(f"copy bandwidth {bw / 1e9:.1f} GB/s; GQ kernel: {report.gq_kernel}")
    for group in groups:
        n_in, n_out, depth = GROUPS.get(group) or _shape_group(group)
        shape = f"{depth}x{n_in}x{n_out}" if depth > 1 else f"{n_in}x{n_out}"
        for batch in (batches or DEFAULT_BATCHES.get(group, (1,))):
            log(f"{group} {shape} batch {batch}: building models...")
            rng = np.random.default_rng(seed)
            interps, meta = {}, {}
            for b in bits:
                layers = _gq_layers(rng, n_in, n_out, depth, b)
                if b == max(bits):
                    # The float peers carry the widest codebook's values.
                    for kind in ("float32", "int8"):
                        data = _convert(layers, batch, kind)
                        interps[kind] = _interpreter(data, kind)
                        meta[kind] = (None, len(data), depth * n_in * n_out * (4 if kind == "float32" else 1))
                data = _convert(layers, batch, "gq")
                name = f"gq {b}"
                interps[name] = _interpreter(data, "gq")
                meta[name] = (b, len(data), depth * (layout.packed_size(b, n_in, n_out) + 4 * 2**b))
                del layers
            x = np.random.default_rng(seed + 1).normal(size=(batch, n_in)).astype(np.float32)
            for it in interps.values():
                it.set_tensor(it.get_input_details()[0]["index"], x)
            log(f"{group} {shape} batch {batch}: timing {len(interps)} models...")
            samples = _time_group(interps, seconds, log)
            order = ["float32", "int8"] + [f"gq {b}" for b in bits]
            int8_median = float(np.median(samples["int8"]))
            for name in order:
                s = np.asarray(samples[name])
                b, file_bytes, wbytes = meta[name]
                med = float(np.median(s))
                bound = wbytes / bw * 1e6
                goal = _target(group, batch, b) if name.startswith("gq") else None
                ratio = med / int8_median
                target = ""
                if goal is not None:
                    target = f"<= {goal:.1f}x int8: {'met' if ratio <= goal else 'MISSED'}"
                if group == "stack" and name.startswith("gq"):
                    ok = med / bound <= BOUND_TARGET
                    target += f"; <= {BOUND_TARGET}x bound: {'met' if ok else 'MISSED'}"
                report.rows.append(Row(
                    group=group, shape=shape, batch=batch, model=name, bits=b, weight_bytes=wbytes,
                    file_bytes=file_bytes, samples=len(s), median_us=med,
                    p90_us=float(np.percentile(s, 90)), mean_us=float(s.mean()), min_us=float(s.min()),
                    ratio_int8=ratio, bound_us=bound, ratio_bound=med / bound, target=target.lstrip("; "),
                ))
            del interps
    return report


def _machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import ai_edge_litert

    return {
        "cpu": cpu or platform.processor(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "litert": getattr(ai_edge_litert, "__version__", "unknown"),
        "threads": 1,
    }


# ------------------------------------------------------------------ CLI


def _int_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, received {text!r}") from None


def add_parser(sub):
    p = sub.add_parser(
        "kernels",
        help="time GQ_FULLY_CONNECTED against XNNPACK float32/int8 on this machine",
        description=__doc__.split("\n\n")[0] + " (LiteRT, 1 thread; see docs/KERNELS.md).",
    )
    p.add_argument("--groups", default=None,
                   help=f"comma-separated groups among {', '.join(GROUPS)} (default: all, or none with --shapes)")
    p.add_argument("--shapes", default="",
                   help="comma-separated single layers INxOUT to time too (default batch 1), e.g. the shapes "
                        "gq-tf allocate asks for with --latency-table")
    p.add_argument("--bits", type=_int_list, default=DEFAULT_BITS,
                   help="comma-separated bit widths of the GQ models (default: 1,2,3,4,5,8)")
    p.add_argument("--batch", type=_int_list, default=None,
                   help="comma-separated batch sizes (default: 1,16; the stack: 1)")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="timing budget per model and shape (default: 1.0)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    p.set_defaults(func=main)
    return p


def main(args):
    shapes = [g.strip() for g in args.shapes.split(",") if g.strip()]
    if any(_shape_group(g) is None for g in shapes):
        print(f"error: expected --shapes as comma-separated INxOUT (e.g. 512x2048), received {args.shapes!r}",
              file=sys.stderr)
        return 2
    default = "" if shapes else ",".join(GROUPS)
    groups = [g.strip() for g in (args.groups if args.groups is not None else default).split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not (groups or shapes):
        print(f"error: expected --groups among {', '.join(GROUPS)}, received {args.groups!r}", file=sys.stderr)
        return 2
    groups += list(dict.fromkeys(shapes))
    if not args.bits or any(b < 1 or b > 8 for b in args.bits):
        print(f"error: expected --bits in 1..8, received {args.bits}", file=sys.stderr)
        return 2
    if args.batch is not None and (not args.batch or any(b < 1 or b > 4096 for b in args.batch)):
        print(f"error: expected --batch in 1..4096, received {args.batch}", file=sys.stderr)
        return 2
    if not args.seconds > 0:
        print(f"error: expected --seconds > 0, received {args.seconds}", file=sys.stderr)
        return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    report = run(groups, args.bits, args.batch, args.seconds, log=log)
    print(f"GQ kernel: {report.gq_kernel}; copy bandwidth {report.copy_bandwidth_gbs:.1f} GB/s "
          f"(STREAM convention); LiteRT, 1 thread; {report.machine['cpu']}")
    print(report.table())
    if args.json:
        from pathlib import Path

        out = {"machine": report.machine, "copy_bandwidth_gbs": report.copy_bandwidth_gbs,
               "gq_kernel": report.gq_kernel, "rows": [asdict(r) for r in report.rows]}
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0
