"""Interrupted runs recover (issue 16): ``gq-tf asr run`` killed with SIGKILL at given stages resumes to
the results of an uninterrupted run, and no kill leaves a half-written file that a resumed run trusts.

The kills are placed by watching the run's log and the files its stages
write (no hook in the code under test); ``tests/support/killresume.py`` is the
random, longer version of this test.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tests.support import killresume as kr

QUIET = lambda m: None  # noqa: E731

# The kill-resume recipe cut down for CI: the float row only (a fine-tune
# adds no stage, and a minute of tracing), one epoch, no peak-memory children.
RECIPE = {
    **json.loads(kr.DEFAULT_RECIPE.read_text()),
    "name": "killresume_ci",
    "float": {"epochs": 1, "batch_size": 4, "lr": 0.002, "warmup_steps": 2, "freq_masks": 0, "time_masks": 0,
              "save_every_s": 0},
    "variants": {"float": {"kind": "float"}},
    "eval": {"tflite_utterances": None, "bench_runs": 1, "stream_utterances": 2, "stream_memory": False},
}
MODEL, VARIANT = "rnnt_tiny", "float"


def _file(*parts):
    return lambda out, lines: out.joinpath(*parts).exists()


def _glob(pattern):
    return lambda out, lines: any(out.glob(pattern))


# (what is interrupted, when to kill: a predicate of the run directory and the attempt's log lines).
# Each kill comes as soon as the harness sees the file (it polls every 20 ms), inside the step that
# writes it. Each costs a start (TensorFlow's import) and what is redone: four, for CI's time; the
# far field's swap and the clean-up of killed runs' temporaries are tested below without a run.
KILLS = (
    ("corpus generation (an utterance written)", _glob(".corpus.tmp-*/*/*/*/*.flac")),
    ("float training inside its epoch", _file(MODEL, "float_model", "ckpt", "checkpoint")),
    ("export (a graph written, no manifest)", _file(MODEL, VARIANT, "stream", "encoder.tflite")),
    ("final reports", _file("streambench", f"{MODEL}.json")),
)


@pytest.mark.slow
def test_a_run_killed_at_four_stages_resumes_to_the_uninterrupted_results(tmp_path):
    recipe = tmp_path / "killresume_ci.json"
    recipe.write_text(json.dumps(RECIPE))
    variants, model = kr._recipe_info(recipe)
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    # The reference runs beside the killed run: two processes on two cores.
    reference = kr.Attempt(recipe, ref_out, tmp_path / "reference.log")
    t0 = time.monotonic()
    said = []
    try:
        for k, (what, due) in enumerate(KILLS):
            attempt = kr.Attempt(recipe, out, tmp_path / f"attempt-{k}.log")
            code, stage, _, hung = kr.watch(attempt, out, variants, model, timeout=300, poll=0.02,
                                            kill_at=lambda s, v, lines: due(out, lines))
            assert code is None and not hung, f"expected a kill at {what}; it ended ({code}):\n{attempt.tail()}"
            assert kr.torn_files(out) == [], f"after a kill at {what}"
            said.append(f"{what}: {stage}")
        final = kr.Attempt(recipe, out, tmp_path / "final.log")
        code, *_ = kr.watch(final, out, variants, model, timeout=300)
        assert code == 0, final.tail(40)
        assert reference.proc.wait(timeout=300) == 0, reference.tail(40)
    finally:
        reference.kill()  # only if a failure left it running
    elapsed = time.monotonic() - t0

    logs = [(tmp_path / f"attempt-{k}.log").read_text() for k in range(len(KILLS))]
    logs.append((tmp_path / "final.log").read_text())
    assert "corpus: removing" in logs[1]  # the killed generation's temporary directory
    assert re.search(r"resuming after epoch 0, batch [12] ", logs[2]), logs[2]  # inside the epoch
    assert "done before" not in logs[3]  # the interrupted export is made again, not trusted
    assert kr.differences(kr.comparable(ref_out), kr.comparable(out)) == []
    assert kr.leftovers(out) == [], "temporary files of the killed attempts were not cleaned up"
    print(f"{len(KILLS)} kills ({'; '.join(said)}), resumed to the reference's results in {elapsed:.0f} s")


# ----------------------------------------------------------------- the pieces, without killing


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from gq_tf.fileio import atomic_json, atomic_write, new_file_mode

    path = tmp_path / "results.md"
    atomic_write(path, "old\n")
    with pytest.raises(TypeError):
        atomic_write(path, 3.5)  # fails while writing
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["results.md"]
    atomic_write(path, b"\x89PNG")
    atomic_json(tmp_path / "r.json", {"wer": 0.5})
    assert path.read_bytes() == b"\x89PNG" and json.loads((tmp_path / "r.json").read_text()) == {"wer": 0.5}
    assert path.stat().st_mode & 0o777 == new_file_mode()  # as open() makes it, not mkstemp's 0600


def test_temporaries_of_killed_runs_are_removed_and_those_of_live_ones_kept(tmp_path):
    from gq_tf.fileio import remove_stale_tmp

    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".corpus.tmp-{dead}").mkdir()
    (tmp_path / f".corpus.tmp-{live}").mkdir()
    (tmp_path / f".manifest.jsonl.tmp-{dead}").write_text('{"id": "half')
    (tmp_path / f".rirs-0a.npz.tmp-{dead}.npz").write_bytes(b"PK")
    said = []
    for name in ("corpus", "manifest.jsonl", "rirs-0a.npz"):
        remove_stale_tmp(tmp_path / name, said.append)
    assert sorted(os.listdir(tmp_path)) == [f".corpus.tmp-{live}"]
    assert len(said) == 3 and all("left by an interrupted run" in m for m in said)


class _Kill:
    """farfield's ``os`` and ``shutil`` with a SIGKILL at the ``n``-th call of ``point`` (``rename``,
    ``replace`` or ``rmtree``): that call dies (``rmtree`` after deleting the tree's ``.farfield``
    marker: it deletes in no set order), and no clean-up runs after it, as after a real kill."""

    def __init__(self, point, n):
        self.point, self.n, self.calls, self.killed = point, n, 0, False
        self.os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        self.os.rename = lambda *a: self._call("rename", os.rename, *a)
        self.os.replace = lambda *a: self._call("replace", os.replace, *a)
        self.shutil = types.SimpleNamespace(rmtree=lambda path, **kw: self._call("rmtree", shutil.rmtree, path, **kw))

    def _call(self, name, real, *args, **kwargs):
        if self.killed:
            return None
        if name == self.point:
            self.calls += 1
            if self.calls == self.n:
                self.killed = True
                if name == "rmtree":
                    marker = os.path.join(args[0], ".farfield")
                    if os.path.exists(marker):
                        os.unlink(marker)
                raise KeyboardInterrupt
        return real(*args, **kwargs)


@pytest.fixture(scope="module")
def far_corpus(tmp_path_factory):
    from gq_speech.corpus import make_corpus
    from gq_speech.farfield import make_farfield

    root = tmp_path_factory.mktemp("far") / "corpus"
    make_corpus(root, "tiny", seed=0, log=QUIET)
    make_farfield(root, seed=0, n_rooms=2, log=QUIET)
    return root


@pytest.mark.parametrize("killed_at", [("rmtree", 1), ("rename", 1), ("rename", 2), ("rmtree", 2), ("replace", 1),
                                       ("replace", 2)],
                         ids=["first clean-up", "old subset aside", "new subset in", "second clean-up", "manifest",
                              "info file"])
def test_far_field_swap_killed_anywhere_is_repaired_by_the_next_run(far_corpus, tmp_path, monkeypatch, killed_at):
    """The far-field subset is remade over an old one (its info file gone, as after a kill just
    before it was written); a kill at each step of the swap, then the same call again."""
    from gq_speech import farfield

    corpus = tmp_path / "corpus"
    shutil.copytree(far_corpus, corpus)
    (corpus / "farfield-test_far.json").unlink()
    kill = _Kill(*killed_at)
    with monkeypatch.context() as m:
        m.setattr(farfield, "os", kill.os)
        m.setattr(farfield, "shutil", kill.shutil)
        with pytest.raises(KeyboardInterrupt):
            farfield.make_farfield(corpus, seed=0, n_rooms=2, log=QUIET)
    assert kill.killed
    again = farfield.make_farfield(corpus, seed=0, n_rooms=2, log=QUIET)
    assert again.counts() == {"dev": 9, "test": 9, "test_far": 9, "train": 9}
    assert (corpus / "manifest.jsonl").read_bytes() == (far_corpus / "manifest.jsonl").read_bytes()
    for u in again.utterances("test_far"):
        rel = os.path.relpath(u.path, corpus)
        assert (corpus / rel).read_bytes() == (far_corpus / rel).read_bytes()
    assert kr.leftovers(corpus) == []


def test_an_export_in_progress_has_no_manifest(tmp_path, monkeypatch):
    """Graphs are replaced one by one: until the new manifest is written, the old one is gone,
    so a half-replaced export is never taken for a whole one."""
    import converters
    from gq_speech import deploy, models

    cfg = models.load_config("rnnt_tiny")
    net = models.build_training_model(cfg)
    out = tmp_path / "stream"
    out.mkdir()
    (out / deploy.MANIFEST).write_text('{"format": "%s"}' % deploy.FORMAT)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converters, "export_baseline", killed)
    with pytest.raises(KeyboardInterrupt):
        deploy.export_streaming(net, cfg, out, kind="float")
    assert not (out / deploy.MANIFEST).exists()


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_run_killed_between_its_last_batch_and_the_epoch_end_resumes(tmp_path, epochs):
    """Found by tests/support/killresume.py: such a run used to resume with every batch
    of the epoch to skip, and Keras raised on the empty pass at every resume."""
    from gq_speech import models
    from gq_speech.train import TrainConfig, fit
    from gq_tf._keras import keras, tf
    from tests.gq_speech.test_experiment import _toy_split

    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(8)  # 4 batches of 2
    tcfg = TrainConfig(epochs=epochs, batch_size=2, warmup_steps=1, save_every_s=0.0)

    class Killed(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):  # the last batch is checkpointed, the epoch's end is not
            raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(models.build_training_model(cfg), cfg, split, split, tcfg, tmp_path, name="t", callbacks=[Killed()],
            log=QUIET)
    fit(models.build_training_model(cfg), cfg, split, split, tcfg, tmp_path, name="t", log=QUIET)
    ckpt = tf.train.Checkpoint(epoch=tf.Variable(-1, dtype=tf.int64), batch=tf.Variable(-1, dtype=tf.int64))
    ckpt.restore(tf.train.latest_checkpoint(str(tmp_path / "ckpt"))).expect_partial()
    assert (int(ckpt.epoch.numpy()), int(ckpt.batch.numpy())) == (epochs, 0)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == list(range(1, epochs + 1))
    assert "loss" not in logged[0] and np.isfinite(logged[0]["val_loss"])  # finished without training


def test_feature_cache_temporaries_are_per_process_and_a_killed_ones_removed(far_corpus, tmp_path, monkeypatch):
    """Two models of a recipe may build one feature cache at once: each writes
    its own temporary; one left by a killed run is removed, a live one kept."""
    from gq_speech import features, models, train
    from gq_speech.text import Tokenizer

    feature_cfg = features.FeatureConfig(n_mels=models.load_config("rnnt_tiny").n_mels)
    cache = tmp_path / "features"
    cache.mkdir()
    name = train.load_split(far_corpus, "dev", feature_cfg, Tokenizer(), cache, log=QUIET) and \
        next(cache.glob("features_dev_*.npz")).name
    (cache / name).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / f".{name}.tmp-{dead.pid}.npz"
    stale.write_bytes(b"half a zip")
    live = cache / f".{name}.tmp-{os.getppid()}.npz"  # another model's, still writing
    live.write_bytes(b"being written")
    written = []
    real = np.savez

    def savez(path, **arrays):
        written.append(os.path.basename(path))
        real(path, **arrays)

    monkeypatch.setattr(train.np, "savez", savez)
    split = train.load_split(far_corpus, "dev", feature_cfg, Tokenizer(), cache, log=QUIET)
    assert len(written) == 1 and re.fullmatch(rf"\.{re.escape(name)}\.tmp-{os.getpid()}-[0-9a-f]+\.npz", written[0])
    assert sorted(p.name for p in cache.iterdir()) == sorted([live.name, name])
    again = train.load_split(far_corpus, "dev", feature_cfg, Tokenizer(), cache, log=QUIET)
    assert len(written) == 1 and all(np.array_equal(a, b) for a, b in zip(split.features, again.features))
