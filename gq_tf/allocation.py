"""Automatic bit allocation: one GQ bit depth per kernel for a deployed-size budget.

Two steps, both usable alone:

1. ``sensitivity``: for every quantizable kernel and every candidate bit depth,
   what quantizing that kernel alone costs the task loss on a small
   calibration set. The default estimator (``method="loss"``) measures it: the
   kernel is replaced by its ``b``-bit GQ codebook (fitted to the weights, see
   ``gq_codebook``) and the calibration loss is evaluated; ``method="fisher"``
   estimates it from one gradient pass as ``0.5 * sum F_i (w_i - q_i)^2`` with
   the empirical Fisher diagonal ``F`` (squared gradients averaged over the
   calibration batches). docs/ALLOCATION.md compares how well each one ranks
   the loss after a GQ fine-tune.
2. ``solve``: the exact minimum of the summed sensitivity under a budget on
   the deployed bytes (and optionally on latency), over one bit depth per
   kernel: a multiple-choice knapsack solved by dynamic programming over the
   Pareto frontier of (bytes, latency, sensitivity), so no heavy solver is
   needed and the answer is exact.

``allocate_bits`` runs both and returns an ordinary policy for
``quantize_model`` plus a report. Sizes come from a *size model*: by default
``dense_sizes`` (indices packed at b bits + the float32 centroid table, the
floor any layout can reach); ``converters.deployed_sizes`` gives the bytes the
exporter writes (row padding of the packed layout, kernels it cannot pack),
which is what a budget on the file should use.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
import sys
import time
from typing import Mapping

import numpy as np

from gq_tf import defaults, reference
from gq_tf._keras import check_keras_model, keras, tf
from gq_tf.configs import _get_path, resolve_policy, table_row
from gq_tf.quantizers import GeneralQuantizer
from gq_tf.reference import check_bits

__all__ = [
    "DEFAULT_CANDIDATES",
    "Kernel",
    "Sensitivity",
    "Allocation",
    "kernels",
    "dense_sizes",
    "bit_sizes",
    "gq_codebook",
    "sensitivity",
    "solve",
    "policy_bits",
    "policy_nbytes",
    "allocate_bits",
]

DEFAULT_CANDIDATES = (1, 2, 3, 4, 5, 6, 8)
# Lloyd iterations that fit a kernel's codebook in the companded domain (0:
# GQ's initial codebook), and how many weights the fit samples at most.
DEFAULT_REFINE = 10
FIT_SAMPLE = 1 << 16
FLOAT = None  # the "bits" of a kernel kept float, in size tables and choices


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """One quantizable kernel of a float model (a LAYER_TABLE weight)."""

    layer_name: str
    weight_name: str
    shape: tuple
    layer: object = dataclasses.field(repr=False)  # the float Keras layer
    variable: object = dataclasses.field(repr=False)  # its weight variable

    @property
    def key(self):
        return f"{self.layer_name}/{self.weight_name}"

    @property
    def size(self):
        return int(np.prod(self.shape))


def kernels(model):
    """Every weight of ``model`` that a GQ policy can quantize, in layer order.

    Raises:
      TypeError, ValueError: not a built flat tf_keras model, or one without
        quantizable weights.
    """
    check_keras_model(model)
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Expected a flat model. Received nested model '{layer.name}' inside '{model.name}'; "
                "allocate bits for the inner model on its own or flatten it."
            )
        row = table_row(layer)
        if row is None or not layer.built:
            continue
        for name, path in row.items():
            var = _get_path(layer, path)
            out.append(Kernel(layer.name, name, tuple(int(d) for d in var.shape), layer, var))
    if not out:
        raise ValueError(f"Expected a model with quantizable kernels. Received model '{model.name}' with none.")
    return out


def dense_sizes(kernel_list, floats=frozenset()):
    """Size model: ``{key: {bits: bytes, None: bytes}}`` with b-bit indices packed
    densely (``ceil(n * b / 8)``) plus the float32 centroid table, and 4 bytes a
    weight kept float. ``floats``: keys the caller keeps float (unused here;
    the exporter's model needs it)."""
    del floats
    return {k.key: {**{b: reference.packed_nbytes(k.size, b) + 4 * 2**b for b in range(1, 9)},
                    FLOAT: 4 * k.size} for k in kernel_list}


def bit_sizes(kernel_list, floats=frozenset()):
    """Size model of an average-bits budget: ``ceil(n * b / 8)`` bytes at b bits (the indices alone, no
    codebook or layout) and 4 bytes a weight kept float, so a budget of ``n_total * B / 8`` bytes is "at
    most B bits a weight on average"."""
    del floats
    return {k.key: {**{b: -(-k.size * b // 8) for b in range(1, 9)}, FLOAT: 4 * k.size} for k in kernel_list}


# ---------------------------------------------------------------------------
# Codebooks


def _nearest(z, theta):
    """Index of the nearest of the sorted ``theta`` for every z (ties to the lower)."""
    return np.searchsorted((theta[1:] + theta[:-1]) / 2, z, side="left")


def gq_codebook(w, bits, *, mu=defaults.MU, refine=DEFAULT_REFINE, seed=0):
    """The hard ``bits``-bit GQ quantization of ``w`` a short fine-tune approaches.

    GQ's initial codebook (scale ``max|w|``, centroids evenly spaced in the
    mu-law companded domain), then ``refine`` Lloyd iterations in that domain
    (each centroid moves to the mean of the companded weights assigned to it),
    fitted on at most 65,536 weights drawn with ``seed``.

    Returns:
      (quantized weight, same shape and dtype as ``w``; sorted centroids in the weight domain).
    """
    bits = check_bits(bits)
    w = np.asarray(w)
    flat = w.astype(np.float64).reshape(-1)
    s = max(float(np.max(np.abs(flat))) if flat.size else 0.0, 1e-8)
    z = reference.compress(np.clip(flat / s, -1.0, 1.0), mu)
    k = 2**bits
    theta = -1.0 + (2.0 * np.arange(k) + 1.0) / k
    if refine:
        rng = np.random.default_rng(seed)
        fit = z if z.size <= FIT_SAMPLE else rng.choice(z, FIT_SAMPLE, replace=False)
        for _ in range(refine):
            idx = _nearest(fit, theta)
            counts = np.bincount(idx, minlength=k)
            sums = np.bincount(idx, weights=fit, minlength=k)
            theta = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), theta))
    centroids = s * reference.expand(theta, mu)
    return centroids[_nearest(z, theta)].reshape(w.shape).astype(w.dtype), centroids


# ---------------------------------------------------------------------------
# Sensitivity


@dataclasses.dataclass
class Sensitivity:
    """What quantizing each kernel alone costs: ``values[key][bits]`` (loss units)."""

    method: str
    base_loss: float
    values: dict  # {key: {bits: float}}, monotone: more bits never costs more
    raw: dict  # the measured values before that monotone envelope
    seconds: float

    def to_json(self):
        return {"method": self.method, "base_loss": self.base_loss, "seconds": self.seconds,
                "values": {k: {str(b): v for b, v in row.items()} for k, row in self.values.items()},
                "raw": {k: {str(b): v for b, v in row.items()} for k, row in self.raw.items()}}


def _progress_fn(progress):
    if progress is True:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    if progress in (False, None):
        return lambda msg: None
    if callable(progress):
        return progress
    raise TypeError(f"Expected progress to be True, False or a callable. Received {progress!r}.")


def _batches(data, batch_size):
    """The calibration batches, materialised (the set is small)."""
    if isinstance(data, tf.data.Dataset):
        out = list(data)
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            isinstance(a, (np.ndarray, tf.Tensor)) or a is None for a in data):
        arrays = [a for a in data if a is not None]
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(f"Expected calibration arrays of one length. Received lengths {[len(a) for a in arrays]}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected batch_size to be an int >= 1. Received {batch_size!r}.")
        out = [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, n, batch_size)]
    else:
        raise TypeError(
            "Expected calibration data as a tf.data.Dataset of batches or a tuple (x, y) of arrays. "
            f"Received {type(data).__name__}.")
    if not out:
        raise ValueError("Expected calibration data with at least one batch. Received an empty set.")
    return out


