"""The evaluation runs end to end against the real Prometheus engine (one trace per family)."""

from __future__ import annotations

import pytest

from tests.helpers import require_binary


@pytest.mark.binaries
def test_predictor_eval_runs_against_real_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("promtool")
    require_binary("prometheus")
    from bench import predictor_eval

    assert predictor_eval.main(["--scale", "0.02", "--horizons", "600"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| gpuwarden") or line.startswith("| predict_linear")]
    # values only (predict --csv), with the throttle signal, the agent, predict_linear (raw, as alerted)
    assert len(rows) == 5, out
    assert "| 0.9 |" in out  # the gate sweep
    # Both methods warned before the crossing on at least one of the crossing traces.
    for row in rows:
        detected, crossing = row.split("|")[2].strip().split("/")
        assert int(crossing) >= 3 and int(detected) >= 1, row


def test_predictor_eval_fleet_mode_times_the_service_path(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import predictor_eval

    assert predictor_eval.main(["--fleet", "64"]) == 0
    assert "64 GPUs judged" in capsys.readouterr().out
