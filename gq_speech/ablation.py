"""The ablation behind gq_tf.defaults, on the demo's spotting task.

One float model is trained once; every variant fine-tunes it with GQ on every
supported weight and reports test accuracy (hard weights, as deployed). Grids:

  A. mu in {0, 8, 32, 255} x bits in {2, 4}, over several seeds;
  B. the annealing schedule at 2 bits: tau0, gamma, tau_min one at a time;
  C. soft_window at 5 bits (K = 32 > 16, the windowed softmax), with step time.

Run:  python -m gq_speech.ablation [--out docs/ablation.json]   (about 10 minutes)
It writes the JSON and prints the markdown tables that docs/defaults.md shows.
"""

import argparse
import json
import sys
import time

import numpy as np

import gq_tf
from gq_tf import defaults, demo

__all__ = ["main"]


def _variant(float_model, data, bits, epochs, seed, mu=defaults.MU, soft_window=defaults.SOFT_WINDOW, **sched):
    policy = {".*": gq_tf.GQ(bits, mu=mu, soft_window=soft_window)}
    t0 = time.time()
    qat = demo.finetune(float_model, policy, data, epochs, verbose=0, seed=seed,
                        schedule=sched)
    seconds = time.time() - t0
    return demo.evaluate(qat, data)["accuracy"], seconds


def _mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def run(args):
    cfg = demo.TaskConfig(seed=0)
    data = demo.make_task(cfg)
    print(f"training the float model ({args.float_epochs} epochs)", flush=True)
    float_model = demo.train_float(cfg, data, args.float_epochs, verbose=0)
    out = {"task": cfg.__dict__, "float_accuracy": demo.evaluate(float_model, data)["accuracy"],
           "qat_epochs": args.epochs, "seeds": args.seeds, "mu": [], "schedule": [], "soft_window": []}
    print(f"float accuracy {out['float_accuracy']:.4f}", flush=True)

    for bits in (2, 4) if "A" in args.grids else ():
        for mu in (0.0, 8.0, 32.0, 255.0):
            accs = [_variant(float_model, data, bits, args.epochs, s, mu=mu)[0] for s in range(args.seeds)]
            m, sd = _mean_std(accs)
            out["mu"].append({"bits": bits, "mu": mu, "accuracy": m, "std": sd, "runs": accs})
            print(f"A bits={bits} mu={mu:g}: {m:.4f} +- {sd:.4f}", flush=True)

    base = {"tau0": defaults.TAU0, "gamma": defaults.GAMMA, "tau_min": defaults.TAU_MIN}
    variants = [dict(base)]
    for key, values in (("tau0", (0.3, 3.0)), ("gamma", (0.3, 0.8)), ("tau_min", (0.003, 0.03))):
        variants += [dict(base, **{key: v}) for v in values]
    for sched in variants if "B" in args.grids else ():
        accs = [_variant(float_model, data, 2, args.epochs, s, **sched)[0] for s in range(args.seeds)]
        m, sd = _mean_std(accs)
        out["schedule"].append(dict(sched, accuracy=m, std=sd, runs=accs))
        print(f"B {sched}: {m:.4f} +- {sd:.4f}", flush=True)

    for window in (2, 4, 8) if "C" in args.grids else ():
        res = [_variant(float_model, data, 5, args.epochs, s, soft_window=window) for s in range(args.seeds)]
        m, sd = _mean_std([r[0] for r in res])
        secs = float(np.mean([r[1] for r in res]))
        out["soft_window"].append({"soft_window": window, "accuracy": m, "std": sd, "seconds": secs})
        print(f"C soft_window={window}: {m:.4f} +- {sd:.4f}, {secs:.1f} s", flush=True)
    return out


def markdown(res):
    """The ablation tables (of the grids that ran) as markdown."""
    lines = [f"Float model: {res['float_accuracy'] * 100:.2f}% test accuracy. "
             f"Each cell: mean +- std over {res['seeds']} fine-tuning seeds, {res['qat_epochs']} epochs."]

    def cell(r):
        return f"{r['accuracy'] * 100:.2f} +- {r['std'] * 100:.2f}"

    if res["mu"]:
        lines += ["", "A. mu x bits (GQ on every kernel)", "", "| bits | mu=0 | mu=8 | mu=32 | mu=255 |",
                  "|---|---|---|---|---|"]
        for bits in sorted({r["bits"] for r in res["mu"]}):
            lines.append(f"| {bits} | " + " | ".join(cell(r) for r in res["mu"] if r["bits"] == bits) + " |")
    if res["schedule"]:
        lines += ["", "B. annealing schedule (2 bits)", "", "| tau0 | gamma | tau_min | accuracy % |",
                  "|---|---|---|---|"]
        for r in res["schedule"]:
            lines.append(f"| {r['tau0']:g} | {r['gamma']:g} | {r['tau_min']:g} | {cell(r)} |")
    if res["soft_window"]:
        lines += ["", "C. soft_window (5 bits, K = 32)", "", "| soft_window | accuracy % | fine-tune seconds |",
                  "|---|---|---|"]
        for r in res["soft_window"]:
            lines.append(f"| {r['soft_window']} | {cell(r)} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="gq-tf ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per variant")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--grids", default="ABC", help="which grids to run, e.g. 'A' or 'BC'")
    p.add_argument("--out", default="docs/ablation.json")
    args = p.parse_args(argv)
    res = run(args)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("\n" + markdown(res))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
