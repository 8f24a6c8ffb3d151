"""`python -m benchmarks latency …` (also reachable as `ava bench …`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.latency import DEFAULT_SCRIPT, render_markdown, run_latency
    from voice.engines.synthesize import synthesize_ulaw

    parser = argparse.ArgumentParser(prog="ava bench", description="AVA benchmarks")
    sub = parser.add_subparsers(dest="bench", required=True)
    latency = sub.add_parser("latency", help="per-turn latency, one call at a time")
    latency.add_argument("--calls", type=int, default=10)
    latency.add_argument("--barge-in", type=float, default=1.0)
    latency.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    command = "ava bench " + " ".join(argv if argv is not None else sys.argv[1:])
    utterances = synthesize_ulaw(list(DEFAULT_SCRIPT))
    data = asyncio.run(
        run_latency(
            utterances,
            calls=args.calls,
            command=command,
            barge_in_after=args.barge_in,
            out_dir=args.out,
        )
    )
    print(render_markdown(data))  # noqa: T201 - the report is the output
    return 1 if data["failedCalls"] else 0


if __name__ == "__main__":
    sys.exit(main())
