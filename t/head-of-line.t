#!/usr/bin/env python3
# Head-of-line blocking: with handshake-timeout 10 s, 500 connections that send nothing
# and 100 that send half a ClientHello do not delay a healthy client (handshake and
# request in under 2 s); after the timeout every stalled connection has been closed.
import time

import sluicetest as st
import tlsclient as tc

TIMEOUT = 10
SILENT = 500
HALF = 100


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)],
                          handshake_timeout=TIMEOUT)
    sl = t.start_sluice(conf)

    t_first = time.monotonic()
    silent = tc.open_many(port, SILENT)
    half = tc.open_many(port, HALF, payload=tc.half_client_hello())
    t_last = time.monotonic()
    t.diag("opened %d stalled connections in %.2f s" % (SILENT + HALF, t_last - t_first))
    stalled = silent + half

    for i in range(3):
        rc, body, err, el = t.curl(port, "/healthy")
        t.ok(rc == 0 and body == b"hello from app\n" and el < st.scaled(2),
             "healthy client %d: handshake and request in %.3f s (bound %.1f s)"
             % (i + 1, el, st.scaled(2)))
        if rc != 0:
            t.diag("curl rc=%s: %s" % (rc, err))
    t_healthy = time.monotonic()

    closed = tc.watch_closes(stalled, until=t_last + TIMEOUT + st.scaled(2))
    n_silent = sum(1 for s in silent if s in closed)
    n_half = sum(1 for s in half if s in closed)
    t.ok(n_silent == SILENT, "after the timeout, %d/%d silent connections were closed"
         % (n_silent, SILENT))
    t.ok(n_half == HALF, "after the timeout, %d/%d half-ClientHello connections were closed"
         % (n_half, HALF))
    if closed:
        first = min(closed.values()) - t_first
        last = max(closed.values()) - t_first
        t.diag("closes seen %.2f .. %.2f s after the first connect" % (first, last))
        t.ok(min(closed.values()) > t_healthy and first >= TIMEOUT - 0.5,
             "no stalled connection was closed before its timeout (first close at %.2f s),"
             " so all %d were pending while the healthy clients were served"
             % (first, SILENT + HALF))
    else:
        t.ok(False, "no stalled connection was closed at all")
    for s in stalled:
        s.close()

    rc, body, err, el = t.curl(port, "/after")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice still serves after the timeouts")
    sl.stop_and_check()
    stats = sl.stats()
    t.ok(stats.get("handshake_timeouts") == SILENT + HALF,
         "exit stats count %d handshake timeouts (%s)"
         % (SILENT + HALF, stats.get("handshake_timeouts")))


st.Test("head-of-line").main(main)
