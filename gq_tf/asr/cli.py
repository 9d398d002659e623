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

Every command resumes: what is on disk in ``--out`` is reused.
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
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        if args.command == "corpus":
            from gq_tf.asr.corpus import make_corpus

            make_corpus(args.out, args.preset, seed=args.seed, log=log)
            return 0
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
