"""Training on several devices and machines with TensorFlow's own ``tf.distribute``.

A :class:`Cluster` wraps the strategy a recipe trains under and answers the
questions the trainer and the recipe runner ask of it: how many replicas,
is this process the chief (the one that writes results, checkpoints and
progress), and "wait here until every worker arrives" (:meth:`Cluster.barrier`),
"does every worker see the same value" (:meth:`Cluster.gather`).

Strategies (``make_cluster(name)``, ``gq-tf asr run RECIPE --strategy NAME``):

- ``default``: no distribution (one device), as before.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs,
  or, on a machine without one, over ``devices`` logical CPU devices (a CPU
  split in parts: for tests, and for checking a setup before it goes to GPUs).
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the
  machines named by ``TF_CONFIG`` (each process runs the same command with its
  own ``TF_CONFIG``; see docs/ASR.md). Every worker must see the same run
  directory (a shared file system): the chief writes checkpoints and results,
  every worker restores from the chief's checkpoints.

Errors of configuration are raised before any training, never as a hang:
an unknown strategy name, a ``TF_CONFIG`` that is not what TensorFlow
expects, a cluster whose workers do not all arrive within ``timeout_s``
(the message names the addresses that accepted no connection), a worker
that stops during training (TensorFlow's own health check aborts the
collectives after ``health_interval_s``; :class:`ClusterError` says what to
do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time

import numpy as np

from gq_tf._keras import tf

STRATEGIES = ("default", "mirrored", "multi_worker")
DEFAULT_TIMEOUT_S = 300.0  # how long a worker waits for the others to start
DEFAULT_HEALTH_INTERVAL_S = 10.0  # how often workers check each other during training


class ClusterError(RuntimeError):
    """The workers of a multi-worker run did not all start, or one stopped."""


@dataclasses.dataclass
class Cluster:
    """A strategy and this process's place in it."""

    strategy: tf.distribute.Strategy
    name: str = "default"
    workers: int = 1
    worker_index: int = 0
    addresses: tuple = ()

    @property
    def replicas(self) -> int:
        """Replicas in sync, over every worker (the global batch is split in this many parts)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, results and progress (worker 0)."""
        return self.worker_index == 0

    @property
    def distributed(self) -> bool:
        return self.name != "default"

    def scope(self):
        """The strategy's scope: networks, optimizers and quantizers built in it are mirrored."""
        return self.strategy.scope()

    def log(self, log):
        """``log`` on the chief; other workers stay silent (progress is printed once)."""
        return log if self.is_chief else (lambda message: None)

    def gather(self, values) -> np.ndarray:
        """Every worker's ``values`` (a flat list of numbers), one row per worker.

        A collective: every worker must call it at the same point.
        """
        local = np.asarray(values, np.float64).reshape(1, -1)
        if self.workers == 1:
            return local
        per_worker = self.replicas // self.workers

        @tf.function
        def gathered():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_gather(tf.constant(local), axis=0)

        rows = self.strategy.experimental_local_results(self.strategy.run(gathered))[0].numpy()
        return rows[::per_worker]  # each worker's replicas sent the same row

    def barrier(self) -> None:
        """Returns when every worker has called it (no-op with one worker)."""
        self.gather([0.0])

    @contextlib.contextmanager
    def chief_first(self):
        """Runs the block on the chief while the other workers wait, then on them.

        For work whose result lands on the shared run directory (a corpus,
        a feature cache, a settings stamp): the chief makes it, the others
        find it made.
        """
        if self.is_chief:
            yield
            self.barrier()
        else:
            self.barrier()
            yield


def local() -> Cluster:
    """No distribution: the strategy in scope now (TensorFlow's default one outside any scope)."""
    return Cluster(tf.distribute.get_strategy())


def _cpu_devices(n: int) -> list[str]:
    """``n`` logical CPU devices (one physical CPU split), configured before TensorFlow starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    have = tf.config.get_logical_device_configuration(cpu)
    if have is None or len(have) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as e:
            now = len(tf.config.list_logical_devices("CPU"))
            raise RuntimeError(f"Expected to split the CPU into {n} logical devices before TensorFlow starts. "
                               f"Received a runtime already started with {now}: choose the strategy first "
                               "(gq-tf asr run does), in a fresh process.") from e
    return [f"/cpu:{i}" for i in range(n)]


def _devices(devices: int | None) -> list[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        n = len(gpus) if devices is None else devices
        if not 1 <= n <= len(gpus):
            raise ValueError(f"Expected --devices between 1 and the {len(gpus)} GPUs of this machine. Received {n}.")
        return [f"/gpu:{i}" for i in range(n)]
    n = 1 if devices is None else devices
    if n < 1:
        raise ValueError(f"Expected --devices >= 1. Received {n}.")
    return _cpu_devices(n)


def read_tf_config(text: str | None = None) -> dict:
    """``TF_CONFIG`` checked: ``{"cluster": {"worker": ["host:port", ...], ...}, "task": {"type", "index"}}``.

    Raises:
      ValueError: missing, not JSON, or not of that form (the message shows what was received).
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError('Expected TF_CONFIG for --strategy multi_worker, e.g. {"cluster": {"worker": '
                         '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}. '
                         "Received no TF_CONFIG in the environment.")
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Expected TF_CONFIG to be JSON. Received {text!r} ({e}).") from None
    cluster, task = (conf.get("cluster"), conf.get("task")) if isinstance(conf, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        raise ValueError('Expected TF_CONFIG["cluster"] to map job names ("chief", "worker") to lists of '
                         f'"host:port" addresses. Received {cluster!r}.')
    unknown = set(cluster) - {"chief", "worker"}
    if unknown or len(cluster.get("chief", [])) > 1:
        raise ValueError('Expected TF_CONFIG["cluster"] to name a "worker" list and at most one "chief" '
                         f"(MultiWorkerMirroredStrategy). Received jobs {sorted(cluster)} "
                         f"with {len(cluster.get('chief', []))} chief(s).")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f'Expected TF_CONFIG["task"] to be {{"type": one of {sorted(cluster)}, "index": a position '
                         f"in that list}}. Received {task!r}.")
    return conf