def _default_loss(model):
    if getattr(model, "compiled_loss", None) is None:
        raise ValueError(
            f"Expected a compiled model (model.compile(loss=...)) or a loss_fn(model, batch). Received model "
            f"'{model.name}', which has no loss.")

    def loss(m, batch):
        x, y, *rest = batch
        return m.compute_loss(x=x, y=y, y_pred=m(x, training=False), sample_weight=rest[0] if rest else None)

    return loss


def _check_candidates(candidates):
    if not isinstance(candidates, (tuple, list)) or not candidates:
        raise ValueError(f"Expected candidates as a non-empty list of bit depths. Received {candidates!r}.")
    return tuple(sorted({check_bits(b, "candidates") for b in candidates}))


def _envelope(row):
    """More bits never costs more: a b-bit codebook can repeat any smaller one's centroids."""
    out, best = {}, math.inf
    for b in sorted(row):
        best = min(best, row[b])
        out[b] = best
    return out


def sensitivity(model, data, *, loss_fn=None, candidates=DEFAULT_CANDIDATES, method="loss", keys=None,
                batch_size=32, mu=defaults.MU, refine=DEFAULT_REFINE, seed=0, progress=True):
    """Per kernel and bit depth, the loss that quantizing that kernel alone costs.

    Args:
      model: the float tf_keras model (left exactly as it was, also on error).
      data: calibration set: a ``tf.data.Dataset`` of batches, or a tuple
        ``(x, y)`` of arrays (cut into ``batch_size`` batches); a few hundred
        examples are enough.
      loss_fn: ``loss_fn(model, batch) -> scalar``; default: the compiled loss
        of ``model`` on batches ``(x, y[, sample_weight])``.
      candidates: bit depths to measure.
      method: "loss" (measure the loss with the kernel quantized; one
        calibration pass per kernel and bit depth) or "fisher" (one gradient
        pass; ``0.5 * sum F (w - q)^2``).
      keys: only these kernel keys ("layer/weight"); default all.
      mu, refine, seed: the codebook of each kernel (``gq_codebook``).
      progress: True (lines on stderr), False, or a callable taking a line.

    Returns:
      Sensitivity (values monotone non-increasing in bits).
    """
    if method not in ("loss", "fisher"):
        raise ValueError(f"Expected method 'loss' or 'fisher'. Received {method!r}.")
    candidates = _check_candidates(candidates)
    say = _progress_fn(progress)
    batches = _batches(data, batch_size)
    loss_fn = loss_fn or _default_loss(model)
    todo = kernels(model)
    if keys is not None:
        unknown = sorted(set(keys) - {k.key for k in todo})
        if unknown:
            raise ValueError(f"Expected kernel keys of the model ({[k.key for k in todo]}). Received {unknown}.")
        todo = [k for k in todo if k.key in set(keys)]
    start = time.monotonic()
    originals = {k.key: k.variable.numpy() for k in todo}

    @tf.function(reduce_retracing=True)
    def batch_loss(batch):
        return tf.cast(loss_fn(model, batch), tf.float64)

    def mean_loss():
        return float(np.mean([batch_loss(b).numpy() for b in batches]))

    base = mean_loss()
    if not math.isfinite(base):
        raise ValueError(f"Expected a finite loss of the float model on the calibration data. Received {base}.")
    raw = {}
    if method == "fisher":
        fisher = _fisher(model, loss_fn, batches, todo)
        for k in todo:
            w = originals[k.key].astype(np.float64)
            raw[k.key] = {b: float(0.5 * np.sum(fisher[k.key] * (gq_codebook(w, b, mu=mu, refine=refine, seed=seed)[0]
                                                                  - w) ** 2)) for b in candidates}
        say(f"sensitivity (fisher): {len(todo)} kernels x {len(candidates)} bit depths, "
            f"{len(batches)} batches, {time.monotonic() - start:.1f} s")
    else:
        total, done = len(todo) * len(candidates), 0
        try:
            for k in todo:
                raw[k.key] = {}
                for b in candidates:
                    k.variable.assign(gq_codebook(originals[k.key], b, mu=mu, refine=refine, seed=seed)[0])
                    raw[k.key][b] = mean_loss() - base
                    done += 1
                    elapsed = time.monotonic() - start
                    say(f"sensitivity {done}/{total}: {k.key} at {b} bits: {raw[k.key][b]:+.5f} "
                        f"({elapsed:.0f} s, about {elapsed / done * (total - done):.0f} s left)")
                k.variable.assign(originals[k.key])
        finally:
            for k in todo:
                k.variable.assign(originals[k.key])
    values = {key: _envelope(row) for key, row in raw.items()}
    return Sensitivity(method, base, values, raw, time.monotonic() - start)


