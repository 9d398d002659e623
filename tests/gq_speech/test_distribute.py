"""Training under tf.distribute: MirroredStrategy on 2 logical CPU devices and
MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1.

A strategy's devices and cluster are fixed when TensorFlow starts, so every
distributed run is a process of its own (``gq-tf asr run`` or
``tests/support/distrun.py``), bounded in time and always killed at the end.

Equivalence tolerance (same global batch, same seed, 1 replica vs 2): the
replicas sum their gradients where one device sums over the whole batch, so
results differ only by the order of float additions: losses by < 1e-5
relative (measured 1.4e-7), weights and GQ centroids by < 1e-3 absolute
(measured 1.0e-4 and 3.9e-5 after 6 Adam steps at lr 3e-3: Adam divides a
gradient by its running size, so where a gradient is near zero a rounding
difference can move a weight by a fraction of one step, lr).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gq_speech import distribute, experiment
from gq_speech.recipe import load_recipe
from gq_speech.train import Split, spec_augment, tf_batches

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["float", "gq_mixed"]
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-3


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _start(cmd, log, env=None):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def _run_all(procs, timeout):
    """Waits for every process (at most ``timeout`` s in all), then kills what is left; exit codes."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [p.returncode for p in procs]


def _gq_tf(args, log, env=None, timeout=600):
    rc = _run_all([_start([sys.executable, "-m", "gq_speech.cli", "run", *args], log, env)], timeout)[0]
    return rc, Path(log).read_text()


def _workers(cmd_of, logs, timeout):
    ports = _free_ports(2)
    procs = [_start(cmd_of(i), logs[i], {"TF_CONFIG": _tf_config(ports, i)}) for i in range(2)]
    return _run_all(procs, timeout), [Path(f).read_text() for f in logs]


def _distrun(out, *args, env=None, timeout=300):
    log = f"{out}.log"
    rc = _run_all([_start([sys.executable, "-m", "tests.support.distrun", str(out), *args], log, env)], timeout)[0]
    return rc, Path(log).read_text()


def _distrun_workers(out, *args, timeout=300):
    cmd = lambda i: [sys.executable, "-m", "tests.support.distrun", str(out), "--strategy", "multi_worker", *args]  # noqa: E731
    return _workers(cmd, [f"{out}.w0.log", f"{out}.w1.log"], timeout)


def _epochs(run, variant):
    folder = run / "rnnt_tiny" / ("float_model" if variant == "float" else variant)
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _checkpoint(run, variant):
    import tensorflow as tf

    folder = run / "rnnt_tiny" / ("float_model" if variant == "float" else variant) / "ckpt"
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(folder)))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_dtype_map() if k.startswith("net/")}


def _assert_equivalent_runs(one, many):
    for variant in VARIANTS:
        a, b = _epochs(one, variant), _epochs(many, variant)
        assert [e["epoch"] for e in a] == [e["epoch"] for e in b]
        for x, y in zip(a, b):
            for key in ("loss", "val_loss"):
                assert abs(x[key] - y[key]) <= LOSS_RTOL * abs(x[key]), (variant, key, x, y)
        wa, wb = _checkpoint(one, variant), _checkpoint(many, variant)
        assert sorted(wa) == sorted(wb)
        # Every weight, and for GQ the codebook variables (theta, scale) and the annealing state.
        assert any("gq_theta" in k for k in wa) or variant == "float"
        for k in wa:
            assert np.allclose(wa[k], wb[k], rtol=0, atol=WEIGHT_ATOL), (variant, k)
        ra = json.loads((one / "rnnt_tiny" / variant / "result.json").read_text())
        rb = json.loads((many / "rnnt_tiny" / variant / "result.json").read_text())
        assert ra["wer_keras_test"] == rb["wer_keras_test"] and ra["wer_tflite_test"] == rb["wer_tflite_test"]
        for split in ("test", "test_far"):
            assert (one / "rnnt_tiny" / variant / f"hyps_{split}.txt").read_text() == \
                   (many / "rnnt_tiny" / variant / f"hyps_{split}.txt").read_text()


# ----------------------------------------------------------------- in this process


def test_an_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="Expected a strategy among default, mirrored, multi_worker. "
                                         "Received 'horovod'"):
        distribute.make_cluster("horovod")


@pytest.mark.parametrize("text, match", [
    (None, "Received no TF_CONFIG"),
    ("{cluster", "Expected TF_CONFIG to be JSON"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "lists of"),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}', r"jobs \['ps'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "a position"),
    ('{"cluster": {"worker": ["a:1"]}}', r"Received None"),
])
def test_a_malformed_tf_config_is_a_clear_error(text, match, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=match):
        distribute.read_tf_config(text if text is not None else "")


