"""gq_tf.allocate_bits: the exact solver, the constraints, the sensitivity pass."""

import itertools
import re

import numpy as np
import pytest

import gq_tf
from gq_tf import allocation, keras
from gq_tf.allocation import FLOAT, dense_sizes, gq_codebook, solve
from tests.conftest import sequence_model


def _brute(options, budget, latency_budget=None):
    best = None
    items = list(options)
    for combo in itertools.product(*(options[i] for i in items)):
        nbytes = sum(o[1] for o in combo)
        lat = sum(o[3] if len(o) > 3 else 0.0 for o in combo)
        if nbytes > budget or (latency_budget is not None and lat > latency_budget + 1e-12):
            continue
        cost = sum(o[2] for o in combo)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, {i: o[0] for i, o in zip(items, combo)})
    return best


@pytest.mark.parametrize("seed", range(40))
def test_solver_is_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    with_latency = seed % 2 == 1
    options = {}
    for i in range(n):
        bits = sorted(rng.choice([1, 2, 3, 4, 5, 6, 8], size=int(rng.integers(1, 5)), replace=False))
        size = int(rng.integers(10, 200))
        cost = np.sort(rng.random(len(bits)))[::-1]  # fewer bits, more cost (ties sometimes)
        if seed % 5 == 0:
            cost = np.round(cost, 1)
        options[f"k{i}"] = [(int(b), size * int(b) + int(rng.integers(0, 9)), float(c))
                            + ((float(rng.random()),) if with_latency else ()) for b, c in zip(bits, cost)]
    lo = sum(min(o[1] for o in opts) for opts in options.values())
    hi = sum(max(o[1] for o in opts) for opts in options.values())
    budget = int(rng.integers(lo - 5, hi + 5))
    lat_budget = float(rng.random() * n) if with_latency else None
    expected = _brute(options, budget, lat_budget)
    got = solve(options, budget, lat_budget)
    if expected is None:
        assert got is None
        return
    assert got is not None
    chosen = {i: next(o for o in options[i] if o[0] == got[i]) for i in options}
    assert sum(o[1] for o in chosen.values()) <= budget
    if with_latency:
        assert sum(o[3] for o in chosen.values()) <= lat_budget + 1e-12
    assert sum(o[2] for o in chosen.values()) == pytest.approx(expected[0], abs=1e-12)


def test_solver_prefers_fewer_bytes_on_equal_cost():
    options = {"a": [(8, 100, 0.0), (4, 50, 0.0)], "b": [(2, 10, 1.0), (3, 15, 0.5)]}
    assert solve(options, 1000) == {"a": 4, "b": 3}
    assert solve(options, 64) == {"a": 4, "b": 2}
    assert solve(options, 65) == {"a": 4, "b": 3}
    assert solve(options, 59) is None


# ---------------------------------------------------------------------------
# allocate_bits on a small model


@pytest.fixture(scope="module")
def trained():
    """The sequence model (every layer type), briefly trained on a learnable task."""
    model = sequence_model()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(256, 12)).astype(np.int32)
    y = (x % 7).astype(np.int32)  # per-token class: the embedding and head matter
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model, (x[:96], y[:96])


@pytest.fixture(scope="module")
def sens(trained):
    model, data = trained
    return allocation.sensitivity(model, data, progress=False)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_sensitivity_is_deterministic_monotone_and_leaves_the_model_alone(trained, sens):
    model, data = trained
    before = _weights(model)
    again = allocation.sensitivity(model, data, progress=False)
    assert again.values == sens.values and again.base_loss == sens.base_loss
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
    assert set(sens.values) == {k.key for k in allocation.kernels(model)}
    for key, row in sens.values.items():
        bits = sorted(row)
        assert bits == list(allocation.DEFAULT_CANDIDATES)
        assert all(row[a] >= row[b] for a, b in zip(bits, bits[1:])), key
        assert all(row[b] <= sens.raw[key][b] for b in bits)
    # Quantizing a trained kernel to 1 bit costs loss; at 8 bits almost nothing.
    assert max(row[1] for row in sens.values.values()) > 10 * max(abs(row[8]) for row in sens.values.values())


def test_sensitivity_restores_the_weights_when_the_loss_fails(trained):
    model, data = trained
    import tensorflow as tf

    before = _weights(model)
    calls = tf.Variable(0)

    def loss_fn(m, batch):  # fails at its 5th evaluation, in the middle of the measurement
        with tf.control_dependencies([tf.debugging.assert_less(calls.assign_add(1), 5, message="disk full")]):
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(batch[1], m(batch[0]),
                                                                               from_logits=True))

    with pytest.raises(tf.errors.InvalidArgumentError, match="disk full"):
        allocation.sensitivity(model, data, loss_fn=loss_fn, progress=False, batch_size=96)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_fisher_estimate_ranks_like_the_measured_loss(trained):
    model, data = trained
    fisher = allocation.sensitivity(model, data, method="fisher", candidates=(1, 2, 4), progress=False)
    loss = allocation.sensitivity(model, data, method="loss", candidates=(1, 2, 4), progress=False)
    assert all(v >= 0 for row in fisher.values.values() for v in row.values())
    f = [fisher.values[k][1] for k in sorted(loss.values)]
    m = [loss.values[k][1] for k in sorted(loss.values)]
    assert np.corrcoef(np.argsort(np.argsort(f)), np.argsort(np.argsort(m)))[0, 1] > 0.3


