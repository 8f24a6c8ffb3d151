"""`ava`: serve, place a simulated call, administer the database, tenants and API keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

__all__ = ["main"]

# What `ava call` says without --say: two questions the sample assistant answers, then a third
# that cuts into the second answer (barge-in).
DEFAULT_SCRIPT = (
    "What are your opening hours?",
    "Can I book an appointment please?",
    "Sorry, where exactly are you located?",
)
DEFAULT_BARGE_IN = 1.0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control.app import create_app
    from control.logs import configure_logging
    from control.server import DrainingServer, startup_refusal
    from control.settings import Settings

    overrides: dict[str, object] = {}
    if args.assistant:
        overrides["assistant_file"] = Path(args.assistant)
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    refusal = asyncio.run(startup_refusal(settings))
    if refusal is not None:
        print(f"ava serve: refusing to start: {refusal}", file=sys.stderr)  # noqa: T201
        return 1
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Logging is ours (control/logs.py): uvicorn's loggers propagate to the root handler,
        # and RequestContext writes the access log, with the request id.
        log_config=None,
        access_log=False,
        # Twilio frames are ~400 bytes; anything near this is hostile or broken.
        ws_max_size=256 * 1024,
        # Compressing every 20 ms base64 frame costs CPU (7% of the loop in the capacity
        # profile) and saves nothing worth it on a ~400-byte message.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(config, app.state.calls, settings.drain_seconds)
    server.run()
    # run() also returns when the lifespan refused to start: that is no success.
    return 0 if server.started else 1


def _call(args: argparse.Namespace) -> int:
    from control.speech import synthesize_ulaw
    from media.twilio.caller import CallScript, place_call
    from media.wav import read_wav_ulaw

    utterances: list[bytes]
    barge_in = args.barge_in
    if args.say:
        utterances = [read_wav_ulaw(Path(p)) for p in args.say]
    else:
        utterances = synthesize_ulaw(list(DEFAULT_SCRIPT))
        if barge_in is None and not args.no_barge_in:
            barge_in = DEFAULT_BARGE_IN
    script = CallScript(utterances=utterances, barge_in_after=barge_in)
    report = asyncio.run(
        place_call(
            args.url,
            script,
            auth_token=args.auth_token,
            from_number=args.from_number,
            to_number=args.to_number,
        )
    )
    print(report.render())  # noqa: T201 - CLI output
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1


def _bench(args: argparse.Namespace) -> int:
    """`ava bench …` is `python -m benchmarks …`: the benchmarks own their arguments."""
    from benchmarks.__main__ import main as bench_main

    return bench_main(list(args.bench_args))


def _admin(args: argparse.Namespace) -> int:
    """`ava db|tenant|key …`: run one admin coroutine against the configured database."""
    from control.admin import run_admin
    from control.settings import Settings

    return asyncio.run(run_admin(Settings(), args))


def _add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="migrate the database to this version's schema")
    db.add_parser("current", help="show the database's schema revision")

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    create = tenant.add_parser("create", help="create a tenant; prints its id")
    create.add_argument("name")
    tenant.add_parser("list", help="list tenants")
    set_limit = tenant.add_parser(
        "set-limit", help="set a tenant's limit of concurrent calls (default: AVA_TENANT_MAX_CALLS)"
    )
    set_limit.add_argument("tenant", help="tenant id")
    set_limit.add_argument("max_calls", help="a number of calls (0 refuses all), or 'default'")

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    key_create = key.add_parser("create", help="create an API key; prints it (only this once)")
    key_create.add_argument("--tenant", required=True, help="tenant id")
    key_create.add_argument("--name", default="", help="a label to tell keys apart")
    key_revoke = key.add_parser("revoke", help="revoke an API key")
    key_revoke.add_argument("--tenant", required=True, help="tenant id")
    key_revoke.add_argument("key_id")
    key_list = key.add_parser("list", help="list a tenant's keys (never the keys themselves)")
    key_list.add_argument("--tenant", required=True, help="tenant id")

    for name in ("db", "tenant", "key"):
        sub.choices[name].set_defaults(func=_admin)

    from control.recordings import add_recording_commands

    add_recording_commands(sub)
    sub.choices["recordings"].set_defaults(func=_recordings)


def _recordings(args: argparse.Namespace) -> int:
    """`ava recordings purge|retention …` against the configured database and store."""
    from control.recordings import run_recording_command
    from control.settings import Settings

    return asyncio.run(run_recording_command(Settings(), args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ava", description="AVA voice-agent server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--assistant", help="assistant JSON for calls that name no other")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_serve)

    call = sub.add_parser("call", help="place a simulated Twilio call against a running server")
    call.add_argument("url", nargs="?", default="http://127.0.0.1:8000")
    call.add_argument("--say", action="append", help="WAV file the caller says (repeatable)")
    call.add_argument(
        "--barge-in",
        type=float,
        default=None,
        help="start the last utterance this many seconds into the reply before it "
        f"(default without --say: {DEFAULT_BARGE_IN})",
    )
    call.add_argument("--no-barge-in", action="store_true", help="let every reply finish")
    call.add_argument("--auth-token", default=None, help="Twilio auth token to sign with")
    call.add_argument("--from-number", default="+15551230000")
    call.add_argument("--to-number", default="+15557654321")
    call.add_argument("--json", help="also write the report as JSON here")
    call.set_defaults(func=_call)

    bench = sub.add_parser(
        "bench",
        help="benchmarks: latency, capacity, compare, turns (see `ava bench -h`)",
        add_help=False,  # -h goes to the benchmarks' own parser
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    _add_admin_commands(sub)

    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["bench"]:
        # argparse's REMAINDER drops a leading option (`ava bench -h`): hand over directly.
        return _bench(argparse.Namespace(bench_args=given[1:]))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
