"""Softmax annealing (GQ_SPEC section 5) as a Keras callback."""

import math
import numbers

import numpy as np

from gq_tf import defaults
from gq_tf._keras import keras, tf
from gq_tf.codebooks import quantized_weights
from gq_tf.quantizers import STATE_STEP, GeneralQuantizer

__all__ = ["GQAnnealing", "anneal_schedule"]


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a finite number > 0. Received: {name}={value!r}")


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}. Received: {name}={value!r}")


def anneal_schedule(step, tau0, gamma, anneal_every, tau_min, hard_after=None, hard_every=0):
    """The GQ_SPEC schedule at one step.

        tau(t) = max(tau_min, tau0 * gamma ** floor(t / anneal_every))
        hard phase from the first t with tau(t) <= tau_min, or hard_after,
        whichever comes first; in the soft phase, steps with
        (t + 1) % hard_every == 0 use the hard value too.

    Returns:
      (tau, hard_phase, hard_now): the temperature, whether the permanent hard
      phase has started, and whether this step runs the hard value.
    """
    tau = max(tau_min, tau0 * gamma ** (step // anneal_every))
    hard_phase = tau <= tau_min or (hard_after is not None and step >= hard_after)
    hard_now = hard_phase or (hard_every > 0 and (step + 1) % hard_every == 0)
    return tau, hard_phase, hard_now


class GQAnnealing(keras.callbacks.Callback):
    """Drives the temperature and phase of every GeneralQuantizer in a model.

    The schedule position (the training step) lives in each quantizer's state
    variable, so it is saved with the weights and a run restored from a
    checkpoint continues the schedule where it stopped.

    Logs (visible in the progress bar and History): ``gq_tau``,
    ``gq_hard`` (1 once the hard phase began) every batch, and
    ``gq_hardness`` (mean max_j p_j over all GQ weights; 1.0 = hard) every
    epoch when ``log_hardness``.

    Args:
      tau0: initial temperature (> 0).
      gamma: decay factor per ``anneal_every`` steps, in (0, 1].
      anneal_every: steps between temperature updates (>= 1).
      tau_min: final temperature; reaching it starts the hard phase.
      hard_after: step at which the hard phase starts at the latest, or None.
      hard_every: in the soft phase, every ``hard_every``-th step runs the hard
        value ("quantization frequency"); 0 disables it.
      log_hardness: compute ``gq_hardness`` at each epoch end.

    Example:
      >>> cb = gq_tf.GQAnnealing(tau0=1.0, gamma=0.5, anneal_every=100, tau_min=0.01)
      >>> qat.fit(x, y, epochs=5, callbacks=[cb])
    """

    def __init__(
        self,
        tau0=defaults.TAU0,
        gamma=defaults.GAMMA,
        anneal_every=100,
        tau_min=defaults.TAU_MIN,
        hard_after=None,
        hard_every=0,
        log_hardness=True,
    ):
        super().__init__()
        _positive("tau0", tau0)
        _positive("tau_min", tau_min)
        _positive("gamma", gamma)
        if gamma > 1:
            raise ValueError(f"Expected `gamma` in (0, 1]. Received: gamma={gamma!r}")
        _count("anneal_every", anneal_every, 1)
        if hard_after is not None:
            _count("hard_after", hard_after, 0)
        _count("hard_every", hard_every, 0)
        self.tau0 = float(tau0)
        self.gamma = float(gamma)
        self.anneal_every = int(anneal_every)
        self.tau_min = float(tau_min)
        self.hard_after = hard_after
        self.hard_every = int(hard_every)
        self.log_hardness = bool(log_hardness)
        self._gq = []
        self._step = 0
        self._written = None

    @property
    def hard_step(self):
        """The step at which the hard phase starts (None: never)."""
        candidates = [] if self.hard_after is None else [self.hard_after]
        if self.gamma < 1 or self.tau0 <= self.tau_min:
            k = 0
            while self.tau0 * self.gamma**k > self.tau_min:
                k += 1
            candidates.append(k * self.anneal_every)
        return min(candidates) if candidates else None

    def schedule(self, step):
        """(tau, hard_phase, hard_now) at ``step``; see ``anneal_schedule``."""
        return anneal_schedule(
            step, self.tau0, self.gamma, self.anneal_every, self.tau_min, self.hard_after, self.hard_every
        )

    @property
    def step(self):
        """The next training step the schedule will run."""
        return self._step

    def set_model(self, model):
        super().set_model(model)
        self._gq = [qw for qw in quantized_weights(model) if isinstance(qw.quantizer, GeneralQuantizer)]
        if not self._gq:
            raise ValueError(
                f"Expected a model with GQ quantizers for GQAnnealing. Received model "
                f"'{model.name}', which has only uniform quantizers."
            )
        states = [qw.qvars["state"] for qw in self._gq]

        @tf.function(autograph=False)
        def write(value):
            for var in states:
                var.assign(value)

        self._write = write
        # Resume: the saved step of the quantizers (all equal unless edited).
        self._step = int(max(float(s[STATE_STEP].numpy()) for s in states))
        self._written = None

    def _apply(self, step):
        tau, _, hard_now = self.schedule(step)
        value = (float(step), tau, 1.0 if hard_now else 0.0)
        if value != self._written:
            self._write(tf.constant(value, tf.float64))
            self._written = value

    def on_train_batch_begin(self, batch, logs=None):
        self._apply(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        # Record progress even if training stops right after this batch.
        self._apply(self._step)
        if logs is not None:
            tau, hard_phase, _ = self.schedule(self._step - 1)
            logs["gq_tau"] = tau
            logs["gq_hard"] = float(hard_phase)

    def hardness(self):
        """Mean max_j p_j over all GQ weights (weighted by size) at the current tau."""
        total = sum(int(np.prod(qw.variable.shape)) for qw in self._gq)
        acc = 0.0
        for qw in self._gq:
            h = float(qw.quantizer.hardness(tf.convert_to_tensor(qw.variable), qw.qvars))
            acc += h * int(np.prod(qw.variable.shape))
        return acc / total

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        tau, hard_phase, _ = self.schedule(max(self._step - 1, 0))
        logs["gq_tau"] = tau
        logs["gq_hard"] = float(hard_phase)
        if self.log_hardness:
            logs["gq_hardness"] = self.hardness()

    def get_config(self):
        return {
            "tau0": self.tau0,
            "gamma": self.gamma,
            "anneal_every": self.anneal_every,
            "tau_min": self.tau_min,
            "hard_after": self.hard_after,
            "hard_every": self.hard_every,
            "log_hardness": self.log_hardness,
        }
