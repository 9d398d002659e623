"""Greedy (and small beam) RNN-T decoding.

Two implementations of the same greedy rule:

* ``GreedyDecoder`` / ``greedy_steps``: a plain Python loop over NumPy
  encoder frames with two callables (prediction step and joint). It knows
  nothing about TensorFlow, so the streaming app drives it with
  TFLite-interpreter-backed callables, chunk by chunk.
* ``greedy_decode_batch`` / ``BatchGreedyDecoder``: a batched
  ``tf.while_loop`` for fast evaluation of Keras models.

The greedy rule, per encoder frame ``t`` (at most ``max_symbols_per_frame``
symbols are emitted on one frame)::

    repeat up to max_symbols_per_frame times:
        k = argmax joint(enc[t], pred_out)
        if k == blank: break
        emit k; pred_out, state = pred_step(k, state)

The prediction network starts from token ``blank``, used as start-of-sequence.
Ties in the argmax go to the lowest id (as ``np.argmax`` and ``tf.argmax``).
"""

import numpy as np

from gq_tf._keras import tf

__all__ = [
    "BatchGreedyDecoder",
    "GreedyDecoder",
    "beam_search",
    "greedy_decode_batch",
    "greedy_steps",
    "ids_to_lists",
]


def _check_max_symbols(max_symbols_per_frame):
    if not isinstance(max_symbols_per_frame, (int, np.integer)) or max_symbols_per_frame < 1:
        raise ValueError(
            "Expected max_symbols_per_frame to be an integer >= 1. Received: "
            f"max_symbols_per_frame={max_symbols_per_frame!r}"
        )


class GreedyDecoder:
    """Resumable greedy RNN-T decoder over NumPy frames and plain callables.

    Args:
      pred_step: ``pred_step(token: int, state) -> (pred_out, state)``.
      joint: ``joint(enc_frame, pred_out) -> logits [V]`` (anything
        ``np.asarray`` accepts).
      init_state: the prediction network's initial state (opaque here).
      blank: blank id, also the start-of-sequence token.
      max_symbols_per_frame: cap on symbols emitted on one encoder frame.

    Attributes:
      tokens: all tokens emitted so far (list of int).

    Example:
      >>> dec = GreedyDecoder(pred_step, joint, init_state)
      >>> for enc_chunk in encoder_chunks:       # np [k, D]
      ...     new = dec.push(enc_chunk)
      >>> text = vocab.decode(dec.tokens)
    """

    def __init__(self, pred_step, joint, init_state, blank=0, max_symbols_per_frame=5):
        _check_max_symbols(max_symbols_per_frame)
        self._pred_step = pred_step
        self._joint = joint
        self._init_state = init_state
        self.blank = int(blank)
        self.max_symbols_per_frame = int(max_symbols_per_frame)
        self.reset()

    def reset(self):
        """Starts a new utterance."""
        self.tokens = []
        self.frames_seen = 0
        self._pred_out, self._state = self._pred_step(self.blank, self._init_state)

    def push(self, encoder_frames):
        """Decodes more encoder frames and returns the tokens they produced.

        Args:
          encoder_frames: ``[k, D]`` array (or iterable of ``[D]`` frames).

        Returns:
          list of int, the new tokens (also appended to ``tokens``).
        """
        new = []
        for frame in encoder_frames:
            for _ in range(self.max_symbols_per_frame):
                k = int(np.argmax(np.asarray(self._joint(frame, self._pred_out)).reshape(-1)))
                if k == self.blank:
                    break
                new.append(k)
                self._pred_out, self._state = self._pred_step(k, self._state)
            self.frames_seen += 1
        self.tokens.extend(new)
        return new


def greedy_steps(encoder_frames, pred_step, joint, pred_state, blank=0, max_symbols_per_frame=5):
    """Greedy decoding of a whole utterance; see ``GreedyDecoder``.

    Args:
      encoder_frames: ``[T, D]`` array (or iterable of ``[D]`` frames).
      pred_step: ``pred_step(token: int, state) -> (pred_out, state)``.
      joint: ``joint(enc_frame, pred_out) -> logits [V]``.
      pred_state: initial prediction-network state.
      blank: blank / start-of-sequence id.
      max_symbols_per_frame: cap on symbols per encoder frame.

    Returns:
      list of int token ids.
    """
    decoder = GreedyDecoder(pred_step, joint, pred_state, blank, max_symbols_per_frame)
    return decoder.push(encoder_frames)


