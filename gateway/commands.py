"""``chatscale gateway``: one gateway process."""

from __future__ import annotations

import argparse
import logging

from chatscale import commandline


async def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.server import Gateway, raise_open_file_limit
    from storage import open_store

    settings = commandline.service_settings()
    commandline.check_secret(settings, args.insecure_dev)
    soft, hard = raise_open_file_limit()  # 1024 by default: ~1,000 idle sockets would lock us out
    logging.getLogger("chatscale.gateway").info("open-file limit %s (hard %s)", soft, hard)
    if args.port is not None:
        settings = settings.model_copy(
            update={"gateway_port": args.port, "gateway_host": args.host}
        )
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    gw = Gateway(settings, store=store, gateway_id=args.id)

    async def stop() -> None:
        await gw.stop()

    async def start() -> None:
        try:
            try:
                await gw.start()
            except OSError as exc:
                if (
                    err := commandline.port_in_use(exc, settings.gateway_port, "gateway")
                ) is not None:
                    raise err from None
                raise
            commandline.serve_metrics(settings, role="gateway", name=gw.id)
        except BaseException:
            await gw.stop()  # unregister and close what start() opened before failing
            raise
        print(f"gateway {gw.id} ready on {gw.url}", flush=True)

    try:
        await commandline.serve_until_signal(start, stop)
    finally:
        await store.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    g = sub.add_parser("gateway", help="one gateway process (WebSocket server)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, help="0 picks a free port (default: CHATSCALE_GATEWAY_PORT)")
    g.add_argument("--id", help="gateway id (default: random)")
    g.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start even with a weak CHATSCALE_TOKEN_SECRET (throwaway local tests only)",
    )
    g.set_defaults(fn=cmd_gateway)
