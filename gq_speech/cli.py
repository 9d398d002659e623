"""``gq-tf asr``: the ASR experiment from the command line.

- ``gq-tf asr demo [--out DIR]``: the main job at a small scale (recipe
  ``demo``, about 20 minutes on 2 cores): corpus, float RNN-T, uniform and GQ
  fine-tunes, streaming .tflite export, WER on the .tflite files, host
  latency, the table and the plot. ``--full`` runs the ``full`` recipe
  (the one behind docs/results.md; hours).
- ``gq-tf asr run RECIPE [--out DIR] [--models ...] [--variants ...] [--jobs N]``:
  any recipe (a name in gq_speech/recipes/ or a JSON file). A recipe with
  several models trains them side by side, one process per CPU (``--jobs``).
  ``--check`` only validates the recipe, its model configs, training
  settings and variants (each policy against the built model) and prints
  the plan, in seconds: no corpus, no training, nothing written.
  ``--report`` writes ``results_so_far.md`` from the runs finished so far
  (a long run's tables while it goes on; trains nothing).
- ``gq-tf asr corpus --out DIR [--preset small]``: only the corpus.
- ``gq-tf asr transcribe EXPORT_DIR AUDIO [AUDIO ...] [--stream] [--kernel K]
  [--threads N] [--json OUT]``: transcribes audio files (any rate and channel
  count soundfile reads) with an exported streaming model, chunk by chunk as
  an app would, and reports per-chunk latency, UPL and RTF
  (``gq_speech.transcribe``).

The experiment commands resume: what is on disk in ``--out`` is reused.
"""

import argparse
import json
import sys


def _parser():
    p = argparse.ArgumentParser(prog="gq-tf asr", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job at a small scale (about 20 minutes)")
    demo.add_argument("--out", default=None, help="run directory (default runs/asr_demo, or runs/asr_full with --full)")
    demo.add_argument("--full", action="store_true", help="the full recipe behind docs/results.md (hours)")
    demo.add_argument("--jobs", type=int, default=None,
                      help="models trained at once, one process each (default: one per CPU, up to the models)")
    run = sub.add_parser(
        "run", help="run or resume a recipe",
        description="Runs (or resumes) a recipe into --out. With --check: validates the recipe, its model "
                    "configs, training settings and variants (every policy is resolved against the model it "
                    "quantizes, built but not trained) and prints the plan (models x variants, stages), in "
                    "seconds; no corpus is built, nothing is trained or written. Exit status 2 on an invalid "
                    "recipe, with the reason.")
    run.add_argument("recipe", help="recipe name (gq_speech/recipes/) or JSON file")
    run.add_argument("--out", help="run directory (required unless --check)")
    run.add_argument("--check", action="store_true",
                     help="only validate the recipe and print the plan (no corpus, no training)")
    run.add_argument("--models", nargs="*", help="only these model configs of the recipe")
    run.add_argument("--variants", nargs="*",
                     help="only these variants (a variant with seeds: all of them; =NAME: exactly that run)")
    run.add_argument("--jobs", type=int, default=None,
                     help="models trained at once, one process each (default: one per CPU, up to the models)")
    run.add_argument("--strategy", choices=None, default=None, metavar="NAME",
                     help="tf.distribute strategy for the training stages: default, mirrored (this machine's GPUs, "
                          "or --devices logical CPUs) or multi_worker (the machines of TF_CONFIG; docs/ASR.md). "
                          "Default: the recipe's \"strategy\", else default")
    run.add_argument("--devices", type=int, default=None,
                     help="mirrored: replicas on this machine (default: every GPU; 1 on a CPU-only machine)")
    run.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="multi_worker: seconds to wait for every worker to start (default 300)")
    run.add_argument("--dev-only", action="store_true",
                     help="selection: train and score on the dev sets only (the test sets untouched, no export or "
                          "benchmark); writes dev_results.md, and the same command without it reuses the training")
    run.add_argument("--report", action="store_true",
                     help="write results_so_far.md from the runs finished so far (trains nothing; safe while the "
                          "run goes on in another process)")
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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(settings, hints, where):
    """Checks that each value of ``settings`` has its field's type (TrainConfig accepts any)."""
    import math
    import typing

    names = {int: "an int", float: "a number", type(None): "null"}
    for key, value in settings.items():
        allowed = typing.get_args(hints[key]) or (hints[key],)
        ok = any((t is type(None) and value is None) or (t is int and _is_int(value))
                 or (t is float and (_is_int(value) or (isinstance(value, float) and math.isfinite(value))))
                 for t in allowed)
        if not ok:
            wanted = " or ".join(names.get(t, t.__name__) for t in allowed)
            raise ValueError(f"{where}: expected {key} to be {wanted}. Received {key}={value!r}.")


