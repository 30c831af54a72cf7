"""
Small helpers shared by the benchmark programs: the port announcement line,
event loops, file descriptor limits and loopback-only addresses.
"""

import asyncio
import ipaddress
import resource
import sys
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

# Every benchmark server prints this once it is bound, so a parent can learn
# a port 0 listener's real port. The gateway's own log line has the same tail.
ANNOUNCE_FORMAT = "{name} listening on {host}:{port}"

# The longest payload the reference translators accept, as the gateway's default.
MAX_MESSAGE_SIZE = 65536

# Enough descriptors for 10000 idle client+backend pairs and some spare.
WANTED_NOFILE = 65536


def announce(name: str, host: str, port: int) -> None:
    """
    Tell the parent process where this server listens.
    """
    print(ANNOUNCE_FORMAT.format(name=name, host=host, port=port), flush=True)


def loopback_host(value: str) -> str:
    """
    An argparse type: only loopback addresses, since benchmarks must never
    send traffic anywhere else.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}")
    if not address.is_loopback:
        raise ValueError(f"not a loopback address: {value!r}")
    return value


def raise_nofile_limit(wanted: int = WANTED_NOFILE) -> int:
    """
    Raise RLIMIT_NOFILE as far as allowed (children inherit it); return the
    soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        # Without privileges the hard limit cannot grow: take all it allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """
    The fastest event loop available (uvloop when installed) and its name.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run_async(main: Callable[[], object]) -> object:
    """
    Run a coroutine function on the fastest loop, without touching the global
    event loop policy.
    """
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def fail(message: str) -> None:
    """
    End a command-line program with one line on stderr.
    """
    print(message, file=sys.stderr)
    raise SystemExit(2)


def serve_twisted(
    name: str, make_factory: Callable[[object, str, int], object]
) -> None:
    """
    The command line shared by the Twisted reference peers: parse
    C{--host/--port/--backend-host/--backend-port}, listen with the factory
    C{make_factory(reactor, backend_host, backend_port)} builds, announce the
    bound port as C{name}, and run the reactor.
    """
    import argparse

    main_module = sys.modules["__main__"]
    parser = argparse.ArgumentParser(
        description=(main_module.__doc__ or name).strip().splitlines()[0]
    )
    parser.add_argument("--host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend-host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit()

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    factory = make_factory(reactor, args.backend_host, args.backend_port)
    listening = TCP4ServerEndpoint(
        reactor, args.port, backlog=4096, interface=args.host
    ).listen(factory)

    def bound(port: object) -> None:
        address = port.getHost()  # type: ignore[attr-defined]
        announce(name, address.host, address.port)

    def failed(reason: object) -> None:
        print(f"{name}: cannot listen: {reason.getErrorMessage()}")  # type: ignore[attr-defined]
        reactor.stop()

    listening.addCallbacks(bound, failed)
    reactor.run()


async def serve_until_signalled(server: asyncio.Server, name: str) -> None:
    """
    Announce an asyncio server's port as C{name}, then serve until SIGTERM
    or SIGINT.
    """
    import signal

    bound = server.sockets[0].getsockname()
    announce(name, bound[0], bound[1])
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with server:
        await stop
