#!/usr/bin/env python3
# A worker serves ready connections first come, first served. libev runs the callbacks
# of one poll's events last-reported first, so under load the connection that became
# ready first waited for all the others (the same mean latency, a much wider spread).
# Here eight relaying connections each send a line while the worker is stopped, in a
# known order; once it runs again it reads them all in one poll. The backend, one
# thread on one epoll loop, records the order in which the lines reach it: it must be
# the order they were sent in, not the reverse.
import os
import selectors
import signal
import socket
import ssl
import threading
import time

import sluicetest as st
import tlsclient as tc

CONNECTIONS = 8


class OrderBackend:
    """An echo server on a Unix socket, one thread and one epoll loop, that records each
    line in the order the lines became readable."""

    def __init__(self, path):
        self.order = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        os.chmod(path, 0o666)
        self.sel = selectors.EpollSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            for key, _ in self.sel.select(timeout=0.1):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                data = key.fileobj.recv(4096)
                if not data:
                    self.sel.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                with self.lock:
                    self.order.append(data.decode(errors="replace").strip())
                key.fileobj.sendall(data)

    def lines(self):
        with self.lock:
            return list(self.order)


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def main(t):
    cert, key = t.make_cert()
    path = t.path("order.sock")
    be = OrderBackend(path)
    port = st.free_port()
    conf = t.write_config([t.frontend(port, "unix:" + path, cert, key)], workers=1)
    sl = t.start_sluice(conf)
    (worker,) = sl.wait_workers(1)
    ctx = tc.context(cert, version=ssl.TLSVersion.TLSv1_3)
    conns = []
    for i in range(CONNECTIONS):
        raw = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(10))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"hello-%d\n" % i)
        read_line(s)  # relaying, the backend connection up
        conns.append(s)

    os.kill(worker, signal.SIGSTOP)
    try:
        for i, s in enumerate(conns):
            s.sendall(b"line-%d\n" % i)
            time.sleep(0.02)  # each socket readable well after the one before
    finally:
        os.kill(worker, signal.SIGCONT)
    echoes = [read_line(s) for s in conns]
    t.ok(echoes == ["line-%d" % i for i in range(CONNECTIONS)],
         "every connection got its line back (%s)" % echoes)
    got = [ln for ln in be.lines() if ln.startswith("line-")]
    want = ["line-%d" % i for i in range(CONNECTIONS)]
    t.ok(got == want, "the worker relayed the lines in the order they arrived: %s" % got)
    for s in conns:
        s.close()
    sl.stop_and_check()
    be.stop = True


st.Test("fifo").main(main)
