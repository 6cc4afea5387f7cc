#!/usr/bin/env python3
# Exact counters (issue 5, tests 1 and 5): after 100 good handshakes (60 TLS 1.3, 40 TLS
# 1.2 of which 10 resumed), 7 failed ones (wrong protocol version, garbage) and 3 timed
# out, sluicestat's totals read 100 / 7 / 3, the versions, resumptions and the latency
# histogram agree, and the bytes each way are exactly what the clients sent and got.
# Then a worker is killed with SIGKILL: every total, and every per-worker Prometheus
# series, keeps its value across the restart (the master folds the dead slot in).
import json
import os
import re
import signal
import socket
import ssl
import time

import sluicetest as st
import tlsclient as tc

REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


def sluicestat(*args):
    rc, out, err, _ = st.run([st.SLUICESTAT] + list(args), timeout=st.scaled(10))
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def read_json(statsfile):
    rc, out, err = sluicestat("-j", "-f", statsfile)
    return json.loads(out) if rc == 0 else {"error": err}


def prom_samples(statsfile):
    """{(name, frozenset(labels)): value} of `sluicestat -p`."""
    rc, out, _ = sluicestat("-p", "-f", statsfile)
    samples = {}
    for line in out.splitlines() if rc == 0 else []:
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def prom_sum(samples, name, **want):
    return sum(v for (n, labels), v in samples.items()
               if n == name and all((k, w) in labels for k, w in want.items()))


