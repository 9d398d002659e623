"""python -m gq_speech.trainbench: rows in child processes, ratios to uniform 8-bit QAT."""


def test_training_benchmark_smoke(tmp_path):
    from gq_speech import trainbench

    lines = []
    rows = trainbench.bench(["stack"], ["uniform8", "gq4"], ["hard"], ["custom", "autodiff"], steps=1, batch=2,
                            frames=3, units=16, out=tmp_path, log=lines.append)
    assert [(r["variant"], r["gradient"]) for r in rows] == [("uniform8", "-"), ("gq4", "custom"), ("gq4", "autodiff")]
    assert all(r["step_min_s"] > 0 and r["peak_gb"] > 0 for r in rows), rows
    text = trainbench.table(rows)
    assert "| stack | uniform8 | - | - |" in text and "1.00x" in text
    assert (tmp_path / "results.json").exists() and any("gq4" in line for line in lines)
