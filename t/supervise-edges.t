#!/usr/bin/env python3
# Edges of the master's supervision (the review fixes of 401023c), one sluice each:
# 1. HUP while slot 1 is in crash backoff (SLUICE_FAULT=start-exit:1), then kill -9 of
#    generation 1's live worker before generation 2 serves: generation 1 is freed with a
#    restart pending; the master must survive (no sanitizer report), serve and exit 0.
# 2. A reload from workers = 3 to 2 while the old generation drains (long-lived
#    connections, drain-timeout 30): slot 2's socket stops listening at once, and every
#    new connection is served (none is queued on a socket nobody accepts on).
# 3. A new generation that never serves (start-exit:0:2, workers = 1) is rolled back
#    after max(2 x watchdog-timeout, 10 s): generation 1 serves throughout, and a later
#    HUP is carried out (generation 3).
# 4. QUIT while slot 1 waits in restart backoff, its one live worker slow to exit
#    (SIGSTOPped for longer than the pending restart delay): no slot 1 worker is started
#    after the SIGQUIT line, the master exits 0 and the port is closed.
# 5. A start-up that can never serve (start-exit:0, workers = 1) exits 2 after the start
#    deadline, with "no worker of generation 1 could serve", for `sluice -d` and -F; no
#    pidfile or process is left.
# 6. handshake-permits lowered 8 -> 4 by a reload while 3 stalled handshakes still hold
#    cells 5..7 (past the new total): at most 1 of 5 new stalled clients gets a
#    ServerHello; once the 3 close, exactly 4 of the 5 have one.
import os
import re
import signal
import threading
import time
import traceback

import servicetest as sv
import sluicetest as st
import tlsclient as tc

START_DEADLINE = 10.0  # max(2 x watchdog-timeout, 10 s), watchdog-timeout 4 s
ADOPTS = r"info: worker 0 \(pid \d+\) adopts the listening sockets of slot 1 while 1 is down"
RESTARTING = re.compile(r"warning: worker 1: restarting in ([\d.]+)s")


def fine_wait_log(sl, pattern, timeout):
    """wait_log with a 5 ms step: for signals that must land inside a short window."""
    rx = re.compile(pattern)
    return st.wait_until(lambda: [ln for ln in sl.run_log_lines() if rx.search(ln)],
                         timeout, step=0.005) or []


def index_of(lines, pattern, start=0):
    rx = re.compile(pattern)
    for i in range(start, len(lines)):
        if rx.search(lines[i]):
            return i
    return None


def requests_ok(t, port, cert, n, bound, what):
    """n HTTPS requests at once, each on a new connection; all must be served within
    bound seconds each."""
    res = [None] * n

    def one(i):
        t0 = time.monotonic()
        ok, body = tc.request(port, cert, "/edge", timeout=bound)
        res[i] = (ok and body == b"hello from app\n", time.monotonic() - t0, body)

    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(bound + 10)
    bad = [r for r in res if r is None or not r[0] or r[1] > bound]
    slowest = max((r[1] for r in res if r is not None), default=0)
    t.ok(not bad, "%s: %d new connections all served within %.1f s each (%d not; slowest "
         "%.3f s)" % (what, n, bound, len(bad), slowest))
    for r in bad[:5]:
        t.diag("  %s" % (r if r is None else "%s after %.3f s" % (r[2], r[1])))
    return not bad


def gen_line(slot, gen, what):
    return r"worker %d \(pid (\d+), generation %d\) %s" % (slot, gen, what)


# --- 1 ------------------------------------------------------------------------------------


