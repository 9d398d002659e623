"""``gq-tf allocate``: the GQ policy for a size budget, chosen by ``gq_tf.allocate_bits``.

Reads a trained float tf_keras model (a ``.keras`` / ``.h5`` file or a
SavedModel directory, compiled with its loss) and a calibration set (an
``.npz`` with arrays ``x`` and ``y``), measures every kernel's sensitivity
(with progress), solves for the budget on the bytes ``export_tflite`` writes
(``converters.deployed_sizes``) and prints the table. ``--out`` writes the
policy and the report as JSON (``"policy"`` goes straight to
``gq_tf.quantize_model``, or into a recipe).
"""

import argparse
import json
import os
import sys

from gq_tf.fileio import atomic_json


def _pair(text):
    pattern, sep, bits = text.rpartition("=")
    if not sep or not pattern or not bits.isdigit():
        raise argparse.ArgumentTypeError(f"expected PATTERN=BITS (e.g. joint_out=8), received {text!r}")
    return pattern, int(bits)


def _bits_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit depths, received {text!r}") from None


def parser():
    p = argparse.ArgumentParser(
        prog="gq-tf allocate",
        description="Choose one GQ bit depth per kernel for a deployed-size budget (see docs/ALLOCATION.md).")
    p.add_argument("model", help="trained float tf_keras model (.keras, .h5 or SavedModel directory), compiled "
                                 "with its loss")
    p.add_argument("calibration", help=".npz with arrays x and y: a few hundred examples")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-kb", type=float, help="budget on the deployed kernels, in KiB (1024 bytes)")
    budget.add_argument("--budget-bytes", type=int, help="budget on the deployed kernels, in bytes")
    p.add_argument("--min-bits", type=_pair, action="append", default=[], metavar="PATTERN=BITS",
                   help="at least BITS for kernels whose layer name or layer/weight key matches (repeatable)")
    p.add_argument("--max-bits", type=_pair, action="append", default=[], metavar="PATTERN=BITS")
    p.add_argument("--fixed", type=_pair, action="append", default=[], metavar="PATTERN=BITS",
                   help="exactly BITS for these kernels (repeatable)")
    p.add_argument("--keep-float", action="append", default=[], metavar="PATTERN", help="kernels kept float")
    p.add_argument("--candidates", type=_bits_list, default=None, help="bit depths to choose from "
                   "(default 1,2,3,4,5,6,8)")
    p.add_argument("--method", choices=("loss", "fisher"), default="loss",
                   help="sensitivity estimator: measured loss (default) or Fisher-weighted error")
    p.add_argument("--sizes", choices=("exported", "dense"), default="exported",
                   help="bytes as export_tflite writes them (default) or ideal dense packing")
    p.add_argument("--latency-table", metavar="JSON", help="kernel timings on the target, from `python -m "
                   "android_bench kernels --shapes ... --json JSON` (the error lists the shapes to time)")
    p.add_argument("--latency-budget-us", type=float, help="the most the quantized kernels may take together, "
                   "in microseconds (needs --latency-table)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="write the policy and the report to this JSON file")
    return p


def latency_table(path, kernels, floats=frozenset(), batch=1):
    """``{key: {bits: seconds}}`` for ``gq_tf.allocate_bits(latency=...)``, from the
    JSON ``android_bench kernels --shapes ... --json PATH`` writes on the target.

    A packed kernel takes the median time of the GQ layer of its op's shape
    (``export._packed_dims``) at each bit depth the file has; a kernel the
    exporter does not pack runs as a float builtin whatever its bits, and
    counts 0 (it adds the same time to every allocation).

    Raises:
      ValueError: the file lacks shapes the model needs (the message gives the
        command that measures them), or is not the kernel benchmark's JSON.
    """
    from converters.export import _packed_dims, deployed_sizes

    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        timing = {(r["shape"], r["bits"]): r["median_us"] * 1e-6 for r in rows
                  if r["batch"] == batch and str(r["model"]).startswith("gq ")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Expected the JSON of `android_bench kernels --json` at {path!r}. Received a file that "
                         f"cannot be read as one: {type(e).__name__}: {e}") from e
    sizes = deployed_sizes(kernels, floats)
    out, missing = {}, set()
    for k in kernels:
        if k.key in floats:
            continue
        if sizes[k.key][1] == sizes[k.key][8]:  # not packed: a float builtin at any bits
            out[k.key] = dict.fromkeys(range(1, 9), 0.0)
            continue
        shape = "x".join(map(str, _packed_dims(k.layer, k.weight_name, k.shape)))
        out[k.key] = {b: timing[(shape, b)] for b in range(1, 9) if (shape, b) in timing}
        if not out[k.key]:
            missing.add(shape)
    if missing:
        shapes = ",".join(sorted(missing))
        raise ValueError(f"Expected timings at batch {batch} for the shapes {shapes} in {path}. Received none; "
                         f"measure them on the target: python -m android_bench kernels --shapes {shapes} "
                         f"--bits 1,2,3,4,5,6,8 --json {path}")
    return out


def _load(args):
    import numpy as np

    from gq_tf import keras

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"Expected a saved tf_keras model at {args.model!r}. It does not exist.")
    if not os.path.exists(args.calibration):
        raise FileNotFoundError(f"Expected a calibration .npz at {args.calibration!r}. It does not exist.")
    try:
        model = keras.models.load_model(args.model)
    except Exception as e:  # Keras raises many types for a file that is not a model
        raise ValueError(f"Expected a saved tf_keras model at {args.model!r}. Keras cannot load it: "
                         f"{type(e).__name__}: {e}") from e
    try:
        with np.load(args.calibration) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"Expected a calibration .npz at {args.calibration!r}. Received a file numpy cannot "
                         f"read: {type(e).__name__}: {e}") from e
    if not {"x", "y"} <= set(arrays):
        raise ValueError(f"Expected arrays 'x' and 'y' in {args.calibration}. Received {sorted(arrays)}.")
    return model, (arrays["x"], arrays["y"])


