#!/usr/bin/env python3
# Worker restarts (issue 3, points 2 and 3), workers = 2, heartbeat-interval 0.2 s,
# watchdog-timeout 1 s, under a steady stream of new connections (one every 20 ms):
# - kill -9 of a worker: a replacement for its slot is ready within 1 s, the log names
#   the dead pid and signal 9, and every request started after the worker died succeeds
#   (none refused: they wait in the slot's kept backlog);
# - the same with the master paused (SIGSTOP) for 0.5 s around the kill, so requests
#   surely queue in the dead slot's backlog: they are served by the replacement;
# - SIGSTOP of a worker (a stuck loop): after watchdog-timeout the master logs "stuck",
#   kills it and starts a replacement; requests queued behind it are served, and the
#   replacement serves new ones.
import os
import re
import signal
import threading
import time

import sluicetest as st
import tlsclient as tc

HEARTBEAT = 0.2
WATCHDOG = 1.0
INTERVAL = 0.02


def wait_dead(pid, timeout):
    """Poll closely until pid has exited; returns time.monotonic() then, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not st.pid_alive(pid):
            return time.monotonic()
        time.sleep(0.001)
    return None


def wait_replacement(sl, slot, old_pid, timeout):
    """Wait for a ready line for slot naming a pid other than old_pid; returns
    (pid, time.monotonic()) or (None, None)."""
    pid = st.wait_until(lambda: (sl.ready_workers().get(slot) not in (None, old_pid)
                                 and sl.ready_workers().get(slot)), timeout, step=0.01)
    return (pid, time.monotonic()) if pid else (None, None)


def check_stream(t, stream, t0, t1, what):
    """Every request started in [t0, t1) succeeded; returns those requests."""
    reqs = stream.started_between(t0, t1)
    bad = [r for r in reqs if not r["ok"]]
    t.ok(reqs and not bad, "%s: %d/%d requests succeeded" % (what, len(reqs) - len(bad),
                                                             len(reqs)))
    for r in bad[:5]:
        t.diag("  request at +%.3f s: %s" % (r["start"] - t0, r["err"]))
    return reqs


def kill_under_stream(t, sl, cert, port):
    pids = sl.wait_workers(2)
    t.ok(len(pids) == 2, "two workers run (%s)" % pids)
    victim = pids[0]
    slot = sl.slot_of(victim)
    stream = tc.Stream(port, cert, INTERVAL, timeout=st.scaled(10)).start()
    time.sleep(1)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    t_dead = wait_dead(victim, st.scaled(2))
    t.ok(t_dead is not None, "worker %d (pid %d) died of kill -9" % (slot, victim))
    t_dead = t_dead or time.monotonic()
    new, t_ready = wait_replacement(sl, slot, victim, st.scaled(5))
    t.ok(new and t_ready - t_kill <= st.scaled(1),
         "a replacement for slot %s (pid %s) was ready %.3f s after the kill (bound %.1f s)"
         % (slot, new, (t_ready or time.monotonic()) - t_kill, st.scaled(1)))
    t.ok(new in sl.wait_workers(2, exclude=[victim]),
         "the replacement is a child of the master and the dead pid is gone")
    t.ok(sl.wait_log(r"warning: worker %s \(pid %d, generation \d+\) killed by signal 9 "
                     r"\(Killed\)" % (slot, victim)),
         "the log names the dead pid %d and signal 9" % victim)
    t.ok(sl.wait_log(r"warning: worker %s: restarting now" % slot),
         "the log says the slot restarts now (first death, no backoff)")
    time.sleep(1)
    stream.stop()
    t_gap_end = t_ready or t_dead
    t.diag("%d requests started while slot %s had no worker (%.3f s)"
           % (len(stream.started_between(t_dead, t_gap_end)), slot, t_gap_end - t_dead))
    check_stream(t, stream, t_dead, None, "kill -9: requests started after the worker died")
    early = [r for r in stream.started_between(0, t_dead) if not r["ok"]]
    t.ok(not [r for r in stream.results if r["err"] == "refused"],
         "kill -9: no request of the %d in the stream was refused" % len(stream.results))
    if early:
        t.diag("%d requests started before the death failed (in flight in the killed "
               "worker): %s" % (len(early), sorted({r["err"] for r in early})))


def kill_with_master_paused(t, sl, cert, port):
    pids = sl.wait_workers(2)
    victim, other = pids[0], pids[1]
    slot = sl.slot_of(victim)
    stream = tc.Stream(port, cert, INTERVAL, timeout=st.scaled(10)).start()
    time.sleep(0.5)
    os.kill(sl.pid, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        t_dead = wait_dead(victim, st.scaled(2)) or time.monotonic()
        time.sleep(0.5)
    finally:
        t_cont = time.monotonic()
        os.kill(sl.pid, signal.SIGCONT)
    new, t_ready = wait_replacement(sl, slot, victim, st.scaled(5))
    t.ok(new and t_ready - t_cont <= st.scaled(1),
         "master paused 0.5 s: the replacement for slot %s was ready %.3f s after it resumed"
         % (slot, (t_ready or time.monotonic()) - t_cont))
    time.sleep(1)
    stream.stop()
    gap = check_stream(t, stream, t_dead, t_cont,
                       "master paused: requests started while slot %s had no worker" % slot)
    waited = [r for r in gap if r["ok"] and r["end"] > t_cont]
    t.ok(waited, "%d of them waited in the dead slot's kept backlog and were served after "
         "the master resumed" % len(waited))
    check_stream(t, stream, t_cont, None, "master paused: requests started after it resumed")
    t.ok(other in sl.worker_pids(),
         "the other worker (pid %d) survived the master's 0.5 s pause" % other)


def stuck_worker(t, sl, cert, port):
    pids = sl.wait_workers(2)
    victim = pids[0]
    slot = sl.slot_of(victim)
    t_stop = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    queued = []

    def one(i):
        queued.append(tc.request(port, cert, "/queued%d" % i, timeout=st.scaled(10)))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(10)]
    for th in threads:
        th.start()
    rx = (r"error: worker %s \(pid %d, generation \d+\) stuck: no heartbeat for ([\d.]+)s, "
          r"killing it" % (slot, victim))
    hits = sl.wait_log(rx, timeout=st.scaled(WATCHDOG + 4))
    t_detect = time.monotonic()
    t.ok(hits, "SIGSTOP of worker %s (pid %d): the log says it is stuck" % (slot, victim))
    el = t_detect - t_stop
    t.ok(hits and WATCHDOG - HEARTBEAT - 0.05 <= el <= st.scaled(WATCHDOG + 1.5),
         "detected %.2f s after SIGSTOP: after watchdog-timeout %.1f s (bounds %.2f..%.1f s)"
         % (el, WATCHDOG, WATCHDOG - HEARTBEAT - 0.05, st.scaled(WATCHDOG + 1.5)))
    if hits:
        silence = float(re.search(rx, hits[0]).group(1))
        t.ok(silence >= WATCHDOG, "the log reports %.1f s of silence (>= %.1f s)"
             % (silence, WATCHDOG))
    t.ok(not st.wait_pids_gone([victim], st.scaled(2)), "the stopped worker was killed")
    new, _ = wait_replacement(sl, slot, victim, st.scaled(5))
    t.ok(new and new in sl.wait_workers(2, exclude=[victim]),
         "a replacement for slot %s runs (pid %s)" % (slot, new))
    for th in threads:
        th.join(st.scaled(10) + 5)
    good = sum(1 for ok, body in queued if ok and body == b"hello from app\n")
    t.ok(good == 10, "%d/10 requests made while the worker was stopped were served" % good)
    for ok, what in queued:
        if not ok:
            t.diag("  failed: %s" % what)
    after = [tc.request(port, cert, "/after%d" % i, timeout=st.scaled(3)) for i in range(20)]
    good = sum(1 for ok, body in after if ok and body == b"hello from app\n")
    t.ok(good == 20, "%d/20 requests after the replacement succeeded" % good)
    return new


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          heartbeat_interval=HEARTBEAT, watchdog_timeout=WATCHDOG)
    sl = t.start_sluice(conf)
    kill_under_stream(t, sl, cert, port)
    kill_with_master_paused(t, sl, cert, port)
    replacement = stuck_worker(t, sl, cert, port)
    sl.stop_and_check(allow_errors=[r"error: worker \d+ \(pid \d+, generation \d+\) stuck: "])
    per = sl.worker_stats()
    t.ok(replacement in per and per[replacement].get("accepted", 0) > 0,
         "the stuck worker's replacement accepted connections (%s)"
         % (per.get(replacement) or {}).get("accepted"))


st.Test("worker-restart").main(main)
