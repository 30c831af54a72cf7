"""
The status page (C{GET /}) and its JSON (C{GET /status.json}), SPEC section 8.

Both are rendered from a L{Snapshot}: plain data (counts and states, never a
row per connection) that the gateway fills from its live objects when a
request comes. Rendering is pure: no I/O, no Twisted, no clock, so that it
is tested by value and timed alone. For 10 services with 100 backends and
20 listeners between them (10,000 active pairs: the snapshot holds counts),
the page rendered in 0.5 ms and the JSON in 0.4 ms on a 2-core test machine
(C{tests.test_status.HTMLTests.test_renderTime} logs the figures), so both
are built in the reactor thread, once per request.

The page follows the idea of HAProxy's stats page: one block per service,
its listeners and its backends, and the process on top. It has no script and
no external asset (the response forbids both with a Content-Security-Policy),
escapes every name, reloads itself every L{REFRESH_SECONDS}, and lays each
table row out as a card on a narrow screen. A backend's state is shown by a
word and a symbol as well as by colour.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.health import DOWN, UP, BackendHealth

# How often the page reloads itself, in seconds.
REFRESH_SECONDS = 5

_HTML_TYPE = b"text/html; charset=utf-8"
_JSON_TYPE = b"application/json"
# No script, no external asset, no framing by another site.
_PAGE_POLICY = (
    b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none';"
    b" form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class ListenerStatus:
    """
    One listener of a service.

    @ivar name: its label value (C{tcp:7000}, C{tls:7443}, …).
    @ivar address: where it is bound (C{127.0.0.1:7000}, C{[::1]:7000},
        C{unix}), or C{None} before it is bound.
    @ivar active: its open client connections.
    @ivar accepted: connections accepted since start.
    @ivar rejected: connections closed at once by admission since start.
    """

    name: str
    address: str | None
    active: int
    accepted: int
    rejected: int


@dataclass
class BackendStatus:
    """
    One backend of a service.

    @ivar state: L{UP} or L{DOWN}.
    @ivar active: pairs open to it.
    @ivar connect_failures: failed connects of client pairs since start.
    @ivar last_check_seconds_ago: seconds since its last health check
        ended, C{None} before the first (or with checks off).
    @ivar last_check_result: C{success}, C{failure} or C{None}.
    @ivar last_check_reason: why the last check failed, else C{None}.
    @ivar last_change_seconds_ago: seconds since its state last changed,
        C{None} when it has not changed since start.
    """

    name: str
    state: str
    active: int
    connect_failures: int
    last_check_seconds_ago: float | None = None
    last_check_result: str | None = None
    last_check_reason: str | None = None
    last_change_seconds_ago: float | None = None


@dataclass
class ServiceStatus:
    """
    One service: its listeners and its backends, in the configuration's order.
    """

    listeners: list[ListenerStatus] = field(default_factory=list)
    backends: list[BackendStatus] = field(default_factory=list)


@dataclass
class Snapshot:
    """
    Everything the status page and C{/status.json} show, at one instant.

    @ivar uptime_seconds: seconds since the process started.
    @ivar connections_active: open client connections, every service.
    @ivar services: name -> L{ServiceStatus}, in the configuration's order.
    """

    version: str
    uptime_seconds: float
    draining: bool
    connections_active: int
    services: dict[str, ServiceStatus] = field(default_factory=dict)


def backendStatus(
    health: BackendHealth, now: float, active: int, connectFailures: int
) -> BackendStatus:
    """
    A L{BackendStatus} from a checker's L{BackendHealth} at clock time
    C{now} (seconds, the checker's clock), with the pool's counts.
    """

    def ago(when: float | None) -> float | None:
        return None if when is None else max(0.0, now - when)

    return BackendStatus(
        name=health.name,
        state=health.state,
        active=active,
        connect_failures=connectFailures,
        last_check_seconds_ago=ago(health.lastCheck),
        last_check_result=health.lastResult,
        last_check_reason=health.lastReason,
        last_change_seconds_ago=ago(health.lastChange),
    )


def renderJSON(snapshot: Snapshot) -> bytes:
    """
    C{/status.json}: the keys SPEC section 8 lists, plus
    C{last_check_result}, C{last_check_reason} and C{last_change_seconds_ago}
    for each backend. Seconds are rounded to milliseconds.
    """
    # Built by hand rather than with dataclasses.asdict, which deep-copies
    # every value and took ten times as long for 100 backends.
    data = {
        "version": snapshot.version,
        "uptime_seconds": round(snapshot.uptime_seconds, 3),
        "draining": snapshot.draining,
        "connections_active": snapshot.connections_active,
        "services": {
            name: {
                "listeners": [
                    {
                        "name": listener.name,
                        "address": listener.address,
                        "active": listener.active,
                        "accepted": listener.accepted,
                        "rejected": listener.rejected,
                    }
                    for listener in service.listeners
                ],
                "backends": [
                    {
                        "name": backend.name,
                        "state": backend.state,
                        "active": backend.active,
                        "connect_failures": backend.connect_failures,
                        "last_check_seconds_ago": _rounded(
                            backend.last_check_seconds_ago
                        ),
                        "last_check_result": backend.last_check_result,
                        "last_check_reason": backend.last_check_reason,
                        "last_change_seconds_ago": _rounded(
                            backend.last_change_seconds_ago
                        ),
                    }
                    for backend in service.backends
                ],
            }
            for name, service in snapshot.services.items()
        },
    }
    # Compact: the C encoder does it; indent would use the pure-Python one.
    return json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n"


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def duration(seconds: float) -> str:
    """
    C{seconds} as an operator reads it: C{0.4 s}, C{42 s}, C{3 min 5 s},
    C{2 h 4 min}, C{3 d 2 h}.
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


_STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--muted:#5d6575;--line:#e2e5ea;
--up:#146c2e;--upbg:#e3f4e8;--down:#a3161b;--downbg:#fde7e7;--warn:#8a5a00;
--warnbg:#fff3d6;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1d2128;
--fg:#e6e8ec;--muted:#9aa2b1;--line:#2e333c;--up:#7fdc98;--upbg:#173422;
--down:#ff9a9a;--downbg:#3d1a1c;--warn:#ffd27a;--warnbg:#3a2e12}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{padding:14px 20px;background:var(--card);border-bottom:1px solid var(--line);
display:flex;flex-wrap:wrap;gap:8px 24px;align-items:baseline}
h1{font-size:20px;margin:0 12px 0 0}
.facts{display:flex;flex-wrap:wrap;gap:4px 20px;margin:0;padding:0;list-style:none}
.facts b{font-variant-numeric:tabular-nums}
.facts span{color:var(--muted)}
main{padding:16px 20px;max-width:1200px;margin:auto}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
margin:0 0 18px;padding:4px 16px 12px}
section.bad{border-color:var(--down);border-left-width:6px}
h2{font-size:17px;margin:10px 0 2px;display:flex;gap:12px;align-items:baseline;
flex-wrap:wrap}
h3{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
margin:12px 0 4px}
h2 .name{font-size:17px;font-weight:700}
.summary{font-size:14px;font-weight:normal;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);
vertical-align:top}
th{font-size:13px;color:var(--muted);font-weight:600}
td.n,th.n{text-align:right}
tr.down td{background:var(--downbg)}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:14px;overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-weight:700;
font-size:13px;white-space:nowrap}
.badge.up{color:var(--up);background:var(--upbg)}
.badge.down{color:var(--down);background:var(--downbg);outline:1px solid var(--down)}
.badge.warn{color:var(--warn);background:var(--warnbg)}
.reason{display:block;color:var(--muted);font-size:13px}
.muted{color:var(--muted)}
footer{color:var(--muted);font-size:13px;text-align:center;padding:0 0 20px}
@media (max-width:700px){
 header,main{padding-left:10px;padding-right:10px}
 section{padding:4px 10px 10px}
 thead{display:none}
 table,tbody,tr,td{display:block;width:100%}
 tr{border:1px solid var(--line);border-radius:8px;margin:8px 0;overflow:hidden}
 td{display:flex;justify-content:space-between;gap:12px;border-bottom:0;
  padding:4px 10px;text-align:right}
 td.n{text-align:right}
 td::before{content:attr(data-label);color:var(--muted);font-size:13px;
  text-align:left;flex:none}
 td.first{font-weight:600}
}
"""


def _ago(seconds: float | None, never: str) -> str:
    if seconds is None:
        return f'<span class="muted">{never}</span>'
    return escape(duration(seconds)) + " ago"


def _stateBadge(state: str) -> str:
    if state == UP:
        return '<span class="badge up">&#9650; UP</span>'
    if state == DOWN:
        return '<span class="badge down">&#9660; DOWN</span>'
    return f'<span class="badge warn">{escape(state)}</span>'


def _check(backend: BackendStatus) -> str:
    if backend.last_check_seconds_ago is None:
        return '<span class="muted">not yet</span>'
    result = escape(backend.last_check_result or "")
    text = f"{result}, {_ago(backend.last_check_seconds_ago, '')}"
    if backend.last_check_reason:
        text += f'<span class="reason">{escape(backend.last_check_reason)}</span>'
    return text


def _listenerRows(listeners: list[ListenerStatus]) -> list[str]:
    rows = []
    for listener in listeners:
        address = (
            escape(listener.address)
            if listener.address is not None
            else '<span class="muted">not bound</span>'
        )
        rows.append(
            "<tr>"
            f'<td class="name first" data-label="listener">{escape(listener.name)}</td>'
            f'<td class="name" data-label="address">{address}</td>'
            f'<td class="n" data-label="active">{listener.active:,}</td>'
            f'<td class="n" data-label="accepted">{listener.accepted:,}</td>'
            f'<td class="n" data-label="rejected">{listener.rejected:,}</td>'
            "</tr>"
        )
    return rows


def _backendRows(backends: list[BackendStatus]) -> list[str]:
    rows = []
    for backend in backends:
        down = ' class="down"' if backend.state == DOWN else ""
        rows.append(
            f"<tr{down}>"
            f'<td class="name first" data-label="backend">{escape(backend.name)}</td>'
            f'<td data-label="state">{_stateBadge(backend.state)}</td>'
            f'<td class="n" data-label="active">{backend.active:,}</td>'
            f'<td class="n" data-label="connect failures">'
            f"{backend.connect_failures:,}</td>"
            f'<td data-label="last check">{_check(backend)}</td>'
            f'<td data-label="last change">'
            f"{_ago(backend.last_change_seconds_ago, 'none since start')}</td>"
            "</tr>"
        )
    return rows


def _service(name: str, service: ServiceStatus) -> str:
    up = sum(1 for backend in service.backends if backend.state == UP)
    total = len(service.backends)
    active = sum(listener.active for listener in service.listeners)
    bad = " bad" if up == 0 and total else ""
    verdict = (
        '<span class="badge down">&#9660; NO BACKEND UP</span>'
        if bad
        else f'<span class="summary">{up} of {total} backends up</span>'
    )
    parts = [
        f'<section class="service{bad}">',
        f'<h2><span class="name">{escape(name)}</span>{verdict}'
        f'<span class="summary">{active:,} active</span></h2>',
        "<h3>Listeners</h3><table><thead><tr><th>listener</th><th>address</th>"
        '<th class="n">active</th><th class="n">accepted</th>'
        '<th class="n">rejected</th></tr></thead><tbody>',
        *_listenerRows(service.listeners),
        "</tbody></table>",
        "<h3>Backends</h3><table><thead><tr><th>backend</th><th>state</th>"
        '<th class="n">active</th><th class="n">connect failures</th>'
        "<th>last check</th><th>last change</th></tr></thead><tbody>",
        *_backendRows(service.backends),
        "</tbody></table></section>",
    ]
    return "".join(parts)


def renderHTML(snapshot: Snapshot) -> bytes:
    """
    The status page: one self-contained HTML document, UTF-8.
    """
    services = snapshot.services
    down = [name for name, service in services.items() if not _anyUp(service)]
    if snapshot.draining:
        overall = '<span class="badge warn">&#9632; DRAINING</span>'
    elif down:
        overall = '<span class="badge down">&#9660; NOT READY</span>'
    else:
        overall = '<span class="badge up">&#9650; READY</span>'
    facts = [
        ("version", escape(snapshot.version)),
        ("uptime", escape(duration(snapshot.uptime_seconds))),
        ("active connections", f"{snapshot.connections_active:,}"),
        ("services", str(len(services))),
        ("draining", "yes" if snapshot.draining else "no"),
    ]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="color-scheme" content="light dark">',
        "<title>gateway status</title><style>",
        _STYLE,
        "</style></head><body><header>",
        f"<h1>gateway</h1>{overall}",
        '<ul class="facts">',
        *(f"<li><span>{label}</span> <b>{value}</b></li>" for label, value in facts),
        "</ul></header><main>",
        *(_service(name, service) for name, service in services.items()),
        "</main>",
        f"<footer>Reloads every {REFRESH_SECONDS} s &middot; "
        '<a href="status.json">status.json</a> &middot; '
        '<a href="metrics">metrics</a></footer>',
        "</body></html>\n",
    ]
    return "".join(parts).encode("utf-8")


def _anyUp(service: ServiceStatus) -> bool:
    return any(backend.state == UP for backend in service.backends)


class StatusPage(Resource):
    """
    C{GET /}: the status page. Put as the site's root, other paths are its
    children (C{putChild}); an unknown one is 404.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__()
        self._snapshot = snapshot

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            # "/" itself: the root with an empty last segment.
            return self
        child: Resource = super().getChild(path, request)
        return child

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _HTML_TYPE)
        request.setHeader(b"content-security-policy", _PAGE_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return renderHTML(self._snapshot())


class StatusJSON(Resource):
    """
    C{GET /status.json}: the same data as the page, as JSON.
    """

    isLeaf = True

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__()
        self._snapshot = snapshot

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _JSON_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return renderJSON(self._snapshot())


def statusRoot(snapshot: Callable[[], Snapshot]) -> StatusPage:
    """
    A site root serving C{/} and C{/status.json}; add C{/metrics},
    C{/healthz} and C{/readyz} to it with C{putChild}.
    """
    root = StatusPage(snapshot)
    root.putChild(b"status.json", StatusJSON(snapshot))
    return root