def test_gq_codebook_without_refinement_is_gq_initial_hard_assignment():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 24)).astype(np.float32)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(24, use_bias=False, name="d")])
    model.layers[0].kernel.assign(w)
    for bits in (1, 3, 6):
        qat = gq_tf.quantize_model(model, bits)
        expected = gq_tf.strip_quantization(qat).layers[0].kernel.numpy()
        got, centroids = gq_codebook(w, bits, refine=0)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        assert len(np.unique(got)) <= 2**bits and np.all(np.diff(centroids) > 0)
        # Lloyd refinement lowers the companded-domain error, and the weight error with it here.
        assert np.mean((gq_codebook(w, bits)[0] - w) ** 2) < np.mean((got - w) ** 2)


def test_allocation_meets_the_budget_and_every_constraint(trained, sens):
    model, data = trained
    keys = [k.key for k in allocation.kernels(model)]
    sizes = dense_sizes(allocation.kernels(model))
    floor = sum(sizes[k][1] for k in keys)
    budget = floor + (sum(sizes[k][8] for k in keys) - floor) // 3
    alloc = gq_tf.allocate_bits(model, data, budget_bytes=budget, sensitivities=sens, progress=False,
                                min_bits={"dense": 8}, max_bits={"conv1d": 3}, fixed={"lstm/recurrent_kernel": 2},
                                keep_float=["embed"])
    bits = {c.key: c.bits for c in alloc.choices}
    assert bits["dense/kernel"] == 8
    assert bits["conv1d/kernel"] <= 3
    assert bits["lstm/recurrent_kernel"] == 2
    assert bits["embed/embeddings"] is FLOAT
    assert alloc.total_bytes <= budget
    assert alloc.total_bytes == allocation.policy_nbytes(model, alloc.policy)
    assert "embed" not in alloc.policy and alloc.policy["dense"] == 8
    # The solver's answer is the best of all allocations meeting the same constraints.
    free = [k for k in keys if k not in ("dense/kernel", "lstm/recurrent_kernel", "embed/embeddings")]
    fixed_bytes = sizes["dense/kernel"][8] + sizes["lstm/recurrent_kernel"][2] + sizes["embed/embeddings"][FLOAT]
    options = {k: [(b, sizes[k][b], sens.values[k][b]) for b in allocation.DEFAULT_CANDIDATES
                   if k != "conv1d/kernel" or b <= 3] for k in free}
    best = _brute(options, budget - fixed_bytes)
    assert sum(c.sensitivity for c in alloc.choices if c.key in free) == pytest.approx(best[0], abs=1e-12)
    # The policy is an ordinary one.
    qat = gq_tf.quantize_model(model, alloc.policy)
    books = gq_tf.extract_codebooks(qat)
    assert {k: b.bits for k, b in books.items()} == {k: b for k, b in bits.items() if b is not FLOAT}
    assert "| kernel" in alloc.table() and "budget" in alloc.table()
    assert alloc.to_json()["total_bytes"] == alloc.total_bytes


