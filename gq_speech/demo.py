"""The built-in example: float vs uniform 8-bit QAT vs GQ on a generated task.

Task ("spotting"): a sequence of T feature frames of Gaussian noise hides one
of C short class templates at a random time and amplitude; the model names the
class. It has the shape of keyword spotting on filterbank frames and needs
every layer type of an on-device speech model: Conv1D front-end, LSTM,
self-attention, Dense.

Run:  python -m gq_speech.demo            (or: gq-tf demo; --quick for a smoke run)
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

import gq_tf
from gq_tf import defaults, keras
from gq_tf.codebooks import quantized_weights

__all__ = ["TaskConfig", "make_task", "build_model", "mixed_policy", "finetune", "main"]

BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    frames: int = 32
    features: int = 16
    classes: int = 10
    template_frames: int = 6
    noise: float = 1.8
    train: int = 6000
    test: int = 2000
    seed: int = 0


def make_task(cfg=TaskConfig()):
    """(x_train, y_train, x_test, y_test) for the spotting task, deterministic in cfg.seed."""
    rng = np.random.default_rng(cfg.seed)
    templates = rng.normal(size=(cfg.classes, cfg.template_frames, cfg.features))

    def draw(n):
        x = rng.normal(scale=cfg.noise, size=(n, cfg.frames, cfg.features))
        y = rng.integers(0, cfg.classes, size=n)
        start = rng.integers(0, cfg.frames - cfg.template_frames + 1, size=n)
        amp = rng.uniform(0.6, 1.4, size=n)
        for i in range(n):
            x[i, start[i] : start[i] + cfg.template_frames] += amp[i] * templates[y[i]]
        return x.astype(np.float32), y.astype(np.int32)

    x_train, y_train = draw(cfg.train)
    x_test, y_test = draw(cfg.test)
    return x_train, y_train, x_test, y_test


def build_model(cfg=TaskConfig(), width=64):
    """Conv1D -> LSTM -> self-attention -> Dense classifier, built with gq_tf.keras."""
    inputs = keras.Input((cfg.frames, cfg.features), name="frames")
    x = keras.layers.Conv1D(width, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.LSTM(width, return_sequences=True, name="lstm")(x)
    a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=width // 4, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm")(x + a)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dense(width, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(cfg.classes, name="head")(x)
    return keras.Model(inputs, outputs, name="spotter")


def mixed_policy():
    """The demo's mixed GQ policy: 1 to 8 bits, per kernel, layer and module."""
    return {
        "conv": 4,
        "lstm": {"kernel": 3, "recurrent_kernel": 2},
        "attention": {"query": 2, "key": 2, "value": 3, "output": 3},
        "hidden": 1,
        "head": 8,
    }


def uniform_policy(bits, like=None):
    """Uniform QAT on the same weights as ``like`` (default: every supported weight)."""
    if like is None:
        return {".*": gq_tf.Uniform(bits)}
    out = {}
    for pattern, spec in like.items():
        if isinstance(spec, dict):
            out[pattern] = {k: gq_tf.Uniform(bits if bits else v) for k, v in spec.items()}
        else:
            out[pattern] = gq_tf.Uniform(bits if bits else spec)
    return out


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def train_float(cfg, data, epochs, verbose=2, width=64):
    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, width)
    _compile(model, 3e-3)
    model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose)
    return model


def annealing_for(steps, tau0=None, gamma=None, tau_min=None, hard_fraction=0.6, hard_every=0):
    """A GQAnnealing whose hard phase starts after ``hard_fraction`` of ``steps``."""
    tau0 = defaults.TAU0 if tau0 is None else tau0
    gamma = defaults.GAMMA if gamma is None else gamma
    tau_min = defaults.TAU_MIN if tau_min is None else tau_min
    # With anneal_every=1 the hard step is the number of decays to reach tau_min.
    decays = max(1, gq_tf.GQAnnealing(tau0=tau0, gamma=gamma, anneal_every=1, tau_min=tau_min).hard_step)
    every = max(1, int(hard_fraction * steps / decays))
    return gq_tf.GQAnnealing(tau0=tau0, gamma=gamma, anneal_every=every, tau_min=tau_min, hard_every=hard_every)


