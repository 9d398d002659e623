"""The streaming benchmark (gq_speech.streambench): the whole recognizer's latency, real-time factor
and memory per variant, its place in the experiment table, and the paper-scale command's core.

Uses the tiny RNN-T config (16 mel bins), untrained, on random features: latency does not depend on
what the weights are, and transcripts are compared exactly (the same recognizer on the same input).
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gq_speech import deploy, experiment, models, streambench
from gq_speech.text import Tokenizer
from gq_speech.train import Split

VARIANTS = ("float", "int8", "gq4")


@pytest.fixture(scope="module")
def paper_dir(tmp_path_factory):
    """``<dir>/rnnt_tiny/{float,int8,gq4}``: exported once by the paper command's exporter."""
    root = tmp_path_factory.mktemp("streambench")
    streambench.export_variants("rnnt_tiny", root / "rnnt_tiny", variants=VARIANTS)
    return root


@pytest.fixture(scope="module")
def exports(paper_dir):
    return {v: str(paper_dir / "rnnt_tiny" / v) for v in VARIANTS}


def _utterances(n=3, seed=0):
    """Random log-mel frames; lengths with and without a partial last chunk (chunk = 8 frames)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(length, 16)).astype(np.float32) for length in (40, 53, 61, 24)[:n]]


def test_every_metric_of_every_variant_and_ratios_against_int8(exports):
    utts = _utterances()
    res = streambench.bench_streaming(exports, utts, memory=True, memory_utterances=2)
    assert res["baseline"] == "int8" and res["order"] == list(VARIANTS)
    for name, v in res["variants"].items():
        for key, _, _ in streambench.METRICS:
            assert v[key] > 0, (name, key)
        assert v["chunk_p90_ms"] >= v["chunk_p50_ms"] and v["upl_p90_ms"] >= v["upl_p50_ms"]
        # Every chunk of every utterance, the padded last ones included: ceil(T / 8).
        assert v["chunks"] == sum(-(-len(u) // 8) for u in utts)
        assert v["audio_s"] == pytest.approx(sum(len(u) for u in utts) / 100)
        assert v["rtf"] == pytest.approx(v["busy_s"] / v["audio_s"])
        mem = v["memory"]
        assert mem["growth"] == mem["peak"] - mem["rss_before"] and v["mem_mb"] == mem["growth"] / 1e6
        for key, _, _ in streambench.METRICS:
            assert res["ratios"][name][key] == pytest.approx(v[key] / res["variants"]["int8"][key])
    assert all(r == 1.0 for r in res["ratios"]["int8"].values())
    # The float files hold 4 bytes per weight where int8 holds 1: more memory (the ratio is what the
    # table reports; only the order is asserted, the fixed costs of the runtime dominate at this size).
    assert res["variants"]["float"]["mem_mb"] > res["variants"]["int8"]["mem_mb"]
    text = streambench.table(res)
    assert text.count("\n") == 1 + len(VARIANTS)
    assert "| int8 | " in text and "(1.00x)" in text and "UPL P50 ms" in text


def test_transcripts_are_the_wer_paths(exports):
    """The benchmark's transcripts are what experiment.tflite_transcribe (the WER path) gives."""
    utts = _utterances()
    res = streambench.bench_streaming(exports, utts, memory=False, warmup=0)
    tok = Tokenizer()
    split = Split("x", [f"u{i}" for i in range(len(utts))], [""] * len(utts), utts,
                  [np.zeros(1, np.int32)] * len(utts))
    for name, d in exports.items():
        hyps, _ = experiment.tflite_transcribe(d, split, tok)
        assert [tok.decode(t) for t in res["variants"][name]["tokens"]] == hyps
        rec = deploy.StreamingRecognizer(d)
        for u, tokens in zip(utts, res["variants"][name]["tokens"]):
            rec.reset()
            rec.push(u)
            assert rec.finish() == tokens


def test_utterances_run_interleaved_through_the_variants(exports):
    calls = []

    class Logged(deploy.StreamingRecognizer):
        def __init__(self, name, directory):
            self.name, self.frames = name, 0
            super().__init__(directory)

        def reset(self):
            self.frames = 0
            super().reset()

        def push(self, frames):
            self.frames += len(frames)
            return super().push(frames)

        def finish(self):
            calls.append((self.name, self.frames))
            return super().finish()

    utts = _utterances(4)
    res = streambench.bench_streaming(exports, utts, memory=False, warmup=1, make_recognizer=Logged)
    # The warm-up utterance through every variant, then utterance by utterance, each through all.
    assert calls == [(v, len(u)) for u in [utts[0], *utts] for v in VARIANTS]
    assert all(v["utterances"] == 4 for v in res["variants"].values())
    with pytest.raises(ValueError, match="baseline"):
        streambench.bench_streaming(exports, utts, baseline="uniform8", memory=False)


