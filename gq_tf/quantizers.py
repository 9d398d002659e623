"""tfmot ``Quantizer``s: the General Quantizer and the uniform baseline.

Both are thin adapters over the pure functions of ``gq_tf.ops``; both can give
their kernel as a codebook (sorted centroids + indices), which is what
``extract_codebooks``, ``strip_quantization`` and the exporter use.
"""

import math
import numbers

import numpy as np
import tensorflow_model_optimization as tfmot

from gq_tf import defaults, ops
from gq_tf._keras import keras, tf
from gq_tf.reference import check_bits

__all__ = ["GeneralQuantizer", "GQ", "Uniform", "check_bits"]

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer

# Index of each field in the per-quantizer annealing state variable.
STATE_STEP, STATE_TAU, STATE_HARD = 0, 1, 2


@keras.utils.register_keras_serializable(package="gq_tf")
class ClipConstraint(keras.constraints.Constraint):
    """Clips a variable to [min_value, max_value] after every optimizer step."""

    def __init__(self, min_value, max_value=None):
        self.min_value = min_value
        self.max_value = max_value

    def __call__(self, w):
        hi = np.inf if self.max_value is None else self.max_value
        return tf.clip_by_value(w, self.min_value, hi)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


class _KernelQuantizer(_Quantizer):
    """Common part of the project's weight quantizers.

    ``weight_name`` is the logical name of the quantized weight inside its
    layer (``"query"``, ``"recurrent_kernel"``, ...). The QuantizeConfig sets it
    on its own copy of the quantizer before tfmot builds it, so the variables
    get unique names (tfmot would name all four attention kernels "kernel",
    and same-named variables collide in checkpoints). ``source`` is the float
    weight variable, read once at build time.
    """

    def __init__(self, bits):
        self.bits = check_bits(bits)
        self.weight_name = None
        self.source = None

    def _key(self, name):
        return self.weight_name or name

    def _check_source(self, layer, key):
        if self.source is None:
            return None
        with tf.init_scope():
            value = np.asarray(self.source.numpy(), np.float64)
        bad = ~np.isfinite(value)
        if bad.any():
            owner = getattr(getattr(layer, "layer", layer), "name", "?")
            raise ValueError(
                f"Expected finite values in weight '{owner}/{key}'. Received "
                f"{int(bad.sum())} non-finite values (NaN/inf) of {value.size}; "
                "fix the float model before quantizing it."
            )
        return value

    @staticmethod
    def compute_dtype(x):
        """GQ math runs in float32 (float64 for float64 kernels), never in half
        precision: under ``mixed_float16`` the wrapper hands us float16 kernels,
        whose log1p/softmax at low temperature would lose the assignment."""
        return tf.float64 if x.dtype == tf.float64 else tf.float32

    def _cast_vars(self, qvars, dtype):
        return {k: tf.cast(v, dtype) if v.dtype.is_floating and k != "state" else v for k, v in qvars.items()}

    def quantize_for_inference(self, weight, qvars):
        centroids, indices = self.codebook_tensors(weight, qvars)
        return tf.cast(tf.gather(centroids, indices), weight.dtype)

    def get_config(self):
        return {"bits": self.bits}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.utils.register_keras_serializable(package="gq_tf")
