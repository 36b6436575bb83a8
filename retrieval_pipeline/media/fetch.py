"""Safe fetching of media URLs: one resolution, checked addresses, a total deadline, a byte cap.

:func:`fetch` is how every http(s) media URL is read (``media.fetch_url`` delegates here). What a fetch may do is a
:class:`FetchPolicy`, carried by a :class:`contextvars.ContextVar` so that a server can wrap the preparation of one
request in ``with fetch_policy(strict):`` while library and CLI users keep a permissive default (their own machine:
private addresses allowed; still a total deadline and a byte cap). Context variables follow ``asyncio.to_thread``
and ``contextvars.copy_context().run`` into worker threads.

What a fetch does, whatever the policy:

* only ``http`` and ``https``; no credentials in the URL; proxy environment variables are ignored;
* the host is resolved once; every address it resolves to is checked; the connection goes to the checked address
  (the ``Host`` header and TLS server name stay the URL's host), so a second DNS answer cannot move it (rebinding);
* redirects are followed by hand, at most ``max_redirects``, each hop checked again like the first URL;
* ``deadline`` is wall-clock for the whole fetch (a watchdog closes the socket), not per socket read;
* at most ``max_bytes`` per fetch; per ``fetch_policy`` scope at most ``max_fetches`` fetches and ``max_total_bytes``.

Any network failure or refused address is one :class:`~retrieval_pipeline.media.InputError`, ``could not fetch media
URL <url>``: with ``reveal_errors=False`` (servers) nothing tells a closed port from an HTTP 403, a blocked address
or a slow source; the details are logged at debug level.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import observe
from ..errors import InputError, LimitError
from .limits import MAX_DOWNLOAD_BYTES, URL_TIMEOUT

logger = logging.getLogger(__name__)

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Cloud metadata endpoints: refused unless named in ``allow_hosts``, even where private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_CHUNK = 64 * 1024
_URL_SHOWN = 200  # characters of a URL repeated in an error message


@dataclass(frozen=True)
class FetchPolicy:
    """What fetching a media URL may do. The default suits a library user on their own machine."""

    allow_remote: bool = True  # False: every http(s) URL is refused (data URIs are not fetched and still work)
    allow_hosts: frozenset[str] = frozenset()  # host names / IPs reachable even when private addresses are blocked
    allow_hosts_only: bool = False  # True: only the hosts in ``allow_hosts`` are fetched from
    block_private: bool = False  # refuse loopback, private, link-local, reserved, multicast, unspecified addresses
    max_bytes: int = MAX_DOWNLOAD_BYTES  # per fetch
    deadline: float = URL_TIMEOUT  # seconds of wall-clock time per fetch, redirects included
    max_redirects: int = 5
    max_fetches: int | None = None  # per ``fetch_policy`` scope (one server request); None = unlimited
    max_total_bytes: int | None = None  # per ``fetch_policy`` scope
    reveal_errors: bool = True  # False: one message for every failure (no port scanning through error texts)

    def __post_init__(self) -> None:
        hosts = frozenset(_normal_host(h) for h in self.allow_hosts)
        object.__setattr__(self, "allow_hosts", hosts)
        if self.max_bytes < 1 or self.deadline <= 0 or self.max_redirects < 0:
            raise ValueError("FetchPolicy needs max_bytes >= 1, deadline > 0 and max_redirects >= 0")

    @classmethod
    def server(
        cls,
        *,
        allow_remote: bool = False,
        allow_hosts: frozenset[str] | set[str] | tuple[str, ...] = (),
        max_bytes: int = 64 * 1024 * 1024,
        deadline: float = 20.0,
        max_redirects: int = 3,
        max_fetches: int = 16,
        max_total_bytes: int = 128 * 1024 * 1024,
    ) -> FetchPolicy:
        """The policy for requests from remote clients: private addresses blocked, terse errors. ``allow_remote``
        opens every public address; ``allow_hosts`` alone opens only those hosts (private ones included)."""
        return cls(
            allow_remote=allow_remote or bool(allow_hosts),
            allow_hosts=frozenset(allow_hosts),
            allow_hosts_only=not allow_remote,
            block_private=True,
            max_bytes=max_bytes,
            deadline=deadline,
            max_redirects=max_redirects,
            max_fetches=max_fetches,
            max_total_bytes=max_total_bytes,
            reveal_errors=False,
        )


@dataclass
class _Scope:
    policy: FetchPolicy
    fetches: int = 0
    bytes: int = 0
    deadline_at: float | None = None  # monotonic time by which every fetch of the scope must end
    lock: threading.Lock = field(default_factory=threading.Lock)


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("qwen3vl_rag_fetch_policy", default=None)
_DEFAULT = FetchPolicy()


@contextlib.contextmanager
def fetch_policy(policy: FetchPolicy, *, deadline: float | None = None) -> Iterator[FetchPolicy]:
    """Fetches inside the block follow ``policy``; fetch counts and bytes are counted from zero; ``deadline``
    (seconds) bounds all of them together."""
    scope = _Scope(policy, deadline_at=None if deadline is None else time.monotonic() + deadline)
    token = _current.set(scope)
    try:
        yield policy
    finally:
        _current.reset(token)


def current_policy() -> FetchPolicy:
    scope = _current.get()
    return scope.policy if scope is not None else _DEFAULT


class FetchRefused(InputError):
    """Fetching media URLs is switched off (``allow_remote=False``)."""


def fetch(
    url: str,
    policy: FetchPolicy | None = None,
    *,
    timeout: float | None = None,
    head_check: Callable[[bytes], None] | None = None,
) -> bytes:
    """GET ``url`` under ``policy`` (default: the current scope's). ``timeout`` may shorten the policy's deadline.
    ``head_check`` sees the first bytes (up to 64) before the rest is read, and may refuse them with InputError."""
    scope = _current.get()
    if policy is None:
        policy = scope.policy if scope is not None else _DEFAULT
    shown = url if len(url) <= _URL_SHOWN else url[:_URL_SHOWN] + "..."
    if not policy.allow_remote:
        raise FetchRefused(
            "fetching media URLs is disabled on this server; send the media as a data URI "
            "(the operator can enable URLs with --allow-remote-media)"
        )
    budget = policy.deadline if timeout is None else min(policy.deadline, timeout)
    if scope is not None:
        with scope.lock:
            scope.fetches += 1
            count = scope.fetches
        if policy.max_fetches is not None and count > policy.max_fetches:
            raise LimitError(
                f"more than {policy.max_fetches} media URLs in one request (limit max_fetches)",
                limit="max_fetches",
                value=count,
                maximum=policy.max_fetches,
            )
        if scope.deadline_at is not None:
            budget = min(budget, scope.deadline_at - time.monotonic())
    try:
        if budget <= 0:
            raise _Failure(f"no time left of the request's deadline for {url!r}")
        with observe.stage("fetch"):
            return _fetch(url, policy, scope, time.monotonic() + budget, head_check)
    except LimitError:
        raise
    except _Failure as exc:
        logger.debug("media URL %s failed: %s", shown, exc.detail)
        detail = f": {exc.public}" if policy.reveal_errors and exc.public else ""
        raise InputError(f"could not fetch media URL {shown}{detail}") from None
    except InputError as exc:  # a head_check refusal names the content problem itself
        raise exc from None
    except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
        logger.debug("media URL %s failed: %s: %s", shown, exc.__class__.__name__, exc)
        detail = ""
        if policy.reveal_errors:
            timed_out = isinstance(exc, (TimeoutError, socket.timeout))
            detail = f": timed out after {budget:g}s" if timed_out else f": unreachable ({exc.__class__.__name__})"
        raise InputError(f"could not fetch media URL {shown}{detail}") from None


class _Failure(Exception):
    def __init__(self, detail: str, public: str = ""):
        super().__init__(detail)
        self.detail, self.public = detail, public


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``: what ``inet_aton`` (and so most resolvers) reads."""
    if not host or any(c not in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _embedded_v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def is_blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, block_private: bool = True) -> bool:
    """Metadata endpoints always; with ``block_private`` every address that is not a global unicast one."""
    for addr in [ip, *_embedded_v4(ip)]:
        if addr in METADATA_ADDRESSES:
            return True
        if block_private and (
            not addr.is_global
            or addr.is_private
            or addr.is_loopback
            or addr.is_link_local
            or addr.is_reserved
            or addr.is_multicast
            or addr.is_unspecified
            or (addr.version == 6 and addr.is_site_local)  # fec0::/10, deprecated but routable in some networks
        ):
            return True
    return False


def _getaddrinfo(host: str, port: int, deadline_at: float) -> list:
    """``socket.getaddrinfo`` bounded by the fetch's deadline (the resolver has no timeout of its own)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="resolve")
    thread.start()
    thread.join(max(0.0, deadline_at - time.monotonic()))
    if thread.is_alive():
        raise TimeoutError("name resolution passed the deadline")
    if "error" in result:
        raise result["error"]
    return result["infos"]


def _resolve(host: str, port: int, policy: FetchPolicy, deadline_at: float | None = None) -> list[str]:
    """The addresses to connect to (in resolver order), after checking every address the host resolves to."""
    allowed_name = host in policy.allow_hosts
    numeric = _numeric_ipv4(host)
    if numeric is not None:
        addresses = [numeric]
    else:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = _getaddrinfo(host, port, deadline_at if deadline_at is not None else time.monotonic() + 30)
            except TimeoutError:
                raise
            except (OSError, UnicodeError) as exc:
                raise _Failure(f"cannot resolve {host!r}: {exc}", "unreachable (name not resolved)") from None
            addresses = []
            for info in infos:
                addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
                if addr not in addresses:
                    addresses.append(addr)
    if not addresses:
        raise _Failure(f"{host!r} resolved to no address", "unreachable (name not resolved)")
    for addr in addresses:
        if allowed_name or str(addr) in policy.allow_hosts:
            continue
        if policy.allow_hosts_only:
            raise _Failure(f"{host!r} ({addr}) is not in the allowlist", "host not allowed")
        if is_blocked_address(addr, block_private=policy.block_private):
            raise _Failure(f"{host!r} resolves to the blocked address {addr}", "address not allowed")
    return [str(a) for a in addresses]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed IP, with certificate checks and SNI for the URL's host name."""

    def __init__(self, ip: str, port: int, server_hostname: str, timeout: float, context: ssl.SSLContext):
        super().__init__(ip, port, timeout=timeout, context=context)
        self._server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_hostname)