def _fisher(model, loss_fn, batches, todo):
    """Empirical Fisher diagonal of each kernel: squared batch gradients, averaged."""
    variables = [k.variable for k in todo]

    @tf.function(reduce_retracing=True)
    def grads(batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, batch)
        return tape.gradient(loss, variables)

    acc = [np.zeros(v.shape, np.float64) for v in variables]
    for batch in batches:
        for a, g in zip(acc, grads(batch)):
            if g is not None:
                a += np.square(np.asarray(tf.convert_to_tensor(g), np.float64))
    return {k.key: a / len(batches) for k, a in zip(todo, acc)}


# ---------------------------------------------------------------------------
# The solver


def solve(options, budget_bytes, latency_budget=None):
    """Exact multiple-choice knapsack: one option per item, minimum summed cost.

    Args:
      options: ``{item: [(choice, bytes, cost)]}`` or ``[(choice, bytes, cost, latency)]``.
      budget_bytes: the summed bytes may not exceed it.
      latency_budget: if given, the summed latency may not exceed it.

    Returns:
      ``{item: choice}`` of minimum summed cost (ties: fewer bytes, then less
      latency), or None when no choice fits.

    Dynamic programming over the items, keeping only the Pareto frontier of
    partial (bytes, latency, cost) triples: a partial choice another one
    beats or equals in all three can never be part of a better whole, so the
    answer is exact.
    """
    items = list(options)
    opts = {i: [(o[0], int(o[1]), float(o[2]), float(o[3]) if len(o) > 3 else 0.0) for o in options[i]]
            for i in items}
    # What the kernels after the i-th need at least: a partial choice that
    # cannot fit them, or cannot beat a known whole choice, is dropped.
    rest_bytes, rest_lat, rest_cost = [0] * (len(items) + 1), [0.0] * (len(items) + 1), [0.0] * (len(items) + 1)
    for i in range(len(items) - 1, -1, -1):
        o = opts[items[i]]
        rest_bytes[i] = rest_bytes[i + 1] + min(x[1] for x in o)
        rest_lat[i] = rest_lat[i + 1] + min(x[3] for x in o)
        rest_cost[i] = rest_cost[i + 1] + min(x[2] for x in o)
    lat_cap = math.inf if latency_budget is None else latency_budget + 1e-12
    bound = _greedy_cost(opts, items, budget_bytes, lat_cap)
    if latency_budget is None:
        return _solve_bytes(opts, items, budget_bytes, rest_bytes, rest_cost, bound)
    frontier = [(0, 0.0, 0.0, None)]  # (bytes, latency, cost, back pointer)
    for i, item in enumerate(items):
        grown = []
        cap_b, cap_t = budget_bytes - rest_bytes[i + 1], lat_cap - rest_lat[i + 1]
        cap_c = bound - rest_cost[i + 1] + 1e-12
        for choice, nbytes, cost, lat in opts[item]:
            for state in frontier:
                b, t, c = state[0] + nbytes, state[1] + lat, state[2] + cost
                if b <= cap_b and t <= cap_t and c <= cap_c:
                    grown.append((b, t, c, (choice, state)))
        if not grown:
            return None
        frontier = _pareto(grown)
    best = min(frontier, key=lambda s: (s[2], s[0], s[1]))
    out, node = {}, best
    for item in reversed(items):
        choice, node = node[3]
        out[item] = choice
    return out


