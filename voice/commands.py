"""``chatscale voice``: the media relay process."""

from __future__ import annotations

import argparse

from chatscale import commandline


async def cmd_voice(args: argparse.Namespace) -> int:
    from voice.relay import Relay

    settings = commandline.service_settings()
    commandline.check_secret(settings, args.insecure_dev)
    update: dict[str, object] = {}
    if args.port is not None and not 0 <= args.port <= 65535:
        raise commandline.UsageError(f"--port must be 0-65535, not {args.port}")
    if args.port is not None:
        update["voice_port"] = args.port
    if args.host is not None:
        update["voice_host"] = args.host
    if update:
        settings = settings.model_copy(update=update)
    relay = Relay(settings, relay_id=args.id)

    async def start() -> None:
        try:
            try:
                await relay.start()
            except OSError as exc:
                if (
                    err := commandline.port_in_use(exc, settings.voice_port, "voice relay")
                ) is not None:
                    raise err from None
                raise
        except BaseException:
            await relay.stop()
            raise
        commandline.serve_metrics(settings, role="voice", name=relay.id)
        host, port = relay.udp_address
        print(f"voice relay {relay.id} ready on udp+tcp {host}:{port}", flush=True)

    await commandline.serve_until_signal(start, relay.stop)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    v = sub.add_parser("voice", help="the voice media relay (UDP SFU, with a TCP arm)")
    v.add_argument("--host", help="bind address (default: CHATSCALE_VOICE_HOST)")
    v.add_argument(
        "--port", type=int, help="UDP and TCP port; 0 picks one (default: CHATSCALE_VOICE_PORT)"
    )
    v.add_argument("--id", help="relay id (default: random)")
    v.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start even with a weak CHATSCALE_TOKEN_SECRET (throwaway local tests only)",
    )
    v.set_defaults(fn=cmd_voice)
