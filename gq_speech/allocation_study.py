"""The evidence behind ``gq_tf.allocate_bits``, on the demo's spotting task (docs/ALLOCATION.md).

Stages, each kept in ``--out`` as it finishes (a run that stops resumes there):

1. Data: the demo task; the last 1,000 training sequences are the dev split,
   and the float model is trained without them.
2. Sensitivity: three estimators on 256 calibration sequences of the
   training split: the measured loss with the kernel quantized by its fitted
   GQ codebook (``loss``, the default), the same with GQ's initial codebook
   (``loss_init``), and the Fisher-weighted error (``fisher``).
3. Ranking, on dev: 24 random policies (every kernel at 1, 2 or 3 bits) and
   every kernel alone at 1, 2 and 3 bits, each GQ fine-tuned for one epoch:
   its dev loss minus that of the float model fine-tuned the same way.
   Spearman's rank correlation of each estimator (summed over a policy's
   kernels) with it; the best one on the random policies is used below.
4. The curve: GQ at 2/3/4/5 bits on every kernel, the demo's hand-written
   mixed policy, and the automatic policy at each of their deployed sizes
   (bytes as ``export_tflite`` writes them); every row fine-tuned with
   ``--seeds`` seeds. The rows are fixed before any of them runs; each row's
   dev and test accuracy are measured once.
5. ``results.md`` (the tables) and ``results.png`` (accuracy vs deployed KB).

Run:  python -m gq_speech.allocation_study [--out runs/allocation] [--seeds 3]   (--quick: a smoke run)

The speech task's ranking (``--speech RUN_DIR``, after ``gq-tf asr run
allocation --out RUN_DIR``): each estimator's summed sensitivity of every
fine-tuned GQ policy of that run against its fine-tuned dev loss (Spearman),
written to ``RUN_DIR/allocation_ranking.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import gq_tf
from gq_speech import demo
from gq_tf import allocation
from gq_tf.fileio import atomic_json, atomic_write

__all__ = ["ESTIMATORS", "RANK_BITS", "UNIFORM_BITS", "spearman", "main"]

DEV = 1000
CALIBRATION = 256
ESTIMATORS = {"loss": {"method": "loss"}, "loss_init": {"method": "loss", "refine": 0},
              "fisher": {"method": "fisher"}}
RANK_BITS = (1, 2, 3)
UNIFORM_BITS = (2, 3, 4, 5)
RANDOM_POLICIES = 24
POLICY_BITS = (1, 2, 3)


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


class _State:
    """``state.json`` in the output directory: what each finished stage produced."""

    def __init__(self, out: Path):
        self.path = out / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def put(self, key, value):
        self.data[key] = value
        atomic_json(self.path, self.data)


def _say(text):
    print(text, flush=True)


def _policy_of(key, bits):
    layer, weight = key.split("/", 1)
    return {layer: {weight: bits}}


def _finetune(float_model, policy, train, epochs, seed):
    return demo.finetune(float_model, policy, (*train, None, None), epochs, verbose=0, seed=seed)


def _float_finetune(float_model, train, epochs, seed):
    """The float model trained on as ``demo.finetune`` trains a QAT model, without a quantizer."""
    from gq_tf import keras

    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(float_model)
    model.set_weights(float_model.get_weights())
    demo._compile(model, 1e-3)
    model.fit(*train, batch_size=demo.BATCH_SIZE, epochs=epochs, verbose=0)
    return model


def run(args):
    import converters
    from gq_tf import keras

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    settings = {"train": args.train, "test": args.test, "float_epochs": args.float_epochs, "epochs": args.epochs,
                "rank_epochs": args.rank_epochs, "seeds": args.seeds, "dev": args.dev}
    if state.get("settings") not in (None, settings):
        raise ValueError(f"Expected {out} to hold a run with the same settings. Received one made with "
                         f"{state.get('settings')}; use another --out.")
    state.put("settings", settings)
    t0 = time.monotonic()

    # 1. data and the float model
    cfg = demo.TaskConfig(seed=0, train=args.train, test=args.test)
    x_train, y_train, x_test, y_test = demo.make_task(cfg)
    dev = (x_train[-args.dev:], y_train[-args.dev:])
    train = (x_train[:-args.dev], y_train[:-args.dev])
    test = (x_test, y_test)
    weights = out / "float.weights.h5"
    keras.utils.set_random_seed(0)
    float_model = demo.build_model(cfg)
    demo._compile(float_model, 3e-3)
    if weights.exists():
        float_model.load_weights(weights)
        _say(f"[1/5] float model: {weights} (trained before)")
    else:
        _say(f"[1/5] float model: {args.float_epochs} epochs on {len(train[0])} sequences")
        float_model.fit(*train, batch_size=demo.BATCH_SIZE, epochs=args.float_epochs, verbose=0)
        from gq_tf.fileio import atomic_path

        with atomic_path(weights, ".weights.h5") as tmp:
            float_model.save_weights(tmp)
    float_dev = demo.evaluate(float_model, (None, None, *dev))
    float_test = demo.evaluate(float_model, (None, None, *test))
    state.put("float", {"dev": float_dev, "test": float_test})
    _say(f"  float: dev accuracy {float_dev['accuracy']:.2%}, loss {float_dev['loss']:.4f}")
    kernels = allocation.kernels(float_model)
    keys = [k.key for k in kernels]

    # 2. sensitivities
    cal = (train[0][:CALIBRATION], train[1][:CALIBRATION])
    sens = {}
    for name, opts in ESTIMATORS.items():
        saved = state.get(f"sensitivity_{name}")
        if saved is None:
            s = allocation.sensitivity(float_model, cal, progress=False, **opts)
            saved = s.to_json()
            state.put(f"sensitivity_{name}", saved)
        sens[name] = {k: {int(b): v for b, v in row.items()} for k, row in saved["values"].items()}
        _say(f"[2/5] sensitivity ({name}): {len(keys)} kernels, {saved['seconds']:.1f} s")

    # 3. ranking against short fine-tunes, on dev. The fine-tune also trains the
    # float weights further, so the reference is the float model fine-tuned
    # the same way (same epochs, learning rate and seed) without a quantizer.
    ranking = state.get("ranking_dev_loss", {})
    if "float" not in ranking:
        ranking["float"] = demo.evaluate(_float_finetune(float_model, train, args.rank_epochs, seed=0),
                                         (None, None, *dev))["loss"]
        state.put("ranking_dev_loss", ranking)
    pairs = [(k, b) for k in keys for b in RANK_BITS]
    for i, (key, bits) in enumerate(pairs):
        tag = f"{key}@{bits}"
        if tag in ranking:
            continue
        qat = _finetune(float_model, _policy_of(key, bits), train, args.rank_epochs, seed=0)
        ranking[tag] = demo.evaluate(qat, (None, None, *dev))["loss"]
        state.put("ranking_dev_loss", ranking)
        _say(f"[3/5] {i + 1}/{len(pairs)} {key} alone at {bits} bits, fine-tuned: dev loss "
             f"{ranking[tag] - ranking['float']:+.4f} vs the float fine-tune ({time.monotonic() - t0:.0f} s)")
    truth = [ranking[f"{k}@{b}"] - ranking["float"] for k, b in pairs]
    # Random mixed policies (each kernel 1, 2 or 3 bits): does the summed
    # estimate rank whole policies as their fine-tuned dev loss does? This is
    # what the allocation relies on, and the effects are large enough to
    # measure, where one kernel alone is mostly recovered by the fine-tune.
    rng = np.random.default_rng(0)
    policies = [{k: int(b) for k, b in zip(keys, rng.choice(POLICY_BITS, size=len(keys)))}
                for _ in range(RANDOM_POLICIES)]
    policy_loss = state.get("policy_dev_loss", {})
    for i, bits in enumerate(policies):
        tag = str(i)
        if tag in policy_loss:
            continue
        policy = {}
        for k, b in bits.items():
            policy.update({layer: {**policy.get(layer, {}), **w} for layer, w in _policy_of(k, b).items()})
        qat = _finetune(float_model, policy, train, args.rank_epochs, seed=0)
        policy_loss[tag] = demo.evaluate(qat, (None, None, *dev))["loss"]
        state.put("policy_dev_loss", policy_loss)
        _say(f"[3/5] random policy {i + 1}/{len(policies)}, fine-tuned: dev loss "
             f"{policy_loss[tag] - ranking['float']:+.4f} vs the float fine-tune ({time.monotonic() - t0:.0f} s)")
    policy_truth = [policy_loss[str(i)] - ranking["float"] for i in range(len(policies))]
    corr = {}
    for name in ESTIMATORS:
        est = [sens[name][k][b] for k, b in pairs]
        within = [spearman([sens[name][k][b] for k in keys], [ranking[f"{k}@{b}"] for k in keys])
                  for b in RANK_BITS]
        summed = [sum(sens[name][k][b] for k, b in bits.items()) for bits in policies]
        corr[name] = {"policies": spearman(summed, policy_truth), "single": spearman(est, truth),
                      "single_within_bits": float(np.nanmean(within))}
    best = max(corr, key=lambda n: corr[n]["policies"])
    state.put("correlation", {"estimators": corr, "chosen": best, "policies": policies,
                              "policy_truth": policy_truth, "single_truth": dict(zip(
                                  [f"{k}@{b}" for k, b in pairs], truth))})
    _say("[3/5] rank correlation with the fine-tuned dev loss: "
         + ", ".join(f"{n}: policies {c['policies']:.3f}, single kernels {c['single']:.3f}"
                     for n, c in corr.items()) + f"; chosen: {best}")

    # 4. the curve
    sizes = converters.deployed_sizes(kernels)
    references = {f"GQ {b}-bit": {".*": b} for b in UNIFORM_BITS}
    references["GQ mixed (hand)"] = demo.mixed_policy()
    rows = {}
    for name, policy in references.items():
        rows[name] = {"kind": "reference", "policy": policy,
                      "bytes": allocation.policy_nbytes(float_model, policy, sizes=converters.deployed_sizes)}
    best_sens = allocation.Sensitivity(best, float_dev["loss"], sens[best], sens[best], 0.0)
    for name, ref in list(rows.items()):
        alloc = gq_tf.allocate_bits(float_model, None, budget_bytes=ref["bytes"], sizes=converters.deployed_sizes,
                                    sensitivities=best_sens, progress=False)
        rows[f"auto @ {name}"] = {"kind": "auto", "policy": alloc.policy, "bytes": alloc.total_bytes,
                                  "budget": ref["bytes"], "bits": {c.key: c.bits for c in alloc.choices}}
    rows["float (fine-tuned as the rows)"] = {"kind": "float", "policy": {},
                                              "bytes": sum(sizes[k][None] for k in keys)}
    state.put("rows", {n: {k: v for k, v in r.items() if k != "policy"} | {"policy": _jsonable(r["policy"])}
                       for n, r in rows.items()})
    results = state.get("results", {})
    total = len(rows) * args.seeds
    done = 0
    for name, row in rows.items():
        for seed in range(args.seeds):
            tag = f"{name}#{seed}"
            done += 1
            if tag in results:
                continue
            if row["kind"] == "float":
                qat = _float_finetune(float_model, train, args.epochs, seed=seed)
            else:
                qat = _finetune(float_model, row["policy"], train, args.epochs, seed=seed)
            results[tag] = {"dev": demo.evaluate(qat, (None, None, *dev))["accuracy"],
                            "test": demo.evaluate(qat, (None, None, *test))["accuracy"]}
            state.put("results", results)
            _say(f"[4/5] {done}/{total} {name}, seed {seed}: dev {results[tag]['dev']:.2%} "
                 f"({row['bytes'] / 1024:.2f} KB, {time.monotonic() - t0:.0f} s)")

    # 5. reports
    table = _report(state, rows, results, args.seeds, len(test[0]))
    atomic_write(out / "results.md", table)
    _plot(rows, results, args.seeds, state.get("float"), sizes, out / "results.png")
    _say("[5/5] " + str(out / "results.md") + ", " + str(out / "results.png") + "\n\n" + table)
    return state.data


def _jsonable(policy):
    return {k: (v if isinstance(v, (int, dict)) else repr(v)) for k, v in policy.items()}


def _stats(results, name, seeds, split):
    values = [results[f"{name}#{s}"][split] for s in range(seeds)]
    return float(np.mean(values)), float(np.std(values))


def _report(state, rows, results, seeds, n_test):
    corr = state.get("correlation")
    f = state.get("float")
    lines = ["# Automatic bit allocation on the spotting task", "",
             f"Float model: dev {f['dev']['accuracy']:.2%}, test {f['test']['accuracy']:.2%}. "
             f"Each row: GQ fine-tune of {state.get('settings')['epochs']} epochs, mean +- std over {seeds} seeds "
             f"(0..{seeds - 1}); the 95% interval of one test accuracy near 80% on {n_test:,} sequences is about "
             f"+-{1.96 * np.sqrt(0.8 * 0.2 / n_test):.1%}.", "",
             "## Estimators: rank correlation with the dev loss after a 1-epoch GQ fine-tune", "",
             f"Spearman's rho between the estimate and the fine-tuned dev loss (minus the float model's, fine-tuned "
             f"the same way): over {len(corr['policies'])} random policies (every kernel at "
             f"{'/'.join(map(str, POLICY_BITS))} bits, the summed estimate), and over single kernels at "
             f"{'/'.join(map(str, RANK_BITS))} bits (all pairs, and the mean within one bit depth).", "",
             "| estimator | random policies | single kernels | single kernels, within a bit depth |",
             "|---|---|---|---|"]
    for name, c in corr["estimators"].items():
        mark = " (chosen)" if name == corr["chosen"] else ""
        lines.append(f"| {name}{mark} | {c['policies']:.3f} | {c['single']:.3f} | {c['single_within_bits']:.3f} |")
    lines += ["", "## Accuracy against deployed size (kernels as export_tflite writes them)", "",
              "| policy | deployed KB | dev accuracy % | test accuracy % |", "|---|---|---|---|"]
    for name, row in sorted(rows.items(), key=lambda kv: (kv[1]["bytes"], kv[0])):
        dm, ds = _stats(results, name, seeds, "dev")
        tm, ts = _stats(results, name, seeds, "test")
        lines.append(f"| {name} | {row['bytes'] / 1024:.2f} | {dm:.2%} +- {ds:.2%} | {tm:.2%} +- {ts:.2%} |")
    lines += ["", "## The automatic policies (bits per kernel)", ""]
    autos = {n: r for n, r in rows.items() if r["kind"] == "auto"}
    keys = list(next(iter(autos.values()))["bits"]) if autos else []
    lines += ["| budget of | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in autos.items():
        lines.append(f"| {name.removeprefix('auto @ ')} | " + " | ".join(str(row["bits"][k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows, results, seeds, float_result, sizes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style, label in (("reference", "o-", "GQ uniform bits (2/3/4/5)"), ("auto", "s-", "automatic")):
        pts = sorted((r["bytes"] / 1024, *_stats(results, n, seeds, "test"))
                     for n, r in rows.items() if r["kind"] == kind and not (kind == "reference" and "hand" in n))
        if pts:
            x, m, s = map(np.array, zip(*pts))
            ax.errorbar(x, m * 100, yerr=s * 100, fmt=style, capsize=3, label=label)
    hand = next((n for n in rows if "hand" in n and rows[n]["kind"] == "reference"), None)
    if hand:
        m, s = _stats(results, hand, seeds, "test")
        ax.errorbar([rows[hand]["bytes"] / 1024], [m * 100], yerr=[s * 100], fmt="D", capsize=3,
                    label="hand-written mixed")
    floats = [n for n, r in rows.items() if r["kind"] == "float"]
    if floats:
        ax.axhline(_stats(results, floats[0], seeds, "test")[0] * 100, color="gray", ls="--",
                   label="float, fine-tuned as the rows")
    ax.axhline(float_result["test"]["accuracy"] * 100, color="gray", ls=":", label="float")
    ax.set_xlabel("deployed kernels, KB (as exported)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Spotting task: accuracy vs size (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


SPEECH_ESTIMATORS = ("loss", "fisher")


def speech(run_dir, recipe_name="allocation", model_name="rnnt_small"):
    """Ranks the estimators on a finished ``gq-tf asr run`` of an allocation recipe.

    Every GQ variant of the run (hand, uniform and automatic policies, all
    seeds) is one point: its policy's summed sensitivity (measured on the
    run's float model and calibration utterances, as the recipe's automatic
    variants do; cached beside theirs) against the dev loss after its
    fine-tune (the last epoch of its ``log.jsonl``).

    Returns:
      {"rows": [...], "spearman": {estimator: rho}}, also written to
      ``RUN_DIR/allocation_ranking.json``.
    """
    from gq_speech import experiment
    from gq_speech.recipe import auto_settings, load_recipe, parse_policy

    run_dir = Path(run_dir)
    recipe = load_recipe(recipe_name)
    auto_name = next((n for n, v in recipe["variants"].items() if "auto" in v), None)
    if auto_name is None:
        raise ValueError(f"Expected a recipe with an automatic variant. Received {recipe_name!r} without one.")
    rows = []
    for result in sorted((run_dir / model_name).glob("*/result.json")):
        r = json.loads(result.read_text())
        spec = recipe["variants"].get(r["variant"], {})
        log = result.parent / "log.jsonl"
        if r.get("kind") != "qat" or not log.exists():
            continue
        policy = r["allocation"]["policy"] if "allocation" in r else spec["policy"]
        last = [json.loads(line) for line in log.read_text().splitlines() if line.strip()][-1]
        rows.append({"variant": r["variant"], "policy": policy, "seed": spec.get("finetune", {}).get("seed", 0),
                     "dev_loss": last["val_loss"], "test_wer": r["wer_tflite_test"]})
    ctx = experiment.prepare(recipe, run_dir, model_name, log=_say)
    net = experiment._fresh_float(ctx)
    bits = {}
    for row in rows:
        try:
            bits[row["variant"]] = allocation.policy_bits(net, parse_policy(row["policy"]))
        except ValueError:
            pass  # a uniform (not GQ) policy: not what the estimators are for
    rows = [row for row in rows if row["variant"] in bits]
    bits = [bits[row["variant"]] for row in rows]
    if len(rows) < 2:
        raise ValueError(f"Expected at least 2 finished GQ variants in {run_dir / model_name}. Received {len(rows)}.")
    out = {"rows": rows, "spearman": {}}
    settings = auto_settings(recipe, auto_name)
    # Every bit depth a policy uses, besides the automatic variants' candidates.
    used = {b for p in bits for b in p.values() if b is not allocation.FLOAT}
    candidates = sorted(set(settings["candidates"]) | used)
    for method in SPEECH_ESTIMATORS:
        sens = experiment.measure_sensitivity(ctx, net, {**settings, "candidates": candidates, "method": method},
                                              f"ranking/{method}")
        for row, policy_bits in zip(rows, bits):
            row[method] = sum(0.0 if b is allocation.FLOAT else sens.values[k][b] for k, b in policy_bits.items())
        out["spearman"][method] = spearman([r[method] for r in rows], [r["dev_loss"] for r in rows])
    atomic_json(run_dir / "allocation_ranking.json", out)
    lines = ["| variant | seed | " + " | ".join(f"summed {m}" for m in SPEECH_ESTIMATORS) + " | dev loss | test WER |",
             "|---" * (4 + len(SPEECH_ESTIMATORS)) + "|"]
    for r in sorted(rows, key=lambda r: r["dev_loss"]):
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(f"{r[m]:.3g}" for m in SPEECH_ESTIMATORS)
                     + f" | {r['dev_loss']:.4f} | {100 * r['test_wer']:.2f}% |")
    lines.append("")
    lines += [f"Spearman, {m} vs dev loss: {rho:+.3f}" for m, rho in out["spearman"].items()]
    _say("\n".join(lines))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gq_speech.allocation_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/allocation")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs of each curve row")
    p.add_argument("--rank-epochs", type=int, default=1, help="fine-tune epochs of each ranking run")
    p.add_argument("--train", type=int, default=demo.TaskConfig.train)
    p.add_argument("--test", type=int, default=demo.TaskConfig.test)
    p.add_argument("--dev", type=int, default=DEV)
    p.add_argument("--quick", action="store_true", help="smoke run (a minute, meaningless numbers)")
    p.add_argument("--speech", metavar="RUN_DIR",
                   help="rank the estimators on a finished `gq-tf asr run allocation --out RUN_DIR` instead")
    args = p.parse_args(argv)
    if args.speech:
        try:
            speech(args.speech)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.quick:
        args.seeds, args.float_epochs, args.epochs, args.train, args.test, args.dev = 1, 1, 1, 512, 128, 128
    try:
        run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
