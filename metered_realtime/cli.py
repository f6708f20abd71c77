"""The ``metered-realtime`` command line: ``serve``, ``demo``, ``token``, ``walkthrough``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

from metered_realtime import __version__

__all__ = ["main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metered-realtime",
        description="Metered Realtime Messaging for Python: a local server and tools.",
    )
    parser.add_argument("--version", action="version", version=f"metered-realtime {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the local server (the protocol's /v1 endpoint)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8787, help="TCP port (default 8787; 0 = any free)"
    )
    serve.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY[:perm,...]",
        help="accept a publishable key; perms from subscribe,publish,presence,send (default all)",
    )
    serve.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="KID=SECRET",
        help="accept HS256 JWTs whose header kid is KID, signed with SECRET",
    )
    serve.add_argument(
        "--ice-server", action="append", default=[], metavar="URL", help="ICE server for welcomes"
    )
    serve.add_argument("--max-message-size", type=int, metavar="BYTES", help="frame cap (65536)")
    serve.add_argument("--rate-limit", metavar="PER_S[:BURST]", help="per-connection rate (4011)")
    serve.add_argument("--connect-limit", type=int, metavar="PER_MIN", help="per-IP connects (429)")
    serve.add_argument("--max-connections", type=int, metavar="N", help="connection cap (4010)")
    serve.add_argument("--idle-timeout", type=float, metavar="S", help="drop silent peers (90)")
    serve.add_argument("--config", metavar="FILE", help="TOML config (flags override it)")
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO)",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    serve.add_argument(
        "--backend", default="asyncio", choices=["asyncio", "trio"], help="event loop (asyncio)"
    )

    token = sub.add_parser("token", help="mint an HS256 JWT for the local server")
    token.add_argument("--secret", required=True, metavar="KID=SECRET", help="signing key")
    token.add_argument("--sub", required=True, metavar="ID", help="peer id (the JWT sub)")
    token.add_argument(
        "--channel", action="append", required=True, metavar="PATTERN", help="channel pattern"
    )
    token.add_argument(
        "--perm",
        action="append",
        required=True,
        choices=["subscribe", "publish", "presence", "send"],
        help="permission (repeat for several)",
    )
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (3600)")
    token.add_argument("--peer-metadata", metavar="JSON", help="peerMetadata claim (an object)")
    token.add_argument("--metadata", metavar="JSON", help="metadata claim (an object)")

    demo = sub.add_parser(
        "demo", help="a browser human and a Python agent in one call, on the local server"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    demo.add_argument("--channel", default="demo/room", help="the call's channel (demo/room)")
    demo.add_argument(
        "--headless",
        action="store_true",
        help="a second Python peer instead of a browser (loopback-only ICE); exits with a summary",
    )
    demo.add_argument(
        "--seconds", type=float, help="stop after this long (default: 8 headless, else Ctrl-C)"
    )
    demo.add_argument("--sdk", metavar="PATH", help="the browser SDK's dist/index.mjs")
    demo.add_argument(
        "--no-speech", action="store_true", help="tones instead of espeak-ng even if installed"
    )
    demo.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="SDK log level (default WARNING)",
    )

    sub.add_parser(
        "walkthrough",
        help="drive the sans-IO core over a blocking socket against a scripted local peer",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metered-realtime`` script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "walkthrough":
        from metered_realtime.walkthrough import main as walkthrough

        return walkthrough()
    parser.print_help(sys.stderr)
    return 2


def _demo(args: argparse.Namespace) -> int:
    from metered_realtime.serverconfig import DEV_KEY, is_loopback_host

    if not is_loopback_host(args.host):
        return _fail(f"the demo serves the development key {DEV_KEY}: loopback hosts only")
    if not 0 <= args.port <= 65535:
        return _fail("--port must be within 0-65535")
    if args.seconds is not None and not 0 < args.seconds <= 86_400:
        return _fail("--seconds must be within (0, 86400]")
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    from metered_realtime.demo import main as demo

    return demo(args)


def _fail(message: str) -> int:
    print(f"metered-realtime: error: {message}", file=sys.stderr)
    return 2


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{flag} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def _token(args: argparse.Namespace) -> int:
    from metered_realtime.core.jwt import MAX_TTL, sign_hs256
    from metered_realtime.serverconfig import ConfigError, parse_secret

    try:
        key = parse_secret(args.secret)
        if not 1 <= args.ttl <= MAX_TTL:
            raise ValueError(f"--ttl must be within 1-{MAX_TTL}")
        if not 1 <= len(args.sub) <= 128 or not all(" " <= c <= "~" for c in args.sub):
            raise ValueError("--sub must be 1-128 printable ASCII characters")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": args.sub,
            "iat": now,
            "exp": now + args.ttl,
            "channels": list(args.channel),
            "permissions": list(dict.fromkeys(args.perm)),
        }
        for flag, name in (("--metadata", "metadata"), ("--peer-metadata", "peerMetadata")):
            value = _json_object(getattr(args, name.replace("peerM", "peer_m")), flag)
            if value is not None:
                claims[name] = value
    except (ValueError, ConfigError) as exc:
        return _fail(str(exc))
    print(sign_hs256(claims, key.secret, key.kid))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from metered_realtime.core.broker import ServerConfig
    from metered_realtime.serverconfig import (
        DEV_KEY,
        ConfigError,
        is_loopback_host,
        load_config_file,
        merge_flags,
        with_dev_key,
    )

    try:
        base = load_config_file(args.config) if args.config else ServerConfig()
        config = merge_flags(
            base,
            keys=args.key,
            secrets=args.secret,
            ice_servers=args.ice_server,
            max_message_size=args.max_message_size,
            rate_limit=args.rate_limit,
            connect_limit=args.connect_limit,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
        )
    except ConfigError as exc:
        return _fail(str(exc))
    config, dev = with_dev_key(config)
    if dev and not is_loopback_host(args.host):
        return _fail(
            f"refusing to serve the development key {DEV_KEY} on non-loopback host {args.host}; "
            "configure --key/--secret/--config"
        )
    if not 0 <= args.port <= 65535:
        return _fail("--port must be within 0-65535")
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            return _fail("--tls-cert and --tls-key go together")
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            return _fail(f"cannot load the TLS certificate: {exc}")
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        anyio.run(_run_server, config, args, ssl_context, dev, backend=args.backend)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    return 0


async def _run_server(config: Any, args: argparse.Namespace, ssl_context: Any, dev: bool) -> None:
    import anyio

    from metered_realtime.adapters.server import LocalServer
    from metered_realtime.serverconfig import DEV_KEY

    server = LocalServer(config, host=args.host, port=args.port, ssl_context=ssl_context)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        scheme = "wss" if ssl_context is not None else "ws"
        host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"{scheme}://{host}:{port}"
        health = url.replace("ws", "http", 1)
        print(
            f"metered-realtime serve: listening on {url}  (health: {health}/healthz)",
            flush=True,
        )
        if dev:
            print(f"  development key: {DEV_KEY}  (all permissions, any channel)", flush=True)
            print(f"  Python:  SignallingClient(api_key={DEV_KEY!r}, url={url!r})", flush=True)
            print(
                f"  Browser: new SignallingClient({{apiKey: '{DEV_KEY}', url: '{url}'}})",
                flush=True,
            )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                print("metered-realtime serve: shutting down", flush=True)
                await server.shutdown()
                tg.cancel_scope.cancel()
                break