def _train_settings(settings, where):
    """A stage's settings as a checked TrainConfig."""
    import typing

    from gq_speech.train import TrainConfig

    cfg = TrainConfig.from_dict(settings)
    _check_types(settings, typing.get_type_hints(TrainConfig), where)
    return cfg


def _dict_entry(recipe, key, where, default=None):
    value = recipe.get(key, default)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected {key!r} to be a JSON object. Received {value!r}.")
    return value


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_recipe(recipe_name, models=None, variants=None):
    """Validates a recipe as ``run_recipe`` will use it, without a corpus or training.

    Loads the recipe (``recipe.load_recipe``), every model config it
    runs (``models.load_config``), the training settings of each stage and
    variant (``train.TrainConfig``, value types included), the annealing
    schedule, the corpus preset and the ``eval`` section, and resolves each
    QAT variant's policy (``recipe.parse_policy``) against its model,
    built but not trained (``gq_tf.configs.resolve_policy``: the checks of
    ``gq_tf.quantize_model``). What would stop a run hours in (a policy that
    selects an unsupported layer, a misspelt training key) stops here.

    Args:
      recipe_name: a recipe name (``gq_speech/recipes/``) or JSON file.
      models, variants: only these model configs / variants, as ``run_recipe``.

    Returns:
      dict: the plan: ``name``, ``corpus`` (a line), ``models`` ({model:
      {"kind", "parameters", "float" (a line), "variants": [(variant, kind,
      a line)]}}) and ``stages`` (a line).

    Raises:
      FileNotFoundError: no such recipe or model config.
      ValueError, TypeError: the recipe, a model config or a selection is
        invalid (the message names the entry).
    """
    from gq_speech import corpus
    from gq_speech import models as asr_models
    from gq_speech import recipe as recipe_mod
    from gq_speech.train import annealing
    from gq_tf._keras import tf
    from gq_tf.configs import resolve_policy

    recipe = recipe_mod.load_recipe(recipe_name)
    where = f"Recipe {recipe.get('name')!r}"
    names = recipe["models"]
    if not isinstance(names, list) or not names or not all(isinstance(m, str) for m in names):
        raise ValueError(f"{where}: expected 'models' to be a non-empty list of model config names. "
                         f"Received {names!r}.")
    selected = list(models or names)
    unknown = [m for m in selected if m not in names]
    if unknown:
        raise ValueError(f"Expected models of recipe {recipe.get('name')!r} ({names}). Received {unknown}.")
    unknown = [v for v in variants or () if v not in recipe["variants"]]
    if unknown:
        raise ValueError(f"Expected variants of recipe {recipe.get('name')!r} ({sorted(recipe['variants'])}). "
                         f"Received {unknown}.")

    c = _dict_entry(recipe, "corpus", where)
    if "librispeech" in c:
        if not isinstance(c["librispeech"], str):
            raise ValueError(f"{where}: expected corpus.librispeech to be a directory. Received {c['librispeech']!r}.")
        subsets = {role: c.get(role, default) for role, default in
                   (("train", "train-clean-100"), ("dev", "dev-clean"), ("test", "test-clean"))}
        bad = {role: s for role, s in subsets.items() if not isinstance(s, str)}
        if bad:
            raise ValueError(f"{where}: expected corpus subset names (strings). Received {bad}.")
        corpus_line = f"LibriSpeech at {c['librispeech']}: " + ", ".join(f"{r} {s}" for r, s in subsets.items())
    else:
        preset, seed = c.get("preset", "small"), c.get("seed", 0)
        if not _is_int(seed):
            raise ValueError(f"{where}: expected corpus.seed to be an int. Received {seed!r}.")
        if not isinstance(preset, (str, dict)):
            raise ValueError(f"{where}: expected corpus.preset to be a preset name or an object. "
                             f"Received {preset!r}.")
        corpus.preset_voices(preset)  # validates a preset name or config
        corpus_line = f"built-in preset {preset if isinstance(preset, str) else '(custom)'}, seed {seed}"
    far = recipe.get("farfield", {})
    if far is not None:
        if not isinstance(far, dict):
            raise ValueError(f"{where}: expected 'farfield' to be a JSON object or null. Received {far!r}.")
        if not _is_int(far.get("seed", 0)):
            raise ValueError(f"{where}: expected farfield.seed to be an int. Received {far['seed']!r}.")
        if "librispeech" not in c:
            corpus_line += f"; far-field test set, seed {far.get('seed', 0)}"

    for stage in ("float", "finetune"):
        per_model = _dict_entry(recipe, stage, where).get("per_model", {})
        if not isinstance(per_model, dict) or not all(isinstance(v, dict) for v in per_model.values()):
            raise ValueError(f"{where}: expected {stage}.per_model to map model names to settings objects. "
                             f"Received {per_model!r}.")
    schedule = _dict_entry(recipe, "annealing", where, {})
    try:
        annealing(1000, **schedule)
    except TypeError as e:
        raise ValueError(f"{where}: expected 'annealing' keys of train.annealing. Received {schedule}: {e}") from None
    ev = _dict_entry(recipe, "eval", where, {})
    for key, minimum, default in (("tflite_utterances", 1, None), ("bench_runs", 1, 20),
                                  ("stream_utterances", 0, 50)):
        value = ev.get(key, default)
        if not (value is None and default is None) and not (_is_int(value) and value >= minimum):
            raise ValueError(f"{where}: expected eval.{key} to be an int >= {minimum}"
                             f"{' or null' if default is None else ''}. Received {value!r}.")
    if not isinstance(ev.get("stream_memory", True), bool):
        raise ValueError(f"{where}: expected eval.stream_memory to be true or false. Received {ev['stream_memory']!r}.")

    # Everything that needs no model first (fast), then each model is built
    # once and its variants' policies are resolved against it.
    plan = {"name": recipe.get("name"), "corpus": corpus_line, "models": {}}
    todo = {}  # model -> (config, {variant: parsed policy})
    for model_name in selected:
        cfg = asr_models.load_config(model_name)
        tcfg = _train_settings(recipe_mod.stage_settings(recipe, "float", model_name),
                               f"{where}, model {model_name!r}, float")
        entry = {"kind": cfg.kind, "variants": [],
                 "float": f"float training {_plural(tcfg.epochs, 'epoch')}, batch {tcfg.batch_size}"}
        policies = {}
        for name, spec in recipe_mod.variants_of(recipe, model_name, variants):
            vwhere = f"{where}, variant {name!r}"
            kind = spec.get("kind", "qat")
            if kind == "float":
                entry["variants"].append((name, kind, "the float model, exported float32"))
                continue
            if kind not in ("qat", "cluster"):
                raise ValueError(f"Variant {name!r}: expected kind float, qat or cluster. Received {kind!r}.")
            ft = _train_settings(recipe_mod.finetune_settings(recipe, spec, model_name),
                                 f"{vwhere}, model {model_name!r}, finetune")
            batches = "" if ft.epoch_batches is None else f" of {ft.epoch_batches} batches"
            line = f"fine-tune {_plural(ft.epochs, 'epoch')}{batches}"
            if kind == "cluster":
                clusters = spec.get("clusters", 16)
                if not _is_int(clusters) or clusters < 2:
                    raise ValueError(f"{vwhere}: expected clusters to be an int >= 2. Received {clusters!r}.")
                entry["variants"].append((name, kind, f"{line}, {clusters} clusters, exported float32"))
                continue
            if "auto" in spec:
                if "policy" in spec:
                    raise ValueError(f"{vwhere}: expected either 'policy' or 'auto'. Received both.")
                auto = recipe_mod.auto_settings(recipe, spec.get("group", name))
                budget = (f"{auto['budget_kb']:g} KiB" if "budget_kb" in auto
                          else f"{auto['budget_bits']:g} bits a weight on average" if "budget_bits" in auto
                          else f"the size of variant {auto['budget_like']!r}")
                entry["variants"].append((name, kind, f"{line}, automatic policy for {budget} "
                                                      f"({auto['method']} sensitivity, {auto['calibration']} "
                                                      "calibration utterances)"))
                continue
            if "policy" not in spec:
                raise ValueError(f"{vwhere}: expected a 'policy' (or 'auto') for kind 'qat'. "
                                 f"Received keys {sorted(spec)}.")
            policy = spec["policy"]
            if not isinstance(policy, dict):
                raise ValueError(f"{vwhere}: expected 'policy' to be an object of pattern: bits. Received {policy!r}.")
            policies[name] = recipe_mod.parse_policy(policy)
            entry["variants"].append((name, kind, f"{line}, policy {json.dumps(policy)}"))
        plan["models"][model_name] = entry
        todo[model_name] = (cfg, policies)
    for model_name, (cfg, policies) in todo.items():
        try:
            net = asr_models.build_training_model(cfg)
        except (tf.errors.ResourceExhaustedError, MemoryError) as e:
            raise ValueError(f"Expected model config {model_name!r} to make a model that fits in memory. Received "
                             f"one that does not ({type(e).__name__} while building it).") from None
        entry = plan["models"][model_name]
        entry["parameters"] = int(net.count_params())
        for i, (name, kind, line) in enumerate(entry["variants"]):
            if name in policies:
                quantized = resolve_policy(net, policies[name])
                entry["variants"][i] = (name, kind, line.replace(
                    ", policy ", f", {len(quantized)} of {len(net.layers)} layers quantized, policy ", 1))
        del net
    runs = sum(len(m["variants"]) for m in plan["models"].values())
    n_stream = ev.get("stream_utterances", 50)
    plan["stages"] = " -> ".join([
        "corpus", "features", "float training (per model)",
        "per variant: fine-tune, streaming export, WER (Keras and .tflite)",
        f"step-graph benchmark ({ev.get('bench_runs', 20)} runs)"]
        + ([f"streaming benchmark ({_plural(n_stream, 'utterance')})"] if n_stream else [])
        + ["results.md, results.png"])
    plan["runs"] = runs
    return plan


