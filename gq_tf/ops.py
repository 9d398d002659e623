"""Pure TensorFlow functions of the General Quantizer (GQ_SPEC sections 2-4).

The tfmot ``Quantizer`` classes in ``gq_tf.quantizers`` are thin adapters over
these. ``gq_tf.reference`` is the NumPy truth they are tested against.
"""

import math

from gq_tf._keras import tf
from gq_tf.reference import SOFT_WINDOW_MIN_K

__all__ = [
    "compress",
    "expand",
    "gq_quantize",
    "gq_hard_assign",
    "gq_hardness",
    "uniform_quantize",
]


def compress(x, mu):
    """mu-law compressor; ``mu`` a Python number (0: identity) or a scalar tensor > 0.

    Works in the dtype of ``x`` (constants follow it).
    """
    if isinstance(mu, (int, float)):
        if mu == 0:
            return x
        return tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / math.log1p(mu)
    mu = tf.cast(mu, x.dtype)
    return tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / tf.math.log1p(mu)


def expand(y, mu):
    """mu-law expander, inverse of ``compress``."""
    if isinstance(mu, (int, float)):
        if mu == 0:
            return y
        return tf.sign(y) * tf.math.expm1(tf.abs(y) * math.log1p(mu)) / mu
    mu = tf.cast(mu, y.dtype)
    return tf.sign(y) * tf.math.expm1(tf.abs(y) * tf.math.log1p(mu)) / mu


def _companded(w, s, mu):
    return compress(tf.clip_by_value(w / s, -1.0, 1.0), mu)


def _window(z, theta, soft_window):
    """Distances to, and values of, the ``soft_window`` centroids nearest to each z.

    In 1-D the w nearest centroids are a contiguous run of the sorted table,
    and that run lies inside the 2w sorted centroids around z's insertion
    point; so only ``[N, 2w]`` candidates are ever materialised.

    Returns:
      (d, theta_near), both ``[N, soft_window]``, nearest first.
    """
    k = theta.shape[0]
    w = soft_window
    sorted_theta = tf.sort(theta)
    zf = tf.reshape(z, [-1])
    pos = tf.searchsorted(tf.stop_gradient(sorted_theta), tf.stop_gradient(zf), side="left")
    start = tf.clip_by_value(pos - w, 0, k - 2 * w)
    cand_idx = start[:, None] + tf.range(2 * w, dtype=start.dtype)[None, :]
    cand = tf.gather(sorted_theta, cand_idx)
    d_cand = tf.square(zf[:, None] - cand)
    _, near = tf.math.top_k(-tf.stop_gradient(d_cand), k=w, sorted=True)
    return (
        tf.gather(d_cand, near, batch_dims=1),
        tf.gather(cand, near, batch_dims=1),
    )


def _soft_and_hard(w, theta, s, mu, tau, soft_window):
    """(z, z_soft, z_hard, p_max) of spec section 3, shapes of ``w``."""
    k = theta.shape[0]
    delta = 2.0 / k
    z = _companded(w, s, mu)
    if k <= SOFT_WINDOW_MIN_K:
        d = tf.square(z[..., None] - theta)
        theta_near = theta
        z_hard = tf.gather(theta, tf.argmin(d, axis=-1))
    else:
        d, theta_near = _window(z, theta, soft_window)
        z_hard = tf.reshape(theta_near[:, 0], tf.shape(w))
    p = tf.nn.softmax(-d / (tau * delta**2), axis=-1)
    z_soft = tf.reshape(tf.reduce_sum(p * theta_near, axis=-1), tf.shape(w))
    p_max = tf.reshape(tf.reduce_max(p, axis=-1), tf.shape(w))
    return z_soft, z_hard, p_max


def gq_quantize(w, theta, s, mu, tau, hard, soft_window=4):
    """Training-time forward of GQ (spec section 3), with gradients to w, theta, s.

        x = clip(w / s, -1, 1);  z = F(x);  d_j = (z - theta_j)^2
        p_j = softmax_j(-d_j / (tau * delta^2)),  delta = 2 / K
        z_soft = sum_j p_j theta_j;  z_hard = theta_{argmin_j d_j}
        z_q = z_soft + hard * stop_gradient(z_hard - z_soft)
        W_hat = s * F_inv(z_q)

    Args:
      w: weight tensor.
      theta: [K] centroids in the companded domain.
      s: scalar scale > 0.
      mu: companding strength (Python float or scalar tensor).
      tau: temperature (scalar tensor).
      hard: 0.0 (soft phase) or 1.0 (hard value, straight-through), scalar.
      soft_window: window size for K > 16.

    Returns:
      W_hat, same shape as w.
    """
    z_soft, z_hard, _ = _soft_and_hard(w, theta, s, mu, tau, soft_window)
    z_q = z_soft + tf.cast(hard, z_soft.dtype) * tf.stop_gradient(z_hard - z_soft)
    return s * expand(z_q, mu)


def gq_hardness(w, theta, s, mu, tau, soft_window=4):
    """Mean over weights of max_j p_j: 1 when hard; its floor (uniform p) is 1/K,
    or 1/soft_window for K > 16, where p spans only the window."""
    _, _, p_max = _soft_and_hard(w, theta, s, mu, tau, soft_window)
    return tf.reduce_mean(p_max)


def gq_hard_assign(w, theta, s, mu):
    """Inference-time assignment (spec section 4), O(size(w)) memory for any K.

    Returns:
      (centroids, indices): centroids ``s * F_inv(theta)`` sorted ascending
      ([K] float32) and int32 indices into them, shape of ``w``. The
      inference weight is exactly ``tf.gather(centroids, indices)``.
    """
    k = theta.shape[0]
    sorted_theta = tf.sort(theta)
    centroids = s * expand(sorted_theta, mu)
    z = tf.reshape(_companded(w, s, mu), [-1])
    pos = tf.searchsorted(sorted_theta, z, side="left", out_type=tf.int32)
    left = tf.maximum(pos - 1, 0)
    right = tf.minimum(pos, k - 1)
    d_left = tf.square(z - tf.gather(sorted_theta, left))
    d_right = tf.square(z - tf.gather(sorted_theta, right))
    idx = tf.where(d_right < d_left, right, left)
    return centroids, tf.reshape(idx, tf.shape(w))


def uniform_quantize(w, bits):
    """Uniform symmetric per-kernel quantization (see ``reference.uniform_codebook``).

    Returns:
      (centroids, indices) like ``gq_hard_assign``.
    """
    if bits == 1:
        a = tf.reduce_mean(tf.abs(w))
        return tf.stack([-a, a]), tf.cast(w >= 0, tf.int32)
    half = 2 ** (bits - 1)
    qmax = half - 1
    # 1e-30 keeps an all-zero kernel finite (float32/float64; quantizers never
    # call this in half precision, see quantizers._KernelQuantizer.compute_dtype).
    scale = tf.maximum(tf.reduce_max(tf.abs(w)), 1e-30) / qmax
    q = tf.clip_by_value(tf.round(w / scale), -qmax, qmax)
    centroids = tf.cast(tf.range(-half, half), w.dtype) * scale
    return centroids, tf.cast(q, tf.int32) + half