def run(args):
    import gq_tf
    from converters.export import deployed_sizes
    from gq_tf import allocation

    model, data = _load(args)
    budget = args.budget_bytes if args.budget_bytes is not None else int(round(args.budget_kb * 1024))
    print(f"{args.model}: {model.count_params():,} parameters, {len(allocation.kernels(model))} quantizable "
          f"kernels; calibration {len(data[0])} examples", flush=True)
    if (args.latency_budget_us is None) != (args.latency_table is None):
        raise ValueError("Expected --latency-table and --latency-budget-us together. Received only one.")
    latency = None
    if args.latency_table:
        kernel_list = allocation.kernels(model)
        floats = frozenset(k.key for k in kernel_list if allocation._matches(args.keep_float, k))
        latency = latency_table(args.latency_table, kernel_list, floats)
    alloc = gq_tf.allocate_bits(
        model, data, budget_bytes=budget, candidates=args.candidates or allocation.DEFAULT_CANDIDATES,
        min_bits=dict(args.min_bits), max_bits=dict(args.max_bits), fixed=dict(args.fixed),
        keep_float=args.keep_float, sizes=deployed_sizes if args.sizes == "exported" else allocation.dense_sizes,
        latency=latency, latency_budget=None if latency is None else args.latency_budget_us * 1e-6,
        method=args.method, batch_size=args.batch_size)
    if latency is not None:
        total = sum(latency[c.key][c.bits] for c in alloc.choices if c.bits is not None)
        print(f"latency of the quantized kernels: {total * 1e6:.1f} us of a {args.latency_budget_us:g} us budget")
    print(alloc.table())
    print(f"policy: {json.dumps(alloc.policy)}")
    if args.out:
        atomic_json(args.out, alloc.to_json())
        print(f"wrote {args.out}")
    return alloc


def main(argv=None):
    from converters.cli import run_command

    return run_command("gq-tf allocate", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