def _order(conf: dict) -> tuple[list[str], int]:
    """(every address, chief first), this task's position in that list."""
    cluster, task = conf["cluster"], conf["task"]
    addresses = list(cluster.get("chief", [])) + list(cluster["worker"] if "worker" in cluster else [])
    index = task["index"] + (len(cluster.get("chief", [])) if task["type"] == "worker" else 0)
    return addresses, index


def _accepts(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _first_line(e: BaseException, width: int = 160) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:width]


def _multi_worker(timeout_s: float, health_interval_s: float) -> Cluster:
    from tensorflow.python.distribute import collective_all_reduce_strategy as car  # TF's MWMS engine

    conf = read_tf_config()
    addresses, index = _order(conf)
    # The strategy waits for every worker at start (forever by default) and
    # checks them during training: bounded here, so a missing worker is an
    # error, not a hang. (TensorFlow's own settings, set on its class.)
    car.CollectiveAllReduceExtended._check_health_initial_timeout = max(1, int(timeout_s))
    car.CollectiveAllReduceExtended._check_health_interval = max(1, int(health_interval_s))
    # The strategy's coordination service (it replaces that health check when
    # on) waits an hour for the workers to register: configured here as the
    # strategy would, with our bounds (it keeps a service configured before it).
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = conf["cluster"]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(tf.train.ClusterSpec(cluster)),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
                          for job in ("chief", "worker") if job in cluster],
        cluster_register_timeout_in_ms=int(max(1.0, timeout_s) * 1000),
        heartbeat_timeout_in_ms=int(max(1.0, health_interval_s) * 1000))
    context.context().coordination_service.cluster_register_with_barrier = True
    t0 = time.time()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, tf.errors.OpError) as e:
        silent = [a for i, a in enumerate(addresses) if i != index and not _accepts(a)]
        named = f"no connection at {', '.join(silent)}" if silent else "every address answered, but not all joined"
        raise ClusterError(
            f"Expected all {len(addresses)} workers of TF_CONFIG ({', '.join(addresses)}) to start within "
            f"{timeout_s:.0f} s. Waited {time.time() - t0:.0f} s: {named}. Start the same command on every "
            f"machine, each with its own TF_CONFIG task, or raise --timeout. ({_first_line(e)})") from None
    return Cluster(strategy, "multi_worker", workers=len(addresses), worker_index=index, addresses=tuple(addresses))


def make_cluster(name: str = "default", *, devices: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S) -> Cluster:
    """The :class:`Cluster` for a strategy name; call it before TensorFlow runs anything.

    Args:
      name: one of :data:`STRATEGIES`.
      devices: replicas on this machine (``mirrored``): the first ``devices``
        GPUs (default all), or ``devices`` logical CPU devices where there is
        no GPU (default 1). ``multi_worker`` uses every local GPU, or the CPU.
      timeout_s: ``multi_worker``: how long to wait for every worker to start.
      health_interval_s: ``multi_worker``: how often the workers check each
        other during training (a stopped worker is found within about this).

    Raises:
      ValueError: an unknown name, bad ``devices``, or a malformed ``TF_CONFIG``.
      ClusterError: the workers did not all start in time.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Expected a strategy among {', '.join(STRATEGIES)}. Received {name!r}.")
    if name == "default":
        if devices not in (None, 1):
            raise ValueError(f"Expected --devices only with --strategy mirrored. Received {devices} with 'default'.")
        return local()
    if name == "mirrored":
        return Cluster(tf.distribute.MirroredStrategy(_devices(devices)), "mirrored")
    if devices is not None:
        raise ValueError("Expected no --devices with --strategy multi_worker (each worker uses all its GPUs, or "
                         f"its CPU). Received {devices}.")
    return _multi_worker(timeout_s, health_interval_s)


def is_worker_loss(e: BaseException) -> bool:
    """Whether ``e`` is how TensorFlow reports a peer that stopped during a collective."""
    text = str(e)
    return isinstance(e, (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
                          tf.errors.DeadlineExceededError)) or "is down" in text or "check alive" in text
