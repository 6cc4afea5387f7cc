#!/usr/bin/env python3
# Crash backoff (issue 3, point 4), fault injection SLUICE_FAULT=start-exit:1 (every
# worker started in slot 1 exits with status 3 before it is ready), workers = 2:
# - over 5 s slot 1 is restarted a bounded number of times, with growing gaps between
#   its deaths (log timestamps), not in a tight loop; each death names status 3;
# - meanwhile every request of a steady stream (one every 50 ms) is served within 1 s:
#   the live worker adopts slot 1's listening socket while slot 1 is down.
import re
import time
from datetime import datetime

import sluicetest as st
import tlsclient as tc

WINDOW = 5.0
INTERVAL = 0.05
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def stamp(line):
    return datetime.strptime(TS.match(line).group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def main(t):
    ok, why = st.sluice_has_fault_injection()
    if not ok:
        t.skip_all(why)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2)
    # slot 1 never gets ready, so the master's "ready" line may never come: wait for
    # worker 0 and the listening port instead
    sl = t.start_sluice(conf, env={"SLUICE_FAULT": "start-exit:1"}, wait=False)
    w0 = st.wait_until(lambda: sl.ready_workers().get(0), st.scaled(10))
    t.ok(w0 and port in {p for _, p in st.listening_tcp_ports()},
         "worker 0 is ready (pid %s) and the port listens" % w0)
    if not w0:
        return
    t_start = time.monotonic()
    stream = tc.Stream(port, cert, INTERVAL, timeout=st.scaled(10)).start()
    time.sleep(WINDOW)
    stream.stop()
    t.ok(sl.alive(), "sluice is still running after %.0f s of slot 1 failing" % WINDOW)

    death_rx = r"warning: worker 1 \(pid (\d+), generation \d+\) exited with status 3$"
    deaths = [ln for ln in sl.run_log_lines() if re.search(death_rx, ln)]
    t.ok(deaths, "the log names the exit status 3 of slot 1's workers (%d deaths)"
         % len(deaths))
    if not deaths:
        t.diag_log(sl.log(), 30)
        return
    times = [stamp(ln) for ln in deaths]
    in_window = [x for x in times if x - times[0] <= WINDOW]
    t.diag("slot 1 died %d times in the first %.0f s; gaps: %s" % (
        len(in_window), WINDOW,
        " ".join("%.3f" % (b - a) for a, b in zip(in_window, in_window[1:]))))
    t.ok(3 <= len(in_window) <= 15,
         "slot 1 was restarted a bounded number of times in %.0f s: %d deaths (3..15)"
         % (WINDOW, len(in_window)))
    gaps = [b - a for a, b in zip(in_window, in_window[1:])]
    shrinking = [(i, a, b) for i, (a, b) in enumerate(zip(gaps, gaps[1:]))
                 if b < 0.8 * a - 0.05]
    t.ok(len(gaps) >= 2 and not shrinking and gaps[-1] >= 2 * max(gaps[0], 0.05),
         "the gaps between deaths grow (none shorter than the one before; the last, "
         "%.3f s, at least twice the first, %.3f s)" % (gaps[-1] if gaps else 0,
                                                        gaps[0] if gaps else 0))
    delays = [float(m.group(1)) for m in
              (re.search(r"warning: worker 1: restarting in ([\d.]+)s \(died at start-up "
                         r"\d+ times in a row\)", ln) for ln in sl.run_log_lines()) if m]
    t.ok(len(delays) >= 2 and delays == sorted(delays) and delays[-1] > delays[0],
         "the announced restart delays grow: %s" % delays)
    t.ok(sl.wait_log(r"info: worker 0 \(pid %d\) adopts the listening sockets of slot 1 "
                     r"while 1 is down" % w0, timeout=0),
         "the log says worker 0 adopts slot 1's listening sockets")

    res = stream.results
    late = [r for r in res if not r["ok"] or r["end"] - r["start"] > st.scaled(1)]
    t.ok(len(res) >= WINDOW / INTERVAL / 2 and not late,
         "every one of %d requests in %.0f s was served within %.1f s (%d were not)"
         % (len(res), WINDOW, st.scaled(1), len(late)))
    for r in late[:5]:
        t.diag("  request at +%.3f s: %s after %.3f s" % (
            r["start"] - t_start, r["err"] or "ok", (r["end"] or time.monotonic())
            - r["start"]))
    slowest = max((r["end"] - r["start"] for r in res if r["end"]), default=0)
    t.diag("slowest request: %.3f s" % slowest)
    t.ok(w0 in sl.worker_pids() and sl.ready_workers() == {0: w0},
         "worker 0 (pid %d) still runs and is the only worker that ever got ready (%s)"
         % (w0, sl.ready_workers()))
    sl.stop_and_check()
    per = sl.worker_stats()
    t.ok(per.get(w0, {}).get("accepted") == len(res),
         "worker 0 accepted all %d connections (%s)" % (len(res), per.get(w0, {}).get(
             "accepted")))


st.Test("worker-backoff").main(main)
