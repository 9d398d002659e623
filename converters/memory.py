"""Peak resident memory of running a .tflite model, measured in a fresh process.

``python -m converters.memory`` exports a model with large layers (default:
two 2048x2048 Dense kernels, 32 MiB of float weights) as GQ 4-bit, float32
and int8 (dynamic range), runs each in its own process through
``make_interpreter`` and prints how much the peak RSS grew over the process's
RSS just before the interpreter was made. The same model with 64-wide layers
is measured the same way: its growth is the runtime's fixed cost (arena,
delegates, XNNPACK set-up), and the difference is what the weights cost.

The measurement resets the kernel's peak counter (``/proc/self/clear_refs``
with 5) once the runtime is imported, so the import itself is not counted.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

__all__ = ["peak_rss_growth", "proc_status_bytes", "main"]


def proc_status_bytes(key):
    """A memory field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``) in bytes.

    Raises:
      RuntimeError: the field is not there.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"Expected {key} in /proc/self/status. Received none.")


_CHILD = r"""
import json, sys, numpy as np
from converters import runtime
from converters.memory import proc_status_bytes as status

path, runtime_name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
runtime.delegate_path()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
interpreter = runtime.make_interpreter(path, runtime=runtime_name)
after_init = status("VmHWM")
for d in interpreter.get_input_details():
    interpreter.set_tensor(d["index"], np.ones(d["shape"], d["dtype"]))
for _ in range(runs):
    interpreter.invoke()
print(json.dumps({"rss_before": before, "peak_after_init": after_init, "peak": status("VmHWM")}))
"""


def peak_rss_growth(path, *, runtime="litert", runs=3):
    """{"rss_before", "peak_after_init", "peak", "growth"} in bytes, for one model.

    Runs in a child process so nothing else in this process is counted.

    Raises:
      RuntimeError: the child failed (its stderr is in the message).
    """
    proc = subprocess.run([sys.executable, "-c", _CHILD, os.fspath(path), runtime, str(runs)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"Measuring {path} failed:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["growth"] = out["peak"] - out["rss_before"]
    return out


def large_qat_model(width=2048, layers=2, bits=4):
    """A QAT model of ``layers`` GQ Dense kernels of ``width`` x ``width``."""
    import gq_tf
    from gq_tf import keras

    inp = keras.Input((width,))
    x = inp
    for i in range(layers):
        x = keras.layers.Dense(width, activation="relu" if i < layers - 1 else None, name=f"fc{i}")(x)
    return gq_tf.quantize_model(keras.Model(inp, x), bits)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m converters.memory", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--runtime", choices=("litert", "tflite"), default="litert")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)

    from converters import export

    qat = large_qat_model(args.width, args.layers, args.bits)
    float_mib = 4 * args.width * args.width * args.layers / 2**20
    print(f"model: {args.layers} x Dense {args.width}x{args.width} ({float_mib:.1f} MiB float weights), "
          f"GQ {args.bits}-bit", flush=True)
    tiny = large_qat_model(64, args.layers, args.bits)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in ("GQ", "float", "int8"):
            paths = []
            for tag, model in (("large", qat), ("tiny", tiny)):
                path = os.path.join(d, f"{name}.{tag}.tflite")
                if name == "GQ":
                    export.export_tflite(model, path)
                else:
                    export.export_baseline(model, path, kind=name)
                paths.append(path)
            large = peak_rss_growth(paths[0], runtime=args.runtime)
            fixed = peak_rss_growth(paths[1], runtime=args.runtime)
            rows.append({"model": name, "file_bytes": os.path.getsize(paths[0]), **large,
                         "fixed_growth": fixed["growth"], "net_growth": large["growth"] - fixed["growth"]})
            print(f"  measured {name}", flush=True)
    print()
    print("| model | file MiB | peak RSS growth MiB | fixed cost MiB (64-wide model) | growth for the weights MiB "
          "| / file size |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['file_bytes'] / 2**20:.2f} | {r['growth'] / 2**20:.2f} | "
              f"{r['fixed_growth'] / 2**20:.2f} | {r['net_growth'] / 2**20:.2f} | "
              f"{r['net_growth'] / r['file_bytes']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
