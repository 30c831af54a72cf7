"""
Twisted's own port forwarder (C{twisted.protocols.portforward}), as a
reference point: raw bytes, no framing, so its clients speak the backend's
framing. This is the floor for any Twisted proxy of the same shape.

    python -m benchmarks.twisted_portforward --backend-port PORT

prints ``portforward listening on 127.0.0.1:PORT`` once bound (``twistd
portforward`` does not say which port it got for port 0).
"""

from twisted.protocols import portforward

from benchmarks.util import serve_twisted


class QuietProxyServer(portforward.ProxyServer):
    noisy = False


class QuietProxyFactory(portforward.ProxyFactory):
    noisy = False
    protocol = QuietProxyServer


def main() -> None:
    serve_twisted(
        "portforward", lambda reactor, host, port: QuietProxyFactory(host, port)
    )


if __name__ == "__main__":
    main()