def _solve_bytes(opts, items, budget_bytes, rest_bytes, rest_cost, bound):
    """``solve`` with the byte budget only, vectorised: the frontier is two arrays
    (bytes ascending, cost strictly descending) and back pointers per item."""
    nbytes, cost = np.zeros(1, np.int64), np.zeros(1, np.float64)
    back = []
    for i, item in enumerate(items):
        ob = np.array([o[1] for o in opts[item]], np.int64)
        oc = np.array([o[2] for o in opts[item]], np.float64)
        b = (nbytes[:, None] + ob[None, :]).ravel()
        c = (cost[:, None] + oc[None, :]).ravel()
        parent = np.repeat(np.arange(len(nbytes)), len(ob))
        option = np.tile(np.arange(len(ob)), len(nbytes))
        keep = (b <= budget_bytes - rest_bytes[i + 1]) & (c <= bound - rest_cost[i + 1] + 1e-12)
        if not keep.any():
            return None
        b, c, parent, option = b[keep], c[keep], parent[keep], option[keep]
        order = np.lexsort((c, b))  # bytes ascending, then cost ascending
        b, c, parent, option = b[order], c[order], parent[order], option[order]
        # Keep a state only when its cost is below every state with no more bytes.
        prior = np.concatenate([[np.inf], np.minimum.accumulate(c)[:-1]])
        front = c < prior
        nbytes, cost = b[front], c[front]
        back.append((parent[front], option[front]))
    best = int(np.argmin(cost))  # the first of equal costs has the fewest bytes
    out = {}
    for i in range(len(items) - 1, -1, -1):
        parent, option = back[i]
        out[items[i]] = opts[items[i]][int(option[best])][0]
        best = int(parent[best])
    return out