def case_hup_in_backoff(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="c1.conf",
                          workers=2)
    sl = t.start_sluice(conf, name="c1", env={"SLUICE_FAULT": "start-exit:1"}, wait=False)
    # the adoption, and a restart delay long enough that slot 1's timer is still pending
    # when generation 1 is freed
    hit = (sl.wait_log(ADOPTS, st.scaled(10))
           and fine_wait_log(sl, r"warning: worker 1: restarting in 0\.8s", st.scaled(10)))
    w0 = sl.ready_workers().get(0)
    t.ok(hit and w0, "1: worker 0 (pid %s) adopts slot 1, which is in crash backoff" % w0)
    if not (hit and w0):
        return
    os.kill(sl.pid, signal.SIGHUP)
    seen = fine_wait_log(sl, r"info: SIGHUP: reloading ", st.scaled(2))
    os.kill(w0, signal.SIGKILL)
    t.ok(seen, "1: HUP, then kill -9 of generation 1's worker 0 (pid %d)" % w0)
    time.sleep(2.0)  # slot 1's restart was due within 0.8 s: long enough, in any build
    lines = sl.run_log_lines()
    i_hup = index_of(lines, r"info: SIGHUP: reloading ")
    i_kill = index_of(lines, gen_line(0, 1, "killed by signal 9"))
    i_ready = index_of(lines, r"info: reload: generation 2 ready")
    t.diag("log order: HUP line %s, kill line %s, generation 2 ready line %s"
           % (i_hup, i_kill, i_ready))
    t.ok(None not in (i_hup, i_kill) and i_hup < i_kill and (i_ready is None or i_kill < i_ready),
         "1: the master saw the kill after the HUP and before generation 2 served (so "
         "generation 1 was freed with slot 1's restart pending)")
    t.ok(sl.alive(), "1: the master is alive 2 s later (status %s)" % sl.proc.poll())
    t.ok(sl.wait_log(r"info: reload: generation 2 ready", st.scaled(5)),
         "1: generation 2 serves (its worker 0 adopting slot 1)")
    ok, body = tc.request(port, cert, "/after", timeout=st.scaled(5))
    t.ok(ok and body == b"hello from app\n", "1: a request is served (%s)" % body)
    t.ok(not sl.sanitizer_reports(), "1: no sanitizer report after the kill")
    sl.stop_and_check(what="1: sluice")


# --- 2 ------------------------------------------------------------------------------------


def echo_round(s, tag):
    msg = b"round trip %s\n" % tag
    try:
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(len(msg) - len(got))
            if not d:
                break
            got += d
        return got == msg
    except OSError:
        return False


def case_fewer_workers(t, cert, key, be):
    port = st.free_port()
    fe = [t.frontend(port, be.address, cert, key)]
    conf = t.write_config(fe, name="c2.conf", workers=3, drain_timeout=30)
    sl = t.start_sluice(conf, name="c2")
    t.ok(st.listen_socket_count(port) == 3, "2: workers = 3: 3 sockets listen on the port "
         "(%d)" % st.listen_socket_count(port))
    pids1 = sl.wait_workers(3)
    holders = []
    for i in range(6):
        s = tc.connect(port, cert, timeout=st.scaled(10))
        s.sendall(b"ECHO\n")
        holders.append(s)
    t.ok(all(echo_round(s, b"%d" % i) for i, s in enumerate(holders)),
         "2: 6 long-lived connections echo")
    t.write_config(fe, name="c2.conf", workers=2, drain_timeout=30)
    g, slots = sv.reload(sl)
    t0 = time.monotonic()
    t.ok(g == 2 and len(slots) == 2, "2: HUP with workers = 2: generation %s ready (%s)"
         % (g, slots))
    two = st.wait_until(lambda: st.listen_socket_count(port) == 2, st.scaled(1), step=0.02)
    t.ok(two, "2: within %.1f s only 2 sockets listen on the port (%d after %.2f s)"
         % (st.scaled(1), st.listen_socket_count(port), time.monotonic() - t0))
    draining = [p for p in pids1 if st.pid_alive(p)]
    t.ok(draining and all(echo_round(s, b"after") for s in holders),
         "2: generation 1 still drains (workers %s alive) and its connections echo"
         % draining)
    requests_ok(t, port, cert, 30, st.scaled(2), "2")
    for s in holders:
        s.close()
    sl.stop_and_check(what="2: sluice")


