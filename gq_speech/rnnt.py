"""RNN-T loss (Graves, 2012, "Sequence Transduction with Recurrent Neural
Networks", arXiv:1211.3711) in plain TensorFlow.

Gradients come from TensorFlow autodiff through the forward recursion; the
function works eagerly, inside ``tf.function`` and under ``model.fit``.
"""

from gq_tf._keras import tf

__all__ = ["rnnt_loss"]

# A finite stand-in for log(0): keeps logaddexp and its gradient NaN-free
# (-inf - -inf is NaN). An unreachable cell loses at most 2e30 per diagonal,
# so even 10^7 diagonals stay inside the float32 range (3.4e38).
_NEG = -1e30


def _logaddexp(a, b):
    m = tf.maximum(a, b)
    return m + tf.math.log1p(tf.exp(-tf.abs(a - b)))


def _skew(lattice, pad_value):
    """``[B, T, U1] -> [T + U1 - 1, B, U1]`` with out[d, b, u] = lattice[b, d - u, u].

    Cells with ``d - u`` outside ``[0, T)`` hold ``pad_value``. Pure
    pad/reshape: row u of the ``[U1, W]`` (W = T + U1) padded lattice, read
    with row length ``W - 1``, is shifted right by u.
    """
    x = tf.transpose(lattice, [0, 2, 1])  # [B, U1, T]
    shape = tf.shape(x)
    b, u1, t = shape[0], shape[1], shape[2]
    w = t + u1
    x = tf.pad(x, [[0, 0], [0, 0], [0, u1]], constant_values=pad_value)  # [B, U1, W]
    flat = tf.reshape(x, [b, u1 * w])[:, : u1 * (w - 1)]
    skewed = tf.reshape(flat, [b, u1, w - 1])  # [B, U1, D]
    return tf.transpose(skewed, [2, 0, 1])


# Compiled once per dtype, so eager callers do not run the loop op by op;
# inside an outer tf.function (model.fit) it is simply called.
@tf.function(reduce_retracing=True)
def _alpha_diagonals(blank_d, emit_d):
    """Forward variables on every anti-diagonal; see ``rnnt_loss``.

    Args:
      blank_d, emit_d: ``[D, B, U1]`` skewed log-probabilities.

    Returns:
      ``[D, B, U1]``: alpha on diagonal d = t + u at position u.
    """
    num_diag = tf.shape(blank_d)[0]
    batch, u1 = tf.shape(blank_d)[1], tf.shape(blank_d)[2]
    alpha0 = tf.concat(
        [
            tf.zeros([batch, 1], blank_d.dtype),
            tf.fill([batch, u1 - 1], tf.cast(_NEG, blank_d.dtype)),
        ],
        axis=1,
    )
    neg_col = tf.fill([batch, 1], tf.cast(_NEG, blank_d.dtype))
    # Per-diagonal inputs go through TensorArrays: slicing a captured tensor
    # inside the loop would make every backward step build and accumulate a
    # dense gradient of the whole lattice.
    blank_ta = tf.TensorArray(blank_d.dtype, size=num_diag).unstack(blank_d)
    emit_ta = tf.TensorArray(emit_d.dtype, size=num_diag).unstack(emit_d)
    alphas = tf.TensorArray(blank_d.dtype, size=num_diag, element_shape=alpha0.shape)
    alphas = alphas.write(0, alpha0)

    def body(d, alpha, alphas):
        # (t-1, u) -> (t, u) by a blank: same position u on the previous diagonal.
        from_t = alpha + blank_ta.read(d - 1)
        # (t, u-1) -> (t, u) by label u: position u-1 on the previous diagonal.
        from_u = tf.concat([neg_col, (alpha + emit_ta.read(d - 1))[:, :-1]], axis=1)
        alpha = _logaddexp(from_t, from_u)
        return d + 1, alpha, alphas.write(d, alpha)

    _, _, alphas = tf.while_loop(
        lambda d, *_: d < num_diag,
        body,
        (tf.constant(1), alpha0, alphas),
    )
    return alphas.stack()


