#!/usr/bin/env python3
# Garbage instead of TLS: random bytes, a plaintext HTTP request, a truncated ClientHello,
# an SSLv3 hello and friends are each closed promptly, nothing reaches the backend, sluice
# does not crash and still serves.
import socket
import time

import sluicetest as st
import tlsclient as tc


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], handshake_timeout=10)
    sl = t.start_sluice(conf)
    bound = st.scaled(2)  # handshake-timeout is 10 s: a close before 2 s is not a timeout

    cases = [
        ("random bytes", tc.random_garbage(1024), False),
        ("a plaintext HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", False),
        ("a truncated (malformed) ClientHello", tc.truncated_client_hello(), False),
        ("half a ClientHello, then FIN", tc.half_client_hello(), True),
        ("an SSLv3 ClientHello", tc.sslv3_client_hello(), False),
        ("an SSLv2-format ClientHello", tc.sslv2_client_hello(), False),
        ("a record header claiming 64 KB", b"\x16\x03\x01\xff\xff" + b"\x01" * 300, False),
        ("an application-data record before any handshake",
         b"\x17\x03\x03\x00\x10" + b"\x00" * 16, False),
    ]
    for name, data, fin in cases:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(data)
        if fin:
            s.shutdown(socket.SHUT_WR)
        how, el, got = tc.wait_closed(s, bound)
        s.close()
        t.ok(how in ("eof", "reset"), "%s: closed promptly (%s after %.3f s, %d bytes back)"
             % (name, how, el, len(got)))
        t.ok(sl.alive(), "%s: sluice is alive" % name)

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.close()
    time.sleep(0.2)
    t.ok(sl.alive(), "connect and close at once: sluice is alive")

    # a burst: 40 connections of each kind at once
    socks = []
    for name, data, fin in cases:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(data)
            if fin:
                s.shutdown(socket.SHUT_WR)
            socks.append(s)
    closed = tc.watch_closes(socks, until=time.monotonic() + st.scaled(3))
    t.ok(len(closed) == len(socks), "a burst of %d garbage connections: %d closed promptly"
         % (len(socks), len(closed)))
    for s in socks:
        s.close()
    t.ok(sl.alive(), "after the burst sluice is alive")

    rc, body, err, _ = t.curl(port, "/")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice still serves a real client")
    n = be.accepted()
    t.ok(n == 1, "no garbage connection reached the backend (%d backend connections)" % n)
    sl.stop_and_check()
    stats = sl.stats()
    t.diag("exit stats: %s" % stats)


st.Test("garbage").main(main)