def test_a_recipe_may_name_its_strategy():
    from gq_speech.recipe import strategy_settings

    assert strategy_settings({}) == {}
    assert strategy_settings({"strategy": "mirrored"}) == {"name": "mirrored"}
    assert strategy_settings({"strategy": {"name": "mirrored", "devices": 2}}) == {"name": "mirrored", "devices": 2}
    for bad in ({"gpus": 2}, {"devices": "2"}, {"devices": True}, 3, ["mirrored"]):
        with pytest.raises(ValueError, match="'strategy'"):
            strategy_settings({"strategy": bad})


def test_a_global_batch_that_does_not_split_is_named_before_training():
    recipe = load_recipe("tiny")
    experiment.check_global_batches(recipe, ["rnnt_tiny"], None, 2)  # batch 4 on 2 replicas: fine
    with pytest.raises(ValueError, match=r"divisible by the 3 replicas. Received rnnt_tiny/float: 4, "
                                         r"rnnt_tiny/uniform8: 4"):
        experiment.check_global_batches(recipe, ["rnnt_tiny"], None, 3)


def test_a_network_built_outside_the_strategy_is_a_clear_error(tmp_path):
    import tensorflow as tf

    from gq_speech import models
    from gq_speech.train import TrainConfig, fit

    cfg = models.load_config("rnnt_tiny")
    split = Split("s", ["a"], ["x"], [np.zeros((16, 16), np.float16)], [np.array([1], np.int32)])
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        net = models.build_training_model(cfg)
    with pytest.raises(ValueError, match=r"built in the scope of the strategy it trains under \('default'"):
        fit(net, cfg, split, None, TrainConfig(epochs=1, batch_size=1), tmp_path, name="t", log=lambda m: None)
    assert not (tmp_path / "ckpt").exists()