def _print_plan(plan, out):
    print(f"recipe {plan['name']!r}: valid (--check: no corpus, no training, nothing written)")
    print(f"corpus: {plan['corpus']}")
    print(f"models x variants: {len(plan['models'])} model(s), {plan['runs']} variant run(s)")
    for model, entry in plan["models"].items():
        print(f"  {model} ({entry['kind']}, {entry['parameters']:,} parameters): {entry['float']}")
        for name, kind, line in entry["variants"]:
            print(f"    {name:<16} {kind:<8} {line}")
    print(f"stages: {plan['stages']}")
    if out:
        print(f"output: {out} (what is there is reused where its settings match)")


def _transcribe(args):
    """``gq-tf asr transcribe``: every file is tried; a bad one is reported and the others go on.

    Returns:
      0, or 2 when any file failed.
    """
    from pathlib import Path

    from gq_speech import transcribe
    from gq_tf.fileio import atomic_json

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


def _cluster(args, log):
    """The strategy of ``gq-tf asr run``: the command line's, else the recipe's ``"strategy"``
    (a name, or ``{"name": ..., "devices": N, "timeout_s": S}``), else none."""
    from gq_speech import distribute
    from gq_speech.recipe import load_recipe, strategy_settings

    conf = strategy_settings(load_recipe(args.recipe))
    name = args.strategy or conf.get("name", "default")
    devices = args.devices if args.devices is not None else (conf.get("devices") if name == conf.get("name") else None)
    timeout = args.timeout if args.timeout is not None else conf.get("timeout_s", distribute.DEFAULT_TIMEOUT_S)
    cluster = distribute.make_cluster(name, devices=devices, timeout_s=timeout)
    if cluster.distributed:
        who = (f"worker {cluster.worker_index} of {cluster.workers}" + (" (chief)" if cluster.is_chief else
               ": the chief prints the progress and writes the results") if cluster.workers > 1 else "")
        log(f"strategy {cluster.name}: {cluster.replicas} replicas in sync{', ' + who if who else ''}")
    return cluster


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and not args.check and not args.out:
        parser.error("run: the following argument is required: --out (or give --check)")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        if args.command == "run" and args.check:
            _print_plan(check_recipe(args.recipe, models=args.models, variants=args.variants), args.out)
            return 0
        if args.command == "corpus":
            from gq_speech.corpus import make_corpus

            make_corpus(args.out, args.preset, seed=args.seed, log=log)
            return 0
        if args.command == "transcribe":
            return _transcribe(args)
        if args.command == "run" and args.report:
            from gq_speech.experiment import report_so_far

            report_so_far(args.recipe, args.out, models=args.models, variants=args.variants, log=log)
            return 0
        from gq_speech.experiment import run_recipe

        if args.command == "demo":
            recipe = "full" if args.full else "demo"
            run_recipe(recipe, args.out or f"runs/asr_{recipe}", jobs=args.jobs, log=log)
        else:
            cluster = _cluster(args, log)
            run_recipe(args.recipe, args.out, models=args.models, variants=args.variants,
                       jobs=1 if args.worker else args.jobs, reports=not args.worker, log=log, cluster=cluster,
                       dev_only=args.dev_only)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
