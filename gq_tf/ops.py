"""Pure TensorFlow functions of the General Quantizer (GQ_SPEC sections 2-4).

The tfmot ``Quantizer`` classes in ``gq_tf.quantizers`` are thin adapters over
these. ``gq_tf.reference`` is the NumPy truth they are tested against.
"""

import functools
import math

from gq_tf._keras import tf
from gq_tf.reference import SOFT_WINDOW_MIN_K

# Which gradient GeneralQuantizer trains with: "custom" (``gq_quantize``'s
# own, memory O(size(w))) or "autodiff" (``gq_quantize_autodiff``, TensorFlow's
# autodiff of the same ops, memory O(size(w) * K)). Read when a training graph
# is traced; the training benchmark (``python -m gq_speech.trainbench``)
# compares the two, nothing else needs to change it.
TRAINING_GRADIENT = "custom"

__all__ = [
    "TRAINING_GRADIENT",
    "compress",
    "expand",
    "gq_quantize",
    "gq_quantize_autodiff",
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


def gq_quantize_autodiff(w, theta, s, mu, tau, hard, soft_window=4):
    """``gq_quantize`` as TensorFlow's autodiff of the spec's ops: the
    reference its custom gradient is tested against. Its memory is
    O(size(w) * min(K, 2 * soft_window)) floats kept for the backward pass."""
    z_soft, z_hard, _ = _soft_and_hard(w, theta, s, mu, tau, soft_window)
    z_q = z_soft + tf.cast(hard, z_soft.dtype) * tf.stop_gradient(z_hard - z_soft)
    return s * expand(z_q, mu)


def _soft_parts(zf, theta, tau, soft_window):
    """The softmax of spec section 3 for flat companded weights ``zf`` [N].

    Returns:
      (p, near, idx): probabilities and centroid values, both [N, m] (m = K,
      or the ``soft_window`` nearest for K > 16), and the centroids' indices
      into ``theta`` ([N, m] int32; None when m = K, all centroids in order).
    """
    k = theta.shape[0]
    delta = 2.0 / k
    if k <= SOFT_WINDOW_MIN_K:
        d = tf.square(zf[:, None] - theta[None, :])
        near, idx = tf.broadcast_to(theta[None, :], tf.shape(d)), None
    else:
        w = soft_window
        order = tf.cast(tf.argsort(theta, stable=True), tf.int32)
        sorted_theta = tf.gather(theta, order)
        pos = _lower_bound(sorted_theta, zf)
        start = tf.clip_by_value(pos - w, 0, k - 2 * w)
        cand_idx = start[:, None] + tf.range(2 * w, dtype=tf.int32)[None, :]
        cand = tf.gather(sorted_theta, cand_idx)
        d_cand = tf.square(zf[:, None] - cand)
        # The candidates are sorted, so their distances to z fall, then rise:
        # the w nearest are the run that starts where sliding right stops
        # paying (d_j > d_{j+w}), no sort needed (top_k is slow under XLA).
        first = tf.reduce_sum(tf.cast(d_cand[:, :w] > d_cand[:, w:], tf.int32), axis=1)
        sel = first[:, None] + tf.range(w, dtype=tf.int32)[None, :]
        d = tf.gather(d_cand, sel, batch_dims=1)
        near = tf.gather(cand, sel, batch_dims=1)
        idx = tf.gather(order, start[:, None] + sel)
    p = tf.nn.softmax(-d / (tau * delta**2), axis=-1)
    return p, near, idx


def _lower_bound(sorted_theta, zf):
    """``searchsorted(sorted_theta, zf, side="left")`` as log2(K) gathers of [N]
    (XLA lowers searchsorted to a [N, K] comparison)."""
    k = sorted_theta.shape[0]
    pos = tf.zeros(tf.shape(zf), tf.int32)
    step = 1 << (k.bit_length() - 1)
    while step:
        cand = pos + step  # "at least cand centroids lie below z"?
        below = tf.gather(sorted_theta, tf.minimum(cand, k) - 1) < zf
        pos = tf.where((cand <= k) & below, cand, pos)
        step >>= 1
    return pos


def _nearest_index(sorted_theta, zf):
    """Index into ``sorted_theta`` of the centroid nearest to each of ``zf`` ([N]),
    in O(N) memory (the lower one on a tie)."""
    k = sorted_theta.shape[0]
    pos = _lower_bound(sorted_theta, zf)
    left, right = tf.maximum(pos - 1, 0), tf.minimum(pos, k - 1)
    d_left = tf.square(zf - tf.gather(sorted_theta, left))
    d_right = tf.square(zf - tf.gather(sorted_theta, right))
    return tf.where(d_right < d_left, right, left)


def _nearest(zf, theta):
    """theta's nearest centroid to each of ``zf`` ([N])."""
    sorted_theta = tf.sort(theta)
    return tf.gather(sorted_theta, _nearest_index(sorted_theta, zf))


# Weights per step of the quantizer's loops: the [CHUNK, K] softmax
# temporaries stay a few MB whatever the kernel's size.
CHUNK = 1 << 16


def _chunks(x):
    """Flat ``x`` [n] as [ceil(n / CHUNK), CHUNK] rows (the last one zero-padded),
    or one row when it is smaller."""
    n = x.shape[0]
    size = min(n, CHUNK)
    rows = -(-n // size)
    return tf.reshape(tf.pad(x, [[0, rows * size - n]]), [rows, size])


@functools.lru_cache(maxsize=None)
def _cores(soft_window, mu_const):
    """``gq_quantize``'s forward and backward passes for one kernel, each compiled
    by XLA into one op: the ``[size(w), K]`` softmax and every ``[size(w)]``
    temporary exist only while that op runs (TensorFlow's executor would
    otherwise start every kernel's quantizer at once and hold all of their
    temporaries together), and the softmax fuses into loops.

    ``mu_const``: mu as a Python float, or None when mu is a tensor (trainable).

    Returns:
      (forward(w, s, mu, theta, tau, hard) -> W_hat,
       backward(w, s, mu, theta, tau, hard, g) -> (dL/dw, dL/dtheta, dL/ds, dL/dmu)).
    """
    zero = tf.UnconnectedGradients.ZERO

    def mu_of(mu_t):
        return mu_t if mu_const is None else mu_const

    def zq_of(zf, theta, tau, hard):
        z_hard = _nearest(zf, theta)

        def soft():
            p, near, _ = _soft_parts(zf, theta, tau, soft_window)
            z_soft = tf.reduce_sum(p * near, axis=-1)
            return z_soft + hard * (z_hard - z_soft)

        # The hard phase's value needs no softmax.
        return tf.cond(hard >= 1.0, lambda: z_hard, soft)

    @tf.function(jit_compile=True, autograph=False)
    def forward(w, s, mu_t, theta, tau, hard):
        m = mu_of(mu_t)
        zf = tf.reshape(_companded(w, s, m), [-1])
        zq = tf.map_fn(lambda zc: zq_of(zc, theta, tau, hard), _chunks(zf), fn_output_signature=zf.dtype)
        return s * expand(tf.reshape(tf.reshape(zq, [-1])[: zf.shape[0]], tf.shape(w)), m)

    def backward_chunk(wc, gc, s, mu_t, theta, tau, hard):
        k = theta.shape[0]
        c = 2.0 / (tau * (2.0 / k) ** 2)
        with tf.GradientTape() as tape_z:
            tape_z.watch([wc, s, mu_t])
            zc = _companded(wc, s, mu_of(mu_t))
        p, near, idx = _soft_parts(zc, theta, tau, soft_window)
        z_soft = tf.reduce_sum(p * near, axis=-1)
        zq = z_soft + hard * (_nearest(zc, theta) - z_soft)
        with tf.GradientTape() as tape_e:
            tape_e.watch([zq, s, mu_t])
            value = s * expand(zq, mu_of(mu_t))
        g_zq, g_s, g_mu = tape_e.gradient(value, [zq, s, mu_t], output_gradients=gc, unconnected_gradients=zero)
        z_col, g_col = zc[:, None], g_zq[:, None]
        r = p * (near - z_soft[:, None])
        g_z = g_zq * c * tf.reduce_sum(r * (near - z_col), axis=-1)
        per_centroid = g_col * (p + c * r * (z_col - near))
        if idx is None:
            g_theta = tf.reduce_sum(per_centroid, axis=0)
        else:
            g_theta = tf.math.unsorted_segment_sum(tf.reshape(per_centroid, [-1]), tf.reshape(idx, [-1]), k)
        g_w, g_s_z, g_mu_z = tape_z.gradient(zc, [wc, s, mu_t], output_gradients=g_z, unconnected_gradients=zero)
        return g_w, g_theta, g_s + g_s_z, g_mu + g_mu_z

    @tf.function(jit_compile=True, autograph=False)
    def backward(w, s, mu_t, theta, tau, hard, g):
        # Chunk by chunk: the [chunk, K] softmax is all that ever exists.
        # Padding is w = 0 with g = 0, which adds nothing to any gradient.
        n, dtype = w.shape.num_elements(), w.dtype
        parts = tf.map_fn(lambda a: backward_chunk(a[0], a[1], s, mu_t, theta, tau, hard),
                          (_chunks(tf.reshape(w, [-1])), _chunks(tf.reshape(g, [-1]))),
                          fn_output_signature=(dtype, tf.TensorSpec(theta.shape, dtype), dtype, dtype))
        g_w = tf.reshape(tf.reshape(parts[0], [-1])[:n], tf.shape(w))
        return g_w, tf.reduce_sum(parts[1], axis=0), tf.reduce_sum(parts[2]), tf.reduce_sum(parts[3])

    return forward, backward


def gq_quantize(w, theta, s, mu, tau, hard, soft_window=4):
    """Training-time forward of GQ (spec section 3), with gradients to w, theta, s
    (and mu when it is a tensor).

        x = clip(w / s, -1, 1);  z = F(x);  d_j = (z - theta_j)^2
        p_j = softmax_j(-d_j / (tau * delta^2)),  delta = 2 / K
        z_soft = sum_j p_j theta_j;  z_hard = theta_{argmin_j d_j}
        z_q = z_soft + hard * stop_gradient(z_hard - z_soft)
        W_hat = s * F_inv(z_q)

    Values and gradients are those of ``gq_quantize_autodiff`` (float
    rounding apart); the memory is not: the backward pass keeps only the
    inputs and recomputes the assignment, with the closed-form softmax
    gradient

        dz_soft/dz       = c * sum_j r_j (theta_j - z)
        dz_soft/dtheta_j = p_j + c * r_j (z - theta_j),   r_j = p_j (theta_j - z_soft),
                                                           c = 2 / (tau * delta^2)

    so a kernel's ``[size(w), K]`` tensors live only inside its own forward
    or backward step, never from one to the other. The elementwise parts
    (companding, clipping, expanding) are differentiated by TensorFlow in
    the backward pass. In the hard phase (``hard == 1``) the forward pass
    computes no softmax: the value is ``s * F_inv(z_hard)``, and the
    straight-through gradient still flows through ``z_soft``.

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
    dtype = w.dtype
    tau = tf.stop_gradient(tf.cast(tau, dtype))
    hard = tf.stop_gradient(tf.cast(hard, dtype))
    mu_is_tensor = not isinstance(mu, (int, float))
    # Plain tensors in (a variable read inside would need custom_gradient's
    # `variables` protocol).
    theta, s = tf.identity(theta), tf.identity(s)
    mu_t = tf.identity(tf.cast(mu, dtype)) if mu_is_tensor else tf.zeros([], dtype)
    forward, backward = _cores(soft_window, None if mu_is_tensor else float(mu))

    @tf.custom_gradient
    def quantize(w, theta_in, s_in, mu_in):
        # The compiled passes are opaque to autodiff (stop_gradient: TensorFlow
        # would otherwise build a differentiable twin of their loops).
        args = [tf.stop_gradient(x) for x in (w, s_in, mu_in, theta_in)] + [tau, hard]

        def grad(g):
            # An embedding's gradient comes as IndexedSlices, without a static shape.
            g = tf.reshape(tf.convert_to_tensor(g), w.shape)
            g_w, g_theta, g_s, g_mu = backward(*args, tf.stop_gradient(g))
            return g_w, g_theta, g_s, (g_mu if mu_is_tensor else None)

        return forward(*args), grad

    return quantize(w, theta, s, mu_t)


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
    sorted_theta = tf.sort(theta)
    centroids = s * expand(sorted_theta, mu)
    idx = _nearest_index(sorted_theta, tf.reshape(_companded(w, s, mu), [-1]))
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