def test_each_replica_gets_its_part_of_every_global_batch_once():
    """4 replicas on 2 workers: each worker's pipeline yields its 2 replicas' parts
    of each global batch, in order; together they are the one-device batches
    (SpecAugment's masks included), and every utterance comes once per epoch."""
    rng = np.random.default_rng(0)
    n = 11  # 3 batches of 4: the last has 3 utterances, so one replica's part is empty
    feats = [rng.normal(size=(int(rng.integers(10, 30)), 8)).astype(np.float16) for _ in range(n)]
    split = Split("s", [str(i) for i in range(n)], ["x"] * n, feats, [np.array([i + 1], np.int32) for i in range(n)])
    augment = ({"freq_masks": 2, "freq_width": 0.3, "time_masks": 2, "time_width": 0.2}, np.zeros(8, np.float32))
    kw = dict(shuffle=True, seed=3, augment=augment, first_epoch=1)
    one = [tuple(t.numpy() for t in b) for b in tf_batches(split, 4, **kw)]
    parts = [[tuple(t.numpy() for t in b) for b in tf_batches(split, 4, replicas=4, pipeline=w, pipelines=2, **kw)]
             for w in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2 * len(one)
    seen = []
    for k, batch in enumerate(one):
        pieces = parts[0][2 * k:2 * k + 2] + parts[1][2 * k:2 * k + 2]
        for field in range(4):
            assert np.array_equal(np.concatenate([p[field] for p in pieces]), batch[field])
        assert [len(p[0]) for p in pieces] in ([1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1],
                                              [1, 1, 1, 0]) or sum(len(p[0]) for p in pieces) == 4
        seen += [int(label) for p in pieces for label in p[2][:, 0]]
    assert sorted(seen) == list(range(1, n + 1))


def test_spec_augment_depends_only_on_seed_epoch_and_batch():
    x = np.ones((2, 40, 16), np.float32)
    a = spec_augment(x, [40, 20], np.zeros(16), rng=np.random.default_rng([0, 1, 2]))
    b = spec_augment(x, [40, 20], np.zeros(16), rng=np.random.default_rng([0, 1, 2]))
    c = spec_augment(x, [40, 20], np.zeros(16), rng=np.random.default_rng([0, 1, 3]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ----------------------------------------------------------------- MirroredStrategy, 2 logical CPUs


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    rc, log = _gq_tf(["tiny", "--out", str(out), "--variants", *VARIANTS], f"{out}.log")
    assert rc == 0, log
    return out


@pytest.mark.slow
def test_the_tiny_recipe_on_two_mirrored_devices_equals_one_device(one_device_run, tmp_path):
    """Float training and a GQ fine-tune with its annealing, checkpoints, export and WER, on
    2 replicas of a global batch of 4: the loss curves, every weight (GQ codebooks
    included), the transcripts and the WER of the 1-device run."""
    out = tmp_path / "run"
    rc, log = _gq_tf(["tiny", "--out", str(out), "--variants", *VARIANTS, "--strategy", "mirrored",
                      "--devices", "2"], tmp_path / "log")
    assert rc == 0, log
    assert "strategy mirrored: 2 replicas in sync" in log and "2 epochs on 2 replicas (mirrored)" in log
    _assert_equivalent_runs(one_device_run, out)


@pytest.mark.slow
def test_a_mirrored_fit_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """Checkpoint after every batch; stopped after step 4 of 6 (inside epoch 2), then resumed."""
    rc, log = _distrun(tmp_path / "ref", "--strategy", "mirrored", "--devices", "2")
    assert rc == 0, log
    rc, log = _distrun(tmp_path / "cut", "--strategy", "mirrored", "--devices", "2", "--stop-at-step", "4")
    assert rc == 3, log
    rc, log = _distrun(tmp_path / "cut", "--strategy", "mirrored", "--devices", "2")
    assert rc == 0, log
    assert "resuming after epoch 1, batch 1" in log
    ref, cut = np.load(tmp_path / "ref" / "result.npz"), np.load(tmp_path / "cut" / "result.npz")
    for k in ref.files:
        assert np.array_equal(ref[k], cut[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing repeated, nothing skipped


def test_a_batch_that_does_not_split_over_the_devices_is_an_error_before_anything_runs(tmp_path):
    rc, log = _gq_tf(["tiny", "--out", str(tmp_path / "run"), "--strategy", "mirrored", "--devices", "3"],
                     tmp_path / "log", timeout=120)
    assert rc == 2 and "divisible by the 3 replicas" in log, log
    assert not (tmp_path / "run" / "corpus").exists()
    rc, log = _gq_tf(["tiny", "--out", str(tmp_path / "run"), "--strategy", "ring"], tmp_path / "log2", timeout=120)
    assert rc == 2 and "Expected a strategy among default, mirrored, multi_worker. Received 'ring'" in log, log


# ----------------------------------------------------------------- MultiWorkerMirroredStrategy, 2 processes


@pytest.mark.slow
def test_the_tiny_recipe_on_two_workers_equals_one_device(one_device_run, tmp_path):
    out = tmp_path / "run"
    cmd = lambda i: [sys.executable, "-m", "gq_speech.cli", "run", "tiny", "--out", str(out),  # noqa: E731
                     "--variants", *VARIANTS, "--strategy", "multi_worker", "--timeout", "120"]
    codes, logs = _workers(cmd, [tmp_path / "w0.log", tmp_path / "w1.log"], timeout=600)
    assert codes == [0, 0], logs
    assert "worker 0 of 2 (chief)" in logs[0] and "[float] epoch 2/2" in logs[0]
    assert "worker 1 of 2: the chief prints the progress" in logs[1] and "epoch" not in logs[1]  # printed once
    _assert_equivalent_runs(one_device_run, out)


@pytest.mark.slow
def test_a_killed_worker_is_a_clear_error_and_the_run_resumes_from_the_chiefs_checkpoint(tmp_path):
    """Worker 1 is SIGKILLed after step 2 (inside epoch 1 of 2); the chief stops with a
    clear error within seconds; both started again resume from the chief's
    newest checkpoint (after step 2), and the result is the uninterrupted one's (1 device)."""
    rc, log = _distrun(tmp_path / "ref", "--strategy", "default")
    assert rc == 0, log
    out = tmp_path / "mw"
    t0 = time.time()
    codes, logs = _distrun_workers(out, "--die-at-step", "2", timeout=240)
    assert codes[1] == -signal.SIGKILL and codes[0] == 2, logs
    assert "a worker stopped" in logs[0] and "(epoch 0, batch 2)" in logs[0], logs[0]
    assert "start the same command on every worker again" in logs[0]
    assert time.time() - t0 < 200
    codes, logs = _distrun_workers(out, timeout=240)
    assert codes == [0, 0], logs
    assert "resuming after epoch 0, batch 2" in logs[0]
    ref, got = np.load(tmp_path / "ref" / "result.npz"), np.load(out / "result.npz")
    for k in ref.files:
        if k.startswith(("w", "centroids")):
            assert np.allclose(ref[k], got[k], rtol=0, atol=WEIGHT_ATOL), k
    states = got["states"]  # every worker's annealing state (step, tau, hard) of every GQ kernel
    assert states.shape[0] == 2 and np.array_equal(states[0], states[1])
    assert np.array_equal(states[0], ref["states"][0])
    # The chief's steps over both starts: nothing repeated, nothing skipped.
    steps = [json.loads(line)["step"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_worker_that_never_starts_is_a_clear_error_not_a_hang(tmp_path):
    ports = _free_ports(2)
    t0 = time.time()
    rc, log = _distrun(tmp_path / "alone", "--strategy", "multi_worker", "--timeout", "5",
                       env={"TF_CONFIG": _tf_config(ports, 0)}, timeout=120)
    assert rc == 2 and time.time() - t0 < 100, log
    assert "Expected all 2 workers of TF_CONFIG" in log and f"no connection at 127.0.0.1:{ports[1]}" in log, log
