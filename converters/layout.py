"""The packed weight layout of ``GQ_FULLY_CONNECTED`` version 1 ("planes64").

This module writes the bytes the C kernels read in place, and decodes them
again for tests. It is the only definition of the layout; the C side
(``converters/kernels/gq_fc.h``) states the same rules.

Weights
  ``W`` is the [out, in] matrix of b-bit codebook indices (``y = x @ W^T``),
  b in 1..8, ``centroids[W]`` the real weights.

Rows and blocks
  Every row is cut into blocks of 64 consecutive weights; the last block of a
  row is padded with index 0 up to 64 (so every row starts on a whole block
  and the kernels never need a tail case on the weight side). A row takes
  ``ceil(in / 64) * 8 * b`` bytes and rows are stored one after another, row 0
  first: the whole tensor is ``out * ceil(in / 64) * 8 * b`` bytes. With ``in``
  a multiple of 64 that is exactly ``b`` bits per weight.

Planes
  The b bits of an index are split into planes of power-of-two width, widest
  first: b = 8 is one plane of width 8; otherwise one plane for each of the
  widths 4, 2, 1 that is set in b (5 = 4 + 1, 6 = 4 + 2, 7 = 4 + 2 + 1,
  3 = 2 + 1). The first plane holds the lowest bits of the index, the next
  plane the next bits, and so on (b = 5: plane 0 = bits 0..3, plane 1 = bit 4).
  A block is its planes one after another; a plane of width w takes 8*w bytes,
  so a block takes 8*b bytes.

Inside a plane of width w (8w bytes, m = 8 / w fields per byte)
  bits [w*s, w*s + w) of byte k (0 <= k < 8w, 0 <= s < m) hold the plane's
  bits of weight ``s * 8w + k`` of the block. Field s of every byte therefore
  is a run of 8w consecutive weights: a SIMD kernel shifts the plane right by
  w*s and masks with 2^w - 1 to get weights [8ws, 8ws + 8w) as bytes, in
  order, with no shuffling. For w = 4 this is the low nibbles = weights 0..31,
  high nibbles = 32..63; for w = 1, bit s of byte k = weight 8s + k.

Nothing else is stored: the centroid table (float32 [2**b]) and the bias are
separate inputs of the op, and the shape and b are op options.
"""

import numpy as np

from gq_tf.reference import check_bits

__all__ = [
    "LAYOUT_VERSION",
    "BLOCK",
    "plane_widths",
    "row_bytes",
    "packed_size",
    "pack",
    "unpack",
]

LAYOUT_VERSION = 1
BLOCK = 64  # weights per block


def _check(bits, in_features, out_features):
    check_bits(bits)
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"Expected {name} >= 1. Received: {name}={v!r}")


def plane_widths(bits):
    """Plane widths of a b-bit index, first plane (lowest bits) first."""
    _check(bits, 1, 1)
    return (8,) if bits == 8 else tuple(w for w in (4, 2, 1) if bits & w)


def row_bytes(bits, in_features):
    """Bytes of one packed row of ``in_features`` weights."""
    _check(bits, in_features, 1)
    return -(-int(in_features) // BLOCK) * 8 * int(bits)


def packed_size(bits, in_features, out_features):
    """Bytes of the packed [out, in] index matrix."""
    _check(bits, in_features, out_features)
    return int(out_features) * row_bytes(bits, in_features)


def pack(indices, bits):
    """Packs an [out, in] index matrix into the planes64 layout.

    Args:
      indices: integer array [out, in], values in [0, 2**bits).
      bits: bit depth b in 1..8.

    Returns:
      uint8 array of ``packed_size(bits, in, out)`` bytes.

    Raises:
      ValueError: bad bits, shape or index values.
    """
    idx = np.asarray(indices)
    if idx.ndim != 2 or 0 in idx.shape:
        raise ValueError(f"Expected a non-empty [out, in] index matrix. Received shape {idx.shape}.")
    out_f, in_f = idx.shape
    _check(bits, in_f, out_f)
    if idx.min() < 0 or idx.max() >= 2**bits:
        raise ValueError(
            f"Expected indices in [0, {2**bits - 1}] for bits={bits}. "
            f"Received values in [{idx.min()}, {idx.max()}]."
        )
    nb = -(-in_f // BLOCK)
    padded = np.zeros((out_f, nb * BLOCK), np.uint8)
    padded[:, :in_f] = idx
    blocks = padded.reshape(out_f, nb, BLOCK)
    planes, shift = [], 0
    for w in plane_widths(bits):
        vals = ((blocks >> shift) & ((1 << w) - 1)).reshape(out_f, nb, 8 // w, 8 * w)
        fields = vals.astype(np.uint16) << (w * np.arange(8 // w, dtype=np.uint16))[:, None]
        planes.append(fields.sum(axis=2).astype(np.uint8))
        shift += w
    return np.concatenate(planes, axis=2).reshape(-1)


def unpack(packed, bits, in_features, out_features):
    """Inverse of ``pack``: the [out, in] uint8 index matrix (padding dropped).

    Raises:
      ValueError: ``packed`` does not have exactly the layout's size.
    """
    need = packed_size(bits, in_features, out_features)
    buf = np.asarray(packed, np.uint8).reshape(-1)
    if buf.size != need:
        raise ValueError(
            f"Expected {need} packed bytes for bits={bits}, in={in_features}, "
            f"out={out_features}. Received {buf.size} bytes."
        )
    nb = -(-int(in_features) // BLOCK)
    blocks = buf.reshape(out_features, nb, 8 * bits)
    idx = np.zeros((out_features, nb, BLOCK), np.uint8)
    start, shift = 0, 0
    for w in plane_widths(bits):
        plane = blocks[:, :, start : start + 8 * w]
        fields = (plane[:, :, None, :] >> (w * np.arange(8 // w, dtype=np.uint8))[:, None]) & ((1 << w) - 1)
        idx |= (fields.reshape(out_features, nb, BLOCK) << shift).astype(np.uint8)
        start += 8 * w
        shift += w
    return idx.reshape(out_features, nb * BLOCK)[:, :in_features]
