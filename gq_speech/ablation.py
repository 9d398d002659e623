"""The ablation behind gq_tf.defaults, on the demo's spotting task.

One float model is trained once; every variant fine-tunes it with GQ on every
supported weight and reports test accuracy (hard weights, as deployed). Grids:

  A. mu in {0, 8, 32, 255} x bits in {2, 4}, over several seeds;
  B. the annealing schedule at 2 bits: tau0, gamma, tau_min one at a time;
  C. soft_window at 5 bits (K = 32 > 16, the windowed softmax), with step time;
  D. quantization frequency at 2 bits: GQAnnealing's ``hard_every`` (every
     n-th soft-phase step runs the hard value) x the start of the hard phase
     (fraction of the fine-tune), scored on a dev split held out of the
     training set (its own float model, trained without it), not on test.

Run:  python -m gq_speech.ablation [--out docs/ablation.json]   (about 10 minutes a grid;
      --quick: a smoke run in seconds, meaningless numbers)
It writes the JSON and prints the markdown tables that docs/defaults.md shows.
"""

import argparse
import os
import sys
import time

import numpy as np

import gq_tf
from gq_speech import demo
from gq_tf import defaults
from gq_tf.fileio import atomic_json

__all__ = ["main"]


def _variant(float_model, data, bits, epochs, seed, mu=defaults.MU, soft_window=defaults.SOFT_WINDOW, **sched):
    policy = {".*": gq_tf.GQ(bits, mu=mu, soft_window=soft_window)}
    t0 = time.time()
    qat = demo.finetune(float_model, policy, data, epochs, verbose=0, seed=seed,
                        schedule=sched)
    seconds = time.time() - t0
    return demo.evaluate(qat, data)["accuracy"], seconds


# Grid D: hard_every values x hard-phase starts (fraction of the fine-tune steps).
HARD_EVERY = (0, 4, 16)
HARD_FRACTION = (0.3, 0.6, 0.9)
DEV = 1000  # training sequences held out as grid D's dev split


def _mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def run(args):
    cfg = demo.TaskConfig(seed=0, train=args.train, test=args.test)
    data = demo.make_task(cfg)
    print(f"training the float model ({args.float_epochs} epochs)", flush=True)
    float_model = demo.train_float(cfg, data, args.float_epochs, verbose=0)
    out = {"task": cfg.__dict__, "float_accuracy": demo.evaluate(float_model, data)["accuracy"],
           "qat_epochs": args.epochs, "seeds": args.seeds, "mu": [], "schedule": [], "soft_window": [],
           "frequency": []}
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

    if "D" in args.grids:
        x_train, y_train = data[0], data[1]
        dev = min(DEV, len(x_train) // 5)
        dev_data = (x_train[:-dev], y_train[:-dev], x_train[-dev:], y_train[-dev:])
        print(f"D: training a float model without the {dev} dev sequences", flush=True)
        dev_float = demo.train_float(cfg, dev_data, args.float_epochs, verbose=0)
        out["frequency_float_dev_accuracy"] = demo.evaluate(dev_float, dev_data)["accuracy"]
        out["frequency_dev"] = dev
        for fraction in HARD_FRACTION:
            for every in HARD_EVERY:
                accs = [_variant(dev_float, dev_data, 2, args.epochs, s, hard_every=every,
                                 hard_fraction=fraction)[0] for s in range(args.seeds)]
                m, sd = _mean_std(accs)
                out["frequency"].append({"hard_every": every, "hard_fraction": fraction, "accuracy": m, "std": sd,
                                         "runs": accs})
                print(f"D hard_every={every} hard_fraction={fraction:g}: {m:.4f} +- {sd:.4f} (dev)", flush=True)
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
    if res.get("frequency"):
        everies = sorted({r["hard_every"] for r in res["frequency"]})
        lines += ["", f"D. quantization frequency (2 bits; dev accuracy %, {res['frequency_dev']} held-out training "
                      f"sequences; float {res['frequency_float_dev_accuracy'] * 100:.2f}%)", "",
                  "| hard phase from | " + " | ".join(f"hard_every={e}" for e in everies) + " |",
                  "|---|" + "---|" * len(everies)]
        for fraction in sorted({r["hard_fraction"] for r in res["frequency"]}):
            cells = [cell(r) for e in everies for r in res["frequency"]
                     if r["hard_every"] == e and r["hard_fraction"] == fraction]
            lines.append(f"| {fraction:.0%} of the steps | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="gq-tf ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per variant")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--grids", default="ABCD", help="which grids to run, e.g. 'A' or 'BD'")
    p.add_argument("--train", type=int, default=demo.TaskConfig.train)
    p.add_argument("--test", type=int, default=demo.TaskConfig.test)
    p.add_argument("--quick", action="store_true", help="smoke run (seconds, meaningless numbers)")
    p.add_argument("--out", default=None, help="JSON to write (default docs/ablation.json; --quick: "
                                               "runs/ablation_quick.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.float_epochs, args.epochs, args.seeds, args.train, args.test = 1, 1, 1, 256, 128
    if args.out is None:
        args.out = "runs/ablation_quick.json" if args.quick else "docs/ablation.json"
    if set(args.grids) - set("ABCD") or not args.grids:
        p.error(f"expected --grids made of A, B, C and D. Received {args.grids!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    res = run(args)
    atomic_json(args.out, res)
    print("\n" + markdown(res))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