def greedy_decode_batch(
    encoder_out,
    enc_lengths,
    pred_fn,
    joint_fn,
    pred_state,
    blank=0,
    max_symbols_per_frame=5,
    max_output_length=None,
):
    """Batched greedy RNN-T decoding with a ``tf.while_loop``.

    Follows exactly the rule of ``GreedyDecoder`` for every item. One loop
    step evaluates the joint once for every item; an item whose argmax is
    blank, or which has emitted ``max_symbols_per_frame`` symbols on its
    current frame, moves to its next frame. Items that are done keep their
    state. Works eagerly and inside ``tf.function``; ``BatchGreedyDecoder``
    wraps it in a ``tf.function`` traced once.

    Args:
      encoder_out: ``[B, T, D]`` float tensor.
      enc_lengths: ``[B]`` int valid frames per item.
      pred_fn: ``pred_fn(tokens [B] int32, states) -> (out [B, P], states)``;
        ``states`` any nest of ``[B, ...]`` tensors.
      joint_fn: ``joint_fn(enc [B, D], pred [B, P]) -> logits [B, V]``.
      pred_state: initial ``states`` for a batch of B.
      blank: blank / start-of-sequence id.
      max_symbols_per_frame: cap on symbols per encoder frame.
      max_output_length: size of the output buffer (default
        ``T * max_symbols_per_frame``, which can never overflow).

    Returns:
      ``(ids [B, L] int32, lengths [B] int32)``; ``ids`` padded with
      ``blank``, ``L = max(lengths)``. ``ids_to_lists`` turns them into lists.
    """
    _check_max_symbols(max_symbols_per_frame)
    encoder_out = tf.convert_to_tensor(encoder_out)
    enc_lengths = tf.cast(tf.convert_to_tensor(enc_lengths), tf.int32)
    if encoder_out.shape.rank != 3:
        raise ValueError(
            f"Expected encoder_out of shape [B, T, D]. Received shape {encoder_out.shape}."
        )
    batch = tf.shape(encoder_out)[0]
    max_t = tf.shape(encoder_out)[1]
    if max_output_length is None:
        max_output_length = max_t * max_symbols_per_frame
    enc_lengths = tf.minimum(enc_lengths, max_t)
    batch_idx = tf.range(batch)

    pred_out, state = pred_fn(tf.fill([batch], tf.constant(blank, tf.int32)), pred_state)
    init = (
        tf.zeros([batch], tf.int32),  # current frame per item
        tf.zeros([batch], tf.int32),  # symbols emitted on the current frame
        tf.zeros([batch], tf.int32),  # tokens emitted so far
        tf.fill([batch, max_output_length], tf.constant(blank, tf.int32)),
        pred_out,
        state,
    )

    def cond(t, *_):
        return tf.reduce_any(t < enc_lengths)

    def body(t, count, length, ids, pred_out, state):
        active = t < enc_lengths
        enc = tf.gather(encoder_out, tf.minimum(t, max_t - 1), batch_dims=1)
        logits = joint_fn(enc, pred_out)
        k = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.int32)
        emit = active & (k != blank) & (length < max_output_length)
        ids = tf.tensor_scatter_nd_update(
            ids,
            tf.stack([batch_idx, tf.minimum(length, max_output_length - 1)], axis=1),
            tf.where(
                emit, k, tf.gather(ids, tf.minimum(length, max_output_length - 1), batch_dims=1)
            ),
        )
        length = length + tf.cast(emit, tf.int32)
        count = count + tf.cast(emit, tf.int32)
        # The prediction network runs for the whole batch; only emitters keep
        # the new output and state.
        new_out, new_state = pred_fn(tf.where(emit, k, blank), state)

        def select(new, old):
            mask = tf.reshape(emit, tf.concat([[batch], tf.ones([tf.rank(new) - 1], tf.int32)], 0))
            return tf.where(mask, new, old)

        pred_out = select(new_out, pred_out)
        state = tf.nest.map_structure(select, new_state, state)
        advance = active & (~emit | (count >= max_symbols_per_frame))
        t = t + tf.cast(advance, tf.int32)
        count = tf.where(advance, 0, count)
        return t, count, length, ids, pred_out, state

    _, _, lengths, ids, _, _ = tf.while_loop(cond, body, init)
    return ids[:, : tf.reduce_max(tf.concat([lengths, [0]], 0))], lengths