# --- 3 ------------------------------------------------------------------------------------


def case_rollback(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="c3.conf",
                          workers=1, watchdog_timeout=4)
    sl = t.start_sluice(conf, name="c3", env={"SLUICE_FAULT": "start-exit:0:2"})
    w1 = sl.ready_workers().get(0)
    stream = tc.Stream(port, cert, interval=0.2, timeout=st.scaled(5)).start()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(sl.pid, signal.SIGHUP)
    want = (r"error: reload: generation 2 does not serve within %.0fs; generation 1 keeps "
            r"serving" % START_DEADLINE)
    hit = sl.wait_log(want, START_DEADLINE + st.scaled(5))
    el = time.monotonic() - t0
    t.ok(hit and START_DEADLINE - 1 <= el, "3: after %.1f s the log says \"reload: "
         "generation 2 does not serve within %.0fs; generation 1 keeps serving\""
         % (el, START_DEADLINE))
    died = gen_line(0, 2, "exited with status 3")
    deaths = [ln for ln in sl.run_log_lines() if re.search(died, ln)]
    t.ok(deaths, "3: generation 2's worker kept dying at start (%d times)" % len(deaths))
    time.sleep(1.0)
    res = stream.stop()
    bad = [r for r in res if not r["ok"]]
    t.ok(len(res) >= el / 0.2 and not bad, "3: generation 1 served throughout: %d requests "
         "every 0.2 s, %d failed" % (len(res), len(bad)))
    for r in bad[:5]:
        t.diag("  request at +%.2f s: %s" % (r["start"] - t0, r["err"]))
    t.ok(w1 and st.pid_alive(w1) and w1 in sl.worker_pids()
         and not sl.wait_log(gen_line(0, 1, "(killed|exited)"), 0),
         "3: generation 1's worker (pid %s) was never replaced" % w1)
    g, slots = sv.reload(sl)
    t.ok(g == 3 and sl.wait_log(r"info: reload: generation 3 ready", 0),
         "3: a further HUP is carried out: \"reload: generation 3 ready\" (%s)" % slots)
    ok, body = tc.request(port, cert, "/gen3", timeout=st.scaled(5))
    t.ok(ok and body == b"hello from app\n", "3: generation 3 serves (%s)" % body)
    t.ok(not st.wait_pids_gone([w1], st.scaled(5)), "3: generation 1's worker exits")
    sl.stop_and_check(allow_errors=[want], what="3: sluice")


# --- 4 ------------------------------------------------------------------------------------


def case_quit_in_backoff(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="c4.conf",
                          workers=2, log_level="debug")
    sl = t.start_sluice(conf, name="c4", env={"SLUICE_FAULT": "start-exit:1"}, wait=False)

    def delays():
        return [float(m.group(1)) for m in map(RESTARTING.search, sl.run_log_lines()) if m]

    grown = sl.wait_log(ADOPTS, st.scaled(10)) and st.wait_until(
        lambda: delays() and delays()[-1] >= 0.8, st.scaled(10))
    w0 = sl.ready_workers().get(0)
    t.ok(grown and w0, "4: slot 1 is in restart backoff, delays %s; worker 0 (pid %s) serves"
         % (delays(), w0))
    if not (grown and w0):
        return
    # worker 0 is slow to exit (stopped) for longer than slot 1's pending restart delay:
    # the master stays in its loop, shutting down, while that restart comes due
    pause = delays()[-1] + 0.4
    os.kill(w0, signal.SIGSTOP)
    t0 = time.monotonic()
    os.kill(sl.pid, signal.SIGQUIT)
    time.sleep(pause)
    os.kill(w0, signal.SIGCONT)
    try:
        rc = sl.proc.wait(timeout=st.scaled(5))
    except Exception:
        rc = "still running"
    sl.exit_status = rc
    el = time.monotonic() - t0
    t.ok(rc == 0, "4: the master exits 0 %.1f s after QUIT (%.1f s of it waiting for the "
         "stopped worker; status %s)" % (el, pause, rc))
    lines = sl.run_log_lines()
    i_quit = index_of(lines, r"info: SIGQUIT: stopping every worker now")
    after = lines[i_quit + 1:] if i_quit is not None else []
    started = [ln for ln in after if re.search(gen_line(1, 1, "started"), ln)]
    exited = [ln for ln in after if re.search(gen_line(1, 1, "exited with status 3"), ln)]
    t.ok(i_quit is not None and not started and len(exited) <= 1,
         "4: after the SIGQUIT line no slot 1 worker is started (%d) and at most one in "
         "flight exits with status 3 (%d)" % (len(started), len(exited)))
    for ln in started + exited:
        t.diag("  " + ln)
    t.ok(port not in {p for _, p in st.listening_tcp_ports()} and not sl.worker_pids(),
         "4: the port is closed and no worker is left")
    sl.check_log(what="4: sluice")