def _fetch(
    url: str,
    policy: FetchPolicy,
    scope: _Scope | None,
    deadline_at: float,
    head_check: Callable[[bytes], None] | None,
) -> bytes:
    current = url
    for _hop in range(policy.max_redirects + 1):
        parts = urlsplit(current)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _Failure(f"scheme {scheme!r} is not http(s)", "only http(s) URLs are fetched")
        if parts.username is not None or parts.password is not None:
            raise _Failure("credentials in URL", "credentials in URLs are not accepted")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise _Failure("invalid port", "invalid port") from None
        host = _normal_host(parts.hostname or "")
        if not host:
            raise _Failure("no host", "no host in the URL")
        ips = _resolve(host, port, policy, deadline_at)
        conn = _connect(ips, port, scheme, parts.hostname or host, deadline_at)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = parts.hostname or host
        if ":" in host_header:
            host_header = f"[{host_header}]"
        if parts.port is not None:
            host_header += f":{parts.port}"
        watchdog = threading.Timer(max(0.0, deadline_at - time.monotonic()), _abort, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host_header)
            conn.putheader("User-Agent", "qwen3-vl-rag")
            conn.putheader("Accept-Encoding", "identity")
            conn.endheaders()
            response = conn.getresponse()
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise _Failure(f"HTTP {response.status} without Location", f"HTTP {response.status}")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise _Failure(f"HTTP {response.status}", f"HTTP {response.status}")
            return _read_body(response, conn, policy, scope, deadline_at, head_check)
        except TimeoutError:
            raise
        except OSError:
            if time.monotonic() >= deadline_at:
                raise TimeoutError("deadline passed") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()
    raise _Failure(f"more than {policy.max_redirects} redirects", f"more than {policy.max_redirects} redirects")