class BatchGreedyDecoder:
    """``greedy_decode_batch`` compiled once with ``tf.function``.

    Args:
      pred_fn, joint_fn, blank, max_symbols_per_frame: as in
        ``greedy_decode_batch``.

    Example:
      >>> decode = BatchGreedyDecoder(model.pred_fn, model.joint_fn)
      >>> ids, lengths = decode(enc_out, enc_lengths, model.initial_state(batch))
    """

    def __init__(self, pred_fn, joint_fn, blank=0, max_symbols_per_frame=5):
        _check_max_symbols(max_symbols_per_frame)
        self.blank = int(blank)
        self.max_symbols_per_frame = int(max_symbols_per_frame)
        self._fn = tf.function(
            lambda enc, lengths, state: greedy_decode_batch(
                enc, lengths, pred_fn, joint_fn, state, self.blank, self.max_symbols_per_frame
            ),
            reduce_retracing=True,
        )

    def __call__(self, encoder_out, enc_lengths, pred_state):
        """Returns ``(ids [B, L] int32, lengths [B] int32)``."""
        return self._fn(encoder_out, enc_lengths, pred_state)


def ids_to_lists(ids, lengths):
    """``[B, L]`` padded ids + ``[B]`` lengths -> list of lists of int."""
    ids = np.asarray(ids)
    lengths = np.asarray(lengths)
    return [ids[b, : lengths[b]].tolist() for b in range(len(lengths))]


def _log_softmax(x):
    x = np.asarray(x, np.float64).reshape(-1)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def beam_search(encoder_frames, pred_step, joint, pred_state, beam=4, blank=0):
    """Beam search with at most one symbol per frame ("modified beam search").

    Each hypothesis, on each frame, either takes blank or emits exactly one
    non-blank token; hypotheses with the same token sequence are merged by
    adding their probabilities (log-sum-exp) and the ``beam`` best are kept.
    With ``beam=1`` it is greedy decoding with ``max_symbols_per_frame=1``.

    Args:
      encoder_frames: ``[T, D]`` array.
      pred_step, joint, pred_state, blank: as in ``greedy_steps``.
      beam: number of hypotheses kept.

    Returns:
      ``(tokens, log_prob)`` of the best hypothesis.
    """
    if not isinstance(beam, (int, np.integer)) or beam < 1:
        raise ValueError(f"Expected beam to be an integer >= 1. Received: beam={beam!r}")
    pred_out, state = pred_step(blank, pred_state)
    # tokens -> (log_prob, pred_out, state). The prediction network's output
    # depends only on the token sequence, so merged hypotheses share it.
    hyps = {(): (0.0, pred_out, state)}
    for frame in encoder_frames:
        # tokens -> (log_prob, source); source is (pred_out, state, None) for a
        # blank step, or (None, parent_state, k) for an emission whose
        # prediction step is still to run (only survivors pay for it).
        candidates = {}
        for tokens, (score, out, st) in hyps.items():
            lp = _log_softmax(joint(frame, out))
            # Only the `beam` best extensions plus blank can survive.
            for k in np.argsort(-lp, kind="stable")[: beam + 1]:
                k = int(k)
                if k == blank:
                    key, source = tokens, (out, st, None)
                else:
                    key, source = tokens + (k,), (None, st, k)
                new = score + lp[k]
                if key in candidates:
                    old, old_source = candidates[key]
                    keep = old_source if old_source[2] is None else source
                    candidates[key] = (np.logaddexp(old, new), keep)
                else:
                    candidates[key] = (new, source)
        best = sorted(candidates.items(), key=lambda kv: -kv[1][0])[:beam]
        hyps = {}
        for key, (score, (out, st, k)) in best:
            if k is not None:
                out, st = pred_step(k, st)
            hyps[key] = (score, out, st)
    tokens, (score, _, _) = max(hyps.items(), key=lambda kv: kv[1][0])
    return list(tokens), float(score)
