"""NumPy reference of the General Quantizer: the numerical truth of the project.

Everything here follows ``GQ_SPEC.md`` literally and favours clarity over speed
(full distance matrices, float64). The TensorFlow quantizer, the codebook export
and later the converter and C kernels are tested against these functions.

Packing of b-bit indices (``pack_indices``): the indices are laid out as one
little-endian bit stream. Index ``i`` occupies stream bits ``[i*b, (i+1)*b)``,
least significant bit first; stream bit ``k`` is bit ``k % 8`` of byte
``k // 8``. The last byte is zero-padded. ``n`` indices take
``ceil(n*b/8)`` bytes (see ``packed_nbytes``).
"""

import numbers

import numpy as np

__all__ = [
    "SOFT_WINDOW_MIN_K",
    "compress",
    "expand",
    "soft_assign",
    "hard_assign",
    "gq_forward",
    "codebook",
    "uniform_codebook",
    "pack_indices",
    "unpack_indices",
    "packed_nbytes",
    "fully_connected",
    "quantize_qd8",
    "fully_connected_qd8",
]

# For K > SOFT_WINDOW_MIN_K centroids the softmax runs over a window (spec 3).
SOFT_WINDOW_MIN_K = 16


def compress(x, mu):
    """mu-law compressor F(x) = sign(x) log(1 + mu|x|) / log(1 + mu); mu=0 is identity."""
    x = np.asarray(x, np.float64)
    if mu == 0:
        return x
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def expand(y, mu):
    """mu-law expander F_inv(y) = sign(y) ((1 + mu)^|y| - 1) / mu; mu=0 is identity."""
    y = np.asarray(y, np.float64)
    if mu == 0:
        return y
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def _companded(w, s, mu):
    return compress(np.clip(np.asarray(w, np.float64) / s, -1.0, 1.0), mu)


def _window_mask(d, soft_window):
    """True for the `soft_window` smallest distances of each row (K > 16 only)."""
    k = d.shape[-1]
    if k <= SOFT_WINDOW_MIN_K:
        return np.ones_like(d, dtype=bool)
    nearest = np.argsort(d, axis=-1, kind="stable")[..., :soft_window]
    mask = np.zeros_like(d, dtype=bool)
    np.put_along_axis(mask, nearest, True, axis=-1)
    return mask


def soft_assign(w, theta, s, mu, tau, soft_window=4):
    """Soft assignment probabilities p[..., j] of every weight (spec section 3).

    Returns:
      float64 array of shape ``w.shape + (K,)``; for K > 16 only the
      ``soft_window`` nearest centroids have non-zero probability.
    """
    theta = np.asarray(theta, np.float64)
    k = theta.shape[0]
    delta = 2.0 / k
    z = _companded(w, s, mu)
    d = (z[..., None] - theta) ** 2
    logits = -d / (tau * delta**2)
    logits = np.where(_window_mask(d, soft_window), logits, -np.inf)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def hard_assign(w, theta, s, mu):
    """Index j* of the nearest centroid (in theta's own order) of every weight."""
    z = _companded(w, s, mu)
    d = (z[..., None] - np.asarray(theta, np.float64)) ** 2
    return np.argmin(d, axis=-1)


def gq_forward(w, theta, s, mu, tau, hard, soft_window=4):
    """Forward value W_hat of spec section 3 (hard=True: the hard value)."""
    theta = np.asarray(theta, np.float64)
    if hard:
        z_q = theta[hard_assign(w, theta, s, mu)]
    else:
        z_q = np.sum(soft_assign(w, theta, s, mu, tau, soft_window) * theta, axis=-1)
    return s * expand(z_q, mu)