# --- 5 ------------------------------------------------------------------------------------


def case_start_never_serves(t, cert, key, be):
    fault = {"SLUICE_FAULT": "start-exit:0"}
    want = r"no worker of generation 1 could serve within %.0fs" % START_DEADLINE
    bound = START_DEADLINE + st.scaled(5)
    port_fg, port_d = st.free_ports(2)
    conf_fg = t.write_config([t.frontend(port_fg, be.address, cert, key)], name="c5fg.conf",
                             workers=1, watchdog_timeout=4)
    logpath = t.path("c5d.log")
    conf_d = t.write_config([t.frontend(port_d, be.address, cert, key)], name="c5d.conf",
                            workers=1, watchdog_timeout=4, log_file=logpath)
    pid_fg, pid_d = sv.conf_value_of(conf_fg, "pidfile"), sv.conf_value_of(conf_d, "pidfile")
    # both at once: each takes the whole deadline
    t0 = time.monotonic()
    fg = t.start_sluice(conf_fg, name="c5fg", env=fault, wait=False)
    d = sv.Daemon(t, conf_d, pid_d, logpath, tag="c5d")
    os.environ.update(fault)  # Daemon.start passes the test's environment on
    try:
        rc, out, err, el = d.start(timeout=bound)
    finally:
        del os.environ["SLUICE_FAULT"]
    t.ok(rc == 2 and START_DEADLINE - 1 <= el <= bound,
         "5: sluice -d returns 2 after %.1f s (status %s; bound %.0f s)" % (el, rc, bound))
    t.ok(re.search(want, err) or d.wait_log(want, 0),
         "5: sluice -d: \"%s\" on stderr or in log-file (stderr %r)" % (want, err.strip()[-200:]))
    try:
        rc_fg = fg.proc.wait(timeout=max(0.0, t0 + bound - time.monotonic()))
    except Exception:
        rc_fg = None
    el_fg = time.monotonic() - t0
    t.ok(rc_fg == 2, "5: sluice -F exits 2 (status %s, %.1f s)" % (rc_fg, el_fg))
    fg.exit_status = rc_fg
    t.ok(fg.wait_log(want, 0), "5: sluice -F logs \"%s\"" % want)
    left = st.wait_until(lambda: not (sv.procs_with_arg(conf_fg) or sv.procs_with_arg(conf_d)),
                         st.scaled(5))
    t.ok(left and not os.path.exists(pid_fg) and not os.path.exists(pid_d),
         "5: no pidfile and no process is left (pidfiles %s %s; processes %s)"
         % (os.path.exists(pid_fg), os.path.exists(pid_d),
            sv.procs_with_arg(conf_fg) + sv.procs_with_arg(conf_d)))
    listening = {p for _, p in st.listening_tcp_ports()}
    t.ok(port_fg not in listening and port_d not in listening, "5: neither port listens")
    fg.check_log(allow_errors=[want], what="5: sluice -F")
    errs = d.unexpected_errors([want])
    san = d.sanitizer_reports() + sv.sanitizer_files(t, "c5d")
    t.ok(not errs and not san, "5: sluice -d: no unexpected error line or sanitizer report "
         "(%s)" % (errs + san)[:3])
    d.pid_done()


