"""The allocation study (docs/ALLOCATION.md) runs end to end and resumes, at a toy size."""

import json

import numpy as np
import pytest

from gq_speech import allocation_study as study


def test_spearman_ranks_and_ties():
    assert study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert study.spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)
    assert np.isnan(study.spearman([1, 1, 1], [1, 2, 3]))


def test_quick_study_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "RANK_BITS", (1,))
    monkeypatch.setattr(study, "UNIFORM_BITS", (2,))
    monkeypatch.setattr(study, "RANDOM_POLICIES", 2)
    monkeypatch.setattr(study, "ESTIMATORS", {"loss": {"method": "loss"}, "fisher": {"method": "fisher"}})
    out = tmp_path / "study"
    assert study.main(["--quick", "--out", str(out)]) == 0
    state = json.loads((out / "state.json").read_text())
    assert set(state["correlation"]["estimators"]) == {"loss", "fisher"}
    assert len(state["correlation"]["policies"]) == 2
    assert set(state["rows"]) == {"GQ 2-bit", "GQ mixed (hand)", "auto @ GQ 2-bit", "auto @ GQ mixed (hand)",
                                  "float (fine-tuned as the rows)"}
    for name, row in state["rows"].items():
        if row["kind"] == "auto":
            assert row["bytes"] <= row["budget"]
        assert 0 <= state["results"][f"{name}#0"]["test"] <= 1
    md = (out / "results.md").read_text()
    assert "| estimator |" in md and "| auto @ GQ mixed (hand) |" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    # A second run finds every stage done.
    assert study.main(["--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(trained before)" in text and "[3/5] 1/" not in text and "[4/5] 1/" not in text
    # Other settings in the same folder are refused, not mixed.
    assert study.main(["--quick", "--rank-epochs", "2", "--out", str(out)]) == 1
    assert "same settings" in capsys.readouterr().err
