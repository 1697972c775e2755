"""A small TCP proxy for partition tests: loopback only, bounded, stops itself.

``Proxy(host, port)`` listens on an ephemeral port of 127.0.0.1 and forwards each
connection to ``host:port`` (which must be a loopback address). ``cut()`` makes a
partition:

- connections already open are stalled (``existing="stall"``: nothing is read or
  forwarded in either direction, so the peers' bytes wait in the kernel's buffers, as
  packets would in a network that drops them and then heals) or reset at both ends
  (``existing="reset"``: the client and the server see the connection reset);
- new connections are refused (``new="refuse"``: reset at once) or dropped
  (``new="drop"``: accepted by the kernel, then left hanging until the cut ends).

``restore()`` lets everything through again: stalled streams go on where they stopped,
hanging connections are connected.

Bounds: at most ``max_connections`` connections at once (more are reset), two
threads per connection, 64 KiB per read, and the proxy closes everything by itself
``lifetime`` seconds after it started, should a test forget to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from types import TracebackType

CHUNK = 64 * 1024
#: How often blocked threads look at the proxy's state (seconds).
TICK = 0.05


def is_loopback(host: str) -> bool:
    """Say whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (the peer sees the connection refused or reset)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Proxy:
    """Forward 127.0.0.1:<port> to a loopback ``host:port``, with a partition switch."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 256,
        lifetime: float = 300.0,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the proxy only forwards to loopback addresses, not {host!r}")
        self.target = (host, port)
        self.max_connections = max_connections
        self.deadline = time.monotonic() + lifetime
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._refuse_new = True
        self._lock = threading.Lock()
        #: Guards the cut against sends under way (``_sends`` of them).
        self._sending = threading.Condition()
        self._sends = 0
        #: client socket -> upstream socket (None until connected)
        self._connections: dict[socket.socket, socket.socket | None] = {}
        self._threads: list[threading.Thread] = []
        #: What happened, for the test's report.
        self.accepted = 0
        self.refused = 0
        self.bytes_forwarded = 0
        #: Connections open when the last cut began (stalled or reset by it).
        self.cut_connections = 0
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True
        )

    # Control ------------------------------------------------------------------------

    def start(self) -> Proxy:
        self._accept_thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def cut(self, *, existing: str = "stall", new: str = "refuse") -> None:
        """Partition: stall or reset open connections; refuse or drop new ones."""
        if existing not in {"stall", "reset"} or new not in {"refuse", "drop"}:
            raise ValueError(f"unknown cut: existing={existing!r}, new={new!r}")
        self._refuse_new = new == "refuse"
        with self._sending:
            self._open.clear()
            # Once cut() returns, not one more byte crosses: wait out the sends under way.
            self._sending.wait_for(lambda: self._sends == 0, timeout=5)
        with self._lock:
            self.cut_connections = len(self._connections)
            pairs = list(self._connections.items()) if existing == "reset" else []
            for client, _ in pairs:
                del self._connections[client]
        for pair in pairs:
            for sock in pair:
                if sock is not None:
                    _reset(sock)

    def restore(self) -> None:
        """Heal the partition: stalled and hanging connections go on."""
        self._open.set()

    def close(self) -> None:
        """Stop: close the listener and every connection, wait for the threads."""
        self._closed.set()
        self._open.set()  # wake whoever waits for the cut to end
        if threading.current_thread() is not self._accept_thread:
            self._accept_thread.join(5)
        with self._lock:
            sockets = [s for pair in self._connections.items() for s in pair if s is not None]
            self._connections.clear()
            threads = list(self._threads)
        for sock in sockets:
            _reset(sock)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(5)
        self._listener.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the target (the server's client_port)."""
        with self._lock:
            upstreams = [s for s in self._connections.values() if s is not None]
        ports = set()
        for sock in upstreams:
            try:
                ports.add(sock.getsockname()[1])
            except OSError:
                continue
        return ports

    # Threads ------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._closed.is_set() or time.monotonic() > self.deadline

    def _accept_loop(self) -> None:
        self._listener.settimeout(TICK)
        try:
            while not self._stopping():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                with self._lock:
                    full = len(self._connections) >= self.max_connections
                if full or (self.is_cut and self._refuse_new):
                    self.refused += 1
                    _reset(client)
                    continue
                self.accepted += 1
                with self._lock:
                    self._connections[client] = None
                thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
                with self._lock:
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                thread.start()
        finally:
            if not self._closed.is_set():  # the lifetime ran out: stop by itself
                threading.Thread(target=self.close, daemon=True).start()

    def _wait_open(self) -> bool:
        """Wait while the proxy is cut; False once it stops."""
        while not self._open.wait(TICK):
            if self._stopping():
                return False
        return not self._stopping()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            if not self._wait_open():  # a connection made during a cut hangs until restore
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                if client not in self._connections:  # closed meanwhile
                    return
                self._connections[client] = upstream
            back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            with self._lock:
                self._threads.append(back)
            back.start()
            self._pump(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            self._drop(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._wait_open():
                readable, _, _ = select.select([src], [], [], TICK)
                if not readable:
                    continue
                data = src.recv(CHUNK)
                if not data:
                    break
                if not self._send(dst, data):
                    break
        except (OSError, ValueError):
            pass
        finally:
            # Either side closing ends the connection (both directions).
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _send(self, dst: socket.socket, data: bytes) -> bool:
        """Forward ``data``, held while the proxy is cut; False once it stops."""
        while True:
            with self._sending:
                if self._open.is_set():
                    self._sends += 1
                    break
            if not self._wait_open():
                return False
        sent = 0
        try:
            dst.sendall(data)
            sent = len(data)
        finally:
            with self._sending:
                self._sends -= 1
                self.bytes_forwarded += sent
                self._sending.notify_all()
        return True

    def _drop(self, client: socket.socket, upstream: socket.socket | None) -> None:
        with self._lock:
            self._connections.pop(client, None)
        for sock in (client, upstream):
            if sock is not None:
                sock.close()
