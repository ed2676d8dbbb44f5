"""A TCP proxy that adds a fixed delay in each direction: ``python -m benchmarks.latency_proxy
LISTEN_PORT TARGET_HOST TARGET_PORT ONE_WAY_MS``.

``sqla-redis-cache bench`` starts it in its own process (so its threads do not compete with the
benchmark for the GIL) to measure Redis ``ONE_WAY_MS`` x 2 further away.  Each direction of a
connection has a reader thread, which stamps every chunk with the time it may leave, and a writer
thread, which sleeps until then and forwards it: order is kept and the delay does not grow with
the traffic.  Prints ``ready`` once listening.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def read() -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.perf_counter() + delay, data))
            if not data:
                return

    def write() -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if not data:
                break
            try:
                target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()


def main() -> None:
    port, host, target_port, one_way_ms = sys.argv[1:5]
    delay = float(one_way_ms) / 1000
    server = socket.create_server(("127.0.0.1", int(port)))
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((host, int(target_port)))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(client, upstream, delay)
        _pump(upstream, client, delay)


if __name__ == "__main__":
    main()