def codebook(w, theta, s, mu):
    """Export of one kernel (spec section 4).

    Returns:
      (centroids, indices): centroids ``s * F_inv(theta)`` sorted ascending
      (float64), indices uint8 into the sorted table, shape of ``w``.
    """
    theta = np.asarray(theta, np.float64)
    order = np.argsort(theta, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    centroids = s * expand(theta[order], mu)
    return centroids, rank[hard_assign(w, theta, s, mu)].astype(np.uint8)


def uniform_codebook(w, bits):
    """Uniform symmetric per-kernel quantization as a codebook (``gq_tf.Uniform``).

    bits >= 2: narrow-range grid ``q * scale``, ``q`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``,
    ``scale = max|W| / (2^(b-1)-1)``; index ``q + 2^(b-1)`` (index 0 unused, as
    -128 in int8). bits == 1: ``{-a, +a}`` with ``a = mean|W|``, index 1 for
    ``W >= 0``.

    Returns:
      (centroids, indices) as in ``codebook``.
    """
    w = np.asarray(w, np.float64)
    if bits == 1:
        a = np.mean(np.abs(w))
        return np.array([-a, a]), (w >= 0).astype(np.uint8)
    qmax = 2 ** (bits - 1) - 1
    scale = max(np.max(np.abs(w)), 1e-30) / qmax
    q = np.clip(np.round(w / scale), -qmax, qmax)
    centroids = (np.arange(2**bits) - 2 ** (bits - 1)) * scale
    return centroids, (q + 2 ** (bits - 1)).astype(np.uint8)


def packed_nbytes(n, bits):
    """Bytes taken by ``n`` densely packed ``bits``-bit indices."""
    return (int(n) * int(bits) + 7) // 8


def check_bits(bits, where="bits"):
    """Validates a bit depth (the one check of the project); returns it as a Python int.

    Raises:
      TypeError: ``bits`` is not an int (bools are not).
      ValueError: ``bits`` is outside 1..8.
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(
            f"Expected `{where}` to be an int in 1..8. Received: {bits!r} "
            f"of type {type(bits).__name__}."
        )
    if not 1 <= bits <= 8:
        raise ValueError(f"Expected `{where}` in 1..8. Received: {where}={bits}")
    return int(bits)


def pack_indices(indices, bits):
    """Packs b-bit indices into a little-endian bit stream (layout: module doc)."""
    check_bits(bits)
    idx = np.asarray(indices).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= 2**bits):
        raise ValueError(
            f"Expected indices in [0, {2**bits - 1}] for bits={bits}. "
            f"Received values in [{idx.min()}, {idx.max()}]."
        )
    # bits[i, k] = bit k of index i; flattening gives the stream in order.
    stream = ((idx.astype(np.uint16)[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_indices(packed, bits, n):
    """Inverse of ``pack_indices``: the first ``n`` indices as uint8."""
    check_bits(bits)
    packed = np.asarray(packed, np.uint8).reshape(-1)
    need = packed_nbytes(n, bits)
    if packed.size < need:
        raise ValueError(
            f"Expected at least {need} bytes for {n} indices of {bits} bits. "
            f"Received {packed.size} bytes."
        )
    stream = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.uint16) << np.arange(bits)).sum(axis=1).astype(np.uint8)


_ACTIVATIONS = {
    "NONE": lambda y: y,
    "RELU": lambda y: np.maximum(y, 0.0),
    "RELU_N1_TO_1": lambda y: np.clip(y, -1.0, 1.0),
    "RELU6": lambda y: np.clip(y, 0.0, 6.0),
}


def fully_connected(x, indices, centroids, bias=None, activation="NONE"):
    """Reference GEMV/GEMM of ``GQ_FULLY_CONNECTED``, in float64.

    ``y = act(x @ centroids[indices]^T + bias)`` with ``indices`` [out, in]
    and ``x`` [..., in]; the C kernels are tested against it.

    Raises:
      ValueError: unknown activation or mismatched shapes.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Expected activation in {sorted(_ACTIVATIONS)}. Received: {activation!r}")
    x = np.asarray(x, np.float64)
    w = np.asarray(centroids, np.float64)[np.asarray(indices)]
    if w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"Expected x [..., {w.shape[-1]}] for indices {w.shape}. Received x {x.shape}.")
    y = x @ w.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return _ACTIVATIONS[activation](y)


def quantize_qd8(v):
    """Rounds float32 rows to int8 as the qd8 kernels do (``gq_fc.h``).

    Per row (last axis): ``m = max|v|``, ``inv = 127 / m`` (0 when m is 0),
    codes ``rint(clip(v * inv, -127, 127))`` with the product in float32 and
    ties to even, scale ``m / 127``. Returns ``(codes int8, scales float32)``.
    """
    v = np.asarray(v, np.float32)
    m = np.max(np.abs(v), axis=-1, keepdims=True)
    safe = np.where(m > 0, m, np.float32(1))
    inv = np.where(m > 0, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    codes = np.rint(np.clip(v * inv, np.float32(-127), np.float32(127))).astype(np.int8)
    return codes, (m[..., 0] / np.float32(127)).astype(np.float32)


def fully_connected_qd8(x, indices, centroids, bias=None, activation="NONE"):
    """The qd8 kernels' arithmetic in NumPy (``gq_fc.h``): x rounded to int8
    per row, centroids to int8 codes with one scale, exact integer sums, and
    ``y = act(float32(acc) * float32(sx * sc) + bias)``.

    Returns ``(y, tol, bound)``, all float64 with y's shape:
      y     the value before the last float32 roundings (the kernels round
            the product and the sum, possibly fused);
      tol   how far a kernel may be from y for those roundings (2 ulp);
      bound the largest distance of the qd8 result from the exact float
            result ``fully_connected(...)``, from the two int8 roundings:
            ``sum_i |x_i| sc/2 + |w_i| sx/2 + sx sc/4`` (plus tol).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Expected activation in {sorted(_ACTIVATIONS)}. Received: {activation!r}")
    x = np.asarray(x, np.float32)
    indices = np.asarray(indices)
    xq, sx = quantize_qd8(x)
    cq, sc = quantize_qd8(np.asarray(centroids, np.float32))
    acc = xq.astype(np.int64) @ cq.astype(np.int64)[indices].T
    scale = (sx * sc).astype(np.float32).astype(np.float64)[..., None]
    prod = acc.astype(np.float32).astype(np.float64) * scale
    b = np.zeros(indices.shape[0]) if bias is None else np.asarray(bias, np.float32).astype(np.float64)
    y = prod + b
    tol = 2.0**-22 * (np.abs(prod) + np.abs(b)) + 1e-30
    w = np.abs(np.asarray(centroids, np.float64)[indices])
    sx64, sc64 = sx.astype(np.float64)[..., None], float(sc)
    bound = (np.abs(x.astype(np.float64)) @ np.ones(indices.shape[1]))[..., None] * sc64 / 2
    bound = bound + (w.sum(axis=1) * sx64 / 2) + indices.shape[1] * sx64 * sc64 / 4 + tol
    return _ACTIVATIONS[activation](y), tol, bound