def finetune(float_model, policy, data, epochs, verbose=2, lr=1e-3, schedule=None, seed=0):
    """quantize_model + fit with annealing; returns the QAT model.

    ``schedule``: keyword arguments of ``annealing_for`` (tau0, gamma, ...).
    """
    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(seed)
    qat = gq_tf.quantize_model(float_model, policy)
    _compile(qat, lr)
    callbacks = []
    if any(isinstance(qw.quantizer, gq_tf.GeneralQuantizer) for qw in quantized_weights(qat)):
        steps = epochs * math.ceil(len(x_train) / BATCH_SIZE)
        callbacks.append(annealing_for(steps, **(schedule or {})))
    qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return qat


def evaluate(model, data):
    _, _, x_test, y_test = data
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {"accuracy": float(acc), "loss": float(loss)}


def kernel_rows(qat):
    """One row per quantized kernel: what the per-kernel table prints."""
    books = gq_tf.extract_codebooks(qat)
    rows = []
    for key, book in books.items():
        layer, weight = key.split("/", 1)
        rows.append(
            {
                "layer": layer,
                "weight": weight,
                "method": book.method,
                "bits": book.bits,
                "used": book.used,
                "of": 2**book.bits,
                "float_kb": book.indices.size * 4 / 1024,
                "packed_kb": book.packed_nbytes / 1024,
            }
        )
    return rows


def float_kb(model):
    """KB of all weights of ``model`` in float32."""
    return sum(int(np.prod(w.shape)) * 4 for w in model.weights) / 1024


def model_kb(float_model, rows):
    """Weight KB of the deployed model: packed kernels + everything else float32."""
    return float_kb(float_model) - sum(r["float_kb"] for r in rows) + sum(r["packed_kb"] for r in rows)


