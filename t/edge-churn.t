#!/usr/bin/env python3
# Connection churn (issue 7, edge case 4): 10,000 connections, 200 at a time, each ended
# by the client at a random point: before sending anything, mid-ClientHello, after the
# ClientHello without finishing, right after the handshake, mid-request, mid-response,
# or after a complete exchange; each closed with FIN or with RST (SO_LINGER 0).
# handshake-permits is 8, so handshakes also wait parked for a permit and some clients
# vanish while parked. Then, at rest: no active connection, handshake or permit in
# sluicestat -j; every accepted connection was closed and counted; every sluice process
# holds the descriptors it held before the churn; no connection was closed as spinning
# or for lack of resources, and the log holds no error.
# The sanitizer build (SLUICE_TEST_TIME_FACTOR > 1) runs 10,000 / factor connections:
# the same mix and close points, in about the time the normal build takes for 10,000.
import collections
import concurrent.futures
import json
import os
import random
import re
import socket
import ssl
import struct
import time

import sluicetest as st
import tlsclient as tc

CONNECTIONS = int(10000 / st.FACTOR)
CONCURRENCY = 200
PERMITS = 8
TIMEOUT = st.scaled(10)
UPLOAD = 256 * 1024
DOWNLOAD = 256 * 1024
REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
KINDS = ["silent", "partial-hello", "hello-no-finish", "after-handshake", "mid-request",
         "mid-response", "complete"]


def plan(rnd, n):
    """n (kind, how far, reset) tuples: a random close point for each connection."""
    out = []
    for _ in range(n):
        kind = rnd.choice(KINDS)
        out.append((kind, rnd.random(), rnd.random() < 0.5))
    return out


class Churn:
    def __init__(self, port, hellos):
        self.port = port
        self.hellos = hellos
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE  # client CPU goes to churn, not to checks
        self.upload = b"".join(st.random_bytes_chunks(UPLOAD))
        self.ports = {}

    def one(self, spec):
        """Run one connection to its close point; returns (kind, outcome)."""
        kind, frac, reset = spec
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(st.scaled(20))
        s = raw
        try:
            raw.connect(("127.0.0.1", self.port))
            self.ports[id(spec)] = raw.getsockname()[1]
            if reset:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            outcome = self._to_close_point(raw, kind, frac)
            if isinstance(outcome, ssl.SSLSocket):
                s, outcome = outcome, "ok"
        except (socket.timeout, TimeoutError):
            outcome = "timeout"
        except (OSError, ssl.SSLError) as e:
            outcome = "error: %s" % type(e).__name__
        finally:
            try:
                s.close()
            except OSError:
                pass
        return kind, outcome

    def _to_close_point(self, raw, kind, frac):
        if kind == "silent":
            return "ok"
        hello = self.hellos[int(frac * len(self.hellos)) % len(self.hellos)]
        if kind == "partial-hello":
            raw.sendall(hello[:1 + int(frac * (len(hello) - 2))])
            return "ok"
        if kind == "hello-no-finish":
            raw.sendall(hello)
            if frac < 0.5:
                return "ok"  # gone before the server's flight
            d = raw.recv(1)  # the flight starts (permit held), then we are gone
            return "ok" if d else "closed early"
        s = self.ctx.wrap_socket(raw, server_hostname="localhost")
        if kind == "after-handshake":
            return s
        if kind == "mid-request":
            s.sendall(b"ECHO\n" + self.upload[:1 + int(frac * (UPLOAD - 1))])
            return s
        if kind == "mid-response":
            s.sendall(b"SHA 0 %d\n" % DOWNLOAD)
            want = 1 + int(frac * (DOWNLOAD - 1))
            got = 0
            while got < want:
                d = s.recv(min(65536, want - got))
                if not d:
                    return "closed early"
                got += len(d)
            return s
        s.sendall(REQUEST)
        data, how = tc.read_to_close(s, st.scaled(20))
        if how != "close_notify" or not data.endswith(b"hello from app\n"):
            return "bad exchange: %s after %d bytes" % (how, len(data))
        return s


def explain(t, sl, churn, plans, results):
    """The connection log's records of (up to 10) clients that did not reach their close
    point, matched by client port."""
    ports = {churn.ports.get(id(p)): r for p, r in zip(plans, results) if r[1] != "ok"}
    shown = 0
    for ln in sl.log_lines():
        m = re.search(r"client_port=(\d+) ", ln)
        if m and int(m.group(1)) in ports and shown < 10:
            t.diag("  %s: %s" % (ports[int(m.group(1))], ln.split("info: ", 1)[-1]))
            shown += 1


def read_json(statsfile):
    rc, out, err, _ = st.run([st.SLUICESTAT, "-j", "-f", statsfile], timeout=st.scaled(10))
    if rc != 0:
        raise RuntimeError("sluicestat -j: %s" % err.decode(errors="replace"))
    return json.loads(out)


def at_rest(doc):
    return (doc["master"]["permits_in_use"] == 0
            and all(w["active_connections"] == 0 and w["active_handshakes"] == 0
                    for w in doc["workers"]))


