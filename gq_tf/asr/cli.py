"""``gq-tf asr``: the ASR experiment from the command line.

- ``gq-tf asr demo [--out DIR]``: the main job at a small scale (recipe
  ``demo``, about 20 minutes on 2 cores): corpus, float RNN-T, uniform and GQ
  fine-tunes, streaming .tflite export, WER on the .tflite files, host
  latency, the table and the plot. ``--full`` runs the ``full`` recipe
  (the one behind docs/results.md; hours).
- ``gq-tf asr run RECIPE [--out DIR] [--models ...] [--variants ...] [--jobs N]``:
  any recipe (a name in gq_tf/asr/recipes/ or a JSON file). A recipe with
  several models trains them side by side, one process per CPU (``--jobs``).
- ``gq-tf asr corpus --out DIR [--preset small]``: only the corpus.
- ``gq-tf asr transcribe EXPORT_DIR AUDIO [AUDIO ...] [--stream] [--kernel K]
  [--threads N] [--json OUT]``: transcribes audio files (any rate and channel
  count soundfile reads) with an exported streaming model, chunk by chunk as
  an app would, and reports per-chunk latency, UPL and RTF
  (``gq_tf.asr.transcribe``).

The experiment commands resume: what is on disk in ``--out`` is reused.
"""

import argparse
import sys


def _parser():
    p = argparse.ArgumentParser(prog="gq-tf asr", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job at a small scale (about 20 minutes)")
    demo.add_argument("--out", default=None, help="run directory (default runs/asr_demo, or runs/asr_full with --full)")
    demo.add_argument("--full", action="store_true", help="the full recipe behind docs/results.md (hours)")
    demo.add_argument("--jobs", type=int, default=None,
                      help="models trained at once, one process each (default: one per CPU, up to the models)")
    run = sub.add_parser("run", help="run or resume a recipe")
    run.add_argument("recipe", help="recipe name (gq_tf/asr/recipes/) or JSON file")
    run.add_argument("--out", required=True)
    run.add_argument("--models", nargs="*", help="only these model configs of the recipe")
    run.add_argument("--variants", nargs="*", help="only these variants")
    run.add_argument("--jobs", type=int, default=None,
                     help="models trained at once, one process each (default: one per CPU, up to the models)")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one model, no bench/reports
    corpus = sub.add_parser("corpus", help="generate the built-in corpus only")
    corpus.add_argument("--out", required=True)
    corpus.add_argument("--preset", default="small")
    corpus.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("transcribe", help="transcribe audio files with an exported streaming model",
                        description="Streams each file through the three .tflite step graphs of EXPORT_DIR "
                                    "(deploy.export_streaming) and prints its transcript, per-chunk latency "
                                    "P50/P90, user-perceived latency (UPL) and real-time factor (RTF).")
    tr.add_argument("export_dir", metavar="EXPORT_DIR", help="directory with streaming.json and three .tflite files")
    tr.add_argument("audio", metavar="AUDIO", nargs="+",
                    help="audio files (wav, flac, ogg, ...; any rate, any channels)")
    tr.add_argument("--stream", action="store_true", help="print partial hypotheses as the chunks arrive")
    tr.add_argument("--kernel", default="auto",
                    help="GQ kernel of the delegate: auto (default), reference, or a variant this CPU runs")
    tr.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    tr.add_argument("--json", dest="json_path", metavar="OUT", help="write every file's results to this JSON file")
    return p


def _transcribe(args):
    """``gq-tf asr transcribe``: every file is tried; a bad one is reported and the others go on.

    Returns:
      0, or 2 when any file failed.
    """
    from pathlib import Path

    from gq_tf.asr import transcribe
    from gq_tf.asr.deploy import atomic_json

    if args.json_path and not Path(args.json_path).absolute().parent.is_dir():
        raise FileNotFoundError(f"Expected --json in an existing directory. Received {args.json_path!r}.")
    rec = transcribe.open_recognizer(args.export_dir, kernel=args.kernel, num_threads=args.threads)
    files, failed = [], []
    for path in args.audio:
        shown = []

        def header(path=path, shown=shown):
            if not shown:
                print(path, flush=True)
                shown.append(True)

        def partial(time_s, text, header=header):
            header()
            print(f"  [{time_s:.2f} s] {text}", flush=True)

        try:
            res = transcribe.transcribe_file(rec, path, stream_callback=partial if args.stream else None)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            files.append({"path": path, "error": str(e)})
            failed.append(path)
            continue
        header()
        channels = f"{res.channels} channel{'s' if res.channels > 1 else ''}"
        print(f"  transcript: {res.text or '(empty)'}")
        print(f"  {res.summary()} ({res.duration_s:.2f} s of {res.sample_rate} Hz, {channels})", flush=True)
        files.append(res.to_dict())
    if args.json_path:
        atomic_json(args.json_path, {"export_dir": str(args.export_dir), "model": rec.cfg.name,
                                     "kind": rec.manifest.get("kind"), "kernel": args.kernel,
                                     "threads": args.threads, "files": files})
    if failed:
        print(f"error: {len(failed)} of {len(args.audio)} files failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        if args.command == "corpus":
            from gq_tf.asr.corpus import make_corpus

            make_corpus(args.out, args.preset, seed=args.seed, log=log)
            return 0
        if args.command == "transcribe":
            return _transcribe(args)
        from gq_tf.asr.experiment import run_recipe

        if args.command == "demo":
            recipe = "full" if args.full else "demo"
            run_recipe(recipe, args.out or f"runs/asr_{recipe}", jobs=args.jobs, log=log)
        else:
            run_recipe(args.recipe, args.out, models=args.models, variants=args.variants,
                       jobs=1 if args.worker else args.jobs, reports=not args.worker, log=log)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
