"""A TCP proxy that a test can cut, as a network partition cuts a host off.

While cut, the proxy stops moving bytes both ways and leaves every connection
open (a silent network, not a refusal: the client's reads wait for its socket
timeout), and it holds new connections the same way. Restoring it closes what
it held, so clients reconnect, and forwards again.
"""

from __future__ import annotations

import selectors
import socket
import threading

from core.process import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` and :meth:`restore` it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._cut = threading.Event()
        self._refuse = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def cut(self) -> None:
        self._cut.set()

    def refuse(self) -> None:
        """Close every connection, and each new one at once (a server that is down, not silent)."""
        self._refuse.set()
        self._drop_all()

    def restore(self) -> None:
        self._drop_all()
        self._cut.clear()
        self._refuse.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            held, self._sockets = self._sockets, []
        for sock in held:
            try:
                sock.close()
            except OSError:
                pass

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.extend(socks)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        if self._refuse.is_set():
            client.close()
            return
        # A connection made while cut waits, silent, until the cut ends (then it is closed).
        while self._cut.is_set():
            if self._closed.wait(0.05):
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._track(upstream)
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            try:
                for sock in peer:
                    selector.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):  # closed under us by restore()
                return self._close(client, upstream)
            while not self._closed.is_set():
                if self._cut.is_set():  # silent: read nothing, send nothing
                    self._closed.wait(0.05)
                    continue
                try:
                    for key, _ in selector.select(0.05):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return self._close(client, upstream)
                        peer[key.fileobj].sendall(data)  # type: ignore[index]
                except (OSError, ValueError):  # closed under us by restore()
                    return self._close(client, upstream)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