def test_an_average_bits_budget_keeps_the_weighted_mean_bits_under_it(trained, sens):
    model, data = trained
    ks = allocation.kernels(model)
    n = {k.key: k.size for k in ks}
    for target in (1.5, 2.5, 4.0):
        budget = int(sum(n.values()) * target // 8)
        alloc = gq_tf.allocate_bits(model, data, budget_bytes=budget, sizes=allocation.bit_sizes, sensitivities=sens,
                                    progress=False)
        mean = sum(n[c.key] * c.bits for c in alloc.choices) / sum(n.values())
        assert mean <= target and mean > target - 1.0  # the budget is used, not just met


def test_more_budget_never_costs_more(trained, sens):
    model, data = trained
    sizes = dense_sizes(allocation.kernels(model))
    lo = sum(row[1] for row in sizes.values())
    hi = sum(row[8] for row in sizes.values())
    costs = []
    for budget in np.linspace(lo, hi, 6).astype(int):
        alloc = gq_tf.allocate_bits(model, data, budget_bytes=int(budget), sensitivities=sens, progress=False)
        assert alloc.total_bytes <= budget
        costs.append(sum(c.sensitivity for c in alloc.choices))
    assert all(a >= b - 1e-12 for a, b in zip(costs, costs[1:]))
    assert costs[-1] == pytest.approx(sum(row[8] for row in sens.values.values()))


def test_an_impossible_budget_names_the_smallest_feasible_size(trained, sens):
    model, data = trained
    sizes = dense_sizes(allocation.kernels(model))
    floor = sum(row[1] for row in sizes.values())
    with pytest.raises(ValueError, match=rf"budget_bytes >= {floor:,}, the smallest .* Received budget_bytes=100\b"):
        gq_tf.allocate_bits(model, data, budget_bytes=100, sensitivities=sens, progress=False)
    floor8 = floor - sizes["dense/kernel"][1] + sizes["dense/kernel"][8]
    with pytest.raises(ValueError, match=rf"budget_bytes >= {floor8:,}"):
        gq_tf.allocate_bits(model, data, budget_bytes=floor8 - 1, sensitivities=sens, progress=False,
                            min_bits={"dense": 8})
    assert gq_tf.allocate_bits(model, data, budget_bytes=floor8, sensitivities=sens, progress=False,
                               min_bits={"dense": 8}).total_bytes == floor8


@pytest.mark.parametrize("kwargs, error, match", [
    ({"budget_bytes": 0}, ValueError, r"budget_bytes to be an int >= 1. Received 0"),
    ({"budget_bytes": 1e6}, ValueError, r"budget_bytes to be an int"),
    ({"min_bits": {"dense": 9}}, ValueError, r"min_bits\['dense'\]. in 1..8"),
    ({"min_bits": {"dense": 6}, "max_bits": {"dense": 5}}, ValueError, r"for dense/kernel. Received bounds 6..5"),
    ({"min_bits": {"dense": 7}, "max_bits": {"dense": 7}}, ValueError, r"Received bounds 7..7 and candidates"),
    ({"keep_float": ["dense"], "fixed": {"dense": 4}}, ValueError, r"dense/kernel matching keep_float and"),
    ({"keep_float": [".*"]}, ValueError, r"at least one kernel to quantize"),
    ({"min_bits": {"(": 4}}, ValueError, r"regex patterns in min_bits"),
    ({"candidates": []}, ValueError, r"non-empty list of bit depths"),
    ({"latency_budget": 1.0}, ValueError, r"latency=\{key: \{bits: seconds\}\} with latency_budget"),
    ({"latency": {}, "latency_budget": 1.0}, ValueError, r"latency for every kernel and candidate.*embed"),
])
def test_bad_arguments_are_clear_errors(trained, sens, kwargs, error, match):
    model, data = trained
    kwargs = {"budget_bytes": 10**6, **kwargs}
    with pytest.raises(error, match=match):
        gq_tf.allocate_bits(model, data, sensitivities=sens, progress=False, **kwargs)


def test_a_latency_budget_is_met(trained, sens):
    model, data = trained
    keys = [k.key for k in allocation.kernels(model)]
    latency = {k: {b: 1e-6 * b * (i + 1) for b in allocation.DEFAULT_CANDIDATES} for i, k in enumerate(keys)}
    fast = sum(min(row.values()) for row in latency.values())
    alloc = gq_tf.allocate_bits(model, data, budget_bytes=10**7, sensitivities=sens, progress=False,
                                latency=latency, latency_budget=fast * 2)
    assert sum(latency[c.key][c.bits] for c in alloc.choices) <= fast * 2 + 1e-15
    with pytest.raises(ValueError, match="latency_budget some allocation meets"):
        gq_tf.allocate_bits(model, data, budget_bytes=10**7, sensitivities=sens, progress=False,
                            latency=latency, latency_budget=fast / 2)


def test_calibration_data_forms_and_errors(trained):
    model, (x, y) = trained
    import tensorflow as tf

    a = allocation.sensitivity(model, (x, y), candidates=(2,), keys=["dense/kernel"], batch_size=32, progress=False)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    b = allocation.sensitivity(model, ds, candidates=(2,), keys=["dense/kernel"], progress=False)
    assert a.values["dense/kernel"][2] == pytest.approx(b.values["dense/kernel"][2], rel=1e-5)
    lines = []
    allocation.sensitivity(model, ds, candidates=(2, 4), keys=["dense/kernel"], progress=lines.append)
    assert len(lines) == 2 and re.match(r"sensitivity 1/2: dense/kernel at 2 bits: [+-]", lines[0])
    with pytest.raises(TypeError, match="tf.data.Dataset of batches or a tuple"):
        allocation.sensitivity(model, "data.npz", progress=False)
    with pytest.raises(ValueError, match="arrays of one length. Received lengths \\[96, 5\\]"):
        allocation.sensitivity(model, (x, y[:5]), progress=False)
    with pytest.raises(ValueError, match="kernel keys of the model .*Received \\['nope/kernel'\\]"):
        allocation.sensitivity(model, (x, y), keys=["nope/kernel"], progress=False)
    with pytest.raises(ValueError, match="method 'loss' or 'fisher'"):
        allocation.sensitivity(model, (x, y), method="hessian", progress=False)
    with pytest.raises(ValueError, match="compiled model .*or a loss_fn"):
        allocation.sensitivity(sequence_model(), (x, y), progress=False)
