"""Tests of the NumPy reference (``gq_tf.reference``), the project's numerical truth.

Everything else (TF ops, codebook export, converter, C kernels) is tested
against these functions, so they are pinned here on their own: algebraic
properties of the maps, the exact byte layout of packed indices, and the
soft/hard assignment of GQ_SPEC section 3.
"""

import math

import numpy as np
import pytest

import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from gq_tf import reference as ref

MUS = (0, 1, 8, 32, 255)
ALL_BITS = tuple(range(1, 9))


def _mids(k):
    """Initial centroids of the spec: bin mid-points -1 + (2j+1)/K."""
    return -1.0 + (2.0 * np.arange(k) + 1.0) / k


# ---------------------------------------------------------------------------
# mu-law maps (spec section 2)


@pytest.mark.parametrize("mu", MUS)
def test_compress_expand_are_inverses(mu):
    x = np.linspace(-1.0, 1.0, 2001)
    y = np.random.default_rng(mu).uniform(-1.0, 1.0, 1000)
    # float64 round trip: a few ulp, amplified by F_inv' <= ln(256)*256/255 ~ 5.6 at mu=255.
    tol = 1e-13
    np.testing.assert_allclose(ref.expand(ref.compress(x, mu), mu), x, rtol=0, atol=tol)
    np.testing.assert_allclose(ref.compress(ref.expand(y, mu), mu), y, rtol=0, atol=tol)


@pytest.mark.parametrize("mu", MUS)
def test_compress_is_monotone_odd_and_maps_unit_interval_onto_itself(mu):
    x = np.linspace(-1.0, 1.0, 4001)
    z = ref.compress(x, mu)
    assert np.all(np.diff(z) > 0), f"compress(mu={mu}) is not strictly increasing"
    assert np.all(np.abs(z) <= 1.0), f"compress(mu={mu}) leaves [-1, 1]"
    # Onto: the end points are reached exactly (log1p(mu)/log1p(mu) is exactly 1).
    assert ref.compress(1.0, mu) == 1.0
    assert ref.compress(-1.0, mu) == -1.0
    assert ref.compress(0.0, mu) == 0.0
    # Odd, exactly: F is written as sign(x) * f(|x|).
    np.testing.assert_array_equal(ref.compress(-x, mu), -z)
    np.testing.assert_array_equal(ref.expand(-z, mu), -ref.expand(z, mu))


def test_mu_zero_is_identity():
    x = np.random.default_rng(0).uniform(-1.0, 1.0, 100)
    np.testing.assert_array_equal(ref.compress(x, 0), x)
    np.testing.assert_array_equal(ref.expand(x, 0), x)