def one_exchange(port, ctx, session=None):
    """A request over a new connection: (bytes sent, bytes received, ssl session, resumed)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(5))
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session,
                        suppress_ragged_eofs=False)
    s.sendall(REQUEST)
    data, how = tc.read_to_close(s, st.scaled(5))
    sess, reused = s.session, s.session_reused
    s.close()
    if how != "close_notify" or not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("request ended %s after %r" % (how, data[:60]))
    return len(REQUEST), len(data), sess, reused


def good_handshakes(port, cert):
    sent = got = resumed = 0
    versions = {"TLSv1.3": 0, "TLSv1.2": 0}
    session = None
    contexts = {v: tc.context(cert, v) for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)}
    plan = [ssl.TLSVersion.TLSv1_3] * 60 + [ssl.TLSVersion.TLSv1_2] * 40
    for i, version in enumerate(plan):
        # the last 10 TLS 1.2 connections offer the session of the one before them
        offer = session if i >= 90 else None
        n_out, n_in, sess, reused = one_exchange(port, contexts[version], offer)
        sent, got = sent + n_out, got + n_in
        resumed += reused
        versions["TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2"] += 1
        if version == ssl.TLSVersion.TLSv1_2:
            session = sess
    return sent, got, resumed, versions


def failed_handshakes(port):
    """Seven clients that get past accept and send something that is no TLS we speak."""
    kinds = [tc.sslv3_client_hello(), tc.sslv2_client_hello(), tc.sslv3_client_hello(),
             tc.random_garbage(512), tc.random_garbage(64), REQUEST,
             b"\x16\x03\x03\x00\x05\x01\x00\x00\x01\x00"]
    socks = []
    for data in kinds:
        s = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(5))
        s.sendall(data)
        socks.append(s)
    closed = tc.watch_closes(socks, until=time.monotonic() + st.scaled(3))
    for s in socks:
        s.close()
    return len(kinds), len(closed)


def silent_clients(port, n, hold):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=st.scaled(5))
             for _ in range(n)]
    closed = tc.watch_closes(socks, until=time.monotonic() + hold)
    for s in socks:
        s.close()
    return len(closed)


def check_totals(t, doc, sent, got, resumed, versions):
    c = doc["totals"]["counters"]
    hs = c["handshakes"]
    t.ok((hs["ok"], hs["failed"], hs["timeout"], hs["aborted"]) == (100, 7, 3, 0),
         "handshakes ok / failed / timeout / aborted read 100 / 7 / 3 / 0 (%s)" % hs)
    t.ok(c["accepted"] == 110, "110 connections accepted (%s)" % c["accepted"])
    t.ok(c["bytes_client_to_backend"] == sent,
         "bytes client to backend equal what the clients sent (%d, want %d)"
         % (c["bytes_client_to_backend"], sent))
    t.ok(c["bytes_backend_to_client"] == got,
         "bytes backend to client equal what the clients received (%d, want %d)"
         % (c["bytes_backend_to_client"], got))
    by = c["handshakes_by_version"]
    t.ok(by.get("TLSv1.3") == versions["TLSv1.3"] and by.get("TLSv1.2") == versions["TLSv1.2"],
         "handshakes by version: %s (want %s)" % (by, versions))
    t.ok(resumed == 10 and c["handshakes_resumed"] == resumed,
         "resumed handshakes: %s (the clients saw %d)" % (c["handshakes_resumed"], resumed))
    hist = c["handshake_duration"]
    t.ok(sum(hist["counts"]) == 100 and hist["sum_seconds"] > 0,
         "the latency histogram holds the 100 handshakes (%d, sum %.4f s)"
         % (sum(hist["counts"]), hist["sum_seconds"]))
    closes = c["closes"]
    t.ok(closes.get("handshake_error") == 7 and closes.get("handshake_timeout") == 3
         and closes.get("backend_close") == 100,
         "closes by reason: 7 handshake_error, 3 handshake_timeout, 100 backend_close (%s)"
         % {k: v for k, v in closes.items() if v})


def check_at_rest(t, doc):
    t.ok(doc["master"]["permits_in_use"] == 0
         and all(w["active_connections"] == 0 and w["active_handshakes"] == 0
                 for w in doc["workers"]),
         "at rest: no active connection, handshake or permit (%s)"
         % [(w["active_connections"], w["active_handshakes"]) for w in doc["workers"]])


def main(t):
    if not st.SLUICESTAT or not os.path.exists(st.SLUICESTAT):
        t.skip_all("sluicestat is not built (SLUICESTAT=%r)" % st.SLUICESTAT)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          handshake_timeout=1, heartbeat_interval=0.2)
    statsfile = t.path("sluice.stats")
    sl = t.start_sluice(conf)
    sl.wait_workers(2)

    sent, got, resumed, versions = good_handshakes(port, cert)
    n, closed = failed_handshakes(port)
    t.ok(closed == n, "the %d bad handshakes were closed promptly (%d)" % (n, closed))
    closed = silent_clients(port, 3, st.scaled(1) + 3)
    t.ok(closed == 3, "the 3 silent clients were closed at handshake-timeout (%d)" % closed)

    before = read_json(statsfile)
    if "error" in before:
        t.bail("sluicestat -j failed: %s" % before["error"])
    check_totals(t, before, sent, got, resumed, versions)
    check_at_rest(t, before)
    prom_before = prom_samples(statsfile)
    t.ok(prom_sum(prom_before, "sluice_handshakes_total", result="ok") == 100
         and prom_sum(prom_before, "sluice_handshakes_total", result="failed") == 7
         and prom_sum(prom_before, "sluice_handshakes_total", result="timeout") == 3,
         "Prometheus, summed over workers: 100 / 7 / 3")

    # Kill the worker that counted more, so the fold has something to carry.
    rows = sorted(before["workers"], key=lambda w: -w["counters"]["accepted"])
    victim = rows[0]
    os.kill(victim["pid"], signal.SIGKILL)
    pids = sl.wait_workers(2, exclude=(victim["pid"],))
    t.ok(len(pids) == 2, "the killed worker %d was replaced (%s)" % (victim["pid"], pids))
    time.sleep(0.5)  # a heartbeat of the replacement

    after = read_json(statsfile)
    keys = ("accepted", "bytes_client_to_backend", "bytes_backend_to_client",
            "handshakes_resumed")
    same = {k: (before["totals"]["counters"][k], after["totals"]["counters"][k]) for k in keys}
    same["handshakes"] = (before["totals"]["counters"]["handshakes"],
                          after["totals"]["counters"]["handshakes"])
    t.ok(all(a == b for a, b in same.values()),
         "after kill -9 of worker %d the totals keep their values (%s)" % (victim["pid"], same))
    t.ok(after["totals"]["restarts"] == 1, "the totals count 1 restart (%s)"
         % after["totals"]["restarts"])
    prom_after = prom_samples(statsfile)
    backwards = [(n, sorted(l), v, prom_after.get((n, l)))
                 for (n, l), v in prom_before.items()
                 if n.endswith("_total") and prom_after.get((n, l), -1) < v]
    t.ok(not backwards, "no per-worker Prometheus counter went backwards (%s)" % backwards[:3])
    t.ok(prom_sum(prom_after, "sluice_worker_restarts_total",
                  worker=str(victim["worker"])) == 1,
         "sluice_worker_restarts_total{worker=\"%d\"} is 1" % victim["worker"])

    sl.stop_and_check()


st.Test("stats-counts").main(main)