def fd_counts(pids):
    out = {}
    for p in pids:
        try:
            out[p] = len(os.listdir("/proc/%d/fd" % p))
        except OSError:
            out[p] = -1
    return out


def fd_kinds(pid):
    """What a process's descriptors are, counted by kind ("socket", "anon_inode:[eventfd]",
    a path...)."""
    kinds = collections.Counter()
    try:
        for f in os.listdir("/proc/%d/fd" % pid):
            try:
                kinds[re.sub(r":\[\d+\]$", "", os.readlink("/proc/%d/fd/%s" % (pid, f)))] += 1
            except OSError:
                pass
    except OSError:
        pass
    return kinds


def main(t):
    if not st.SLUICESTAT or not os.path.exists(st.SLUICESTAT):
        t.skip_all("sluicestat is not built (SLUICESTAT=%r)" % st.SLUICESTAT)
    seed = int(os.environ.get("SLUICE_CHURN_SEED") or random.SystemRandom().randrange(1 << 30))
    t.diag("seed %d (SLUICE_CHURN_SEED=%d repeats this plan), %d connections"
           % (seed, seed, CONNECTIONS))
    rnd = random.Random(seed)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    # Timeouts short enough to wait for at rest, long enough that no client of the churn
    # meets one on a loaded machine (clients close on their own; none should need them).
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          handshake_permits=PERMITS, handshake_timeout=TIMEOUT,
                          idle_timeout=TIMEOUT, close_timeout=1, heartbeat_interval=0.2,
                          log_connections=True)
    statsfile = t.path("sluice.stats")
    sl = t.start_sluice(conf)
    workers = sl.wait_workers(2)
    t.ok(len(workers) == 2, "2 workers ready (%s)" % workers)

    # a few requests first: the baseline then holds whatever a first connection sets up
    for _ in range(8):
        t.curl(port, "/warm-up")
    pids = [sl.pid] + workers
    time.sleep(0.5)
    base = fd_counts(pids)
    t.diag("descriptors before the churn: %s" % base)

    churn = Churn(port, [tc.client_hello() for _ in range(8)])
    plans = plan(rnd, CONNECTIONS)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(churn.one, plans))
    elapsed = time.monotonic() - t0
    outcomes = collections.Counter(results)
    t.diag("%d connections in %.1f s:" % (len(results), elapsed))
    for (kind, outcome), n in sorted(outcomes.items()):
        t.diag("  %-16s %-24s %d" % (kind, outcome, n))
    bad = {k: n for k, n in outcomes.items() if k[1] != "ok"}
    if bad:
        explain(t, sl, churn, plans, results)
    t.ok(not bad, "every client reached its close point: no timeout, no refused connect, "
         "every complete exchange correct (%s)" % (bad or "all ok"))
    t.ok(sl.alive() and sl.worker_pids() == workers,
         "sluice and both workers lived through the churn (%s)" % sl.worker_pids())

    doc = st.wait_until(lambda: (lambda d: d if at_rest(d) else None)(read_json(statsfile)),
                        TIMEOUT + 5)
    doc = doc or read_json(statsfile)
    t.ok(at_rest(doc), "at rest: 0 active connections, 0 active handshakes, 0 permits in use "
         "(connections %s, handshakes %s, permits %d)"
         % ([w["active_connections"] for w in doc["workers"]],
            [w["active_handshakes"] for w in doc["workers"]], doc["master"]["permits_in_use"]))
    c = doc["totals"]["counters"]
    closed = sum(c["closes"].values())
    t.ok(c["accepted"] == closed and c["accepted"] >= len(results),
         "every accepted connection was closed and counted (accepted %d, closes %d, clients %d)"
         % (c["accepted"], closed, len(results)))
    t.diag("closes by reason: %s" % {k: v for k, v in c["closes"].items() if v})
    t.diag("handshakes: %s, permit waits %d" % (c["handshakes"], c["permit_waits"]))
    t.ok(c["permit_waits"] > 0, "some handshakes waited for one of the %d permits (%d)"
         % (PERMITS, c["permit_waits"]))
    for why in ("spinning", "no_resources"):
        t.ok(c["closes"].get(why, 0) == 0, "no connection closed as %s (%d)"
             % (why, c["closes"].get(why, 0)))

    now = st.wait_until(lambda: (lambda f: f if f == base else None)(fd_counts(pids)),
                        st.scaled(5)) or fd_counts(pids)
    t.ok(now == base, "every sluice process holds as many descriptors as before the churn "
         "(before %s, after %s)" % (base, now))
    if now != base:
        for p in pids:
            t.diag("  %d holds: %s" % (p, dict(fd_kinds(p))))

    rc, body, err, _ = t.curl(port, "/after")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice still serves after the churn")
    warnings = collections.Counter(
        ln.split(": warning: ", 1)[1].split(": ")[-1][:60] for ln in sl.run_log_lines()
        if ": warning: " in ln and "connection closed" in ln)
    t.ok(not warnings, "no connection was closed with a warning (%s)" % dict(warnings))
    sl.stop_and_check()


st.Test("edge-churn").main(main)
