"""PNG plots of a benchmark's JSON result (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["capacity_plot", "latency_cdf"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(result: dict[str, Any], path: Path, title: str = "AVA latency") -> Path:
    """One CDF curve per stage: the phone's voice-to-voice, greeting, barge-in → clear, and
    the server's own breakdown (endpointing, STT, LLM first token, TTS first byte, server)."""
    plt = _pyplot()
    samples = result["samples"]
    curves = {
        "voice-to-voice (phone)": samples.get("voiceToVoice", []),
        "greeting": samples.get("greeting", []),
        "barge-in → clear": samples.get("bargeInToClear", []),
    }
    for stage, values in samples.get("server", {}).items():
        if stage != "voice_to_voice":
            curves[f"server: {stage}"] = values
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in curves.items():
        if not values:
            continue
        ordered = sorted(v * 1000 for v in values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def capacity_plot(result: dict[str, Any], path: Path) -> Path:
    """p95 voice-to-voice and server CPU per call-minute against concurrent calls N."""
    plt = _pyplot()
    steps = result["steps"]
    ns = [s["n"] for s in steps]
    p95 = [(s["voiceToVoiceMs"] or {}).get("p95") for s in steps]
    cpu = [s["serverCpuSecondsPerCallMinute"] for s in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    top.plot(ns, p95, marker="o")
    top.set_ylabel("voice-to-voice p95 (ms)")
    top.grid(True, alpha=0.3)
    bottom.plot(ns, cpu, marker="o", color="tab:red", label="server CPU")
    budget = result["budgets"]["cpuSecondsPerCallMinute"]
    bottom.axhline(budget, ls="--", color="gray", label=f"budget {budget}")
    bottom.legend(fontsize=8)
    bottom.set_ylabel("CPU s per call-minute")
    bottom.set_xlabel("concurrent calls N (server on one core)")
    bottom.grid(True, alpha=0.3)
    top.set_title(
        f"AVA capacity — largest N within every budget: {result['largestNWithinBudget']}, "
        f"within the service budgets: {result.get('largestNWithinServiceBudgets', '-')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