@pytest.mark.parametrize("mu", (1, 8, 255))
def test_compress_matches_the_spec_formula(mu):
    x = np.linspace(-1.0, 1.0, 101)
    expected = np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)
    # log1p vs log(1 + .): both float64, they differ by a few ulp at most.
    np.testing.assert_allclose(ref.compress(x, mu), expected, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# Packing of b-bit indices (layout in the module docstring)

SIZES = (0, 1, 7, 8, 9, 1000, 1001)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n", SIZES)
def test_pack_unpack_round_trip(bits, n):
    idx = np.random.default_rng([bits, n]).integers(0, 2**bits, size=n)
    packed = ref.pack_indices(idx, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (math.ceil(n * bits / 8),)
    assert packed.size == ref.packed_nbytes(n, bits)
    out = ref.unpack_indices(packed, bits, n)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_uses_every_value_and_pads_with_zero_bits(bits):
    # All 2**bits values plus one extra, so the last byte is partly padding
    # whenever 8 does not divide (2**bits + 1) * bits.
    idx = np.concatenate([np.arange(2**bits), [2**bits - 1]]).astype(np.uint8)
    packed = ref.pack_indices(idx, bits)
    np.testing.assert_array_equal(ref.unpack_indices(packed, bits, idx.size), idx)
    used = idx.size * bits
    stream = np.unpackbits(packed, bitorder="little")
    assert not stream[used:].any(), "padding bits of the last byte must be zero"


def test_packed_nbytes():
    for bits in ALL_BITS:
        for n in SIZES:
            assert ref.packed_nbytes(n, bits) == math.ceil(n * bits / 8)


def test_pack_bytes_by_hand_1_bit():
    # Index i is bit i: byte 0 = 1 + 4 + 8 + 128 = 0x8D; byte 1 = bit 0 (index 8).
    idx = [1, 0, 1, 1, 0, 0, 0, 1, 1, 0]
    packed = ref.pack_indices(idx, 1)
    np.testing.assert_array_equal(packed, np.array([0x8D, 0x01], np.uint8))
    np.testing.assert_array_equal(ref.unpack_indices(packed, 1, len(idx)), idx)


def test_pack_bytes_by_hand_3_bits():
    # 5=101b -> stream bits 0..2 = 1,0,1;  3=011b -> bits 3..5 = 1,1,0;
    # 7=111b -> bits 6..8 = 1,1,1;        0 -> bits 9..11 = 0,0,0;
    # 6=110b -> bits 12..14 = 0,1,1;      bit 15 is padding.
    # byte 0 = bits 0..7 = 1,0,1,1,1,0,1,1 -> 1+4+8+16+64+128 = 221 = 0xDD
    # byte 1 = bits 8..15 = 1,0,0,0,0,1,1,0 -> 1+32+64 = 97 = 0x61
    idx = [5, 3, 7, 0, 6]
    packed = ref.pack_indices(idx, 3)
    np.testing.assert_array_equal(packed, np.array([0xDD, 0x61], np.uint8))
    np.testing.assert_array_equal(ref.unpack_indices(packed, 3, len(idx)), idx)


def test_pack_bytes_by_hand_5_bits():
    # 17=10001b -> bits 0..4 = 1,0,0,0,1;   9=01001b -> bits 5..9 = 1,0,0,1,0;
    # 31 -> bits 10..14 = 1,1,1,1,1;        2=00010b -> bits 15..19 = 0,1,0,0,0.
    # byte 0 = bits 0..7  = 1,0,0,0,1,1,0,0 -> 1+16+32 = 49 = 0x31
    # byte 1 = bits 8..15 = 1,0,1,1,1,1,1,0 -> 1+4+8+16+32+64 = 125 = 0x7D
    # byte 2 = bits 16..23 = 1,0,0,0 + padding -> 0x01
    idx = [17, 9, 31, 2]
    packed = ref.pack_indices(idx, 5)
    np.testing.assert_array_equal(packed, np.array([0x31, 0x7D, 0x01], np.uint8))
    np.testing.assert_array_equal(ref.unpack_indices(packed, 5, len(idx)), idx)


@pytest.mark.parametrize("bits, error", [(0, ValueError), (9, ValueError), (-1, ValueError), (True, TypeError),
                                         (2.0, TypeError), ("4", TypeError)])
def test_pack_and_unpack_reject_bad_bits(bits, error):
    """One bits check for the project (reference.check_bits): a wrong type is a
    TypeError, a wrong value a ValueError."""
    with pytest.raises(error, match=r"1\.\.8.*Received"):
        ref.pack_indices([0, 1], bits)
    with pytest.raises(error, match=r"1\.\.8.*Received"):
        ref.unpack_indices(np.zeros(4, np.uint8), bits, 2)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_rejects_out_of_range_indices(bits):
    with pytest.raises(ValueError, match=rf"\[0, {2**bits - 1}\].*{2**bits}"):
        ref.pack_indices([0, 2**bits, 1], bits)
    with pytest.raises(ValueError, match=r"-1"):
        ref.pack_indices([0, -1], bits)


def test_unpack_rejects_too_short_buffer():
    packed = ref.pack_indices(np.arange(8) % 8, 3)  # 24 bits = 3 bytes
    assert packed.size == 3
    with pytest.raises(ValueError, match=r"at least 3 bytes.*Received 2 bytes"):
        ref.unpack_indices(packed[:2], 3, 8)
    with pytest.raises(ValueError, match=r"at least 4 bytes.*Received 3 bytes"):
        ref.unpack_indices(packed, 3, 9)


# ---------------------------------------------------------------------------
# Soft and hard assignment (spec section 3)


def _companded(w, s, mu):
    return ref.compress(np.clip(w / s, -1.0, 1.0), mu)


def _tie_free_weights(rng, n, theta, s, mu, gap):
    """n weights (some beyond s) whose two nearest centroids differ by > gap in distance."""
    pool = rng.normal(0.0, 0.7 * s, size=8 * n)
    r = np.sort(np.abs(_companded(pool, s, mu)[:, None] - theta), axis=1)
    ok = r[:, 1] - r[:, 0] > gap
    if theta.size > ref.SOFT_WINDOW_MIN_K:
        ok &= r[:, 4] - r[:, 3] > gap  # the window boundary of soft_window=4
    assert ok.sum() >= n, "test data generator ran out of tie-free weights"
    return pool[ok][:n]


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("tau", (0.05, 1.0, 20.0))
def test_soft_assign_rows_are_probabilities(bits, tau):
    rng = np.random.default_rng([bits, int(tau * 100)])
    k = 2**bits
    theta = rng.uniform(-1.0, 1.0, k)
    w = rng.normal(0.0, 1.0, size=(6, 11))
    p = ref.soft_assign(w, theta, 1.3, 8.0, tau)
    assert p.shape == w.shape + (k,)
    assert np.all(p >= 0.0)
    # A sum of at most 256 float64 terms in [0, 1]: a few ulp each.
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-13)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
def test_soft_assign_becomes_hard_assign_as_tau_vanishes(bits, mu):
    rng = np.random.default_rng([bits, mu])
    k = 2**bits
    theta = rng.permutation(_mids(k) + rng.uniform(-0.3, 0.3, k) / k)
    s = 0.9
    # A distance gap >= 1e-6 over tau*delta^2 <= 1e-12 puts the runner-up's
    # logit below -1e6, where exp() is exactly 0 in float64: p is exactly one-hot.
    w = _tie_free_weights(rng, 300, theta, s, mu, gap=1e-3)
    p = ref.soft_assign(w, theta, s, mu, tau=1e-12)
    j = ref.hard_assign(w, theta, s, mu)
    np.testing.assert_array_equal(p, np.eye(k)[j])
    z = _companded(w, s, mu)
    np.testing.assert_array_equal(j, np.argmin(np.abs(z[:, None] - theta), axis=1))


@pytest.mark.parametrize("bits", (5, 6, 7, 8))
@pytest.mark.parametrize("soft_window", (1, 2, 4, 7))
def test_soft_window_keeps_exactly_the_nearest_centroids(bits, soft_window):
    rng = np.random.default_rng([bits, soft_window])
    k = 2**bits
    assert k > ref.SOFT_WINDOW_MIN_K
    # Spacing ~delta and tau=1: every window member has a logit > -100, so its
    # probability is far from underflowing to 0.
    theta = rng.permutation(_mids(k) + rng.uniform(-0.3, 0.3, k) / k)
    s = 1.1
    w = rng.normal(0.0, 0.8, size=2000)
    z = _companded(w, s, mu=8.0)
    dist = np.abs(z[:, None] - theta)
    srt = np.sort(dist, axis=1)
    keep = srt[:, soft_window] - srt[:, soft_window - 1] > 1e-9  # no tie at the window edge
    w, dist = w[keep], dist[keep]
    p = ref.soft_assign(w, theta, s, 8.0, tau=1.0, soft_window=soft_window)
    assert np.all((p > 0).sum(axis=-1) == soft_window)
    nearest = np.argsort(dist, axis=1)[:, :soft_window]
    expected = np.zeros_like(p, dtype=bool)
    np.put_along_axis(expected, nearest, True, axis=1)
    np.testing.assert_array_equal(p > 0, expected)


@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_no_window_for_small_codebooks(bits):
    k = 2**bits
    theta = _mids(k)
    w = np.linspace(-1.0, 1.0, 50)
    p = ref.soft_assign(w, theta, 1.0, 8.0, tau=1.0, soft_window=1)
    assert np.all(p > 0), "K <= 16 must use the full softmax whatever soft_window is"


@pytest.mark.parametrize("bits", ALL_BITS)
def test_gq_forward_soft_is_the_expectation_of_theta(bits):
    rng = np.random.default_rng(bits)
    k = 2**bits
    theta = rng.uniform(-1.0, 1.0, k)
    w = rng.normal(0.0, 1.0, size=(5, 7))
    s, mu, tau = 1.2, 8.0, 0.3
    p = ref.soft_assign(w, theta, s, mu, tau)
    expected = s * ref.expand(np.sum(p * theta, axis=-1), mu)
    # Same float64 formula evaluated twice: only summation-order rounding.
    np.testing.assert_allclose(ref.gq_forward(w, theta, s, mu, tau, hard=False), expected, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# Export (spec section 4)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("mu", (0, 8, 255))
def test_codebook_decodes_to_the_hard_forward(bits, mu):
    rng = np.random.default_rng([bits, mu, 7])
    k = 2**bits
    theta = rng.uniform(-1.0, 1.0, k)  # deliberately unsorted
    s = float(rng.uniform(0.1, 3.0))
    w = rng.normal(0.0, 0.8 * s, size=(9, 13))
    assert np.any(np.abs(w) > s), "want some clipped weights"
    centroids, indices = ref.codebook(w, theta, s, mu)
    assert centroids.shape == (k,)
    assert np.all(np.diff(centroids) >= 0), "centroids must be sorted ascending"
    assert indices.dtype == np.uint8
    assert indices.shape == w.shape
    assert int(indices.max()) < 2**bits
    np.testing.assert_allclose(np.sort(centroids), np.sort(s * ref.expand(theta, mu)), rtol=0, atol=0)
    # The same float64 expand of the same theta on both sides: 1e-12 admits
    # only an ulp of libm/SIMD difference, never a wrong centroid.
    np.testing.assert_allclose(
        centroids[indices], ref.gq_forward(w, theta, s, mu, tau=1.0, hard=True), rtol=0, atol=1e-12
    )


def test_codebook_keeps_unused_centroids():
    theta = np.array([0.9, -0.9, 0.1, -0.1])
    w = np.full((3,), 0.05)
    centroids, indices = ref.codebook(w, theta, 1.0, 0)
    np.testing.assert_array_equal(centroids, [-0.9, -0.1, 0.1, 0.9])
    np.testing.assert_array_equal(indices, [2, 2, 2])


# ---------------------------------------------------------------------------
# Uniform baseline


@pytest.mark.parametrize("bits", ALL_BITS)
def test_uniform_codebook(bits):
    rng = np.random.default_rng(100 + bits)
    w = rng.normal(0.0, 0.5, size=(31, 17))
    centroids, indices = ref.uniform_codebook(w, bits)
    k = 2**bits
    assert centroids.shape == (k,)
    assert indices.dtype == np.uint8
    assert int(indices.max()) < k
    decoded = centroids[indices]
    assert np.unique(decoded).size <= k
    if bits == 1:
        a = np.mean(np.abs(w))
        np.testing.assert_array_equal(centroids, [-a, a])
        np.testing.assert_array_equal(decoded, np.where(w >= 0, a, -a))
        return
    half, qmax = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    scale = np.max(np.abs(w)) / qmax
    assert int(indices.min()) >= 1, "index 0 (-2^(b-1), outside the narrow range) must stay unused"
    np.testing.assert_array_equal(centroids[half], 0.0)
    q = np.arange(1, qmax + 1)
    # Symmetric grid, exactly: both sides are (integer) * scale.
    np.testing.assert_array_equal(centroids[half + q], -centroids[half - q])
    np.testing.assert_allclose(np.diff(centroids), scale, rtol=1e-12)  # 1e-12: one float64 product per entry
    # Round-to-nearest on the grid: half a step, plus an ulp of w/scale rounding.
    assert np.max(np.abs(decoded - w)) <= scale / 2 * (1 + 1e-12)
    # The extreme weight lands exactly on the outermost used centroid.
    i = np.argmax(np.abs(w))
    assert abs(decoded.flat[i]) == pytest.approx(np.max(np.abs(w)), rel=1e-12)  # one multiply and one divide
