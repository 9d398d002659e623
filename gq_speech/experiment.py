"""The ASR experiment: corpus -> float model -> QAT variants -> streaming .tflite -> WER, size, latency.

A *recipe* (``gq_speech/recipes/<name>.json``, data) names the corpus (a
built-in preset, or ``{"librispeech": ROOT, "train": "train-clean-100",
"dev": "dev-clean", "test": "test-clean"}``, evaluated clean only;
``"farfield": null`` skips the far-field set, which is otherwise written
next to the test subset), the
model configs, the training settings and the variants; ``run_recipe`` runs
it into a directory, one subdirectory per model and variant::

    <out>/corpus/                      the generated corpus (shared, cached)
    <out>/<model>/float_model/         float training (ckpt/, log.jsonl, summary.json)
    <out>/<model>/<variant>/           fine-tune (ckpt/), stream/ (3 .tflite + streaming.json),
                                       result.json (the row)
    <out>/bench/, <out>/streambench/   latency: step graphs (android_bench --host), the
                                       whole streaming recognizer (streambench)
    <out>/results.json, results.md, results.png

Every finished step leaves its result on disk, so running the same command
again skips what is done and resumes what was interrupted (training
resumes from its last epoch). Variant kinds:

- ``float``: the float model, exported float32;
- ``qat``: ``gq_tf.quantize_model`` with the variant's policy and a fine-tune
  (GQ kernels with the annealing callback), exported with
  ``deploy.export_streaming(kind="gq")`` (GQ kernels packed, uniform ones int8);
- ``cluster``: tfmot weight clustering (``clusters`` centroids per kernel,
  k-means++ init) and a fine-tune, exported float32 (TFLite has no packed
  format for it); its ``packed size`` is what the same kernels would take as
  ``log2(clusters)``-bit indices + a centroid table each.

Policies in recipes: ``"pattern": bits`` is GQ at ``bits``, ``"u8"`` is
``gq_tf.Uniform(8)``; a dict gives bits per weight
(``{"kernel": 4, "recurrent_kernel": 1}``); first full match wins.

The recipe's ``"eval"`` section: ``tflite_utterances`` (null: all),
``bench_runs`` (android_bench runs per step graph), ``stream_utterances``
(test utterances of the whole-recognizer streaming benchmark, default 50;
0 skips it) and ``stream_memory`` (its peak-memory children, default true).

A variant may also carry ``"models": [...]`` (run for those models only) and
``"finetune": {...}`` (its own training settings over the recipe's, e.g.
``{"epoch_batches": null}`` for whole epochs); the ``float`` and ``finetune`` stages take
``"per_model": {model: {...}}`` overrides (:func:`stage_settings`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shlex
import time
from pathlib import Path

import numpy as np

import gq_tf
from gq_speech.recipe import (
    MULTICONDITION_DEFAULTS,
    finetune_settings,
    load_recipe,
    multicondition_settings,
    parse_policy,
    stage_settings,
    variants_of,
)
from gq_tf._keras import keras, tf
from gq_tf.configs import is_qat
from gq_tf.fileio import atomic_json, atomic_write

# ----------------------------------------------------------------- evaluation


class KerasDecoder:
    """Batched greedy decoding of a trained (float or QAT) training model.

    The encoder is the training graph's (equal to the streaming one by
    construction); the prediction and joint networks are the step graphs
    for a batch of streams, with the trained weights copied in.
    """

    def __init__(self, net, cfg, max_symbols_per_frame=5):
        from gq_speech import models
        from gq_speech.decoding import BatchGreedyDecoder

        self.cfg = cfg
        self.encoder = models.split_training_model(net)["encoder"]
        steps = models.build_step_models(cfg, batch_size=None)
        steps = {k: steps[k] for k in ("prediction", "joint")}
        if is_qat(net):
            steps = models.quantize_step_models(steps, models.policy_from_qat(net))
        models.copy_weights(net, steps)
        pred, joint = steps["prediction"], steps["joint"]
        # Prediction states without the batch dimension, by name.
        self.pred_units = {k: s[1:] for k, s in models.state_specs(cfg)["prediction"].items()}

        def pred_fn(tokens, states):
            out = pred({"token": tokens[:, None], **states})
            return out["pred_out"], {k: out[k] for k in self.pred_units}

        def joint_fn(enc, p):
            return joint({"enc": enc, "pred": p})["logits"]

        self._decode = BatchGreedyDecoder(pred_fn, joint_fn, max_symbols_per_frame=max_symbols_per_frame)
        self._encode = tf.function(lambda x: self.encoder(x, training=False),
                                   input_signature=[tf.TensorSpec([None, None, cfg.n_mels], tf.float32)])

    def transcribe(self, split, tokenizer, batch_size=32) -> list[str]:
        """Greedy transcripts of every utterance, in ``split`` order.

        Each utterance is completed to whole streaming chunks with frames
        equal to the feature mean, exactly as ``deploy.StreamingRecognizer``
        does at ``finish()``, and every encoder frame is decoded: the Keras
        and the deployed transcripts are of the same input.
        """
        from gq_speech import models
        from gq_speech.decoding import ids_to_lists

        chunk = self.cfg.chunk_frames
        mean = models.feature_fill(self.cfg)
        lengths = np.array([len(f) for f in split.features])
        padded = -(-np.maximum(lengths, 1) // chunk) * chunk
        order = np.argsort(padded, kind="stable")
        hyps = [None] * len(split)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t = int(padded[idx].max())
            x = np.tile(mean, (len(idx), t, 1))
            for j, i in enumerate(idx):
                x[j, :lengths[i]] = split.features[i]
            enc = self._encode(tf.constant(x))
            enc_len = tf.constant(padded[idx] // models.reduction(self.cfg), tf.int32)
            state = {k: tf.zeros([len(idx), *s]) for k, s in self.pred_units.items()}
            ids, out_len = self._decode(enc, enc_len, state)
            for i, seq in zip(idx, ids_to_lists(ids.numpy(), out_len.numpy())):
                hyps[i] = tokenizer.decode(seq)
        return hyps


def tflite_transcribe(stream_dir, split, tokenizer, limit=None, log=print) -> tuple[list[str], dict]:
    """Streams every utterance through the exported step graphs; (hypotheses, timing stats)."""
    from gq_speech.deploy import StreamingRecognizer

    rec = StreamingRecognizer(stream_dir)
    n = len(split) if limit is None else min(limit, len(split))
    hyps, chunk_ms = [], []
    t0 = time.time()
    for i in range(n):
        rec.reset()
        rec.clear_timings()
        rec.push(np.asarray(split.features[i], np.float32))
        hyps.append(tokenizer.decode(rec.finish()))
        chunk_ms.extend(1000 * np.asarray(rec.timings["encoder"]))
        if time.time() - t0 > 10 and i % 50 == 49:
            log(f"    tflite {i + 1}/{n}")
    return hyps, {"encoder_step_ms_p50": float(np.percentile(chunk_ms, 50)) if chunk_ms else None}


# ----------------------------------------------------------------- variants


def _clustered(net, clusters):
    import tensorflow_model_optimization as tfmot

    cl = tfmot.clustering.keras
    kinds = (keras.layers.Dense, keras.layers.LSTM, keras.layers.Conv1D, keras.layers.Embedding)

    def clone(layer):
        if isinstance(layer, kinds):
            return cl.cluster_weights(layer, number_of_clusters=clusters,
                                      cluster_centroids_init=cl.CentroidInitialization.KMEANS_PLUS_PLUS)
        return layer

    # The wrappers hold ``net``'s own layers: their k-means++ init starts
    # from the trained weights, and fine-tuning changes ``net`` in place.
    return keras.models.clone_model(net, clone_function=clone)


def clustered_packed_bytes(stripped, clusters) -> int:
    """Bytes of the clustered kernels as log2(clusters)-bit indices + a float centroid table each,
    plus every other weight as float32."""
    bits = max(1, math.ceil(math.log2(clusters)))
    total = 0
    for w in stripped.weights:
        n = int(np.prod(w.shape))
        if len(np.unique(w.numpy())) <= clusters and n >= 64 and len(w.shape) >= 2:
            total += math.ceil(n * bits / 8) + 4 * clusters
        else:
            total += 4 * n
    return total


# ----------------------------------------------------------------- the run


@dataclasses.dataclass
class Context:
    """Everything the variants of one model share."""

    recipe: dict
    out: Path
    model_name: str
    cfg: object  # ModelConfig with the feature stats
    tokenizer: object
    data: dict  # split name -> train.Split
    float_dir: Path
    log: object
    cluster: object = None  # gq_speech.distribute.Cluster the stages train under (None: one device)
    val: object = None  # the validation-loss split (dev, or dev clean + far field under multicondition)


DEV_SPLITS = ("dev", "dev_far")  # selection looks at these (Keras, greedy)
TEST_SPLITS = ("test", "test_far")  # scored once per final row (Keras and .tflite)
# A variant's keys that do not change what it trains (so not part of its cache key): how it was
# chosen (shown under the tables), its seed list and, per seed, its group and seed (the seed
# itself is in the fine-tune settings, or float_seed).
SPEC_NOTES = ("chosen", "seeds", "group", "seed")


def _fresh_float(ctx: Context):
    """A new float network with the trained float weights (each variant fine-tunes its own copy).

    Raises:
      FileNotFoundError: no float checkpoint.
      train.CheckpointError: the newest float checkpoint is damaged. It is not
        replaced by an older one here, whose float model would be less trained
        than the float row's: ``train_float`` (run again) falls back to that
        one and trains again what was lost.
    """
    from gq_speech import models
    from gq_speech.train import CheckpointError, checkpoint_problem

    net = models.build_training_model(ctx.cfg)
    ckpt = tf.train.Checkpoint(net=net)
    latest = tf.train.latest_checkpoint(str(ctx.float_dir / "ckpt"))
    if latest is None:
        raise FileNotFoundError(f"No float checkpoint in {ctx.float_dir / 'ckpt'}: train the float model first.")
    problem = checkpoint_problem(latest)
    if problem is not None:
        raise CheckpointError(f"Expected a readable float checkpoint to fine-tune from. Received a damaged one: "
                              f"{problem}. To repair it, run the same command again: the float stage resumes "
                              "from its newest readable checkpoint and trains again what was lost.")
    ckpt.restore(latest).expect_partial()
    return net


def prepare(recipe: dict, out: Path, model_name: str, log=print, cluster=None) -> Context:
    """Corpus (+ far field), features and the float model's config with feature stats.

    Under a multi-worker ``cluster`` the chief makes the corpus and the
    feature caches first; the other workers then read them (silently).
    """
    from gq_speech import distribute

    cluster = cluster or distribute.local()
    log = cluster.log(log)
    # A process that runs TensorFlow's multi-worker server must not fork (a
    # forked child can inherit a held lock and hang): the chief makes the
    # built-in corpus and far field in one process (the same files; slower).
    workers = 1 if cluster.workers > 1 else 2
    with cluster.chief_first():
        ctx = _prepare(recipe, out, model_name, log, workers)
    ctx.cluster = cluster
    return ctx


def _prepare(recipe: dict, out: Path, model_name: str, log, workers: int = 2) -> Context:
    from gq_speech import corpus, farfield, features, models
    from gq_speech.text import Tokenizer
    from gq_speech.train import load_split

    c = recipe["corpus"]
    if "librispeech" in c:
        # A LibriSpeech root: the recipe names its subsets for each role.
        corpus_dir = Path(c["librispeech"]).expanduser()
        roles = {"train": c.get("train", "train-clean-100"), "dev": c.get("dev", "dev-clean"),
                 "test": c.get("test", "test-clean")}
        log(f"corpus: LibriSpeech at {corpus_dir}: {roles}")
    else:
        corpus_dir = out / "corpus"
        roles = {"train": "train", "dev": "dev", "test": "test"}
        log(f"corpus: preset {c.get('preset', 'small')}, seed {c.get('seed', 0)} -> {corpus_dir}")
        corpus.make_corpus(corpus_dir, c.get("preset", "small"), seed=c.get("seed", 0), workers=workers, log=log)
    far = recipe.get("farfield", {})
    if far is not None and "librispeech" in c:
        log("farfield: made only for the built-in corpus (it reads its manifest); LibriSpeech is evaluated clean")
        far = None
    if far is not None:
        # Written next to the clean test subset, as <test>_far.
        roles["test_far"] = f"{roles['test']}_far"
        farfield.make_farfield(corpus_dir, roles["test"], roles["test_far"], seed=far.get("seed", 0),
                               workers=workers, log=log)
    mc = multicondition_settings(recipe, model_name=model_name)
    if mc is not None and "librispeech" in c:
        log("multicondition: made only for the built-in corpus; LibriSpeech trains on its own audio")
        mc = None
    if far is not None:
        # Far-field copies with the training room bank (other seeds and wider ranges than the test
        # set's: other rooms): dev's always (far-field selection needs it), train's for multicondition.
        mc_or_default = mc or MULTICONDITION_DEFAULTS
        rooms = dataclasses.replace(farfield.TRAINING_ROOMS, n_rooms=mc_or_default["rooms"])
        seed = mc_or_default["seed"]
        for role, s in (("dev", seed + 1), *((("train", seed),) if mc is not None else ())):
            roles[f"{role}_far"] = f"{roles[role]}_far"
            farfield.make_farfield(corpus_dir, roles[role], roles[f"{role}_far"], seed=s, config=rooms,
                                   workers=workers, log=log)
    cfg = models.load_config(model_name)
    feature_cfg = features.FeatureConfig(n_mels=cfg.n_mels)
    tokenizer = Tokenizer()
    cache = out / "features"
    data = {role: load_split(corpus_dir, subset, feature_cfg, tokenizer, cache, log=log)
            for role, subset in roles.items()}
    val = data["dev"]
    if mc is not None:
        from gq_speech.librispeech import Manifest

        source_of = {e["id"]: e["source_id"] for e in Manifest.load(corpus_dir).entries
                     if e["subset"] == roles["train_far"]}
        data["train"] = data["train"].replace_share(data.pop("train_far"), mc["share"], seed=mc["seed"],
                                                    source_of=source_of)
        val = data["dev"].concat(data["dev_far"])
        log(f"multicondition: {mc['share']:.0%} of the training utterances from {mc['rooms']} simulated rooms; "
            "validation loss on dev clean + far field")
    stats = features.FeatureStats.compute(np.asarray(f, np.float32) for f in data["train"].features)
    cfg = cfg.with_feature_stats(stats)
    log(f"data: train {len(data['train'])} utterances ({data['train'].hours:.2f} h), "
        + ", ".join(f"{role} {len(data[role])}" for role in data if role != "train"))
    return Context(recipe, out, model_name, cfg, tokenizer, data, out / model_name / "float_model", log, val=val)


def _float_key(ctx: Context) -> dict:
    return _float_stage_key(ctx.recipe, ctx.model_name, ctx.cfg.to_dict())


def _float_stage_key(recipe: dict, model_name: str, model: dict) -> dict:
    """The float stage's stamp: its training settings, the model config (``model``, with its feature
    statistics), the corpus and the multicondition settings."""
    key = {"train": stage_settings(recipe, "float", model_name), "model": model, "corpus": recipe["corpus"]}
    if recipe.get("multicondition") is not None:  # absent: the key of runs made before it existed
        key["multicondition"] = multicondition_settings(recipe, model_name=model_name)
    return key


def _variant_key(recipe: dict, model_name: str, spec: dict, float_key: dict) -> dict:
    """A variant's stamp: its spec (without the notes), the float stage's key and, for a fine-tune,
    its settings and the annealing."""
    key = {"spec": {k: v for k, v in spec.items() if k not in SPEC_NOTES}, "float": float_key}
    if spec.get("kind", "qat") != "float":  # the float row does not fine-tune
        key.update(finetune=finetune_settings(recipe, spec, model_name), annealing=recipe.get("annealing", {}))
    return key


def _stamp_form(value, is_policy=False):
    """``value`` with the keys of every JSON object sorted (the order of a
    recipe's settings means nothing), except a policy's (the dict under a
    ``"policy"`` key): its patterns keep their order, because the first match
    wins."""
    if isinstance(value, dict):
        items = value.items() if is_policy else sorted(value.items(), key=lambda kv: kv[0])
        return {k: _stamp_form(v, is_policy=not is_policy and k == "policy") for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_stamp_form(v) for v in value]
    return value


def _stamp_text(key: dict) -> str:
    """A stage's ``settings.json``: ``key`` as JSON, policies in their own order (:func:`_stamp_form`)."""
    return json.dumps(_stamp_form(key), default=str)


def _older_stamp_of(text: str | None, key: dict) -> bool:
    """Whether ``text`` is ``key``'s stamp as an older gq-tf wrote it (every key sorted, a policy's
    patterns included)."""
    return text == json.dumps(key, sort_keys=True, default=str)


def _forget_if_changed(folder: Path, key: dict, log) -> None:
    """Keeps ``folder`` (checkpoints, results) only if it was made with ``key``.

    A recipe edited since the last run (another policy, its patterns in
    another order, other epochs, another model config) must not resume from
    or reuse what the old one left. A stamp written by an older gq-tf, whose
    keys were all sorted (policy patterns included), is accepted when it
    holds the same settings and is written again with the patterns' order.
    """
    import shutil

    stamp = folder / "settings.json"
    text = _stamp_text(key)
    if folder.exists():
        old = stamp.read_text(errors="replace") if stamp.exists() else None
        if old != text and _older_stamp_of(old, key):
            log(f"  {folder}: settings.json written by an older version (sorted, without the order of the policy's "
                "patterns); same settings, kept; written again with the order")
        elif old != text:
            log(f"  {folder}: made with other settings; starting it again")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # All at once: a torn stamp would read as other settings, and the folder would be thrown away.
    atomic_write(stamp, text)


def train_float(ctx: Context) -> dict:
    from gq_speech import models
    from gq_speech.train import TrainConfig, fit

    tcfg = TrainConfig.from_dict(stage_settings(ctx.recipe, "float", ctx.model_name))
    cluster = _cluster(ctx)
    _forget_on_chief(cluster, ctx.float_dir, _float_key(ctx), ctx.log)
    keras.utils.set_random_seed(tcfg.seed)
    with cluster.scope():
        net = models.build_training_model(ctx.cfg)
    on = f" on {cluster.replicas} replicas ({cluster.name})" if cluster.distributed else ""
    ctx.log(f"[{ctx.model_name}] float: {net.count_params():,} parameters, {tcfg.epochs} epochs{on}")
    summary = fit(net, ctx.cfg, ctx.data["train"], ctx.val, tcfg, ctx.float_dir, name="float", log=ctx.log,
                  cluster=cluster)
    summary["parameters"] = int(net.count_params())
    if cluster.is_chief:
        atomic_json(ctx.float_dir / "summary.json", summary)
        atomic_write(ctx.float_dir / "model_config.json", json.dumps(ctx.cfg.to_dict(), indent=1))
    cluster.barrier()  # the float model is on disk before any worker fine-tunes from it
    return summary


def _cluster(ctx: Context):
    from gq_speech import distribute

    return ctx.cluster or distribute.local()


def _forget_on_chief(cluster, folder: Path, key: dict, log) -> None:
    """:func:`_forget_if_changed` by the chief alone (one shared folder), every worker waiting for it."""
    with cluster.chief_first():
        if cluster.is_chief:
            _forget_if_changed(folder, key, log)


def _chief_says(cluster, value: bool, what: str) -> bool:
    """The chief's ``value`` (every worker must call this at the same point); a worker
    that sees otherwise means the run directory is not shared."""
    from gq_speech import distribute

    seen = cluster.gather([float(value)])[:, 0]
    if (seen != seen[0]).any():
        raise distribute.ClusterError(
            f"Expected every worker to see the chief's run directory: {what} is {bool(seen[0])} on the chief and "
            f"{[bool(v) for v in seen]} on the workers. Put the run directory on a file system every machine shares.")
    return bool(seen[0])


def run_variant(ctx: Context, name: str, spec: dict, command: str, dev_only: bool = False) -> dict:
    """Fine-tunes (if needed), exports and evaluates one variant; cached in result.json.

    Every variant is scored (Keras, greedy) on the dev sets, clean and far field, which are what
    selection looks at. ``dev_only``: stop there (no export, the test sets untouched), cached in
    dev.json; a later full run reuses the training.
    """
    import warnings

    import converters
    from gq_speech import deploy, metrics
    from gq_speech.train import TrainConfig, annealing, fit, has_gq

    vdir = ctx.out / ctx.model_name / name
    result_path = vdir / ("dev.json" if dev_only else "result.json")
    key = _variant_key(ctx.recipe, ctx.model_name, spec, _float_key(ctx))
    settings = finetune_settings(ctx.recipe, spec, ctx.model_name)
    cluster = _cluster(ctx)
    _forget_on_chief(cluster, vdir, key, ctx.log)
    if _chief_says(cluster, result_path.exists(), f"{result_path} exists"):
        ctx.log(f"[{ctx.model_name}/{name}] done before: {result_path}")
        return json.loads(result_path.read_text()) if cluster.is_chief else None
    vdir.mkdir(parents=True, exist_ok=True)
    kind = spec.get("kind", "qat")
    fctx = ctx
    if spec.get("float_seed") is not None:  # a float row of another seed: its own float model
        float_settings = {**ctx.recipe["float"], "seed": spec["float_seed"]}
        fctx = dataclasses.replace(ctx, recipe={**ctx.recipe, "float": float_settings},
                                   float_dir=ctx.out / ctx.model_name / f"float_model_s{spec['float_seed']}")
        train_float(fctx)
    with cluster.scope():
        net = _fresh_float(fctx)
    train_seconds = json.loads((fctx.float_dir / "summary.json").read_text())["seconds"]
    row = {"model": ctx.model_name, "variant": name, "kind": kind, "command": command,
           "float_train_seconds": train_seconds, "dir": str(vdir), **{k: spec[k] for k in SPEC_NOTES if k in spec}}
    stream = vdir / "stream"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", converters.NotPackedWarning)
        if kind == "float":
            if not cluster.is_chief:
                return None
            evaluated = net
            export = None if dev_only else deploy.export_streaming(net, ctx.cfg, stream, kind="float")
            row["finetune_seconds"] = 0.0
        elif kind == "qat":
            if "auto" in spec:
                with cluster.chief_first():  # the chief measures the sensitivities, the others read them
                    policy, alloc = auto_policy(ctx, net, spec.get("group", name))
                if cluster.is_chief:
                    atomic_json(vdir / "allocation.json", alloc.to_json())
                row["allocation"] = {"budget_bytes": alloc.budget_bytes, "total_bytes": alloc.total_bytes,
                                     "policy": alloc.policy}
                ctx.log(f"[{ctx.model_name}/{name}] automatic policy:\n{alloc.table()}")
                spec = {**spec, "policy": alloc.policy}
            else:
                policy = parse_policy(spec["policy"])
            tcfg = TrainConfig.from_dict(settings)
            keras.utils.set_random_seed(tcfg.seed)
            with cluster.scope():
                qat = gq_tf.quantize_model(net, policy)
            callbacks = []
            if has_gq(qat):
                steps = tcfg.epochs * tcfg.steps_per_epoch(ctx.data["train"])
                callbacks.append(annealing(steps, **ctx.recipe.get("annealing", {})))
            ctx.log(f"[{ctx.model_name}/{name}] fine-tune {tcfg.epochs} epochs, policy {spec['policy']}")
            s = fit(qat, ctx.cfg, ctx.data["train"], ctx.val, tcfg, vdir, name=name,
                    callbacks=callbacks, log=ctx.log, cluster=cluster)
            if not cluster.is_chief:  # the chief exports and evaluates
                return None
            row["finetune_seconds"] = s["seconds"]
            row["bits"] = average_bits(qat)
            evaluated = qat
            export = None if dev_only else deploy.export_streaming(qat, ctx.cfg, stream, kind="gq")
        elif kind == "cluster":
            import tensorflow_model_optimization as tfmot

            tcfg = TrainConfig.from_dict(settings)
            keras.utils.set_random_seed(tcfg.seed)
            clusters = int(spec.get("clusters", 16))
            with cluster.scope():
                clustered = _clustered(net, clusters)
            ctx.log(f"[{ctx.model_name}/{name}] tfmot clustering, {clusters} clusters, fine-tune {tcfg.epochs} epochs")
            s = fit(clustered, ctx.cfg, ctx.data["train"], ctx.val, tcfg, vdir, name=name, log=ctx.log,
                    cluster=cluster)
            if not cluster.is_chief:
                return None
            row["finetune_seconds"] = s["seconds"]
            evaluated = tfmot.clustering.keras.strip_clustering(clustered)
            export = None if dev_only else deploy.export_streaming(evaluated, ctx.cfg, stream, kind="float")
            row["clustered_packed_bytes"] = clustered_packed_bytes(evaluated, clusters)
            row["bits"] = math.log2(clusters)
        else:
            raise ValueError(f"Variant {name!r}: expected kind float, qat or cluster. Received {kind!r}.")
    dec = KerasDecoder(evaluated, ctx.cfg)
    # A --dev-only run of this same stage (the folder is emptied when its settings change) scored the
    # dev sets already: the full run takes its numbers and transcripts instead of decoding them again.
    scored = vdir / "dev.json"
    dev_keys = [f"wer_keras_{s}" for s in DEV_SPLITS if s in ctx.data] + (
        ["wer_keras_dev_other_audio"] if kind == "float" and "dev" in ctx.data else [])
    before = json.loads(scored.read_text()) if not dev_only and scored.is_file() else {}
    if all(k in before for k in dev_keys) and all((vdir / f"hyps_{s}.txt").is_file()
                                                  for s in DEV_SPLITS if s in ctx.data):
        row.update({k: before[k] for k in dev_keys})
    else:
        _score_dev(ctx, dec, row, vdir, kind)
    if dev_only:
        atomic_json(result_path, row)
        far = f", far {row['wer_keras_dev_far']:.2%}" if "wer_keras_dev_far" in row else ""
        listen = (f"; from other utterances' audio {row['wer_keras_dev_other_audio']:.2%}"
                  if "wer_keras_dev_other_audio" in row else "")
        ctx.log(f"[{ctx.model_name}/{name}] WER dev {row['wer_keras_dev']:.2%} (Keras){far}{listen}")
        return row
    row["file_bytes"] = export.total_bytes
    row["packed_bytes"] = row.get("clustered_packed_bytes", export.total_bytes)
    ev = ctx.recipe.get("eval", {})
    for split in [s for s in TEST_SPLITS if s in ctx.data]:
        refs = ctx.data[split].texts
        hyps = dec.transcribe(ctx.data[split], ctx.tokenizer)
        row[f"wer_keras_{split}"] = metrics.wer(refs, hyps)
        limit = ev.get("tflite_utterances")
        t_hyps, timing = tflite_transcribe(stream, ctx.data[split], ctx.tokenizer, limit=limit, log=ctx.log)
        row[f"wer_tflite_{split}"] = metrics.wer(refs[:len(t_hyps)], t_hyps)
        row[f"tflite_utterances_{split}"] = len(t_hyps)
        row[f"keras_on_same_{split}"] = metrics.wer(refs[:len(t_hyps)], hyps[:len(t_hyps)])
        atomic_write(vdir / f"hyps_{split}.txt", "".join(f"{i}\t{r}\t{h}\t{t}\n" for i, r, h, t in zip(
            ctx.data[split].ids, refs, hyps, t_hyps + [""] * (len(hyps) - len(t_hyps)))))
    row["stream_dir"] = str(stream)
    atomic_json(result_path, row)
    far = f", far {row['wer_tflite_test_far']:.2%}" if "wer_tflite_test_far" in row else ""
    ctx.log(f"[{ctx.model_name}/{name}] WER test {row['wer_tflite_test']:.2%} (.tflite) / "
            f"{row['wer_keras_test']:.2%} (Keras){far}; {row['file_bytes'] / 1024:.0f} KB")
    return row


def _score_dev(ctx: Context, dec, row: dict, vdir: Path, kind: str) -> None:
    """Keras WER of ``dec`` on the dev sets into ``row`` and ``hyps_<dev set>.txt``; for a float row
    also the dev WER when each utterance is decoded from another one's audio (does the model listen?
    A recognizer that leans on its prediction network alone scores about the same as with its own)."""
    from gq_speech import metrics

    for split in [s for s in DEV_SPLITS if s in ctx.data]:
        refs = ctx.data[split].texts
        hyps = dec.transcribe(ctx.data[split], ctx.tokenizer)
        row[f"wer_keras_{split}"] = metrics.wer(refs, hyps)
        atomic_write(vdir / f"hyps_{split}.txt", "".join(f"{i}\t{r}\t{h}\n" for i, r, h in zip(
            ctx.data[split].ids, refs, hyps)))
    if kind == "float" and "dev" in ctx.data:
        dev = ctx.data["dev"]
        other = dataclasses.replace(dev, features=dev.features[1:] + dev.features[:1])
        row["wer_keras_dev_other_audio"] = metrics.wer(dev.texts, dec.transcribe(other, ctx.tokenizer))


def _calibration(split, n: int, seed: int = 0):
    """``n`` utterances of ``split`` drawn at random (not its first ones, which may share a voice)."""
    from gq_speech.train import Split

    pick = sorted(np.random.default_rng(seed).choice(len(split), size=min(n, len(split)), replace=False))
    return Split(f"{split.name}_calibration", [split.ids[i] for i in pick], [split.texts[i] for i in pick],
                 [split.features[i] for i in pick], [split.labels[i] for i in pick])


def auto_policy(ctx: Context, net, name: str):
    """Variant ``name``'s automatic policy: ``gq_tf.allocate_bits`` on the float network.

    The sensitivities (RNN-T loss on calibration utterances of the training
    split, per kernel and candidate bits) are measured once per float model
    and settings and kept in ``<model>/sensitivity/``, so several budgets
    cost one measurement. The budget is on the bytes the exporter writes
    (``converters.deployed_sizes``).

    Returns:
      (the policy for ``gq_tf.quantize_model``, the ``gq_tf.allocation.Allocation``).
    """
    import converters
    from gq_speech.recipe import auto_settings
    from gq_tf import allocation

    auto = auto_settings(ctx.recipe, name)
    sizes = converters.deployed_sizes
    if "budget_kb" in auto:
        budget = int(round(auto["budget_kb"] * 1024))
    elif "budget_bits" in auto:
        sizes = allocation.bit_sizes
        weights = sum(k.size for k in allocation.kernels(net))
        budget = int(weights * auto["budget_bits"] // 8)
        ctx.log(f"[{ctx.model_name}/{name}] budget: {auto['budget_bits']} bits a weight on average "
                f"({budget:,} bytes of indices for {weights:,} weights)")
    else:
        like = parse_policy(ctx.recipe["variants"][auto["budget_like"]]["policy"])
        budget = allocation.policy_nbytes(net, like, sizes=converters.deployed_sizes)
        ctx.log(f"[{ctx.model_name}/{name}] budget: {budget:,} bytes, the deployed kernels of variant "
                f"{auto['budget_like']!r}")
    sens = measure_sensitivity(ctx, net, auto, name)
    alloc = gq_tf.allocate_bits(net, None, budget_bytes=budget, candidates=auto["candidates"],
                                min_bits=auto["min_bits"], max_bits=auto["max_bits"], fixed=auto["fixed"],
                                keep_float=auto["keep_float"], sizes=sizes, sensitivities=sens, progress=False)
    return alloc.policy, alloc


def measure_sensitivity(ctx: Context, net, auto: dict, name: str):
    """``gq_tf.allocation.sensitivity`` of the float network ``net`` under the
    settings ``auto`` (``recipe.auto_settings``: candidates, method, calibration,
    batch_size): the RNN-T loss on calibration utterances of the training
    split. Kept in ``<model>/sensitivity/<hash of the float model and settings>.json``
    and read from there when it was measured before."""
    import hashlib

    from gq_speech.train import RNNTTrainer, tf_batches
    from gq_tf import allocation

    key = {"float": _float_key(ctx), **{k: auto[k] for k in ("candidates", "method", "calibration", "batch_size")}}
    digest = hashlib.sha256(_stamp_text(key).encode()).hexdigest()[:16]
    path = ctx.out / ctx.model_name / "sensitivity" / f"{digest}.json"
    if path.exists():
        ctx.log(f"[{ctx.model_name}/{name}] sensitivities measured before: {path}")
        return allocation.load_sensitivity(path)
    trainer = RNNTTrainer(net, ctx.cfg)
    data = tf_batches(_calibration(ctx.data["train"], auto["calibration"]), auto["batch_size"], shuffle=False)
    ctx.log(f"[{ctx.model_name}/{name}] measuring sensitivities ({auto['method']}, {auto['calibration']} "
            "calibration utterances)")
    sens = allocation.sensitivity(net, data, loss_fn=lambda m, batch: trainer._loss(batch, training=False)[0],
                                  candidates=auto["candidates"], method=auto["method"],
                                  progress=lambda line: ctx.log(f"  {line}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(path, sens.to_json())
    return sens


def average_bits(qat) -> float:
    """Weight-count-weighted mean bits over the quantized kernels."""
    from gq_tf.codebooks import quantized_weights

    total = bits = 0
    for qw in quantized_weights(qat):
        n = int(np.prod(qw.variable.shape))
        total += n
        bits += n * qw.quantizer.bits
    return bits / total if total else float("nan")


def _bench_name(row: dict) -> str:
    """A row's model name in the benchmark: ``<model>.<variant>``, one file name
    (a recipe may name its model by a config file's path)."""
    return f"{row['model']}.{row['variant']}".replace(os.sep, "_")


def bench(rows: list[dict], out: Path, runs: int, log=print) -> None:
    """Host latency of every variant's encoder chunk step and prediction step with
    ``android_bench.benchmark(target="host")`` (interleaved, one call per graph); fills the rows."""
    from android_bench import BenchError, benchmark

    for part in ("encoder", "prediction"):
        folder = out / "bench" / part
        results = folder / "results.json"
        names = {_bench_name(row) for row in rows}
        if results.exists() and names - {m["name"] for m in json.loads(results.read_text())["models"]}:
            results.unlink()  # variants were added since: measure all again, interleaved
        if not results.exists():
            links = folder / "models"
            links.mkdir(parents=True, exist_ok=True)
            paths = []
            for row in rows:
                link = links / f"{_bench_name(row)}.tflite"
                if not link.exists():
                    os.symlink(Path(row["stream_dir"], f"{part}.tflite").resolve(), link)
                paths.append(str(link))
            log(f"benchmark ({part} step, android_bench on the host, {runs} runs each, interleaved)")
            import shutil

            shutil.rmtree(folder / "run", ignore_errors=True)
            try:
                done = benchmark(paths, target="host", runs=runs, out_dir=folder / "run")
            except BenchError as e:
                log(f"  android_bench failed: {e}")
                continue
            (folder / "android_bench.txt").write_text(done.table() + "\n")
            if done.exit_status != 0:
                why = done.error or f"failed: {', '.join(done.failures)}"
                log(f"  android_bench ended with status {done.exit_status} ({why}); see {folder / 'run'}")
                continue
            os.replace(folder / "run" / "results.json", results)
        measured = {m["name"]: m["summary"] for m in json.loads(results.read_text())["models"]}
        for row in rows:
            summary = measured.get(_bench_name(row))
            if summary:
                row[f"{part}_p50_ms"] = summary["p50_us"] / 1000
                row[f"{part}_p90_ms"] = summary["p90_us"] / 1000


def _stream_key(mine: list[dict], n: int, memory: bool) -> dict:
    """What a cached streaming benchmark must match: the variants, their exports (by the time their
    manifest was written), the number of utterances and whether memory was measured."""
    from gq_speech.deploy import MANIFEST

    exports = {}
    for row in mine:
        manifest = Path(row["stream_dir"], MANIFEST)
        exports[row["variant"]] = [str(row["stream_dir"]), manifest.stat().st_mtime_ns if manifest.exists() else None]
    return {"exports": exports, "utterances": n, "memory": memory}


def stream_bench(rows: list[dict], out: Path, utterances: dict, *, memory=True, log=print) -> dict:
    """Whole-recognizer streaming latency of every variant (``streambench.bench_streaming``), per model.

    Each model's variants stream the same test utterances through their
    deployed ``StreamingRecognizer`` (1 thread, interleaved); each variant's
    peak memory is measured in a child process. Results are cached in
    ``out/streambench/<model>.json`` (measured again only when the variants,
    their exports or the number of utterances changed). Fills the rows'
    ``stream_*`` keys, and ``stream_transcript_mismatches``: how many of the
    benchmark's transcripts differ from the ``.tflite`` WER path's (in
    ``hyps_test.txt``; the same recognizer, so 0).

    Args:
      rows: the table rows (``stream_dir`` of each).
      out: the run directory.
      utterances: {model: [feature arrays]}; a model without any is skipped.
      memory: measure the peak memory.

    Returns:
      {model: the bench_streaming result}; the ratios are against
      ``uniform8`` (TFLite's int8 builtins) or ``int8`` where the model
      has one, else its first variant.
    """
    from gq_speech import streambench
    from gq_speech.text import Tokenizer

    tokenizer = Tokenizer()
    results = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        feats = list(utterances.get(model) or [])
        if not feats:
            continue
        path = out / "streambench" / f"{model}.json"
        key = _stream_key(mine, len(feats), memory)
        res = json.loads(path.read_text()) if path.exists() else None
        if res is None or res.get("key") != key:
            names = [r["variant"] for r in mine]
            baseline = next((b for b in ("uniform8", "int8") if b in names), names[0])
            log(f"streaming benchmark ({model}: {len(feats)} test utterances x {len(names)} variants, "
                f"whole recognizer, 1 thread, interleaved; baseline {baseline})")
            res = {"key": key, **streambench.bench_streaming({r["variant"]: r["stream_dir"] for r in mine}, feats,
                                                             baseline=baseline, memory=memory, log=log)}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_json(path, res)
        results[model] = res
        for row in mine:
            v = res["variants"].get(row["variant"])
            if v is None:
                continue
            for key_ in ("chunk_p50_ms", "chunk_p90_ms", "upl_p50_ms", "upl_p90_ms", "rtf", "mem_mb"):
                row[f"stream_{key_}"] = v[key_]
            row["stream_utterances"] = v["utterances"]
            hyps_file = Path(row["stream_dir"]).parent / "hyps_test.txt"
            if hyps_file.exists():
                deployed = [line.split("\t")[3] for line in hyps_file.read_text().splitlines()]
                # Past tflite_utterances_test the file holds "" (not decoded on .tflite).
                deployed = deployed[:row.get("tflite_utterances_test", len(deployed))]
                pairs = [(tokenizer.decode(t), h) for t, h in zip(v["tokens"], deployed)]
                row["stream_transcript_mismatches"] = sum(a != b for a, b in pairs)
                if row["stream_transcript_mismatches"]:
                    log(f"  {model}/{row['variant']}: {row['stream_transcript_mismatches']} of {len(pairs)} "
                        "streaming-benchmark transcripts differ from the .tflite WER path's")
    return results


COLUMNS = (
    ("variant", "variant", "{}"),
    ("bits", "bits", "{:.2f}"),
    ("wer_keras_test", "WER clean Keras", "{:.2%}"),
    ("wer_tflite_test", "WER clean .tflite", "{:.2%}"),
    ("wer_keras_test_far", "WER far Keras", "{:.2%}"),
    ("wer_tflite_test_far", "WER far .tflite", "{:.2%}"),
    ("packed_bytes", "size KB", "{:.0f}"),
    ("encoder_p50_ms", "enc step P50 ms", "{:.3f}"),
    ("encoder_p90_ms", "enc step P90 ms", "{:.3f}"),
    ("prediction_p50_ms", "pred step P50 ms", "{:.3f}"),
    ("stream_chunk_p50_ms", "chunk P50 ms", "{:.3f}"),
    ("stream_chunk_p90_ms", "chunk P90 ms", "{:.3f}"),
    ("stream_upl_p50_ms", "UPL ms", "{:.3f}"),
    ("stream_rtf", "RTF", "{:.4f}"),
    ("stream_mem_mb", "mem MB", "{:.1f}"),
    ("train_minutes", "train min", "{:.1f}"),
)


def _cell(row, key, fmt):
    if key == "packed_bytes":
        v = row.get(key)
        return "-" if v is None else fmt.format(v / 1024)
    if key == "train_minutes":
        return fmt.format((row.get("float_train_seconds", 0) + row.get("finetune_seconds", 0)) / 60)
    v = row.get(key)
    return "-" if v is None else fmt.format(v)


def table(rows: list[dict], markdown=True) -> str:
    """The comparison table (one row per model and variant)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        cells = [[_cell(r, k, f) for k, _, f in COLUMNS] for r in mine]
        heads = [h for _, h, _ in COLUMNS]
        if markdown:
            out += [f"**{model}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            out += ["| " + " | ".join(c) + " |" for c in cells]
            out.append("")
        else:
            widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
            out.append(model)
            out.append("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
            out += ["  ".join(c.rjust(w) for c, w in zip(cs, widths)) for cs in cells]
            out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """A row of panels per model: WER (.tflite) against packed size on each test condition, each WER
    with its 95% interval as an error bar (``statistics``), and the encoder chunk step's latency
    (P50, bar up to P90) against size. Seeds of one variant share its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    panels = [(key, split, f"{name} test: WER % (.tflite, 95% CI)", color) for key, split, name, color in
              (("wer_tflite_test", "test", "clean", "C0"), ("wer_tflite_test_far", "test_far", "far-field", "C3"))
              if any(r.get(key) is not None for r in rows)]
    if any(r.get("encoder_p50_ms") is not None for r in rows):
        panels.append(("encoder_p50_ms", None, "encoder chunk step ms (P50, bar to P90)", "C2"))
    fig, axes = plt.subplots(len(models), max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.8 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model and r.get("packed_bytes")]
        for j, (key, split, name, color) in enumerate(panels):
            ax = axes[i][j]
            labelled = set()
            for k, r in enumerate(x for x in mine if x.get(key) is not None):
                x = r["packed_bytes"] / 1024
                if split is None:
                    y = r[key]
                    p90 = r.get("encoder_p90_ms", y)
                    err = [[0.0], [max(p90 - y, 0.0)]]
                else:
                    y = 100 * r[key]
                    w = r.get("stats", {}).get(split, {}).get("wer")
                    err = [[max(y - 100 * w["low"], 0.0)], [max(100 * w["high"] - y, 0.0)]] if w else None
                ax.errorbar(x, y, yerr=err, fmt="o", color=color, ecolor=color, elinewidth=1, capsize=3, ms=4)
                label = r.get("group", r["variant"])
                if label not in labelled:  # one label per variant, alternating above/below
                    labelled.add(label)
                    ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4 if k % 2 == 0 else -10),
                                textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("deployed size (KB, log scale)")
            ax.set_title(f"{model}: {name}", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    plt.close(fig)


STAT_SPLITS = (("test", "clean"), ("test_far", "far"))
DEV_STAT_SPLITS = (("dev", "dev clean"), ("dev_far", "dev far"))
RESAMPLES = 2000


def _scored_hyps(row: dict, split: str):
    """(ids, references, hypotheses) a row's WER on ``split`` was computed from, read back from its
    ``hyps_<split>.txt``: the .tflite transcripts of a test set, the Keras ones of a dev set; or None."""
    folder = row.get("dir") or (str(Path(row["stream_dir"]).parent) if row.get("stream_dir") else None)
    if folder is None:
        return None
    path = Path(folder) / f"hyps_{split}.txt"
    if not path.is_file():
        return None
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    if split in TEST_SPLITS:
        n = row.get(f"tflite_utterances_{split}")
        if not n or len(lines) < n or any(len(f) < 4 for f in lines[:n]):
            return None
        return [f[0] for f in lines[:n]], [f[1] for f in lines[:n]], [f[3] for f in lines[:n]]
    if not lines or any(len(f) < 3 for f in lines):
        return None
    return [f[0] for f in lines], [f[1] for f in lines], [f[2] for f in lines]


def statistics(rows: list[dict], splits=STAT_SPLITS + DEV_STAT_SPLITS) -> None:
    """Adds ``row["stats"][split]`` to each row: its WER (.tflite on a test set, Keras on a dev set)
    with a 95% bootstrap interval over utterances, and (not for the float row) its relative
    difference to the model's float row with a paired bootstrap interval (``metrics.wer_interval``,
    ``metrics.relative_difference``; 2,000 resamples, seed 0). Rows without their transcripts on disk
    are left as they are."""
    from gq_speech import metrics

    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r.get("kind") == "float"), None)
        for r in mine:
            for split, _ in splits:
                got = _scored_hyps(r, split)
                if got is None:
                    continue
                _, refs, hyps = got
                stat = {"wer": metrics.wer_interval(refs, hyps, resamples=RESAMPLES)}
                base_got = _scored_hyps(base, split) if base is not None and base is not r else None
                if base_got is not None and base_got[1] == refs:
                    stat["vs_float"] = metrics.relative_difference(refs, base_got[2], hyps, resamples=RESAMPLES)
                r.setdefault("stats", {})[split] = stat


def statistics_table(rows: list[dict], splits=STAT_SPLITS) -> str:
    """Markdown: per model, each variant's WER [95% CI] and relative difference to float [95% CI] on ``splits``."""
    def pct(x):
        return f"{100 * x:.2f}"

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and any(sp in r.get("stats", {}) for sp, _ in splits)]
        if not mine:
            continue
        heads = ["variant"]
        for _, name in splits:
            heads += [f"WER {name} % [95% CI]", "vs float, relative % [95% CI]"]
        out += [f"**{model}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in mine:
            cells = [r["variant"]]
            for split, _ in splits:
                st = r["stats"].get(split)
                if st is None:
                    cells += ["-", "-"]
                    continue
                w = st["wer"]
                cells.append(f"{pct(w['wer'])} [{pct(w['low'])}, {pct(w['high'])}]")
                d = st.get("vs_float")
                cells.append("-" if d is None or d["relative"] is None else
                             f"{100 * d['relative']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def seeds_table(rows: list[dict], splits=STAT_SPLITS) -> str:
    """Markdown: per model, each variant run with several seeds: its WER mean, standard deviation and
    range over the seeds, and its relative difference to float (the first float row) per seed."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        groups = {}
        for r in rows:
            if r["model"] == model and "group" in r:
                groups.setdefault(r["group"], []).append(r)
        groups = {g: rs for g, rs in groups.items() if len(rs) > 1}
        if not groups:
            continue
        heads = ["variant", "seeds"]
        for _, name in splits:
            heads += [f"WER {name} %: mean ± SD (range)", f"vs float {name}, relative % per seed"]
        out += [f"**{model}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for g, rs in groups.items():
            cells = [g, ", ".join(str(r.get("seed")) for r in rs)]
            for split, _ in splits:
                wers = [100 * r["stats"][split]["wer"]["wer"] for r in rs if split in r.get("stats", {})]
                if len(wers) < 2:
                    cells += ["-", "-"]
                    continue
                cells.append(f"{np.mean(wers):.2f} ± {np.std(wers, ddof=1):.2f} ({min(wers):.2f}-{max(wers):.2f})")
                rel = [r["stats"][split].get("vs_float") for r in rs if split in r.get("stats", {})]
                rel = [d["relative"] for d in rel if d and d.get("relative") is not None]
                cells.append(", ".join(f"{100 * x:+.1f}" for x in rel) + (f" (mean {100 * np.mean(rel):+.1f})"
                                                                          if len(rel) > 1 else "") if rel else "-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def engine_table(rows: list[dict], corpus_dir: Path, splits=STAT_SPLITS) -> str:
    """Markdown: per model, each variant's WER on ``splits`` per TTS engine of the utterances' voices
    (the built-in corpus's manifest in ``corpus_dir``): the unseen voices of one engine are not as hard
    as another's. Empty when there is no such manifest or no transcripts on disk."""
    from gq_speech import metrics
    from gq_speech.librispeech import Manifest

    try:
        entries = Manifest.load(corpus_dir).entries
    except FileNotFoundError:
        return ""
    engine = {e["id"]: e.get("engine") for e in entries}
    voices, count = {}, {}  # (split, engine) -> voices, utterances
    for e in entries:
        voices.setdefault((e["subset"], e.get("engine")), set()).add(e.get("voice"))
        count[(e["subset"], e.get("engine"))] = count.get((e["subset"], e.get("engine")), 0) + 1
    engines = sorted({x for x in engine.values() if x})
    if not engines:
        return ""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        scored = {(id(r), split): _scored_hyps(r, split) for r in mine for split, _ in splits}  # each file read once
        used = [s for s, _ in splits if any(scored[(id(r), s)] for r in mine)]
        table_rows = []
        for r in mine:
            cells = [r["variant"]]
            for split in used:
                got = scored[(id(r), split)]
                for eng in engines:
                    pairs = [(ref, hyp) for i, ref, hyp in zip(*got) if engine.get(i) == eng] if got else []
                    cells.append(f"{100 * metrics.wer(*zip(*pairs)):.1f}" if pairs else "-")
            table_rows.append("| " + " | ".join(cells) + " |")
        if not used:
            continue
        names = dict(splits)
        def head(split, eng):
            n = len(voices.get((split, eng), ()))
            return f"{names[split]}: {eng} ({n} voice{'' if n == 1 else 's'}, {count.get((split, eng), 0)} utt.)"

        heads = ["variant"] + [head(s, eng) for s in used for eng in engines]
        out += [f"**{model}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads), *table_rows, ""]
    return "\n".join(out)


def chosen_notes(rows: list[dict]) -> str:
    """Markdown list: how each variant was chosen (its recipe's ``"chosen"``), one line per variant."""
    seen, lines = set(), []
    for r in rows:
        name = r.get("group", r["variant"])
        if r.get("chosen") and name not in seen:
            seen.add(name)
            lines.append(f"- `{name}`: {r['chosen']}")
    return "\n".join(lines)


def write_dev_report(rows: list[dict], out: Path, recipe: dict, command: str) -> None:
    """``dev_results.json`` and ``dev_results.md``: the selection view (dev sets only, Keras)."""
    statistics(rows, DEV_STAT_SPLITS)
    atomic_json(out / "dev_results.json", {"recipe": recipe, "command": command, "rows": rows})
    atomic_write(out / "dev_results.md", "\n".join([
        f"# Dev results: recipe `{recipe['name']}`", "", f"Command: `{command}`", "",
        "Keras WER (greedy) on the dev sets, clean and far field (unseen voices, the training room bank's "
        f"distribution), with 95% bootstrap intervals ({RESAMPLES:,} resamples, seed 0) and each variant's "
        "paired relative difference to float. The test sets were not touched.", "",
        statistics_table(rows, DEV_STAT_SPLITS), seeds_table(rows, DEV_STAT_SPLITS)]))


def write_reports(rows: list[dict], out: Path, recipe: dict, command: str, streaming: dict | None = None,
                  stem: str = "results", preface: str | None = None) -> None:
    """Writes ``<stem>.json``, ``<stem>.png`` and ``<stem>.md`` (default ``results``); ``streaming``:
    :func:`stream_bench`'s results, shown per model with their ratios; ``preface``: a paragraph
    under the title."""
    from gq_speech import streambench

    statistics(rows)
    atomic_json(out / f"{stem}.json", {"recipe": recipe, "command": command, "rows": rows})
    plot(rows, out / f"{stem}.png")
    lines = [f"# ASR results: recipe `{recipe['name']}`", "", *([preface, ""] if preface else []),
             f"Command: `{command}`", "",
             "WER on the clean and far-field test sets (unseen voices and sentences), in Keras and on "
             "the deployed streaming `.tflite` graphs (LiteRT + the GQ delegate); size = the three "
             "step graphs' bytes (for clustering: as 4-bit indices + centroids); latency = "
             "android_bench `--host` P50/P90 of one encoder chunk step and one prediction step; "
             "chunk P50/P90, UPL, RTF, mem = the whole streaming recognizer on test utterances "
             "(below); train min = float training + the variant's fine-tune.", "",
             table(rows), "", f"![WER vs size]({stem}.png)", ""]
    stats = statistics_table(rows)
    if stats:
        lines += ["## How sure: intervals", "",
                  f"WER of the `.tflite` transcripts with its 95% confidence interval (bootstrap over test "
                  f"utterances, {RESAMPLES:,} resamples, seed 0), and each variant's relative difference to the "
                  "float model's WER on the same utterances with a paired bootstrap 95% interval (both "
                  "systems scored on the same resampled utterances each time). A difference whose interval "
                  "holds 0 is not shown by this test set.", "", stats]
    seeds = seeds_table(rows)
    if seeds:
        lines += ["## Seeds", "", "Variants fine-tuned (float: trained) with several seeds, on the test sets: the "
                  "spread of one variant's WER over seeds, and its difference to float per seed.", "", seeds]
    engines = engine_table(rows, out / "corpus")
    if engines:
        lines += ["## By voice engine", "", "WER % of the `.tflite` transcripts on each test set, per TTS engine of "
                  "the utterances' voices (all unseen in training; how many in the heading).", "", engines]
    dev = statistics_table(rows, DEV_STAT_SPLITS)
    if dev:
        lines += ["## Dev sets (selection)", "", "Keras WER on the dev sets, clean and far field, with the same "
                  "intervals: what the policies, budgets and fine-tune lengths were chosen on.", "", dev]
    chosen = chosen_notes(rows)
    if chosen:
        lines += ["## How each row was chosen", "", chosen, ""]
    if streaming:
        lines += ["## Streaming recognizer (what a user feels)", "",
                  "Each variant's deployed `StreamingRecognizer` (greedy decoding, 1 thread) on the same test "
                  "utterances, fed one chunk at a time, variants interleaved per utterance. chunk = the "
                  "processing one chunk triggers (encoder step, prediction and joint calls, decoding); UPL = "
                  "user-perceived latency, end of audio to final transcript (P50/P90 over utterances); RTF = "
                  "processing time / audio time; mem = the recognizer's peak RSS growth in a fresh process. "
                  "In brackets: the ratio to the baseline variant.", ""]
        for model, res in streaming.items():
            lines += [f"**{model}** ({res['settings']['utterances']} utterances, baseline {res['baseline']})", "",
                      streambench.table(res), ""]
    atomic_write(out / f"{stem}.md", "\n".join(lines))


def _stage_matches(vdir: Path, recipe: dict, model_name: str, spec: dict) -> bool:
    """Whether the variant folder's ``settings.json`` was written for this recipe's settings of it
    (its spec, fine-tune and annealing, the float stage's training, corpus and multicondition; the
    model config is not compared, since its feature statistics come from the data)."""
    try:
        text = (vdir / "settings.json").read_text()
        model = (json.loads(text).get("float") or {}).get("model")
    except (OSError, ValueError, AttributeError):
        return False
    key = _variant_key(recipe, model_name, spec, _float_stage_key(recipe, model_name, model))
    return text == _stamp_text(key) or _older_stamp_of(text, key)


def report_so_far(recipe_name, out, *, models=None, variants=None, log=print) -> list[dict]:
    """Writes ``results_so_far.md`` (``.json``, ``.png``) from the variants a run of the recipe into
    ``out`` has finished so far (their ``result.json``, else a ``--dev-only`` run's ``dev.json``),
    with the same tables and intervals as ``results.md``; returns those rows.

    Trains, exports and benchmarks nothing, and only reads the run's files, so it is safe beside
    the run while it goes on: the latency and streaming columns stay empty until the run's own
    benchmark at its end. A variant folder made with other settings than the recipe's now counts
    as not done (the run will make it again).
    """
    recipe = load_recipe(recipe_name)
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"Expected a run directory of recipe {recipe['name']!r}. Received {out}, which "
                                "does not exist.")
    models = list(models or recipe["models"])
    unknown = [m for m in models if m not in recipe["models"]]
    if unknown:
        raise ValueError(f"Expected models of recipe {recipe['name']!r} ({recipe['models']}). Received {unknown}.")
    rows, waiting = [], []
    for model_name in models:
        for name, spec in variants_of(recipe, model_name, variants):
            vdir = out / model_name / name
            path = next((p for p in (vdir / "result.json", vdir / "dev.json") if p.is_file()), None)
            if path is None or not _stage_matches(vdir, recipe, model_name, spec):
                waiting.append(f"{model_name}/{name}")
                continue
            rows.append({**json.loads(path.read_text()), "dir": str(vdir)})
    total = len(rows) + len(waiting)
    if not rows:
        log(f"{out}: none of the {total} runs of recipe {recipe['name']!r} has finished yet; nothing written")
        return rows
    words = [str(recipe_name), "--out", str(out)]
    dev_rows = sum("wer_keras_test" not in r for r in rows)
    preface = (f"**So far: {len(rows)} of {total} runs** ({time.strftime('%Y-%m-%d %H:%M')}"
               + (f"; {dev_rows} scored on the dev sets only" if dev_rows else "")
               + "). Latency, UPL and memory come with the run's benchmark at its end (results.md). Not done yet: "
               + (", ".join(waiting) if waiting else "none") + ".")
    write_reports(rows, out, recipe, "gq-tf asr run " + shlex.join(words), stem="results_so_far", preface=preface)
    log(f"{len(rows)} of {total} runs done; wrote {out / 'results_so_far.md'}")
    return rows


# A line of TensorFlow's C++ logging (absl): "I0000 00:00:1796477870.417951   17340 loader.cc:236] ...".
_TF_NATIVE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] ")


def _worker_setup(cpus) -> None:
    """In a worker process before it starts: its CPUs, and death with its parent (Linux
    PR_SET_PDEATHSIG), so a killed run leaves no worker writing on behind the next attempt."""
    import ctypes
    import signal

    os.sched_setaffinity(0, cpus)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed parent
        pass


def _run_workers(recipe_name, out: Path, tasks: list[tuple[str, list[str]]], jobs: int, log,
                 dev_only: bool = False) -> None:
    """Runs ``tasks`` (``(label, the models/variants arguments)``) as worker processes, ``jobs`` at a time.

    Small LSTM/attention steps use a second core poorly (docs/ASR.md: the
    full RNN-T's step took 0.48-0.55 s on one core beside the Conformer, and
    0.58-0.96 s on both cores shared with other jobs), so models (or, in a
    one-model recipe, its fine-tunes) train side by side. Each worker gets its
    own CPUs (sched_setaffinity), writes ``<out>/logs/<label>.log`` and skips
    the benchmark and the reports, which the caller does once every row is on
    disk.
    """
    import subprocess
    import sys
    import threading

    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // jobs)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(tasks), [], {}  # failed: label -> exit code

    def pump(label, proc, logfile):
        with open(logfile, "a") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                # TensorFlow's own C++ log lines (a screen of them per .tflite export) stay in the log file.
                if not _TF_NATIVE_LOG.match(line):
                    log(f"[{label}] {line.rstrip()}")

    while pending or running:
        while pending and len(running) < jobs:
            label, args = pending.pop(0)
            free = [c for c in cpus if all(c not in r[3] for r in running)]
            mine = set(free[:per]) or set(cpus)
            cmd = [sys.executable, "-m", "gq_speech.cli", "run", str(recipe_name), "--out", str(out), *args,
                   "--worker"] + (["--dev-only"] if dev_only else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=lambda cpus=mine: _worker_setup(cpus))
            logfile = out / "logs" / f"{label.replace('/', '.')}.log"
            t = threading.Thread(target=pump, args=(label, proc, logfile), daemon=True)
            t.start()
            log(f"[{label}] worker pid {proc.pid} on CPU {sorted(mine)}, log {logfile}")
            running.append((label, proc, t, mine, logfile))
        time.sleep(1.0)
        for r in [r for r in running if r[1].poll() is not None]:
            running.remove(r)
            r[2].join()
            if r[1].returncode != 0:
                failed[r[0]] = (r[1].returncode, r[4])
    if failed:
        named = [f"{label} (exit {failed[label][0]}, log {failed[label][1]})" for label, _ in tasks if label in failed]
        raise RuntimeError(f"Workers failed: {', '.join(named)}. What they finished is kept; "
                           "run the same command again to resume.")


def check_global_batches(recipe: dict, models, variants, replicas: int) -> None:
    """Every training stage's batch size (the global batch) splits evenly over ``replicas``.

    Raises:
      ValueError: naming the stages that do not, before anything is trained.
    """
    from gq_speech.train import TrainConfig

    bad = []
    for model_name in models:
        stages = [("float", stage_settings(recipe, "float", model_name))]
        stages += [(name, finetune_settings(recipe, spec, model_name))
                   for name, spec in variants_of(recipe, model_name, variants) if spec.get("kind", "qat") != "float"]
        sizes = [(name, TrainConfig.from_dict(st).batch_size) for name, st in stages]
        bad += [f"{model_name}/{name}: {size}" for name, size in sizes if size % replicas]
    if bad:
        raise ValueError(f"Expected every batch size (the global batch) to be divisible by the {replicas} replicas. "
                         f"Received {', '.join(bad)}: change batch_size in the recipe, or the number of devices.")


def run_recipe(recipe_name, out, *, models=None, variants=None, jobs=None, reports=True, log=print,
               cluster=None, dev_only=False) -> list[dict]:
    """Runs (or resumes) a recipe; returns the table rows.

    ``dev_only``: trains and scores the variants on the dev sets only (selection: the test sets are
    not touched, nothing is exported or benchmarked) and writes ``dev_results.md``; the same command
    without it later reuses every trained stage.

    ``jobs`` models are trained at once in worker processes (default: one per
    CPU, at most the number of models; see :func:`_run_workers`); a one-model
    recipe trains its float model first and then fine-tunes ``jobs`` variants
    at once. ``reports=False`` (a worker) skips the benchmark and the report
    files.

    ``cluster`` (``gq_speech.distribute.make_cluster``): every training stage
    runs under its strategy, one model after the other (``jobs`` is 1). With
    several workers each runs this same call; the chief exports, evaluates,
    benchmarks and writes the reports, and gets the rows (the others get []).
    """
    from gq_speech import distribute

    cluster = cluster or distribute.local()
    recipe = load_recipe(recipe_name)
    # Batches of different lengths retrace the decoders a few times by design.
    tf.get_logger().setLevel("ERROR")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = [str(recipe_name), "--out", str(out)] + (["--dev-only"] if dev_only else [])
    command = "gq-tf asr run " + shlex.join(words)
    models = list(models or recipe["models"])
    unknown = [m for m in models if m not in recipe["models"]]
    if unknown:
        raise ValueError(f"Expected models of recipe {recipe['name']!r} ({recipe['models']}). Received {unknown}.")
    if jobs is not None and jobs < 1:
        raise ValueError(f"Expected --jobs >= 1. Received {jobs}.")
    if cluster.distributed:
        if jobs not in (None, 1):
            raise ValueError(f"Expected no --jobs with --strategy {cluster.name} (its replicas use every device, one "
                             f"model at a time). Received --jobs {jobs}.")
        jobs = 1
        check_global_batches(recipe, models, variants, cluster.replicas)
    if jobs is None:  # one per CPU, at most one per model (a one-model recipe: per variant)
        units = len(models) if len(models) > 1 else len(variants_of(recipe, models[0], variants))
        jobs = max(1, min(units, len(os.sched_getaffinity(0))))
    t0 = time.time()
    contexts = {}
    if jobs > 1 and len(models) > 1:
        # The shared data first (corpus, far field, feature cache), so the workers only read it.
        contexts[models[0]] = prepare(recipe, out, models[0], log=log)
        tasks = [(m, ["--models", m] + (["--variants", *variants] if variants else [])) for m in models]
        _run_workers(recipe_name, out, tasks, jobs, log, dev_only=dev_only)
    rows = []
    ev = recipe.get("eval", {})
    n_stream = int(ev.get("stream_utterances", 50))
    stream_utterances = {}  # model -> the test features the streaming benchmark runs
    for model_name in models:
        ctx = contexts.pop(model_name, None) or prepare(recipe, out, model_name, log=log, cluster=cluster)
        if not dev_only:
            stream_utterances[model_name] = list(ctx.data["test"].features[:n_stream])
        train_float(ctx)
        todo = variants_of(recipe, model_name, variants)
        if jobs > 1 and len(models) == 1 and len(todo) > 1 and reports and not cluster.distributed:
            # One model: its variants fine-tune side by side, one worker process each, from the float
            # model on disk; the loop below then reads their results.
            _run_workers(recipe_name, out, [(f"{model_name}/{name}", ["--models", model_name, "--variants", f"={name}"])
                                            for name, _ in todo], jobs, log, dev_only=dev_only)
        for name, spec in todo:
            row = run_variant(ctx, name, spec, command, dev_only=dev_only)
            if row is None:  # a worker that is not the chief
                continue
            rows.append(row)
            if reports:
                (write_dev_report if dev_only else write_reports)(rows, out, recipe, command)
    if not reports or not cluster.is_chief:
        return rows
    if dev_only:
        log(f"\n{statistics_table(rows, DEV_STAT_SPLITS)}\nwrote {out / 'dev_results.md'} "
            f"({(time.time() - t0) / 60:.1f} min; the test sets were not touched)")
        return rows
    bench(rows, out, int(ev.get("bench_runs", 20)), log=log)
    streaming = stream_bench(rows, out, stream_utterances, memory=bool(ev.get("stream_memory", True)), log=log)
    write_reports(rows, out, recipe, command, streaming)
    log(f"\n{table(rows, markdown=False)}\nwrote {out / 'results.md'}, {out / 'results.png'} "
        f"({(time.time() - t0) / 60:.1f} min)")
    return rows