def rnnt_loss(logits, labels, logit_lengths, label_lengths, blank=0):
    """Negative log-likelihood of each label sequence under an RNN-T.

    With ``y(t, u) = log P(labels[u] | t, u)`` and ``b(t, u) = log P(blank | t, u)``
    (log-softmax of ``logits[t, u]``), the forward variables are

        alpha(0, 0) = 0
        alpha(t, u) = logaddexp(alpha(t-1, u) + b(t-1, u),
                                alpha(t, u-1) + y(t, u-1))

    (a term is absent when its index is negative), and for an item with
    ``T = logit_lengths[b]`` frames and ``U = label_lengths[b]`` labels

        loss = -(alpha(T-1, U) + b(T-1, U)).

    The recursion runs over the anti-diagonals ``d = t + u`` (``max T + max U``
    steps of a ``tf.while_loop``), vectorized over the batch and over u. Each
    item's lattice cells depend only on cells with smaller t and u, so padding
    beyond ``(T_b, U_b)`` affects neither the loss nor its gradient.

    Speed (TF 2.21, 2 shared CPU cores, inside ``tf.function``): B=16, T=100,
    U=40, V=29 takes about 7.5 ms forward and 16-25 ms forward + backward.

    Args:
      logits: ``[B, T, U + 1, V]`` unnormalized joint-network outputs (float32
        or float64); the log-softmax is taken here.
      labels: ``[B, U]`` int label ids in ``[0, V)``, padded anyhow (a padded
        value only needs to be an int; it is never read).
      logit_lengths: ``[B]`` int, ``1 <= T_b <= T``.
      label_lengths: ``[B]`` int, ``0 <= U_b <= U``.
      blank: id of the blank symbol.

    Returns:
      ``[B]`` losses in the dtype of ``logits`` (computed in float32 for
      half-precision logits).

    Raises:
      ValueError: wrong ranks (static check).
      tf.errors.InvalidArgumentError: lengths out of range (run-time check).

    Example:
      >>> loss = rnnt_loss(joint_logits, labels, enc_lengths, label_lengths)
      >>> loss = tf.reduce_mean(loss)
    """
    logits = tf.convert_to_tensor(logits)
    out_dtype = logits.dtype if logits.dtype.is_floating else tf.float32
    if logits.dtype not in (tf.float32, tf.float64):
        # float16/bfloat16 (mixed precision) cannot hold _NEG: use float32.
        logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    logit_lengths = tf.cast(tf.convert_to_tensor(logit_lengths), tf.int32)
    label_lengths = tf.cast(tf.convert_to_tensor(label_lengths), tf.int32)
    if logits.shape.rank != 4:
        raise ValueError(
            f"Expected logits of shape [B, T, U + 1, V]. Received shape {logits.shape}."
        )
    if labels.shape.rank != 2:
        raise ValueError(f"Expected labels of shape [B, U]. Received shape {labels.shape}.")
    if logit_lengths.shape.rank != 1 or label_lengths.shape.rank != 1:
        raise ValueError(
            "Expected logit_lengths and label_lengths of shape [B]. Received shapes "
            f"{logit_lengths.shape} and {label_lengths.shape}."
        )
    shape = tf.shape(logits)
    max_t, u1, vocab = shape[1], shape[2], shape[3]
    checks = [
        tf.debugging.assert_equal(
            tf.shape(labels)[1] + 1, u1, message="Expected logits.shape[2] == labels.shape[1] + 1"
        ),
        tf.debugging.assert_greater_equal(logit_lengths, 1, message="Expected logit_lengths >= 1"),
        tf.debugging.assert_less_equal(
            logit_lengths, max_t, message="Expected logit_lengths <= logits.shape[1]"
        ),
        tf.debugging.assert_greater_equal(label_lengths, 0, message="Expected label_lengths >= 0"),
        tf.debugging.assert_less_equal(
            label_lengths, u1 - 1, message="Expected label_lengths <= labels.shape[1]"
        ),
    ]
    with tf.control_dependencies(checks):
        # log_softmax is only needed at 2 of the V entries per cell: gather the
        # logits there and subtract the normalizer, instead of materialising
        # the whole [B, T, U+1, V] log-probability tensor.
        log_norm = tf.reduce_logsumexp(logits, axis=-1)  # [B, T, U1]
    blank_lp = logits[..., blank] - log_norm
    # Gather from the full last-but-one axis (labels padded by one column):
    # gathering from a slice made the backward pass ~10x slower.
    safe_labels = tf.clip_by_value(labels, 0, vocab - 1)
    safe_labels = tf.pad(safe_labels, [[0, 0], [0, 1]])
    label_idx = tf.broadcast_to(safe_labels[:, None, :], tf.shape(blank_lp))
    emit_lp = tf.gather(logits, label_idx, batch_dims=3) - log_norm
    # Column U has no label to emit.
    neg = tf.cast(_NEG, logits.dtype)
    emit_lp = tf.concat([emit_lp[:, :, :-1], tf.fill(tf.shape(blank_lp[:, :, :1]), neg)], axis=2)

    alphas = _alpha_diagonals(_skew(blank_lp, neg), _skew(emit_lp, neg))  # [D, B, U1]
    batch_idx = tf.range(tf.shape(logits)[0])
    last_t = logit_lengths - 1
    final_alpha = tf.gather_nd(
        alphas, tf.stack([last_t + label_lengths, batch_idx, label_lengths], axis=1)
    )
    final_blank = tf.gather_nd(blank_lp, tf.stack([batch_idx, last_t, label_lengths], axis=1))
    return tf.cast(-(final_alpha + final_blank), out_dtype)