def _greedy_cost(opts, items, budget_bytes, lat_cap):
    """The cost of some whole choice within the budgets (inf if the greedy finds none):
    each item at its fewest bytes, then the upgrades of most cost saved per byte while they fit."""
    pick = {i: min(opts[i], key=lambda x: (x[1], x[3], x[2])) for i in items}
    used_b, used_t = sum(p[1] for p in pick.values()), sum(p[3] for p in pick.values())
    if used_b > budget_bytes or used_t > lat_cap:
        return math.inf
    while True:
        best = None
        for i in items:
            cur = pick[i]
            for o in opts[i]:
                db, dt, dc = o[1] - cur[1], o[3] - cur[3], cur[2] - o[2]
                if dc > 0 and used_b + db <= budget_bytes and used_t + dt <= lat_cap:
                    gain = dc / max(db, 1)
                    if best is None or gain > best[0]:
                        best = (gain, i, o)
        if best is None:
            return sum(p[2] for p in pick.values())
        _, i, o = best
        used_b += o[1] - pick[i][1]
        used_t += o[3] - pick[i][3]
        pick[i] = o


def _pareto(states):
    """The states no other state beats or equals in bytes, latency and cost."""
    states.sort(key=lambda s: (s[0], s[1], s[2]))
    kept = []
    lat, cost = [], []  # staircase of kept (latency, cost): latency ascending, cost descending
    for s in states:
        i = bisect.bisect_right(lat, s[1])
        if i and cost[i - 1] <= s[2]:
            continue  # a kept state has no more bytes, no more latency and no more cost
        kept.append(s)
        j = i
        while j < len(lat) and cost[j] >= s[2]:
            j += 1
        lat[i:j], cost[i:j] = [s[1]], [s[2]]
    return kept


