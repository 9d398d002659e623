"""Training recipes: float RNN-T/Conformer, then QAT fine-tunes (GQ, uniform, clustering).

Data flow: utterances (LibriSpeech layout, ``librispeech.read_librispeech``)
-> log-mel features (``features.log_mel``, computed once per split and cached
as ``.npz`` next to the run) -> padded batches of similar length -> a
:class:`RNNTTrainer`, a thin ``keras.Model`` whose ``train_step`` computes the
RNN-T loss of the functional network it holds. The network stays a plain
functional model, so ``gq_tf.quantize_model`` and ``GQAnnealing`` work on it
unchanged (the annealing callback finds the quantizers through the wrapper).

Every run directory holds ``ckpt/`` (network + optimizer + epoch and batch
position, written at each epoch end and every ``save_every_s`` seconds; the
newest :data:`KEEP_CHECKPOINTS` are kept): running the same command again
resumes where it stopped, skipping the batches already trained, including
the annealing schedule, which lives in the quantizers' state. A damaged
newest checkpoint (truncated or altered file, missing shard) is skipped
with a :class:`DamagedCheckpointWarning` for the newest readable one; with
none readable, :class:`CheckpointError` says what to delete.
Progress is one line per epoch (loss, dev loss, seconds) and ``log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np

import gq_tf
from gq_tf._keras import keras, tf
from gq_tf.fileio import atomic_path


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings of one training stage (float or fine-tune)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_fraction: float = 0.05  # cosine decay to lr * this at the end
    clipnorm: float = 5.0
    max_frames: int = 1200  # longer utterances are left out of training
    seed: int = 0
    save_every_s: float = 600.0  # checkpoint inside an epoch this often (resume mid-epoch)
    # Train each epoch on only the first this-many batches of its shuffled
    # order (a partial pass: short fine-tunes on a large corpus); None = all.
    epoch_batches: int | None = None
    # Auxiliary CTC loss on the encoder output, this weight (0 = off): see RNNTTrainer.
    ctc_weight: float = 0.0
    # SpecAugment (Park et al., 2019): masks filled with the feature mean.
    freq_masks: int = 2
    freq_width: float = 0.15  # widest mask, as a fraction of the mel bins
    time_masks: int = 2
    time_width: float = 0.05  # widest mask, as a fraction of the utterance
    # Vocal tract length perturbation (Jaitly & Hinton, 2013): each training utterance's frequency
    # axis is scaled by a factor drawn from U(1 - vtlp, 1 + vtlp) (see vtlp_warp); 0 = off.
    vtlp: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Expected TrainConfig keys {sorted(f.name for f in dataclasses.fields(cls))}. "
                             f"Received unknown {sorted(unknown)}.")
        cfg = cls(**d)
        if not 0.0 <= cfg.vtlp < 0.5:
            raise ValueError(f"Expected vtlp (the largest frequency scaling, +-) in [0, 0.5). Received {cfg.vtlp!r}.")
        if cfg.epoch_batches is not None and (not isinstance(cfg.epoch_batches, int) or cfg.epoch_batches < 1):
            raise ValueError("Expected epoch_batches to be a positive integer or null. "
                             f"Received {cfg.epoch_batches!r}.")
        return cfg

    def steps_per_epoch(self, split: "Split") -> int:
        """Optimizer steps in one epoch of ``split`` under these settings."""
        full = count_batches(split, self.batch_size, self.max_frames)
        return min(full, self.epoch_batches) if self.epoch_batches else full


# ----------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    """One subset in memory: features (float16 [T, n_mels] each) and labels."""

    name: str
    ids: list[str]
    texts: list[str]
    features: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self):
        return len(self.ids)

    @property
    def hours(self) -> float:
        return sum(len(f) for f in self.features) * 0.01 / 3600

    def subset(self, n: int) -> "Split":
        return Split(self.name, self.ids[:n], self.texts[:n], self.features[:n], self.labels[:n])

    def concat(self, other: "Split") -> "Split":
        """This split's utterances, then ``other``'s."""
        return Split(self.name, self.ids + other.ids, self.texts + other.texts, self.features + other.features,
                     self.labels + other.labels)

    def replace_share(self, other: "Split", share: float, seed: int = 0, source_of=None) -> "Split":
        """A copy in which a seeded ``share`` of the utterances is taken from ``other`` instead.

        ``other`` holds another version of the same utterances (the far-field
        copy, ``farfield.make_farfield``); ``source_of`` maps each of its ids
        to the id of the utterance it was made from (default: the same id).
        The result keeps this split's order, so what the seed picks does not
        depend on how ``other`` is sorted.

        Raises:
          ValueError: ``other`` does not hold a version of every utterance.
        """
        source_of = source_of or {}
        where = {source_of.get(uid, uid): j for j, uid in enumerate(other.ids)}
        missing = [uid for uid in self.ids if uid not in where]
        if missing or any(other.texts[where[uid]] != t for uid, t in zip(self.ids, self.texts)):
            raise ValueError(f"Expected {other.name!r} to hold a version of every utterance of {self.name!r}. "
                             f"Received none for {missing[:3]} or another text.")
        pick = set(np.random.default_rng(seed).permutation(len(self))[:int(round(share * len(self)))].tolist())
        ids, feats = list(self.ids), list(self.features)
        for i in sorted(pick):
            j = where[self.ids[i]]
            ids[i], feats[i] = other.ids[j], other.features[j]
        return Split(self.name, ids, list(self.texts), feats, list(self.labels))


def _fingerprint(utts, feature_cfg) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(feature_cfg), sort_keys=True).encode())
    for u in utts:
        st = os.stat(u.path)
        h.update(f"{u.id}|{u.text}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def load_split(corpus_dir, subset: str, feature_cfg, tokenizer, cache_dir, log=print, batch=64) -> Split:
    """Reads a subset and its log-mel features (cached in ``cache_dir``).

    Raises:
      ValueError: a transcript has characters outside the tokenizer's vocabulary.
    """
    from gq_speech import features as feats
    from gq_speech.librispeech import load_audio, read_librispeech

    utts = read_librispeech(corpus_dir, [subset])
    cache = Path(cache_dir) / f"features_{subset}_{_fingerprint(utts, feature_cfg)}.npz"
    labels = [np.asarray(tokenizer.encode(u.text), np.int32) for u in utts]
    if cache.exists():
        with np.load(cache) as z:
            flat, lengths = z["flat"], z["lengths"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        features = [flat[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]
        log(f"  {subset}: {len(utts)} utterances, features from cache {cache.name}")
    else:
        t0 = time.time()
        # One traced graph for every length: 3x faster than eager calls.
        log_mel = tf.function(lambda audio: feats.log_mel(audio, feature_cfg),
                              input_signature=[tf.TensorSpec([None], tf.float32)])
        features = []
        for start in range(0, len(utts), batch):
            for u in utts[start:start + batch]:
                audio = load_audio(u.path)
                features.append(np.asarray(log_mel(audio), np.float16))
            if time.time() - t0 > 5 and start // batch % 10 == 0:
                log(f"  {subset}: features {len(features)}/{len(utts)}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Models of a recipe train side by side and may build the same cache:
        # each writes its own temporary (one a killed run left is removed).
        with atomic_path(cache, ".npz", log=log) as tmp:
            np.savez(tmp, flat=np.concatenate(features) if features else np.zeros((0, feature_cfg.n_mels), np.float16),
                     lengths=np.array([len(f) for f in features], np.int64))
        log(f"  {subset}: {len(utts)} utterances, features in {time.time() - t0:.1f} s")
    return Split(subset, [u.id for u in utts], [u.text for u in utts], features, labels)


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, max_frames: int | None = None,
            frame_multiple: int = 1):
    """Padded batches of utterances of similar length, as numpy tuples.

    Yields ``(features [B, T, F] float32, frame_lengths [B], labels [B, U],
    label_lengths [B])``; ``T`` is padded to a multiple of ``frame_multiple``
    (the encoder's reduction), and utterances longer than ``max_frames`` are
    skipped. Sorting by length keeps padding small; ``shuffle`` shuffles the
    order of the batches (and which utterances share one, by a jittered sort).
    """
    rng = np.random.default_rng(seed)
    lengths = np.array([len(f) for f in split.features])
    keep = np.flatnonzero(lengths <= max_frames) if max_frames else np.arange(len(lengths))
    key = lengths[keep] + (rng.uniform(0, 30, size=len(keep)) if shuffle else 0)
    order = keep[np.argsort(key, kind="stable")]
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(groups)
    n_mels = split.features[0].shape[1] if split.features else 0
    for g in groups:
        t = int(max(lengths[g]))
        t = -(-t // frame_multiple) * frame_multiple
        u = max(1, int(max(len(split.labels[i]) for i in g)))
        x = np.zeros((len(g), t, n_mels), np.float32)
        y = np.zeros((len(g), u), np.int32)
        for j, i in enumerate(g):
            x[j, :lengths[i]] = split.features[i]
            y[j, :len(split.labels[i])] = split.labels[i]
        yield x, lengths[g].astype(np.int32), y, np.array([len(split.labels[i]) for i in g], np.int32)


def count_batches(split: Split, batch_size: int, max_frames: int | None = None) -> int:
    """How many batches one epoch of :func:`batches` has (without building them)."""
    kept = sum(1 for f in split.features if not max_frames or len(f) <= max_frames)
    return -(-kept // batch_size)


def tf_batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, max_frames=None, frame_multiple=1,
               first_epoch: int = 0, skip: int = 0, limit: int | None = None, repeat: bool = False,
               augment: tuple[dict, np.ndarray] | None = None, replicas: int = 1, pipeline: int = 0,
               pipelines: int = 1):
    """:func:`batches` as a ``tf.data.Dataset``: one pass, or passes without end.

    ``repeat``: the passes follow each other without end, and the caller
    gives Keras the length of an epoch. (A training dataset that ends with
    each pass makes Keras learn the length by running one step more, which
    finds no data but still advances the optimizer's step counter, and so
    the learning-rate schedule, once per ``fit`` call: a resumed run drifted
    from an uninterrupted one.) Epoch ``e`` (counted from ``first_epoch``) is shuffled with seed
    ``1000 * seed + e``, so its order does not depend on where a run was
    resumed, and the first pass skips its first ``skip`` batches (those an
    interrupted run already trained on). ``limit`` ends each pass after that
    many batches of its order (skipped ones included).

    ``augment``: ``(spec_augment settings, fill)``: batch ``k`` of epoch
    ``e`` gets the masks of the generator seeded ``(seed, e, k)``, drawn
    over the whole (global) batch: the same masks wherever a run resumes
    and however many replicas share the batch.

    ``replicas`` > 1 (a ``tf.distribute`` input pipeline): each global batch
    is split into ``replicas`` consecutive parts (sizes differ by at most
    one; a part may be empty at the end of an epoch), and this pipeline
    (``pipeline`` of ``pipelines``, one per worker) yields its own
    replicas' parts in order, which the strategy hands to its local
    replicas in turn. Every utterance is seen once per epoch, by one replica.
    """
    n_mels = split.features[0].shape[1]
    state = {"epoch": first_epoch, "skip": skip}
    per_pipeline = replicas // pipelines
    mine = range(pipeline * per_pipeline, (pipeline + 1) * per_pipeline)

    def gen():
        epoch, skip_now = state["epoch"], state["skip"]
        state["epoch"], state["skip"] = epoch + 1, 0
        for k, batch in enumerate(batches(split, batch_size, shuffle=shuffle, seed=1000 * seed + epoch,
                                          max_frames=max_frames, frame_multiple=frame_multiple)):
            if limit is not None and k >= limit:
                return
            if k < skip_now:
                continue
            if augment is not None:
                x, x_len, y, y_len = batch
                settings, fill = augment
                batch = (spec_augment(x, x_len, fill, rng=np.random.default_rng([seed, epoch, k]), **settings),
                         x_len, y, y_len)
            if replicas == 1:
                yield batch
                continue
            bounds = np.linspace(0, len(batch[0]), replicas + 1).round().astype(int)
            for r in mine:
                yield tuple(part[bounds[r]:bounds[r + 1]] for part in batch)

    sig = (tf.TensorSpec([None, None, n_mels], tf.float32), tf.TensorSpec([None], tf.int32),
           tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32))
    data = tf.data.Dataset.from_generator(gen, output_signature=sig)
    return (data.repeat() if repeat else data).prefetch(2)


def distributed_batches(cluster, split: Split, batch_size: int, **kwargs):
    """:func:`tf_batches` for ``cluster``: a plain dataset on one replica, else one
    input pipeline per worker, each yielding its replicas' parts of every global batch."""
    if cluster.replicas == 1 and not cluster.distributed:
        return tf_batches(split, batch_size, **kwargs)

    def per_worker(ctx):
        return tf_batches(split, batch_size, replicas=ctx.num_replicas_in_sync, pipeline=ctx.input_pipeline_id,
                          pipelines=ctx.num_input_pipelines, **kwargs)

    return cluster.strategy.distribute_datasets_from_function(per_worker)


# ----------------------------------------------------------------- trainer


def vtlp_warp(x, alpha, centers_hz, fmax):
    """Log-mel features as if the speaker's vocal tract were ``1 / alpha`` as long.

    Vocal tract length perturbation (Jaitly & Hinton, 2013) on the mel bins:
    the spectrum is read at warped frequencies, ``S'(f) = S(g^-1(f))`` with the
    piecewise-linear warp ``g(f) = alpha * f`` up to ``f0 = 0.8 * fmax /
    max(alpha, 1)`` and then linear up to ``g(fmax) = fmax`` (the band's top
    stays where it is); each bin takes the linear interpolation of its two
    neighbouring source bins on the mel scale (edge bins are held).

    Args:
      x: [B, T, F] log-mel features (not changed).
      alpha: [B] warp factors (1 = unchanged; > 1 moves formants up).
      centers_hz: [F] the mel bins' centre frequencies, increasing (equally spaced in mel).
      fmax: the top of the mel band in Hz.

    Returns:
      The warped features, a new float32 array.
    """
    x = np.asarray(x, np.float32)
    alpha = np.asarray(alpha, np.float64)[:, None]
    c = np.asarray(centers_hz, np.float64)[None, :]
    f0 = 0.8 * fmax / np.maximum(alpha, 1.0)
    src = np.where(c <= alpha * f0, c / alpha, f0 + (c - alpha * f0) * (fmax - f0) / (fmax - alpha * f0))
    mel = np.log1p(np.asarray(centers_hz, np.float64) / 700.0)
    idx = np.interp(np.log1p(src / 700.0), mel, np.arange(len(mel), dtype=np.float64))  # [B, F], clamped
    lo = np.minimum(np.floor(idx).astype(np.int64), x.shape[2] - 2)
    t = (idx - lo).astype(np.float32)[:, None, :]
    lo = np.broadcast_to(lo[:, None, :], x.shape)
    a = np.take_along_axis(x, lo, axis=2)
    b = np.take_along_axis(x, lo + 1, axis=2)
    return a + t * (b - a)


def mel_centers_hz(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre frequencies of ``n_mels`` HTK-mel bins between ``fmin`` and ``fmax`` (as ``log_mel``'s
    ``tf.signal.linear_to_mel_weight_matrix``: ``n_mels + 2`` edges equally spaced in mel)."""
    lo, hi = (1127.0 * np.log1p(f / 700.0) for f in (fmin, fmax))
    mel = np.linspace(lo, hi, n_mels + 2)[1:-1]
    return 700.0 * np.expm1(mel / 1127.0)


def spec_augment(x, lengths, fill, *, rng, freq_masks=2, freq_width=0.15, time_masks=2, time_width=0.05,
                 vtlp=0.0, mel_band=None):
    """SpecAugment's frequency and time masks, per utterance (numpy, in the input pipeline),
    after an optional vocal tract length perturbation.

    Each of ``freq_masks`` masks covers ``w ~ U{0..freq_width * F}``
    consecutive mel bins at a uniform position; each of ``time_masks``
    covers ``w ~ U{0..time_width * length}`` frames inside the utterance.
    Masked values become ``fill`` (the feature mean: zero after the
    model's normalization). ``vtlp`` > 0: each utterance is first warped
    (:func:`vtlp_warp`) by a factor drawn from ``U(1 - vtlp, 1 + vtlp)``
    after the masks' draws (so ``vtlp=0`` draws the same masks as before it
    existed); ``mel_band``: ``(fmin, fmax)`` of the features' mel bins.

    Args:
      x: [B, T, F] features (not changed).
      lengths: [B] valid frames.
      fill: [F] values for masked cells.
      rng: the ``np.random.Generator`` to draw from (``tf_batches`` seeds one per batch).

    Returns:
      ``x`` with the masks applied, as a new array.
    """
    x = np.asarray(x)
    b, t, f = x.shape
    lengths = np.asarray(lengths, np.float64)[:, None]

    def band(width, total, size):
        w = np.floor(rng.uniform(size=(b, 1)) * (np.floor(width) + 1.0))
        start = np.floor(rng.uniform(size=(b, 1)) * np.maximum(total - w, 0.0))
        idx = np.arange(size)[None, :]
        return (idx >= start) & (idx < start + w)

    mask = np.zeros((b, t, f), bool)
    for _ in range(freq_masks):
        mask |= band(np.full((b, 1), freq_width * f), np.full((b, 1), float(f)), f)[:, None, :]
    for _ in range(time_masks):
        mask |= band(time_width * lengths, lengths, t)[:, :, None]
    if vtlp > 0:
        if mel_band is None:
            raise ValueError("Expected mel_band=(fmin, fmax) with vtlp > 0. Received none.")
        alpha = rng.uniform(1.0 - vtlp, 1.0 + vtlp, size=b)
        x = vtlp_warp(x, alpha, mel_centers_hz(f, *mel_band), mel_band[1]).astype(x.dtype)
    return np.where(mask, np.asarray(fill, x.dtype)[None, None, :], x)


class RNNTTrainer(keras.Model):
    """Trains a functional RNN-T network with the RNN-T loss.

    ``net([features, pred_tokens]) -> logits [B, T', U+1, V]``; the
    prediction network is fed blank followed by the labels. The reported
    ``loss`` is the mean negative log-likelihood per label token of the
    global batch.

    Under a ``tf.distribute`` strategy each replica holds a part of the
    global batch: it divides its summed loss by the label tokens of the
    *global* batch (an all-reduce), and the optimizer sums the replicas'
    gradients, so the step is the one-device step on the same global batch
    (up to the order of float additions). SpecAugment happens in the input
    pipeline (``tf_batches``), so its masks do not depend on the replicas.
    """

    def __init__(self, net, model_cfg, blank: int = 0, ctc_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.model_cfg = model_cfg
        self.blank = blank
        from gq_speech.models import _output_in

        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Auxiliary CTC on the encoder frames through a training-only linear
        # head (never exported). On a small, predictable domain the prediction
        # network alone drives the RNN-T loss down and the encoder is left
        # unused; CTC can only be lowered by listening.
        self.ctc_weight = float(ctc_weight)
        self.ctc_head = self._both = None
        self.ctc_tracker = keras.metrics.Mean(name="ctc_loss")
        if self.ctc_weight > 0:
            enc = _output_in(net, "encoder_output")
            self._both = keras.Model(net.inputs, [net.outputs[0], enc])
            self.ctc_head = keras.layers.Dense(model_cfg.vocab_size, name="ctc_head")
            self.ctc_head.build(enc.shape)

    @property
    def metrics(self):
        return [self.loss_tracker] + ([self.ctc_tracker] if self.ctc_head is not None else [])

    @property
    def train_variables(self):
        """The network's trainable variables (and the CTC head's, when on)."""
        head = self.ctc_head.trainable_variables if self.ctc_head is not None else []
        return self.net.trainable_variables + head

    def call(self, inputs, training=None):
        return self.net(inputs, training=training)

    def _loss(self, data, training):
        """(loss, CTC loss or None) of this replica's part, each per label token of the global batch,
        and the same two for the whole global batch (for the metrics)."""
        from gq_speech.models import encoder_lengths
        from gq_speech.rnnt import rnnt_loss

        x, x_len, y, y_len = data
        start = tf.fill([tf.shape(y)[0], 1], tf.constant(self.blank, y.dtype))
        inputs = [x, tf.concat([start, y], axis=1)]
        if self._both is not None:
            logits, enc = self._both(inputs, training=training)
        else:
            logits, enc = self.net(inputs, training=training), None
        enc_len = encoder_lengths(x_len, self.model_cfg)
        nll = rnnt_loss(logits, y, enc_len, y_len, blank=self.blank)
        replicas = tf.distribute.get_replica_context()  # None: called outside strategy.run, on all of a batch

        def over_replicas(value):
            return replicas.all_reduce("SUM", value) if replicas is not None else value

        tokens = tf.maximum(over_replicas(tf.cast(tf.reduce_sum(y_len), nll.dtype)), 1.0)
        loss = tf.reduce_sum(nll) / tokens
        if enc is None:
            return loss, None, over_replicas(loss), None
        ctc = tf.nn.ctc_loss(tf.cast(y, tf.int32), self.ctc_head(enc), tf.cast(y_len, tf.int32),
                             tf.cast(enc_len, tf.int32), logits_time_major=False, blank_index=self.blank)
        # An utterance too fast for its frames has no CTC path (infinite loss): left out.
        ctc = tf.where(tf.math.is_finite(ctc), ctc, tf.zeros_like(ctc))
        ctc = tf.reduce_sum(tf.cast(ctc, nll.dtype)) / tokens
        return loss, ctc, over_replicas(loss), over_replicas(ctc)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, ctc, global_loss, global_ctc = self._loss(data, training=True)
            total = loss if ctc is None else loss + self.ctc_weight * ctc
        variables = self.train_variables
        grads = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._track(global_loss, global_ctc)

    def test_step(self, data):
        return self._track(*self._loss(data, training=False)[2:])

    def _track(self, loss, ctc):
        # Every replica adds the global batch's value: the metric's mean over
        # replicas and batches is then the one-device mean over batches.
        self.loss_tracker.update_state(loss)
        if ctc is not None:
            self.ctc_tracker.update_state(ctc)
        return {m.name: m.result() for m in self.metrics}


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_fraction``."""

    def __init__(self, lr, warmup, total, min_fraction):
        self.lr, self.warmup, self.total, self.min_fraction = float(lr), int(warmup), int(total), float(min_fraction)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.lr * (step + 1) / max(1, self.warmup)
        progress = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
        cos = self.min_fraction + (1 - self.min_fraction) * 0.5 * (1 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, self.lr * cos)

    def get_config(self):
        return {"lr": self.lr, "warmup": self.warmup, "total": self.total, "min_fraction": self.min_fraction}


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves network + optimizer + position + training seconds after every
    epoch (and every ``save_every_s`` seconds inside one), and logs each epoch."""

    def __init__(self, manager, epoch_var, batch_var, seconds_var, log_path, log, total_epochs, name,
                 save_every_s=600.0, epoch_steps=None, progress_every_s=120.0):
        super().__init__()
        self.epoch_steps, self.progress_every_s = epoch_steps, progress_every_s
        self._shown = None
        self.manager, self.epoch_var, self.batch_var, self.seconds_var = manager, epoch_var, batch_var, seconds_var
        self.log_path, self.log, self.total, self.name = log_path, log, total_epochs, name
        self.save_every_s = save_every_s
        self.val_steps = None  # steps of a distributed validation set
        self._t0 = self._saved = self._mark = None
        self._offset = int(batch_var.numpy())  # batches of this epoch trained before a resume

    def _save(self):
        now = time.time()
        self.seconds_var.assign_add(now - self._mark)
        self._mark = self._saved = now
        if self.manager is not None:  # None: a worker that is not the chief (it writes nothing)
            self.manager.save()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = self._saved = self._mark = self._shown = time.time()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        if self.progress_every_s and now - self._shown >= self.progress_every_s:
            # Epochs of a large corpus take many minutes: show where training is.
            self._shown = now
            per = (now - self._t0) / (batch + 1)
            total = self.epoch_steps or 0
            pos = self._offset + batch + 1
            eta = f", epoch ends in {(total - pos) * per / 60:.1f} min" if total > pos else ""
            loss = f" · loss {logs['loss']:.3f}" if logs and "loss" in logs else ""
            self.log(f"  [{self.name}] epoch {self._epoch + 1}/{self.total}: batch {pos}/{total or '?'}{loss}"
                     f" · {per:.2f} s/batch{eta}")
        if now - self._saved >= self.save_every_s:
            self.batch_var.assign(self._offset + batch + 1)
            self._save()

    def finish_epoch(self, epoch, trainer, val):
        """Ends ``epoch`` whose batches were all trained by an interrupted run:
        validates (when there is a dev set), saves and logs as an epoch end does."""
        self._t0 = self._mark = time.time()
        self._epoch = epoch
        logs = {}
        if val is not None:
            logs["val_loss"] = float(trainer.evaluate(val, steps=self.val_steps, verbose=0, return_dict=True)["loss"])
        self.on_epoch_end(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_var.assign(epoch + 1)
        self.batch_var.assign(0)
        self._offset = 0
        self._save()
        logs = {k: float(v) for k, v in (logs or {}).items()}
        secs = time.time() - self._t0
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"stage": self.name, "epoch": epoch + 1, "seconds": round(secs, 2), **logs}) + "\n")
        extra = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k.startswith("gq_"))
        dev = f" · dev loss {logs['val_loss']:.3f}" if "val_loss" in logs else ""
        loss = f"loss {logs['loss']:.3f}" if "loss" in logs else "loss not known (trained before an interruption)"
        self.log(f"  [{self.name}] epoch {epoch + 1}/{self.total}: {loss}{dev}"
                 f" · {secs:.0f} s {extra}".rstrip())


# ----------------------------------------------------------------- checkpoints

# Three, not two: the two newest are often written seconds apart (a
# ``save_every_s`` save just before an epoch end), so one event (a full disk,
# a crash before the data reached the disk, an interrupted copy) can damage
# both; the third is older.
KEEP_CHECKPOINTS = 3
_CKPT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)")
# What TensorFlow's checkpoint reader raises on a damaged file: OpError
# (checksum mismatch, bad index, missing shard) or IndexError (truncated data).
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError)


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be restored: all are damaged, or they do not fit the model."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped; training resumes from an older one and repeats what was lost."""


def _reason(e: BaseException) -> str:
    text = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def checkpoint_problem(prefix) -> str | None:
    """Why the checkpoint ``prefix`` (``.../ckpt-N``) cannot be read back, naming the bad file; None if it can.

    Every tensor is read, and each is checked against the CRC32C its index
    stores, so a truncated or altered data file, an unreadable index and a
    missing shard are all found before anything is restored into a model.
    """
    prefix = os.fspath(prefix)
    index = prefix + ".index"
    if not os.path.exists(index):
        return f"{index} is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
    except _READ_ERRORS as e:
        return f"{index} is unreadable ({_reason(e)})"
    for key in sorted(reader.get_variable_to_dtype_map()):
        try:
            reader.get_tensor(key)
        except _READ_ERRORS as e:
            shards = sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
            if not shards:
                return f"{prefix}.data-* is missing ({_reason(e)})"
            return f"{', '.join(map(str, shards))} is unreadable ({_reason(e)})"
    return None


def _position(prefix) -> tuple[int, int] | None:
    """(epoch, batch) a checkpoint of :func:`fit` was written at, or None if unreadable."""
    try:
        reader = tf.train.load_checkpoint(os.fspath(prefix))
        return tuple(int(reader.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE")) for k in ("epoch", "batch"))
    except _READ_ERRORS:
        return None


def _warn(message: str, log) -> None:
    log(message)
    warnings.warn(message.strip(), DamagedCheckpointWarning, stacklevel=3)


def checkpoint_manager(ckpt, directory, *, name: str, log=print, repair: bool = True) -> tf.train.CheckpointManager:
    """The ``tf.train.CheckpointManager`` of a run's ``ckpt/`` folder, keeping :data:`KEEP_CHECKPOINTS`.

    A missing or unreadable ``checkpoint`` file (the manager's list) beside
    checkpoint files is written again from the files, with a warning: without
    it the manager would see no checkpoint, and the run would silently train
    from the start. ``repair=False`` (a worker that is not the chief) only reads.
    """
    directory = Path(directory)
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except ValueError:  # a list without its newest entry (an empty file)
        state = None
    found = sorted({int(m.group(1)) for f in (directory.iterdir() if directory.is_dir() else ())
                    if (m := _CKPT_FILE.fullmatch(f.name))})
    if state is None and found and repair:
        names = [f"ckpt-{n}" for n in found]
        _warn(f"  [{name}] {directory / 'checkpoint'} (the list of checkpoints) is missing or unreadable: "
              f"listing the ones on disk instead ({', '.join(names)})", log)
        stamps = [max(f.stat().st_mtime for f in directory.glob(n + ".*")) for n in names]
        tf.compat.v1.train.update_checkpoint_state(str(directory.resolve()), names[-1], names,
                                                   all_model_checkpoint_timestamps=stamps,
                                                   last_preserved_timestamp=min(stamps) - 1)
    return tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=KEEP_CHECKPOINTS)


def _number(prefix: str) -> int:
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else -1


def restore_newest_readable(ckpt, manager, *, name: str, steps_per_epoch: int | None = None, log=print):
    """Restores the newest checkpoint of ``manager`` that reads back whole into ``ckpt``.

    Each candidate is checked (:func:`checkpoint_problem`) before anything is
    restored, so values of a damaged checkpoint never reach the network or
    the optimizer. Skipping a damaged one warns (``log`` and a
    :class:`DamagedCheckpointWarning`) with the bad file and how much
    training is repeated.

    Args:
      ckpt: the ``tf.train.Checkpoint`` to restore into (its optimizer's
        slots already built).
      manager: its ``tf.train.CheckpointManager``.
      name: the stage, for the messages.
      steps_per_epoch: batches per epoch, to count the repeated batches.
      log: progress messages.

    Returns:
      The restored checkpoint's path, or None if the run has none yet.

    Raises:
      CheckpointError: every checkpoint is damaged, or the readable one does
        not fit ``ckpt`` (the message says what to delete to start over).
    """
    prefixes = list(dict.fromkeys([*reversed(manager.checkpoints),
                                   *([manager.latest_checkpoint] if manager.latest_checkpoint else [])]))
    prefixes.sort(key=_number, reverse=True)
    folder = manager.directory
    damaged = []
    for prefix in prefixes:
        problem = checkpoint_problem(prefix)
        if problem is None:
            break
        damaged.append((prefix, problem))
    else:
        if not damaged:
            return None
        listed = "; ".join(f"{Path(p).name}: {why}" for p, why in damaged)
        raise CheckpointError(
            f"Expected a readable checkpoint in {folder} to resume stage '{name}'. Received only damaged ones "
            f"({listed}). To train '{name}' from the start, delete the folder {folder}.")
    try:
        ckpt.restore(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise CheckpointError(
            f"Expected checkpoint {prefix} to fit the network and optimizer of stage '{name}'. Received one "
            f"made for another model ({_reason(e)}). To train '{name}' from the start, delete the folder "
            f"{folder}.") from e
    if damaged:
        good = _position(prefix)
        lost = max((p for p in (_position(d) for d, _ in damaged) if p is not None), default=None)
        bad = "; ".join(f"{Path(p).name} is damaged: {why}" for p, why in damaged)
        where = f" (epoch {good[0]}, batch {good[1]})" if good else ""
        if good is None or lost is None or not steps_per_epoch:
            repeat = "what was trained after it is trained again"
        else:
            n = (lost[0] - good[0]) * steps_per_epoch + lost[1] - good[1]
            repeat = (f"{n} batches ({n / steps_per_epoch:.2f} epochs) are trained again "
                      f"(the damaged one was at epoch {lost[0]}, batch {lost[1]})")
        _warn(f"  [{name}] {bad}. Resuming from {Path(prefix).name}{where} instead: {repeat}.", log)
    return prefix


def fit(net, model_cfg, train: Split, dev: Split | None, cfg: TrainConfig, run_dir, *, name: str,
        callbacks=(), log=print, cluster=None) -> dict:
    """Trains ``net`` in place; resumable from ``run_dir/ckpt``. Returns a summary.

    Resumes from the newest readable checkpoint (:func:`restore_newest_readable`:
    a damaged newer one is skipped with a :class:`DamagedCheckpointWarning`).

    Under a ``cluster`` (``gq_speech.distribute``; ``net`` built in its
    scope) ``cfg.batch_size`` is the global batch, split over the replicas;
    the chief writes the checkpoints, the log and the progress, and every
    worker restores from the chief's ``run_dir/ckpt`` (all workers must see
    the same ``run_dir``: checked, the positions they resume from must agree).

    Returns:
      dict with ``epochs``, ``seconds`` (this call's training time plus the
      time recorded by earlier interrupted calls, up to the checkpoint resumed
      from), ``final_loss``, ``dev_loss`` and ``resumed_from`` (epochs already
      done when called).

    Raises:
      CheckpointError: ``run_dir/ckpt`` holds checkpoints, but none can be restored.
      ValueError: the global batch does not split evenly over the replicas, or
        ``net`` was built outside the cluster's scope.
      distribute.ClusterError: the workers resume from different checkpoints,
        or one stopped during training.
    """
    from gq_speech import distribute
    from gq_speech.models import reduction

    cluster = cluster or distribute.local()
    if cfg.batch_size % cluster.replicas:
        raise ValueError(f"Expected a batch size (the global batch) divisible by the {cluster.replicas} replicas of "
                         f"strategy '{cluster.name}'. Received batch_size {cfg.batch_size} for stage '{name}'.")
    if net.distribute_strategy is not cluster.strategy:
        raise ValueError(f"Expected stage '{name}''s network to be built in the scope of the strategy it trains "
                         f"under ('{cluster.name}': build and quantize it in `with cluster.scope():`). Received a "
                         f"network of another strategy ({type(net.distribute_strategy).__name__}).")
    log = cluster.log(log)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    multiple = reduction(model_cfg)
    steps_per_epoch = cfg.steps_per_epoch(train)
    schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, steps_per_epoch * cfg.epochs, cfg.min_lr_fraction)
    augment = None
    if cfg.freq_masks or cfg.time_masks or cfg.vtlp:
        from gq_speech.features import FeatureConfig
        from gq_speech.modelconfig import feature_fill

        settings = {k: getattr(cfg, k) for k in ("freq_masks", "freq_width", "time_masks", "time_width")}
        if cfg.vtlp:
            band = FeatureConfig(n_mels=model_cfg.n_mels)  # the front-end's mel band (gq_speech.features)
            settings.update(vtlp=cfg.vtlp, mel_band=(band.fmin, band.fmax))
        augment = (settings, np.asarray(feature_fill(model_cfg), np.float32))
    with cluster.scope():
        trainer = RNNTTrainer(net, model_cfg, ctc_weight=cfg.ctc_weight)
        trainer.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=cfg.clipnorm))
    # Every replica's metrics already hold the global batch's values (RNNTTrainer._track):
    # Keras's "auto" would sum them over the workers of a multi-worker run.
    trainer.distribute_reduction_method = "first"
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    batch_var = tf.Variable(0, dtype=tf.int64, trainable=False)  # batches done in the current epoch
    seconds_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    parts = {"ctc_head": trainer.ctc_head} if trainer.ctc_head is not None else {}
    ckpt = tf.train.Checkpoint(net=net, optimizer=trainer.optimizer, epoch=epoch_var, batch=batch_var,
                               seconds=seconds_var, **parts)
    # Optimizer slots are created lazily: build them before restoring. On every
    # worker at once (creating a variable is a collective under multi_worker).
    with cluster.scope():
        trainer.optimizer.build(trainer.train_variables)
    # Its save counter now, outside any strategy scope: made lazily by the first
    # save, inside Keras's fit, it would be a mirrored variable, and creating
    # one is a collective the chief (the only worker that saves) would wait in.
    ckpt.save_counter  # noqa: B018
    restored = None
    with cluster.chief_first():  # the chief may repair the list of checkpoints the others then read
        manager = checkpoint_manager(ckpt, run_dir / "ckpt", name=name, log=log, repair=cluster.is_chief)
        if manager.latest_checkpoint:
            restored = restore_newest_readable(ckpt, manager, name=name, steps_per_epoch=steps_per_epoch, log=log)
    done, skip = int(epoch_var.numpy()), int(batch_var.numpy())
    if cluster.workers > 1:
        where = cluster.gather([done, skip])
        if not (where == where[0]).all():
            listed = ", ".join(f"worker {i} ({a}): epoch {int(e)} batch {int(k)}"
                               for i, (a, (e, k)) in enumerate(zip(cluster.addresses, where)))
            raise distribute.ClusterError(
                f"Expected every worker to resume stage '{name}' from the chief's checkpoint in {run_dir / 'ckpt'}. "
                f"Received different positions: {listed}. The run directory must be one shared folder (the same "
                "path on a shared file system) on every machine.")
    if restored:
        if done >= cfg.epochs:
            log(f"  [{name}] trained before ({cfg.epochs} epochs): {restored}")
        else:
            within = f", batch {skip}" if skip else ""
            log(f"  [{name}] resuming after epoch {done}{within} from {restored}")
    summary = {"epochs": cfg.epochs, "resumed_from": done}
    if done < cfg.epochs:
        keras.utils.set_random_seed(cfg.seed + done)
        val = distributed_batches(cluster, dev, cfg.batch_size, shuffle=False,
                                  frame_multiple=multiple) if dev else None
        # A distributed dataset has no length Keras can learn: give it (one step per global batch).
        val_steps = count_batches(dev, cfg.batch_size) if dev and cluster.distributed else None
        saver = _EpochCheckpoint(manager if cluster.is_chief else None, epoch_var, batch_var, seconds_var,
                                 run_dir / "log.jsonl" if cluster.is_chief else None, log,
                                 cfg.epochs, name, save_every_s=cfg.save_every_s, epoch_steps=steps_per_epoch)
        saver.val_steps = val_steps
        t0 = time.time()
        if skip >= steps_per_epoch:
            # Killed after the epoch's last batch was saved but before its end
            # (validation, the epoch-end checkpoint): nothing is left to train
            # in it, and Keras cannot run an epoch of no batches. Finish it here.
            log(f"  [{name}] epoch {done + 1}: all {steps_per_epoch} batches were trained before the interruption;"
                " finishing the epoch")
            saver.finish_epoch(done, trainer, val)
            done, skip = done + 1, 0
        # A partly trained epoch is finished by its own fit call: Keras's
        # epochs have one length per call.
        stages = ([(done, done + 1, skip)] if skip else []) + [(done + bool(skip), cfg.epochs, 0)]
        history = {}
        for start, end, skip_now in stages:
            if start >= end:
                continue
            data = distributed_batches(cluster, train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                       max_frames=cfg.max_frames, frame_multiple=multiple, first_epoch=start,
                                       skip=skip_now, limit=cfg.epoch_batches, repeat=True, augment=augment)
            try:
                history = trainer.fit(data, validation_data=val, validation_steps=val_steps, epochs=end,
                                      initial_epoch=start, verbose=0,
                                      steps_per_epoch=steps_per_epoch - skip_now,
                                      # The saver last: a checkpoint holds what the other callbacks did
                                      # at the batch's end (GQAnnealing's step counter: saved first, a
                                      # run resumed inside an epoch annealed one step behind).
                                      callbacks=[*callbacks, saver]).history
            except tf.errors.OpError as e:
                if cluster.workers == 1 or not distribute.is_worker_loss(e):
                    raise
                where = _position(manager.latest_checkpoint) if manager.latest_checkpoint else None
                kept = f"epoch {where[0]}, batch {where[1]}" if where else "nothing yet"
                raise distribute.ClusterError(
                    f"Expected all {cluster.workers} workers ({', '.join(cluster.addresses)}) to train stage "
                    f"'{name}' to its end. Received: a worker stopped ({_reason(e)}). The chief's newest "
                    f"checkpoint in {run_dir / 'ckpt'} is kept ({kept}): start the same command on every "
                    "worker again to resume from it.") from None
        if "loss" in history:
            summary["final_loss"] = float(history["loss"][-1])
        if "val_loss" in history:
            summary["dev_loss"] = float(history["val_loss"][-1])
        log(f"  [{name}] trained {cfg.epochs - summary['resumed_from']} epoch(s) in {time.time() - t0:.0f} s")
    summary["seconds"] = float(seconds_var.numpy())
    return summary


def annealing(steps: int, **schedule):
    """The GQ annealing callback for a fine-tune of ``steps`` steps (demo.annealing_for)."""
    from gq_speech.demo import annealing_for

    return annealing_for(steps, **schedule)


def has_gq(qat) -> bool:
    from gq_tf.codebooks import quantized_weights

    try:
        return any(isinstance(qw.quantizer, gq_tf.GeneralQuantizer) for qw in quantized_weights(qat))
    except ValueError:
        return False
