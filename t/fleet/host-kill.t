#!/usr/bin/env python3
# A fleet behind haproxy (issue 8, fifth check): kill -9 of the whole sluice on one host
# (master and workers at once) is routed around by the balancer's health check within its
# interval. Four client threads send requests through the balancer back to back while
# host A's sluice is killed:
# - haproxy marks A DOWN within the health check's interval times its fall count (plus
#   one interval: the kill falls anywhere between two checks);
# - requests fail only within that bound after the kill (those A was serving; the ones
#   A then refuses are retried on B), none that starts after A is DOWN fails, and those
#   are all served by B;
# - A started again is UP and serves again; its killed run's log holds no error.
# How it fails: without health checks haproxy never marks A down (with a longer interval
# or fall count: too late), and without retries and redispatch as well, the connections
# A refuses keep failing past the bound.
import os
import signal
import time

import fleet as fl
import sluicetest as st

# What the health check allows: FALL failed checks, INTER apart, the first up to one
# interval after the kill.
DOWN_BOUND = fl.CHECK_INTER * (fl.FALL + 1)


def main(t):
    f = fl.Fleet(t)
    loop = fl.RequestLoop(f, threads=4).start()
    t.cleanups.append(loop.stopping.set)
    t.ok(loop.wait_more(40, st.scaled(20)), "the request loop runs (%d requests)" % loop.count())

    sl = f.sluices["a"]
    pids = f.pids("a")
    t_kill = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    down = f.wait_status({"a": "DOWN"}, st.scaled(10))
    t_down = time.monotonic()
    t.ok(down and t_down - t_kill <= st.scaled(DOWN_BOUND) + 0.2,
         "kill -9 of host a's master and workers %s: haproxy marks it DOWN %.2f s later "
         "(bound: %.1f s, %d checks %g s apart)" % (pids, t_down - t_kill,
                                                    st.scaled(DOWN_BOUND) + 0.2,
                                                    fl.FALL + 1, fl.CHECK_INTER))
    t.ok(not st.wait_pids_gone(pids, st.scaled(5)), "every process of host a's sluice is gone")
    t.ok(loop.wait_more(60, st.scaled(20)), "the request loop goes on (%d requests)"
         % loop.count())
    loop.stop()

    recs = loop.records
    fails = [r for r in recs if not r[2]]
    bound = st.scaled(DOWN_BOUND) + 0.5
    t.ok(all(t_kill <= r[1] <= t_kill + bound for r in fails),
         "%d requests, %d failed, all ending within %.1f s of the kill (%s)"
         % (len(recs), len(fails), bound,
            ", ".join("%+.2f s" % (r[1] - t_kill) for r in fails[:10])))
    late = [r for r in fails if r[0] > t_down]
    after = [r for r in recs if r[0] > t_down]
    t.ok(not late, "no request that started after host a was DOWN failed (%d)" % len(late))
    for r in fails[:5]:
        t.diag("  started %+.2f s, ended %+.2f s after the kill: %s"
               % (r[0] - t_kill, r[1] - t_kill, r[4]))
    t.ok(len(after) >= 40 and all(r[2] and r[3] == "b" for r in after),
         "after host a is DOWN, all %d requests are served by host b" % len(after))
    t.diag("failed requests: %d in flight at the kill, %d started after it"
           % (sum(1 for r in fails if r[0] < t_kill), sum(1 for r in fails if r[0] >= t_kill)))
    sl.proc.wait(st.scaled(5))
    sl.check_log(what="host a: killed sluice")

    f.start("a")
    t.ok(f.wait_status({"a": "UP"}, st.scaled(10)), "host a started again: haproxy sees it UP")
    hosts = [f.get()["host"] for _ in range(6)]
    t.ok(hosts.count("a") >= 2 and hosts.count("b") >= 2,
         "and both hosts serve again (%s)" % hosts)
    for h in fl.HOSTS:
        f.stop(h)


st.Test("fleet-host-kill").main(main)