class _Clock:
    t = 0.0

    def __call__(self):
        return self.t


class _FakeRecognizer:
    """Each chunk costs ``cost`` seconds on a fake clock."""

    chunk_frames = 8
    cfg = SimpleNamespace(n_mels=2)
    tokens = ()

    def __init__(self, clock, cost):
        self.clock, self.cost, self.chunk_timings, self.buffer = clock, cost, [], 0

    def reset(self):
        self.buffer = 0

    def clear_timings(self):
        self.chunk_timings = []

    def _chunk(self):
        self.clock.t += self.cost
        self.chunk_timings.append(self.cost)

    def push(self, frames):
        self.buffer += len(frames)
        while self.buffer >= self.chunk_frames:
            self.buffer -= self.chunk_frames
            self._chunk()
        return []

    def finish(self):
        if self.buffer:
            self.buffer = 0
            self._chunk()
        return [3, 4]


@pytest.mark.parametrize("cost, upl", [
    # Keeps up: chunks end at 0.08 and 0.16 s and are done 10 ms later; the padded last chunk
    # (4 frames, audio ends at 0.20 s) is all that is pending: UPL = one chunk.
    (0.01, 0.01),
    # Falls behind (RTF 1.5): chunk 1 starts when chunk 0 is done (0.18 s), the last at 0.28 s,
    # done at 0.38 s: UPL = 0.18 s of backlog + the last chunk.
    (0.10, 0.18),
])
def test_user_perceived_latency_replays_the_audio_clock(monkeypatch, cost, upl):
    clock = _Clock()
    monkeypatch.setattr(deploy.time, "perf_counter", clock)
    r = streambench.stream_utterance(_FakeRecognizer(clock, cost), np.zeros((20, 2), np.float32))
    assert r["tokens"] == [3, 4] and r["chunk_s"] == [cost] * 3
    assert r["audio_s"] == pytest.approx(0.2) and r["busy_s"] == pytest.approx(3 * cost)
    assert r["upl_s"] == pytest.approx(upl)


def test_experiment_rows_get_the_streaming_columns_and_reuse_them(exports, tmp_path, monkeypatch):
    utts = _utterances(2)
    rows = []
    for name, d in exports.items():
        vdir = tmp_path / "m" / name
        vdir.mkdir(parents=True)
        os.symlink(d, vdir / "stream")
        rows.append({"model": "m", "variant": name, "stream_dir": str(vdir / "stream"), "wer_tflite_test": 0.5,
                     "packed_bytes": 1000})
        # The WER path's transcripts, as run_variant writes them (id, ref, Keras hyp, .tflite hyp).
        split = Split("x", ["a", "b"], ["", ""], utts, [np.zeros(1, np.int32)] * 2)
        hyps, _ = experiment.tflite_transcribe(d, split, Tokenizer())
        (vdir / "hyps_test.txt").write_text("".join(f"{i}\tref\tk\t{h}\n" for i, h in enumerate(hyps)))
    said = []
    results = experiment.stream_bench(rows, tmp_path, {"m": utts}, memory=False, log=said.append)
    assert any("streaming benchmark (m: 2 test utterances x 3 variants" in m for m in said)
    assert results["m"]["baseline"] == "int8"  # no uniform8 among these variants
    for row in rows:
        assert row["stream_chunk_p50_ms"] > 0 and row["stream_upl_p50_ms"] > 0 and row["stream_rtf"] > 0
        assert row["stream_mem_mb"] is None and row["stream_transcript_mismatches"] == 0
    text = experiment.table(rows, markdown=False)
    assert "chunk P50 ms" in text and "UPL ms" in text and "mem MB" in text

    # Cached: the same variants, exports and utterances are not measured again.
    monkeypatch.setattr(streambench, "bench_streaming", lambda *a, **k: pytest.fail("measured again"))
    again = [{k: r[k] for k in ("model", "variant", "stream_dir", "wer_tflite_test", "packed_bytes")} for r in rows]
    experiment.stream_bench(again, tmp_path, {"m": utts}, memory=False, log=said.append)
    assert [r["stream_chunk_p50_ms"] for r in again] == [r["stream_chunk_p50_ms"] for r in rows]
    experiment.write_reports(rows, tmp_path, {"name": "t"}, "cmd", results)
    md = (tmp_path / "results.md").read_text()
    assert "## Streaming recognizer" in md and "| int8 | " in md

    # Rows of results.json files written before these columns still make a table.
    old = {"model": "m", "variant": "float", "wer_tflite_test": 0.5, "packed_bytes": 2048, "encoder_p50_ms": 0.1}
    line = next(x for x in experiment.table([old]).splitlines() if x.startswith("| float |"))
    heads = [h for _, h, _ in experiment.COLUMNS]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert [cells[heads.index(h)] for h in ("chunk P50 ms", "chunk P90 ms", "UPL ms", "RTF", "mem MB")] == ["-"] * 5
    assert cells[heads.index("enc step P50 ms")] == "0.100"