def _connect(ips: list[str], port: int, scheme: str, hostname: str, deadline_at: float) -> http.client.HTTPConnection:
    """A connection to the first checked address that accepts one (never to a name resolved again), every attempt
    within what is left of the one deadline (N silent addresses must not take N deadlines)."""
    error: OSError | None = None
    for ip in ips:
        timeout = deadline_at - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("deadline passed while connecting")
        if scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPSConnection(
                ip, port, hostname, timeout, ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(ip, port, timeout=timeout)
        try:
            conn.connect()
            return conn
        except OSError as exc:
            conn.close()
            error = exc
    assert error is not None
    raise error


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _read_body(
    response: http.client.HTTPResponse,
    conn: http.client.HTTPConnection,
    policy: FetchPolicy,
    scope: _Scope | None,
    deadline_at: float,
    head_check: Callable[[bytes], None] | None,
) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise _too_large(int(length), policy.max_bytes)
    chunks: list[bytes] = []
    size = 0
    checked = head_check is None
    while True:
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > policy.max_bytes:
            raise _too_large(size, policy.max_bytes)
        _count_bytes(scope, len(chunk))
        chunks.append(chunk)
        if not checked and size >= 64:
            head_check(b"".join(chunks)[:64])
            checked = True
    if time.monotonic() >= deadline_at:  # the watchdog closed the socket: the body is cut short
        raise TimeoutError("deadline passed")
    data = b"".join(chunks)
    if not checked:
        head_check(data[:64])
    return data


def _too_large(size: int, maximum: int) -> LimitError:
    return LimitError(
        f"media URL content over {maximum} bytes (limit max_fetch_bytes)",
        limit="max_fetch_bytes",
        value=size,
        maximum=maximum,
    )


def _count_bytes(scope: _Scope | None, n: int) -> None:
    if scope is None or scope.policy.max_total_bytes is None:
        return
    with scope.lock:
        scope.bytes += n
        total = scope.bytes
    if total > scope.policy.max_total_bytes:
        raise LimitError(
            f"media URLs of one request over {scope.policy.max_total_bytes} bytes in all (limit max_total_fetch_bytes)",
            limit="max_total_fetch_bytes",
            value=total,
            maximum=scope.policy.max_total_bytes,
        )
