#!/usr/bin/env python3
# EMFILE on accept: sluice under RLIMIT_NOFILE 32 with 100 clients connected: no busy
# loop (CPU stays flat), the EMFILE warning is logged but not per attempt, and sluice
# serves again once the clients close.
import re
import time

import sluicetest as st
import tlsclient as tc

NOFILE = 32
CLIENTS = 100
CPU_WINDOW = 3.0
EMFILE_LINE = r"warning: .*accept.*(Too many open files|EMFILE)"


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    # a long handshake-timeout: no stalled connection is freed by a timeout meanwhile
    conf = t.write_config([t.frontend(port, be.address, cert, key)], handshake_timeout=120)
    sl = t.start_sluice(conf, rlimit_nofile=NOFILE)
    t.diag("sluice holds %d fds at start (limit %d)" % (sl.open_fds(), NOFILE))

    rc, body, err, _ = t.curl(port, "/before")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice serves under RLIMIT_NOFILE %d"
         % NOFILE)

    clients = tc.open_many(port, CLIENTS)
    t_open = time.monotonic()
    hits = sl.wait_log(EMFILE_LINE, timeout=st.scaled(3))
    t.ok(hits, "with %d clients connected the EMFILE warning is logged" % CLIENTS)
    for ln in hits[:1]:
        t.diag("  " + ln)
    t.diag("sluice holds %d fds" % sl.open_fds())

    time.sleep(0.5)
    c0 = sl.cpu_seconds()
    time.sleep(CPU_WINDOW)
    used = sl.cpu_seconds() - c0
    t.ok(used < 0.05 * CPU_WINDOW,
         "at EMFILE sluice used %.3f s CPU in %.0f s: no busy loop (bound %.2f s)"
         % (used, CPU_WINDOW, 0.05 * CPU_WINDOW))
    t.ok(sl.alive(), "sluice is alive at EMFILE")

    elapsed = time.monotonic() - t_open
    per_worker = {}
    for ln in sl.log_lines():
        m = re.search(r"sluice\[(\d+)\]", ln)
        if m and re.search(EMFILE_LINE, ln):
            per_worker[m.group(1)] = per_worker.get(m.group(1), 0) + 1
    most = max(per_worker.values(), default=0)
    allowed = 1 + int(elapsed // 10)
    t.ok(1 <= most <= allowed, "the EMFILE warning is not logged per attempt: at most %d "
         "line(s) from one worker in %.1f s (allowed %d per worker)" % (most, elapsed, allowed))

    for s in clients:
        s.close()
    time.sleep(0.2)
    rc, body, err, el = t.curl(port, "/after", timeout=st.scaled(10))
    t.ok(rc == 0 and body == b"hello from app\n" and el < st.scaled(5),
         "once the clients close sluice serves again (%.2f s, curl rc=%s)" % (el, rc))
    if rc != 0:
        t.diag("curl: %s" % err)
    sl.stop_and_check()


st.Test("accept-emfile").main(main)
