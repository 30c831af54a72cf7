"""
Twisted's own port forwarder (C{twisted.protocols.portforward}), as a
reference point: raw bytes, no framing, so its clients speak the backend's
framing. This is the floor for any Twisted proxy of the same shape.

    python -m benchmarks.twisted_portforward --backend-port PORT

prints ``portforward listening on 127.0.0.1:PORT`` once bound (``twistd
portforward`` does not say which port it got for port 0).
"""

import argparse

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols import portforward
from twisted.python.failure import Failure

from benchmarks.util import LOOPBACK, announce, loopback_host, raise_nofile_limit


class QuietProxyServer(portforward.ProxyServer):
    noisy = False


class QuietProxyFactory(portforward.ProxyFactory):
    noisy = False
    protocol = QuietProxyServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend-host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile_limit()

    from twisted.internet import reactor

    factory = QuietProxyFactory(args.backend_host, args.backend_port)
    listening = TCP4ServerEndpoint(
        reactor, args.port, backlog=4096, interface=args.host
    ).listen(factory)

    def bound(port: object) -> None:
        address = port.getHost()
        announce("portforward", address.host, address.port)

    def failed(reason: Failure) -> None:
        print(f"portforward: cannot listen: {reason.getErrorMessage()}")
        reactor.stop()

    listening.addCallbacks(bound, failed)
    reactor.run()


if __name__ == "__main__":
    main()
