"""The PNG plots are drawn from result JSON as the commands write it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.capacity import BUDGETS
from benchmarks.plots import capacity_plot, latency_cdf

PNG = b"\x89PNG\r\n\x1a\n"


def test_latency_cdf_and_capacity_plots_are_pngs(tmp_path: Path) -> None:
    latency = {
        "samples": {
            "voiceToVoice": [0.9, 0.95, 1.0],
            "greeting": [0.01],
            "bargeInToClear": [],
            "server": {"voice_to_voice": [0.8], "endpointing": [0.25], "server": [0.0, 0.002]},
        }
    }
    cdf = latency_cdf(latency, tmp_path / "cdf.png")
    steps = [
        {"n": 1, "voiceToVoiceMs": {"p95": 950.0}, "serverCpuSecondsPerCallMinute": 2.0},
        {"n": 10, "voiceToVoiceMs": None, "serverCpuSecondsPerCallMinute": 1.0},
    ]
    capacity = {"steps": steps, "budgets": BUDGETS, "largestNWithinBudget": 0}
    sweep = capacity_plot(capacity, tmp_path / "capacity.png")
    for path in (cdf, sweep):
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
