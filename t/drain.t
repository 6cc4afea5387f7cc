#!/usr/bin/env python3
# Graceful shutdown on SIGTERM (issue 3, point 7). A 50 MB download in progress when
# SIGTERM arrives completes with an equal sha256 (drain-timeout 20) while new connections
# are no longer served; then the master exits 0 and removes its pidfile and stats file.
# A transfer that cannot finish (the client stopped reading) is cut at drain-timeout
# (1 s): the master still exits 0, neither at once nor long after the deadline.
import hashlib
import os
import signal
import ssl
import threading
import time

import servicetest as sv
import sluicetest as st
import tlsclient as tc

MB = 1 << 20
SIZE = 50 * MB
RATE = 10 * MB  # the client reads at most this many bytes per second: about 5 s in all


def paced_download(port, cafile, res, progress):
    """SHA 0 SIZE, read at RATE; fills res with what arrived and how it ended."""
    try:
        s = tc.connect(port, cafile, timeout=st.scaled(30))
        s.sendall(b"SHA 0 %d\n" % SIZE)
        h = hashlib.sha256()
        n = 0
        t0 = time.monotonic()
        while n < SIZE:
            d = s.recv(min(65536, SIZE - n))
            if not d:
                break
            h.update(d)
            n += len(d)
            progress[0] = n
            ahead = n / RATE - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        rest, how = tc.read_to_close(s, st.scaled(30))
        res.update(got=n, sha=h.hexdigest(), trailer=rest.decode(errors="replace"),
                   how=how, end=time.monotonic())
        s.close()
    except (OSError, ssl.SSLError) as e:
        res.update(error="%s: %s" % (type(e).__name__, e), got=progress[0],
                   end=time.monotonic())


def served(port, cafile, timeout):
    """Does a new connection get a TLS handshake and an answer within timeout?"""
    r = sv.https_get(port, cafile, timeout=timeout)
    return r["ok"], r["error"]


def wait_exit(sl, timeout):
    """Wait for the master to exit; returns the monotonic time it was seen gone."""
    deadline = time.monotonic() + timeout
    while sl.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic() if sl.proc.poll() is not None else None


def completes(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          drain_timeout=20, idle_timeout=60)
    pidfile, statsfile = sv.conf_value_of(conf, "pidfile"), sv.conf_value_of(conf, "stats-file")
    sl = t.start_sluice(conf)
    workers = sl.wait_workers(2)
    t.ok(sv.pidfile_pid(pidfile) == sl.pid and os.path.exists(statsfile) and len(workers) == 2,
         "the pidfile holds the master's pid %d, the stats file exists, 2 workers run %s"
         % (sl.pid, workers))

    res, progress = {}, [0]
    th = threading.Thread(target=paced_download, args=(port, cert, res, progress), daemon=True)
    th.start()
    st.wait_until(lambda: progress[0] >= 8 * MB or not th.is_alive(), st.scaled(20))
    t_term = time.monotonic()
    at_term = progress[0]
    os.kill(sl.pid, signal.SIGTERM)
    t.ok(at_term < SIZE // 2 and th.is_alive(),
         "SIGTERM sent with %.1f of %d MB received" % (at_term / MB, SIZE // MB))
    time.sleep(0.3)
    t.ok(sl.alive() and th.is_alive() and sv.pidfile_pid(pidfile) == sl.pid,
         "while the transfer runs the master is alive and its pidfile stays (%.1f MB so far)"
         % (progress[0] / MB))
    ok, err = served(port, cert, 1.5)
    t.ok(not ok, "while draining, a new connection is not served (%s)" % err)
    t.ok(sl.wait_log(r"info: SIGTERM: draining, at most 20(\.0+)?s$", st.scaled(3)),
         "the master logs \"SIGTERM: draining, at most 20s\"")

    th.join(st.scaled(40))
    w = res.get("trailer", "").split()
    t.ok(res.get("got") == SIZE and len(w) == 5 and w[0] == "RESULT" and w[3] == str(SIZE)
         and w[4] == res.get("sha") and res.get("how") == "close_notify",
         "the 50 MB transfer completes after SIGTERM with an equal sha256, then close_notify "
         "(%s MB, %s, %s)" % (res.get("got", 0) / MB, res.get("how"), res.get("error")))
    t_exit = wait_exit(sl, st.scaled(5))
    t.ok(t_exit is not None and sl.proc.returncode == 0,
         "then the master exits 0 (status %s, %.1f s after SIGTERM, %.2f s after the "
         "transfer ended)" % (sl.proc.returncode, (t_exit or time.monotonic()) - t_term,
                              (t_exit or time.monotonic()) - res.get("end", t_term)))
    t.ok(not os.path.exists(pidfile) and not os.path.exists(statsfile),
         "the pidfile and the stats file are removed (pidfile %s, stats file %s)"
         % ("present" if os.path.exists(pidfile) else "gone",
            "present" if os.path.exists(statsfile) else "gone"))
    left = st.wait_pids_gone(workers, st.scaled(2))
    t.ok(workers and not left, "every worker %s is gone (left: %s)" % (workers, left))
    sl.stop_and_check(what="sluice (drain-timeout 20)")


def cut_at_deadline(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="cut.conf",
                          workers=2, drain_timeout=1, idle_timeout=60)
    pidfile = sv.conf_value_of(conf, "pidfile")
    sl = t.start_sluice(conf, name="sluice-cut")
    # a download the client never reads: stuck on backpressure, it cannot finish
    stuck = tc.connect(port, cert, timeout=st.scaled(10))
    stuck.sendall(b"SHA 0 %d\n" % SIZE)
    # and an idle relay: the backend waits for the client's EOF, which never comes
    idle = tc.connect(port, cert, timeout=st.scaled(10))
    idle.sendall(b"HOLD\n")
    t.ok(be.wait_event(lambda e: e.get("cmd") == "HOLD", st.scaled(5)),
         "drain-timeout 1: an idle connection and a stalled 50 MB download are open")
    time.sleep(0.5)
    t_term = time.monotonic()
    os.kill(sl.pid, signal.SIGTERM)
    t_exit = wait_exit(sl, st.scaled(1) + 5)
    el = (t_exit or time.monotonic()) - t_term
    t.ok(t_exit is not None and sl.proc.returncode == 0 and 0.8 <= el <= st.scaled(1) + 2,
         "drain-timeout 1: the master exits 0 %.2f s after SIGTERM (bound 0.8..%.1f s, "
         "status %s)" % (el, st.scaled(1) + 2, sl.proc.returncode))
    got, how = tc.read_to_close(stuck, st.scaled(10))
    t.ok(how != "timeout" and len(got) < SIZE,
         "drain-timeout 1: the stalled download is cut (%s after %.1f MB)"
         % (how, len(got) / MB))
    data, how = tc.read_to_close(idle, st.scaled(5))
    t.ok(how in ("close_notify", "eof", "reset"),
         "drain-timeout 1: the idle connection is closed (%s)" % how)
    stuck.close()
    idle.close()
    t.ok(not os.path.exists(pidfile), "drain-timeout 1: the pidfile is removed")
    sl.stop_and_check(what="sluice (drain-timeout 1)")


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    completes(t, cert, key, be)
    cut_at_deadline(t, cert, key, be)


st.Test("drain").main(main)