# ---------------------------------------------------------------------------
# Policies and the report


def _matches(patterns, kernel):
    return [p for p in patterns if re.fullmatch(p, kernel.layer_name) or re.fullmatch(p, kernel.key)]


def _pattern_map(name, value, check):
    if value is None:
        return {}
    if isinstance(value, str) and check is None:
        value = [value]
    if isinstance(value, (list, tuple, set, frozenset)) and check is None:
        value = {p: True for p in value}
    if not isinstance(value, Mapping):
        raise TypeError(f"Expected {name} as a dict {{regex: value}}. Received {value!r}.")
    out = {}
    for pattern, v in value.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"Expected regex patterns in {name}. Received {pattern!r}: {e}.") from None
        out[pattern] = check(v, f"{name}[{pattern!r}]") if check else v
    return out


def policy_bits(model, policy):
    """``{key: bits or None}`` that ``policy`` gives each quantizable kernel of
    ``model`` (None: kept float).

    Raises:
      ValueError: the policy puts a uniform quantizer on a kernel (size
        models cover GQ's packed kernels and float ones).
    """
    plan = resolve_policy(model, policy)
    out = {}
    for k in kernels(model):
        spec = plan.get(k.layer_name, {})
        q = spec.get(k.weight_name) if isinstance(spec, dict) else spec  # Tfmot8Bit: a whole layer
        if q is not None and not isinstance(q, GeneralQuantizer):
            raise ValueError(f"Expected GQ or float kernels in the policy. Received {q!r} for {k.key}.")
        out[k.key] = FLOAT if q is None else q.bits
    return out


def policy_nbytes(model, policy, sizes=dense_sizes):
    """Deployed bytes of the quantizable kernels of ``model`` under ``policy``
    (kernels it leaves float at their float size), by the size model ``sizes``."""
    bits = policy_bits(model, policy)
    table = sizes(kernels(model), frozenset(k for k, b in bits.items() if b is FLOAT))
    return sum(table[key][b] for key, b in bits.items())


@dataclasses.dataclass
class Choice:
    key: str
    shape: tuple
    bits: int | None  # None: kept float
    nbytes: int
    sensitivity: float
    why: str  # "chosen", "fixed", "float"


@dataclasses.dataclass
class Allocation:
    """The result of ``allocate_bits``: ``policy`` goes straight to ``quantize_model``."""

    policy: dict
    choices: list
    budget_bytes: int
    total_bytes: int
    min_bytes: int
    sensitivity: Sensitivity

    @property
    def bits_per_weight(self):
        n = sum(int(np.prod(c.shape)) for c in self.choices if c.bits is not None)
        return sum(int(np.prod(c.shape)) * c.bits for c in self.choices if c.bits is not None) / max(n, 1)

    def table(self):
        rows = [("kernel", "shape", "bits", "bytes", "sensitivity", "")]
        for c in self.choices:
            rows.append((c.key, "x".join(map(str, c.shape)), "float" if c.bits is None else str(c.bits),
                         f"{c.nbytes:,}", "" if c.bits is None else f"{c.sensitivity:+.5f}",
                         "" if c.why == "chosen" else c.why))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["", f"total {self.total_bytes:,} bytes of a {self.budget_bytes:,}-byte budget "
                      f"(smallest possible {self.min_bytes:,}); {self.bits_per_weight:.2f} bits per quantized weight; "
                      f"summed sensitivity {sum(c.sensitivity for c in self.choices):+.5f} "
                      f"({self.sensitivity.method}, base loss {self.sensitivity.base_loss:.5f})"]
        return "\n".join(lines)

    def to_json(self):
        return {"policy": self.policy, "budget_bytes": self.budget_bytes, "total_bytes": self.total_bytes,
                "min_bytes": self.min_bytes, "bits_per_weight": self.bits_per_weight,
                "choices": [dataclasses.asdict(c) for c in self.choices],
                "sensitivity": self.sensitivity.to_json()}