def format_table(headers, rows, align=None):
    """Plain-text table; ``rows`` are lists of already formatted strings."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    align = align or ["<"] + [">"] * (len(headers) - 1)

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def kernel_table(rows):
    body = [
        [r["layer"], r["weight"], r["method"], str(r["bits"]), f"{r['used']}/{r['of']}",
         f"{r['float_kb']:.1f} -> {r['packed_kb']:.2f}"]
        for r in rows
    ]
    total_f = sum(r["float_kb"] for r in rows)
    total_p = sum(r["packed_kb"] for r in rows)
    body.append(["total", "", "", "", "", f"{total_f:.1f} -> {total_p:.2f}"])
    return format_table(["layer", "weight", "method", "bits", "centroids used", "float KB -> packed KB"], body,
                        ["<", "<", "<", ">", ">", ">"])


def tflite_accuracy(path, data):
    """Test accuracy of a .tflite model run one sequence at a time (as on a device)."""
    from converters import make_interpreter

    _, _, x_test, y_test = data
    interpreter = make_interpreter(path)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    hits = 0
    for x, y in zip(x_test, y_test):
        # TFLite's LSTM keeps its state in variable tensors from one invoke to
        # the next; every test sequence starts from zero, as in Keras.
        interpreter.reset_all_variables()
        interpreter.set_tensor(inp, x[None].astype(np.float32))
        interpreter.invoke()
        hits += int(np.argmax(interpreter.get_tensor(out)[0]) == y)
    return hits / len(y_test)


def export_all(qats, float_model, data, directory):
    """Exports float, uniform 8-bit and GQ to .tflite and measures them; table rows."""
    import warnings

    import converters

    os.makedirs(directory, exist_ok=True)
    reports = {"float": converters.export_baseline(float_model, os.path.join(directory, "float.tflite"), kind="float")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", converters.NotPackedWarning)  # listed in the report instead
        reports["uniform 8-bit QAT"] = converters.export_tflite(
            qats["uniform 8-bit QAT"], os.path.join(directory, "uniform8.tflite"))
        reports["GQ mixed"] = converters.export_tflite(qats["GQ mixed"], os.path.join(directory, "gq_mixed.tflite"))
    rows = {}
    for name, report in reports.items():
        kinds = {"packed": 0, "int8": 0, "float": 0}
        for k in report.kernels:
            kinds["packed" if k.deployed.startswith("packed") else "int8" if "int8" in k.deployed else "float"] += 1
        rows[name] = {
            "path": report.path,
            "file_kb": report.size_bytes / 1024,
            "accuracy": tflite_accuracy(report.path, data),
            "kernels": ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n) or "all float",
        }
        print(f"  {name}: {report.path} ({rows[name]['file_kb']:.1f} KB)", flush=True)
    return rows, reports


def _stage(i, n, text):
    print(f"\n[{i}/{n}] {text}", flush=True)


def run(args):
    cfg = TaskConfig(seed=args.seed, train=args.train, test=args.test)
    stages = 6
    t0 = time.time()
    _stage(1, stages, f"generating the spotting task ({cfg.train} train / {cfg.test} test sequences)")
    data = make_task(cfg)

    _stage(2, stages, f"training the float model ({args.float_epochs} epochs)")
    float_model = train_float(cfg, data, args.float_epochs, verbose=args.verbose)
    results = {"float": evaluate(float_model, data)}
    results["float"]["model_kb"] = float_kb(float_model)
    print(f"float accuracy {results['float']['accuracy']:.4f}", flush=True)

    policy = mixed_policy()
    runs = [
        ("uniform 8-bit QAT", uniform_policy(8)),
        ("uniform QAT, GQ's bits", uniform_policy(None, like=policy)),
        ("GQ mixed", policy),
    ]
    qats = {}
    for i, (name, pol) in enumerate(runs):
        _stage(3 + (i == 2), stages, f"fine-tuning {name} ({args.qat_epochs} epochs)")
        qat = finetune(float_model, pol, data, args.qat_epochs, verbose=args.verbose, seed=args.seed)
        rows = kernel_rows(qat)
        results[name] = evaluate(qat, data) | {"model_kb": model_kb(float_model, rows), "kernels": rows}
        print(f"{name} accuracy {results[name]['accuracy']:.4f}", flush=True)
        qats[name] = qat

    _stage(5, stages, "exporting to .tflite (packed GQ custom ops) and running the files")
    tflite_dir = os.path.join(args.out, "tflite") if args.out else tempfile.mkdtemp(prefix="gq_demo_")
    tflite_rows, reports = export_all(qats, float_model, data, tflite_dir)

    _stage(6, stages, "results")
    print("\nGQ mixed, per kernel:")
    print(kernel_table(results["GQ mixed"]["kernels"]))
    print("\nTest set (hard-quantized weights, as deployed):")
    body = [
        [name, f"{r['accuracy'] * 100:.2f}", f"{r['loss']:.4f}", f"{r['model_kb']:.1f}"]
        for name, r in results.items()
    ]
    print(format_table(["model", "accuracy %", "loss", "weights KB"], body))
    print("\nDeployed .tflite files (run through converters.make_interpreter, batch 1):")
    body = [[name, f"{r['file_kb']:.1f}", f"{r['accuracy'] * 100:.2f}", r["kernels"]]
            for name, r in tflite_rows.items()]
    print(format_table(["model", "file KB", "accuracy %", "quantized kernels"], body, ["<", ">", ">", "<"]))
    not_packed = [k.key for k in reports["GQ mixed"].kernels if not k.deployed.startswith("packed")]
    if not_packed:
        print(f"(GQ kernels still deployed as decoded float builtins: {', '.join(not_packed)})")
    for name, r in tflite_rows.items():
        results[name]["tflite"] = r
    print(f"\ntotal time {time.time() - t0:.0f} s")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"task": dataclasses.asdict(cfg), "policy": str(policy), "results": results}, f, indent=1)
        gq_tf.save_qat(qats["GQ mixed"], os.path.join(args.out, "gq_mixed"))
        print(f"wrote {args.out}/results.json and the GQ QAT model {args.out}/gq_mixed "
              "(gq_tf.load_qat restores it)")
    return results


def parser():
    p = argparse.ArgumentParser(prog="gq-tf demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds, meaningless numbers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--qat-epochs", type=int, default=6)
    p.add_argument("--train", type=int, default=TaskConfig.train)
    p.add_argument("--test", type=int, default=TaskConfig.test)
    p.add_argument("--out", default="runs/demo", help="where to write results.json and the model ('' = nowhere)")
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2], help="Keras fit verbosity")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.quick:
        args.float_epochs, args.qat_epochs, args.train, args.test = 1, 1, 256, 128
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
