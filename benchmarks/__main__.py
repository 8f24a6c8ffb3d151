"""`python -m benchmarks latency|capacity|compare|turns …`, the same as `ava bench …`.

Each command writes JSON, a markdown table and PNG plots into `--out` and prints the table;
a `rich` progress bar shows finished calls while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "ava bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="AVA benchmarks")
    sub = parser.add_subparsers(dest="bench", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", type=Path, default=Path("bench-results") / out)
        p.add_argument(
            "--barge-in",
            type=float,
            default=1.0,
            help="the last utterance cuts in this many seconds into the reply before it",
        )
        p.add_argument(
            "--no-pin", action="store_true", help="do not pin the server to its own core"
        )

    latency = sub.add_parser("latency", help="per-turn latency, one call at a time")
    latency.add_argument("--calls", type=int, default=10)
    latency.add_argument("--profile", choices=("fakes", "offline"), default="fakes")
    latency.add_argument(
        "--no-speculation",
        action="store_true",
        help="the assistant waits for the confirmed turn before starting the LLM",
    )
    common(latency, "latency")

    capacity = sub.add_parser("capacity", help="concurrent calls until a budget breaks")
    capacity.add_argument(
        "--steps", default="1,10,50,100,200", help="comma-separated N (default: %(default)s)"
    )
    capacity.add_argument("--max-calls", type=int, default=None, help="stop after this N")
    capacity.add_argument("--time-cap", type=float, default=None, help="seconds; then stop")
    capacity.add_argument(
        "--keep-going",
        action="store_true",
        help="run every step even after one breaks a service budget (to measure CPU at each N)",
    )
    capacity.add_argument("--profile", choices=("fakes", "offline"), default="fakes")
    capacity.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="server processes behind nginx (docker/nginx.conf), sharing Redis (default: 1)",
    )
    capacity.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="the nodes' Redis (--nodes > 1)"
    )
    common(capacity, "capacity")

    compare = sub.add_parser("compare", help="side by side with a peer framework")
    compare.add_argument("--peer", choices=("pipecat",), default="pipecat")
    compare.add_argument("--calls", type=int, default=5, help="latency calls, one at a time")
    compare.add_argument("--load", type=int, default=10, help="calls at once, for CPU and RSS")
    common(compare, "compare")

    turns = sub.add_parser(
        "turns", help="turn-taking: mid-sentence pauses, backchannels, noise, interruptions"
    )
    turns.add_argument("--trials", type=int, default=10, help="calls, each one of every step")
    turns.add_argument(
        "--peer", choices=("pipecat",), default=None, help="the same trials against a peer too"
    )
    turns.add_argument("--out", type=Path, default=Path("bench-results") / "turns")
    turns.add_argument(
        "--no-pin", action="store_true", help="do not pin the server to its own core"
    )
    return parser


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[str, int], None]]:
    """A rich progress bar; yields `update(label, calls_done_in_this_batch)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        # Each batch (a step, a phase) counts its calls from 1; the bar counts all of them.
        state = {"done": 0, "offset": 0}
        labels = [""]

        def update(label: str, done: int) -> None:
            if label != labels[0]:
                labels[0], state["offset"] = label, state["done"]
            state["done"] = state["offset"] + done
            progress.update(task, completed=state["done"], description=f"{description}: {label}")

        yield update


def _latency(args: argparse.Namespace, command: str) -> int:
    from benchmarks.latency import render_markdown, run_latency
    from benchmarks.plots import latency_cdf

    with _progress("latency calls", args.calls) as update:
        data = asyncio.run(
            run_latency(
                calls=args.calls,
                command=command,
                out_dir=args.out,
                barge_in_after=args.barge_in,
                profile=args.profile,
                pin=not args.no_pin,
                on_done=lambda n: update("calls", n),
                speculative=not args.no_speculation,
            )
        )
    latency_cdf(data, args.out / "latency-cdf.png", f"AVA latency ({args.profile} profile)")
    print(render_markdown(data))  # noqa: T201 - the report is the output
    return 1 if data["failedCalls"] else 0


def _capacity(args: argparse.Namespace, command: str) -> int:
    from benchmarks.capacity import render_capacity, run_capacity
    from benchmarks.plots import capacity_plot

    steps = [int(n) for n in args.steps.split(",") if n.strip()]
    if args.max_calls is not None:
        steps = [n for n in steps if n <= args.max_calls]
    with _progress("capacity", sum(steps)) as update:

        def on_step(n: int) -> Callable[[int], None]:
            return lambda done: update(f"N={n}", done)

        data: dict[str, Any] = asyncio.run(
            run_capacity(
                command=command,
                out_dir=args.out,
                steps=steps,
                profile=args.profile,
                barge_in_after=args.barge_in,
                pin=not args.no_pin,
                time_cap=args.time_cap,
                keep_going=args.keep_going,
                on_step=on_step,
                nodes=args.nodes,
                redis_url=args.redis_url,
            )
        )
    capacity_plot(data, args.out / "capacity.png")
    print(render_capacity(data))  # noqa: T201 - the report is the output
    return 0


def _compare(args: argparse.Namespace, command: str) -> int:
    from benchmarks.compare import render_compare, run_compare
    from benchmarks.plots import latency_cdf

    with _progress("compare", 2 * (args.calls + args.load)) as update:
        data = asyncio.run(
            run_compare(
                peer=args.peer,
                command=command,
                out_dir=args.out,
                calls=args.calls,
                load=args.load,
                barge_in_after=args.barge_in,
                pin=not args.no_pin,
                on_done=update,
            )
        )
    for side, result in data["sides"].items():
        latency_cdf(result["latency"], args.out / f"{side}-latency-cdf.png", f"{side} latency")
    print(render_compare(data))  # noqa: T201 - the report is the output
    return 0


def _turns(args: argparse.Namespace, command: str) -> int:
    from benchmarks.turns import render_turns, run_turns

    sides = 2 if args.peer else 1
    with _progress("turn trials", sides * args.trials) as update:
        data = asyncio.run(
            run_turns(
                trials=args.trials,
                command=command,
                out_dir=args.out,
                peer=args.peer,
                pin=not args.no_pin,
                on_done=update,
            )
        )
    print(render_turns(data))  # noqa: T201 - the report is the output
    return 0


def main(argv: list[str] | None = None, prog: str = "ava bench") -> int:
    args = build_parser(prog).parse_args(argv)
    command = "ava bench " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    commands = {
        "latency": _latency,
        "capacity": _capacity,
        "compare": _compare,
        "turns": _turns,
    }
    return commands[args.bench](args, command)


if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks"))