def _policy(choices, kernel_list):
    """{escaped layer name: bits | {weight: bits}} of the quantized kernels."""
    by_layer = {}
    for k in kernel_list:
        by_layer.setdefault(k.layer_name, {})[k.weight_name] = choices[k.key]
    policy = {}
    for layer, row in by_layer.items():
        quantized = {w: b for w, b in row.items() if b is not FLOAT}
        if not quantized:
            continue
        values = set(quantized.values())
        policy[re.escape(layer)] = values.pop() if len(quantized) == len(row) and len(values) == 1 else quantized
    return policy


def allocate_bits(model, data, *, budget_bytes, loss_fn=None, candidates=DEFAULT_CANDIDATES, min_bits=None,
                  max_bits=None, fixed=None, keep_float=None, sizes=dense_sizes, latency=None, latency_budget=None,
                  method="loss", sensitivities=None, batch_size=32, mu=defaults.MU, refine=DEFAULT_REFINE, seed=0,
                  progress=True):
    """The GQ policy of least summed sensitivity whose kernels fit ``budget_bytes``.

    Args:
      model: the trained float tf_keras model (not modified).
      data, loss_fn, batch_size: the calibration set and loss (see ``sensitivity``).
      budget_bytes: the most bytes the quantizable kernels may take deployed
        (those kept float count at their float size).
      candidates: bit depths to choose from.
      min_bits, max_bits: ``{regex: bits}`` bounds; a pattern applies to a
        kernel when it fully matches its layer name or its "layer/weight" key.
      fixed: ``{regex: bits}``: these kernels get exactly these bits.
      keep_float: regex patterns of kernels kept float.
      sizes: the size model, ``sizes(kernels, floats) -> {key: {bits | None: bytes}}``:
        ``dense_sizes`` (default) or ``converters.deployed_sizes`` (the exporter's bytes).
      latency, latency_budget: optional ``{key: {bits: seconds}}`` (e.g. from
        the kernel benchmark on the target) and the most the summed latency
        of the quantized kernels may be.
      method, mu, refine, seed: the estimator (see ``sensitivity``).
      sensitivities: a ``Sensitivity`` measured before (skips the measurement;
        ``data`` may then be None).
      progress: True (lines on stderr), False, or a callable.

    Returns:
      Allocation: ``.policy`` for ``gq_tf.quantize_model``, ``.table()``, ``.to_json()``.

    Raises:
      ValueError: an impossible budget (the message names the smallest
        feasible size), constraints that contradict each other, bad arguments.

    Example:
      >>> alloc = gq_tf.allocate_bits(model, (x_cal, y_cal), budget_bytes=40_000,
      ...                             min_bits={"head": 8}, sizes=converters.deployed_sizes)
      >>> print(alloc.table()); qat = gq_tf.quantize_model(model, alloc.policy)
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 1:
        raise ValueError(f"Expected budget_bytes to be an int >= 1. Received {budget_bytes!r}.")
    candidates = _check_candidates(candidates)
    kernel_list = kernels(model)
    lows = _pattern_map("min_bits", min_bits, check_bits)
    highs = _pattern_map("max_bits", max_bits, check_bits)
    fixes = _pattern_map("fixed", fixed, check_bits)
    floats_p = _pattern_map("keep_float", keep_float, None)
    if latency_budget is not None and latency is None:
        raise ValueError("Expected latency={key: {bits: seconds}} with latency_budget. Received no latency table.")

    allowed, floats, fixed_bits = {}, set(), {}
    for k in kernel_list:
        if _matches(floats_p, k):
            clash = _matches(fixes, k) or _matches(lows, k)
            if clash:
                raise ValueError(f"Expected each kernel kept float or quantized. Received {k.key} matching "
                                 f"keep_float and {clash}.")
            floats.add(k.key)
            continue
        fix = _matches(fixes, k)
        if fix:
            fixed_bits[k.key] = fixes[fix[0]]
            allowed[k.key] = (fixes[fix[0]],)
            continue
        lo = max([lows[p] for p in _matches(lows, k)], default=1)
        hi = min([highs[p] for p in _matches(highs, k)], default=8)
        allowed[k.key] = tuple(b for b in candidates if lo <= b <= hi)
        if not allowed[k.key]:
            raise ValueError(f"Expected at least one candidate bit depth for {k.key}. Received bounds "
                             f"{lo}..{hi} and candidates {list(candidates)}, which leave none.")
    if not allowed:
        raise ValueError("Expected at least one kernel to quantize. Received keep_float covering every kernel.")

    table = sizes(kernel_list, frozenset(floats))
    fixed_bytes = sum(table[key][FLOAT] for key in floats)
    min_bytes = fixed_bytes + sum(min(table[key][b] for b in bits) for key, bits in allowed.items())
    if budget_bytes < min_bytes:
        raise ValueError(
            f"Expected budget_bytes >= {min_bytes:,}, the smallest deployed size of these kernels under the "
            f"constraints (each at its smallest allowed size). Received budget_bytes={budget_bytes:,}.")
    if latency is not None:
        missing = [f"{key}@{b}" for key, bits in allowed.items() for b in bits if b not in latency.get(key, {})]
        if missing:
            raise ValueError(f"Expected a latency for every kernel and candidate bit depth. Missing: {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}.")

    measure = sorted(allowed)  # single-choice kernels too: the report shows what they cost
    if sensitivities is None:
        sens_bits = sorted({b for bits in allowed.values() for b in bits})
        sensitivities = sensitivity(model, data, loss_fn=loss_fn, candidates=sens_bits, method=method,
                                    keys=measure, batch_size=batch_size, mu=mu, refine=refine, seed=seed,
                                    progress=progress)
    missing = [f"{key}@{b}" for key in measure for b in allowed[key] if b not in sensitivities.values.get(key, {})]
    if missing:
        raise ValueError(f"Expected sensitivities for every kernel and allowed bit depth. Missing: {missing[:8]}.")

    options = {key: [(b, table[key][b], sensitivities.values[key][b])
                     + ((latency[key][b],) if latency is not None else ()) for b in bits]
               for key, bits in allowed.items()}
    choice = solve(options, budget_bytes - fixed_bytes, latency_budget)
    if choice is None:
        raise ValueError(f"Expected a latency_budget some allocation meets. Received {latency_budget!r}, "
                         f"which none within {budget_bytes:,} bytes does.")
    choices = {**choice, **{key: FLOAT for key in floats}}
    rows = [Choice(k.key, k.shape, choices[k.key], table[k.key][choices[k.key]],
                   0.0 if choices[k.key] is FLOAT else sensitivities.values[k.key][choices[k.key]],
                   "float" if k.key in floats else "fixed" if k.key in fixed_bits else "chosen")
            for k in kernel_list]
    return Allocation(_policy(choices, kernel_list), rows, int(budget_bytes), sum(r.nbytes for r in rows),
                      min_bytes, sensitivities)


def load_sensitivity(path):
    """A ``Sensitivity`` saved with ``json.dump(s.to_json(), f)``."""
    with open(path) as f:
        d = json.load(f)
    conv = lambda m: {k: {int(b): float(v) for b, v in row.items()} for k, row in m.items()}  # noqa: E731
    return Sensitivity(d["method"], float(d["base_loss"]), conv(d["values"]), conv(d["raw"]), float(d["seconds"]))

