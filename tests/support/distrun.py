"""One ``train.fit`` of the tiny RNN-T under a ``tf.distribute`` strategy, in its own process.

The distributed tests start this (a strategy's devices and cluster are fixed
when TensorFlow starts, so each run is a fresh process)::

    python -m tests.support.distrun OUT --strategy default|mirrored|multi_worker \\
        [--devices N] [--kind float|gq] [--epochs E] [--batch B] [--die-at-step K] [--stop-at-step K]

It fits the tiny RNN-T on a learnable toy split (with SpecAugment and, for
``gq``, GQ 4/1/8-bit QAT with its annealing), checkpointing after every
batch into ``OUT/run``. The chief writes ``OUT/result.npz``: every weight of
the network, the loss after every step, the GQ codebooks (centroids per
kernel) and each worker's annealing state as gathered over the cluster.

``--die-at-step K``: worker 1 kills itself with SIGKILL after its K-th step
(counted over the run; before step K+1 starts, so step K's checkpoint is
written). ``--stop-at-step K``: every process stops there with exit status 3
(an interruption that keeps the checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

POLICY = {"encoder_lstm_.*": {"kernel": 4, "recurrent_kernel": 1}, "joint_out": 8, ".*": 4}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--strategy", default="default")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--kind", choices=["float", "gq"], default="gq")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--health", type=float, default=10.0)
    p.add_argument("--die-at-step", type=int, default=None)
    p.add_argument("--stop-at-step", type=int, default=None)
    args = p.parse_args(argv)

    from gq_speech import distribute

    try:
        cluster = distribute.make_cluster(args.strategy, devices=args.devices, timeout_s=args.timeout,
                                          health_interval_s=args.health)
    except (ValueError, distribute.ClusterError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import numpy as np

    import gq_tf
    from gq_speech import models
    from gq_speech.train import TrainConfig, annealing, fit
    from gq_tf._keras import keras
    from tests.support.asrmodels import toy_split

    out = Path(args.out)
    split = toy_split(12, words=(1, 2, 3), hold=6)
    cfg = models.load_config("rnnt_tiny")
    stats = __import__("gq_speech.features", fromlist=["FeatureStats"]).FeatureStats.compute(
        np.asarray(f, np.float32) for f in split.features)
    cfg = cfg.with_feature_stats(stats)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=3e-3, warmup_steps=2, save_every_s=0.0,
                       time_width=0.1)
    keras.utils.set_random_seed(0)
    with cluster.scope():
        net = models.build_training_model(cfg)
        if args.kind == "gq":
            net = gq_tf.quantize_model(net, POLICY)
    steps = tcfg.epochs * tcfg.steps_per_epoch(split)
    losses_path = out / "losses.jsonl"

    class Record(keras.callbacks.Callback):
        """Per-step losses (the chief), and the kill or stop points."""

        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_begin(self, batch, logs=None):
            # Before step K+1: step K and its checkpoint are done.
            done = int(self.model.optimizer.iterations.numpy())
            if args.die_at_step == done and cluster.worker_index == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if args.stop_at_step == done:
                raise KeyboardInterrupt

        def on_train_batch_end(self, batch, logs=None):
            self.step = int(self.model.optimizer.iterations.numpy())
            if cluster.is_chief:
                with open(losses_path, "a") as f:
                    f.write(json.dumps({"step": self.step, "loss": float(logs["loss"])}) + "\n")

    callbacks = [Record()]
    if args.kind == "gq":
        callbacks.append(annealing(steps, hard_fraction=0.5))
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = fit(net, cfg, split, split, tcfg, out / "run", name="toy", callbacks=callbacks,
                      log=lambda m: print(m, flush=True), cluster=cluster)
    except KeyboardInterrupt:
        return 3
    except distribute.ClusterError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    result = {f"w{i}": w for i, w in enumerate(net.get_weights())}
    if args.kind == "gq":
        from gq_tf.codebooks import quantized_weights

        gq = [qw for qw in quantized_weights(net) if isinstance(qw.quantizer, gq_tf.GeneralQuantizer)]
        for i, qw in enumerate(gq):
            result[f"centroids{i}"] = qw.quantizer.codebook_tensors(qw.variable, qw.qvars)[0].numpy()
        state = np.concatenate([qw.qvars["state"].numpy() for qw in gq])
        result["states"] = cluster.gather(state)  # one row per worker
    if cluster.is_chief:
        np.savez(out / "result.npz", **result)
        (out / "summary.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