# --- 6 ------------------------------------------------------------------------------------


def case_permits_lowered(t, cert, key, be):
    port = st.free_port()
    fe = [t.frontend(port, be.address, cert, key)]
    conf = t.write_config(fe, name="c6.conf", workers=2, handshake_permits=8,
                          handshake_timeout=30, drain_timeout=30)
    sl = t.start_sluice(conf, name="c6")
    # one at a time: every claim scans from the lowest free cell, so client i holds cell i
    old = []
    for i in range(8):
        c = tc.StalledHello(port, timeout=st.scaled(10))
        tc.poll_hellos([c], time.monotonic() + st.scaled(5), stop=lambda cs: cs[0].got_hello)
        old.append(c)
    t.ok(all(c.got_hello for c in old), "6: 8 stalled clients hold the 8 permits (%s)"
         % tc.hello_summary(old))
    t.write_config(fe, name="c6.conf", workers=2, handshake_permits=4, handshake_timeout=30,
                   drain_timeout=30)
    g, _ = sv.reload(sl)
    t.ok(g == 2, "6: HUP with handshake-permits = 4: generation %s ready" % g)
    for c in old[:5]:
        c.close()
    held = old[5:]
    time.sleep(st.scaled(0.5))  # the old workers see the closes and free cells 0..4
    new = tc.stalled_hellos(port, 5, timeout=st.scaled(10))
    # an over-admitting pool answers at once; parked handshakes retry every few ms
    tc.poll_hellos(new, time.monotonic() + st.scaled(1.5),
                   stop=lambda cs: sum(c.got_hello for c in cs) > 1)
    n = sum(c.got_hello for c in new)
    t.ok(n <= 1 and not any(c.closed for c in held),
         "6: with 3 old handshakes still holding cells 5..7, at most 1 of 5 new stalled "
         "clients gets a ServerHello (%s)" % tc.hello_summary(new))
    for c in held:
        c.close()
    tc.poll_hellos(new, time.monotonic() + st.scaled(5),
                   stop=lambda cs: sum(c.got_hello for c in cs) >= 4)
    tc.poll_hellos(new, time.monotonic() + st.scaled(1))
    n = sum(c.got_hello for c in new)
    t.ok(n == 4, "6: once the old ones close, exactly 4 of the 5 have a ServerHello (%s)"
         % tc.hello_summary(new))
    for c in new:
        c.close()
    ok = st.wait_until(lambda: tc.request(port, cert, "/end", timeout=st.scaled(2))[0],
                       st.scaled(10))
    t.ok(ok, "6: a healthy client is served at the end")
    sl.stop_and_check(what="6: sluice")


CASES = [(case_hup_in_backoff, True), (case_fewer_workers, False), (case_rollback, True),
         (case_quit_in_backoff, True), (case_start_never_serves, True),
         (case_permits_lowered, False)]


def main(t):
    sv.kill_strays_at_exit(t)
    fault_ok, why = st.sluice_has_fault_injection()
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    only = os.environ.get("SUPERVISE_EDGES_CASES")  # e.g. "1,3" while debugging
    for n, (fn, needs_fault) in enumerate(CASES, 1):
        if only and str(n) not in only.split(","):
            continue
        if needs_fault and not fault_ok:
            t.skip("case %d: %s" % (n, why))
            continue
        t0 = time.monotonic()
        try:
            fn(t, cert, key, be)
        except Exception:
            t.ok(False, "case %d raised an exception" % n)
            t.diag(traceback.format_exc())
        t.diag("case %d took %.1f s" % (n, time.monotonic() - t0))
        for sl in t.sluices:
            if not sl.checked and sl.alive():
                sl.stop_and_check(what="case %d: sluice" % n)


st.Test("supervise-edges").main(main)
