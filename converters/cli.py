"""``gq-tf export`` (also ``python -m converters``): a saved QAT model to .tflite.

Writes the GQ export and, unless ``--no-baselines``, the float32 and int8
(dynamic-range) exports of the same model next to it, then prints the kernel
table and the size comparison.
"""

import argparse
import os
import sys
import warnings


def parser():
    p = argparse.ArgumentParser(
        prog="gq-tf export",
        description="Export a QAT model saved with gq_tf.save_qat to .tflite with packed GQ custom ops.")
    p.add_argument("qat_dir", help="directory written by gq_tf.save_qat (e.g. runs/demo/gq_mixed)")
    p.add_argument("output", nargs="?", help="the .tflite file to write (default: <qat_dir>/model.tflite)")
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch of the exported graph (default 1)")
    p.add_argument("--weights", choices=("float", "dynamic_int8"), default="float",
                   help="weights of layers without a quantizer: float32 or int8 (default float)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not also write the float32 and int8 exports of the same model")
    return p


def _size_table(rows):
    float_size = next((size for name, _, size in rows if name.startswith("float32")), None)
    lines = ["| export | file | bytes | vs float32 |", "|---|---|---|---|"]
    for name, path, size in rows:
        ratio = f"{size / float_size:.3f}x" if float_size else "-"
        lines.append(f"| {name} | {path} | {size:,} | {ratio} |")
    return "\n".join(lines)


def run(args):
    import gq_tf
    from converters import export

    if not os.path.isdir(args.qat_dir):
        raise FileNotFoundError(f"Expected a directory written by gq_tf.save_qat. '{args.qat_dir}' does not exist.")
    output = args.output or os.path.join(args.qat_dir, "model.tflite")
    qat = gq_tf.load_qat(args.qat_dir)
    print(f"loaded {args.qat_dir} ({qat.count_params():,} parameters); exporting...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", export.NotPackedWarning)  # printed below with the report
        report = export.export_tflite(qat, output, batch_size=args.batch_size, weights=args.weights)
    print(report.table())
    for msg in report.warnings:
        print(f"warning: {msg}")
    rows = [("GQ" + (" + int8" if args.weights == "dynamic_int8" else ""), report.path, report.size_bytes)]
    if not args.no_baselines:
        stem = os.path.splitext(output)[0]
        float_model = gq_tf.strip_quantization(qat)  # once for both baselines
        for kind, label in (("float", "float32"), ("int8", "int8 (dynamic range)")):
            r = export.export_baseline(float_model, f"{stem}.{kind}.tflite", kind=kind, batch_size=args.batch_size)
            rows.append((label, r.path, r.size_bytes))
    print()
    print(_size_table(rows))
    return report


def run_command(prog, make_parser, run_fn, argv=None):
    """Parses ``argv``, runs ``run_fn(args)``; a user error is one line on stderr and exit 1."""
    args = make_parser().parse_args(argv)
    try:
        run_fn(args)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    return run_command("gq-tf export", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
