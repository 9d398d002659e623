"""What GQ QAT costs a training step: time and peak memory against float and uniform 8-bit QAT.

One fresh child process per row (model, variant, phase, gradient), so each
row's peak resident memory (``VmHWM``) is its own; rows of one model run one
after the other in the same call, and the ratios are to that model's uniform
8-bit QAT row. A step is one ``train_on_batch`` (Adam) after a first, tracing
step; time = the fastest of ``--steps`` steps (this machine's steps are
bimodal: a share of them is stretched from outside the process to the same
few durations whatever the row; the median is printed too).

Models:
  stack  5 x LSTM-1024 + Dense (38.7M parameters) on [batch, frames, 80]
         features, mean squared error to random targets;
  rnnt   the full recipe's RNN-T (``gq_speech/configs/rnnt.json``) with the
         RNN-T loss on random features and labels (``RNNTTrainer``).

Variants: float, uniform8 (``gq_tf.Uniform(8)`` everywhere), gq4, gq8 (GQ at
4 / 8 bits everywhere) and gq_mixed (the stack: LSTM kernels 4 bits and
recurrent kernels 2, the rest 5; the RNN-T: the full recipe's ``gq_mixed``).
Phases: soft (tau at its start value) and hard (straight-through). Gradient:
``custom`` (``gq_tf.ops.gq_quantize``, the default) or ``autodiff`` (TensorFlow's
autodiff of the same ops, ``gq_quantize_autodiff``: what training used before).

Run:  python -m gq_speech.trainbench [--models stack rnnt] [--variants ...]
          [--phases soft hard] [--gradients custom autodiff] [--steps 3] [--out runs/trainbench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["MODELS", "VARIANTS", "PHASES", "GRADIENTS", "run_one", "bench", "table", "main"]

MODELS = ("stack", "rnnt")
VARIANTS = ("float", "uniform8", "gq4", "gq_mixed", "gq8")
PHASES = ("soft", "hard")
GRADIENTS = ("custom", "autodiff")
STACK_FEATURES = 80


def _peak_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _policy(model, variant):
    import gq_tf
    from gq_speech.recipe import load_recipe, parse_policy

    if variant == "uniform8":
        return {".*": gq_tf.Uniform(8)}
    if variant in ("gq4", "gq8"):
        return int(variant[2:])
    if model == "stack":
        return {"lstm_.*": {"kernel": 4, "recurrent_kernel": 2}, ".*": 5}
    return parse_policy(load_recipe("full")["variants"]["gq_mixed"]["policy"])


def _stack(units=1024):
    from gq_tf import keras

    x = inp = keras.Input((None, STACK_FEATURES))
    for i in range(5):
        x = keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{i}")(x)
    return keras.Model(inp, keras.layers.Dense(600, name="out")(x), name="stack")


def run_one(model, variant, phase, gradient, *, batch=8, frames=40, steps=3, seed=0, units=1024):
    """One row, in this process: {"step_s": [...], "peak_gb", "params", ...}."""
    import numpy as np

    import gq_tf
    from gq_tf import keras, ops
    from gq_tf._keras import tf
    from gq_tf.codebooks import quantized_weights
    from gq_tf.quantizers import STATE_HARD, GeneralQuantizer

    ops.TRAINING_GRADIENT = gradient
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if model == "stack":
        net = _stack(units)
    else:
        from gq_speech import models

        cfg = models.load_config("rnnt")
        net = models.build_training_model(cfg)
    params = int(sum(np.prod(w.shape) for w in net.trainable_weights))
    if variant != "float":
        net = gq_tf.quantize_model(net, _policy(model, variant))
        if phase == "hard":
            for qw in quantized_weights(net):
                if isinstance(qw.quantizer, GeneralQuantizer):
                    state = qw.qvars["state"].numpy()
                    state[STATE_HARD] = 1.0
                    qw.qvars["state"].assign(state)
    if model == "stack":
        net.compile(keras.optimizers.Adam(1e-4), "mse")
        x = rng.normal(size=(batch, frames, STACK_FEATURES)).astype(np.float32)
        y = rng.normal(size=(batch, frames, 600)).astype(np.float32)

        def step():
            net.train_on_batch(x, y)
    else:
        from gq_speech.train import RNNTTrainer

        trainer = RNNTTrainer(net, cfg)
        trainer.compile(keras.optimizers.Adam(1e-4))
        labels = max(2, frames // 4)
        data = (rng.normal(size=(batch, frames, cfg.n_mels)).astype(np.float32),
                np.full([batch], frames, np.int32),
                rng.integers(1, cfg.vocab_size, size=(batch, labels)).astype(np.int32),
                np.full([batch], labels, np.int32))

        batches = iter(tf.data.Dataset.from_tensors(data).repeat())
        train_function = trainer.make_train_function()  # what fit runs per step

        def step():
            train_function(batches)

    t0 = time.perf_counter()
    step()  # traces
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"model": model, "variant": variant, "phase": phase if variant.startswith("gq") else "-",
            "gradient": gradient if variant.startswith("gq") else "-", "params": params, "batch": batch,
            "frames": frames, "first_step_s": first, "step_s": times, "step_median_s": statistics.median(times),
            "step_min_s": min(times),
            "peak_gb": _peak_kb() / 2**20}


def _rows(models, variants, phases, gradients):
    for model in models:
        for variant in variants:
            if not variant.startswith("gq"):
                yield model, variant, "soft", "custom"
                continue
            for phase in phases:
                for gradient in gradients:
                    yield model, variant, phase, gradient


def bench(models=MODELS, variants=VARIANTS, phases=PHASES, gradients=GRADIENTS, *, steps=3, batch=8, frames=40,
          units=1024, out=None, log=print):
    """Every row in its own child process; returns the rows (and writes
    ``out/results.json`` after each one, so a stopped run keeps what it measured)."""
    results = []
    plan = list(_rows(models, variants, phases, gradients))
    for i, (model, variant, phase, gradient) in enumerate(plan, 1):
        spec = {"model": model, "variant": variant, "phase": phase, "gradient": gradient, "steps": steps,
                "batch": batch, "frames": frames, "units": units}
        log(f"[{i}/{len(plan)}] {model} {variant}" + (f" {phase} {gradient}" if variant.startswith("gq") else ""))
        proc = subprocess.run([sys.executable, "-m", "gq_speech.trainbench", "--child", json.dumps(spec)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            log(f"  failed (exit {proc.returncode}): {tail}")
            results.append({**spec, "error": tail})
        else:
            row = json.loads(lines[-1])
            log(f"  step {row['step_min_s']:.2f} s (median {row['step_median_s']:.2f}), peak {row['peak_gb']:.2f} GB")
            results.append(row)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "results.json").write_text(json.dumps(results, indent=1))
    return results


def table(results):
    """Markdown table: step time and peak memory, and their ratios to the
    same model's uniform 8-bit row."""
    base = {r["model"]: r for r in results if r["variant"] == "uniform8" and "error" not in r}
    lines = ["| model | variant | phase | gradient | step s (fastest) | x uniform8 | step s (median) | peak GB "
             "| x uniform8 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['phase']} | {r['gradient']} | failed: "
                         f"{r['error'][:60]} | | | | |")
            continue
        b = base.get(r["model"])
        t_ratio = f"{r['step_min_s'] / b['step_min_s']:.2f}x" if b else "-"
        m_ratio = f"{r['peak_gb'] / b['peak_gb']:.2f}x" if b else "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['phase']} | {r['gradient']} | {r['step_min_s']:.2f} "
                     f"| {t_ratio} | {r['step_median_s']:.2f} | {r['peak_gb']:.2f} | {m_ratio} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gq_speech.trainbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--gradients", nargs="+", choices=GRADIENTS, default=list(GRADIENTS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per row, after the tracing step")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--units", type=int, default=1024, help="the stack's LSTM width (1024: 38.7M parameters)")
    p.add_argument("--out", default="runs/trainbench")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_one(spec["model"], spec["variant"], spec["phase"], spec["gradient"],
                                 batch=spec["batch"], frames=spec["frames"], steps=spec["steps"],
                                 units=spec["units"])), flush=True)
        return 0
    if min(args.steps, args.batch, args.frames, args.units) < 1:
        print("error: --steps, --batch, --frames and --units must be >= 1", file=sys.stderr)
        return 1
    results = bench(args.models, args.variants, args.phases, args.gradients, steps=args.steps, batch=args.batch,
                    frames=args.frames, units=args.units, out=args.out)
    text = table(results)
    (Path(args.out) / "results.md").write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