def test_paper_configs():
    for name, kind in (("rnnt_paper", "rnnt"), ("conformer_paper", "conformer")):
        cfg = models.load_config(name)
        assert cfg.kind == kind and cfg.n_mels == 80 and cfg.vocab_size == 29 and "params" in cfg.notes
        assert cfg.chunk_frames % models.reduction(cfg) == 0
    rnnt = models.load_config("rnnt_paper")
    assert (rnnt.encoder.lstm_layers, rnnt.encoder.lstm_units, rnnt.pred.lstm_layers, rnnt.pred.lstm_units,
            rnnt.chunk_frames) == (5, 1024, 2, 1024, 8)
    conf = models.load_config("conformer_paper").encoder
    assert (conf.d_model, conf.blocks, conf.heads, conf.ff_mult) == (512, 16, 8, 4)
    # The full recipe's gq_mixed policy (one policy for both model kinds).
    full = dict(experiment.variants_of(experiment.load_recipe("full"), "rnnt"))["gq_mixed"]["policy"]
    assert streambench.mixed_policy(rnnt) == full and full["encoder_lstm_.*"]["recurrent_kernel"] == 1


def test_paper_command_reuses_exports_and_writes_its_tables(paper_dir, monkeypatch, capsys):
    def fake_memory(directory, utterances, **kwargs):
        # Bytes proportional to the files: checks the plumbing; the real child is tested above.
        size = sum(f.stat().st_size for f in Path(directory).glob("*.tflite"))
        return {"rss_before": 100, "peak_after_init": 100 + size, "peak": 100 + size, "growth": size}

    monkeypatch.setattr(streambench, "recognizer_peak_memory", fake_memory)
    said = []
    res = streambench.paper(["rnnt_tiny"], threads=[1, 2], out=paper_dir, variants=VARIANTS, rounds=3,
                            log=said.append)
    assert sum("exported before" in m for m in said) == len(VARIANTS)  # the fixture's exports, reused
    m = res["models"]["rnnt_tiny"]
    assert m["parameters"] == 31565 and set(m["steps"]) == {"1", "2"}
    for t in ("1", "2"):
        for part in ("encoder", "prediction", "joint"):
            s = m["steps"][t][part]
            assert s["int8"]["ratio_p50"] == 1.0
            for v in VARIANTS:
                assert 0 < s[v]["p50_ms"] <= s[v]["p90_ms"]
                assert s[v]["ratio_p50"] == pytest.approx(s[v]["p50_ms"] / s["int8"]["p50_ms"])
    size = {v: x["file_bytes"] for v, x in m["variants"].items()}
    assert size["gq4"] < size["int8"] < size["float"]
    assert m["variants"]["float"]["mem_mb"] == m["variants"]["float"]["file_bytes"] / 1e6
    assert json.loads((paper_dir / "paper.json").read_text())["models"]["rnnt_tiny"]["parameters"] == 31565
    md = (paper_dir / "paper.md").read_text()
    assert md.count("**rnnt_tiny**") == 2 and "| gq4 | " in md and "encoder P50 ms" in md
    with pytest.raises(SystemExit):
        streambench.main(["paper", "--threads", "0"])
    assert "--threads >= 1" in capsys.readouterr().err


def test_chunk_latency_from_steps_weights_each_graph_by_its_calls(exports):
    utts = _utterances(2)
    res = streambench.bench_streaming(exports, utts, memory=False)
    for name, v in res["variants"].items():
        calls = v["calls_per_chunk"]
        assert calls["encoder"] == pytest.approx(1.0)  # one encoder step per chunk
        assert calls["joint"] >= 1.0  # at least one joint call per encoder frame
        assert calls["prediction"] >= 0.0
    got = streambench.chunk_latency_from_steps({"encoder": 1.2, "prediction": 0.1, "joint": 0.01},
                                               {"encoder": 1.0, "prediction": 0.4, "joint": 2.4})
    assert got == pytest.approx(1.264)
    with pytest.raises(ValueError, match=r"Received none for \['joint'\]"):
        streambench.chunk_latency_from_steps({"encoder": 1.0}, {"encoder": 1.0, "joint": 2.0})