class GeneralQuantizer(_KernelQuantizer):
    r"""General Quantizer (Zhen et al., SLT 2022), exactly as GQ_SPEC.md defines it.

    Per kernel W with b bits (K = 2^b centroids), learned theta in [-1, 1]^K
    (companded domain), scale s > 0 and companding strength mu:

    .. math::

        x = \mathrm{clip}(W/s, -1, 1), \quad z = F_\mu(x), \quad
        d_j = (z - \theta_j)^2 \\
        p_j = \mathrm{softmax}_j\!\left(-\frac{d_j}{\tau \delta^2}\right),
        \quad \delta = 2/K \\
        z_q = \sum_j p_j\theta_j \ \text{(soft phase)}, \qquad
        z_q = z_{soft} + \mathrm{sg}(\theta_{j^*} - z_{soft}) \ \text{(hard phase)} \\
        \hat W = s\, F_\mu^{-1}(z_q)

    with :math:`F_\mu(x) = \mathrm{sign}(x)\log(1+\mu|x|)/\log(1+\mu)`.
    Gradients reach W (through z and p), theta and s; no regularizer is
    added. With ``training=False`` the hard value is always used, so Keras
    evaluation measures the deployed model. For K > 16 the softmax runs over
    the ``soft_window`` nearest centroids only, so training memory is
    O(size(W) * min(K, 2 * soft_window)).

    tau and the phase come from a per-quantizer state variable driven by
    ``gq_tf.GQAnnealing`` (saved with the weights).

    Args:
      bits: bit depth b in 1..8.
      mu: companding strength >= 0 (0: uniform codebook domain).
      trainable_mu: learn mu too (needs mu > 0).
      soft_window: softmax window for K > 16, in 1..16.

    Raises:
      TypeError, ValueError: for invalid arguments.

    Example:
      >>> qat = gq_tf.quantize_model(model, {"dense.*": gq_tf.GQ(4, mu=8.0)})
    """

    def __init__(self, bits, mu=defaults.MU, trainable_mu=False, soft_window=defaults.SOFT_WINDOW):
        super().__init__(bits)
        if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) or mu < 0:
            raise ValueError(f"Expected `mu` to be a finite number >= 0. Received: mu={mu!r}")
        if trainable_mu and mu == 0:
            raise ValueError(
                "Expected mu > 0 with trainable_mu=True (mu=0 is the identity map "
                "and has no gradient). Received: mu=0"
            )
        if isinstance(soft_window, bool) or not isinstance(soft_window, numbers.Integral) or not 1 <= soft_window <= 16:
            raise ValueError(
                f"Expected `soft_window` to be an int in 1..16. Received: soft_window={soft_window!r}"
            )
        self.mu = float(mu)
        self.trainable_mu = bool(trainable_mu)
        self.soft_window = int(soft_window)

    @property
    def num_centroids(self):
        return 2**self.bits

    def build(self, tensor_shape, name, layer):
        key = self._key(name)
        w = self._check_source(layer, key)
        s0 = max(float(np.max(np.abs(w))), 1e-8) if w is not None and w.size else 1.0
        k = self.num_centroids
        mids = -1.0 + (2.0 * np.arange(k) + 1.0) / k
        qvars = {
            "theta": layer.add_weight(
                f"{key}_gq_theta",
                shape=(k,),
                initializer=keras.initializers.Constant(mids),
                constraint=ClipConstraint(-1.0, 1.0),
                trainable=True,
            ),
            "scale": layer.add_weight(
                f"{key}_gq_scale",
                shape=(),
                initializer=keras.initializers.Constant(s0),
                constraint=ClipConstraint(1e-8),
                trainable=True,
            ),
            "state": layer.add_weight(
                f"{key}_gq_anneal",
                shape=(3,),
                dtype=tf.float64,
                initializer=keras.initializers.Constant([0.0, defaults.TAU0, 0.0]),
                trainable=False,
            ),
        }
        if self.trainable_mu:
            qvars["mu"] = layer.add_weight(
                f"{key}_gq_mu",
                shape=(),
                initializer=keras.initializers.Constant(self.mu),
                constraint=ClipConstraint(1e-3),
                trainable=True,
            )
        return qvars

    def _mu(self, qvars):
        return qvars["mu"] if self.trainable_mu else self.mu

    def __call__(self, inputs, training, weights, **kwargs):
        if not training:
            return self.quantize_for_inference(inputs, weights)
        dtype = self.compute_dtype(inputs)
        qv = self._cast_vars(weights, dtype)
        state = tf.cast(weights["state"], dtype)
        quantize = ops.gq_quantize if ops.TRAINING_GRADIENT == "custom" else ops.gq_quantize_autodiff
        w_hat = quantize(
            tf.cast(inputs, dtype),
            qv["theta"],
            qv["scale"],
            self._mu(qv),
            tau=state[STATE_TAU],
            hard=state[STATE_HARD],
            soft_window=self.soft_window,
        )
        return tf.cast(w_hat, inputs.dtype)

    def codebook_tensors(self, weight, qvars):
        """(sorted centroids [K], int32 indices) of the current hard assignment."""
        dtype = self.compute_dtype(weight)
        qv = self._cast_vars(qvars, dtype)
        return ops.gq_hard_assign(tf.cast(weight, dtype), qv["theta"], qv["scale"], self._mu(qv))

    def hardness(self, weight, qvars):
        """Mean max_j p_j at the current temperature (1.0 means hard)."""
        tau = tf.cast(qvars["state"][STATE_TAU], weight.dtype)
        return ops.gq_hardness(
            weight, qvars["theta"], qvars["scale"], self._mu(qvars), tau, self.soft_window
        )

    def get_config(self):
        return {
            "bits": self.bits,
            "mu": self.mu,
            "trainable_mu": self.trainable_mu,
            "soft_window": self.soft_window,
        }


# The policy-facing name: ``gq_tf.GQ(4, mu=8.0)``.
GQ = GeneralQuantizer


@keras.utils.register_keras_serializable(package="gq_tf")
class Uniform(_KernelQuantizer):
    r"""Uniform symmetric per-kernel quantizer with a straight-through gradient.

    The grid is fixed by the current weights (``reference.uniform_codebook``):
    for b >= 2, :math:`\hat W = \mathrm{clip}(\mathrm{round}(W/\Delta), -q, q)\,\Delta`
    with :math:`q = 2^{b-1}-1`, :math:`\Delta = \max|W|/q` (narrow range, as
    TFLite int8 weights); for b = 1, :math:`\hat W = \mathrm{sign}(W)\,\mathrm{mean}|W|`.
    In training :math:`W + \mathrm{sg}(\hat W - W)`. It is the "uniform b-bit
    QAT" baseline and plugs into the same policies as GQ, including LSTM and
    attention kernels.

    Args:
      bits: bit depth in 1..8.
    """

    def build(self, tensor_shape, name, layer):
        self._check_source(layer, self._key(name))
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        w_hat = self.quantize_for_inference(inputs, weights)
        if not training:
            return w_hat
        return inputs + tf.stop_gradient(w_hat - inputs)

    def codebook_tensors(self, weight, qvars):
        return ops.uniform_quantize(tf.cast(weight, self.compute_dtype(weight)), self.bits)
