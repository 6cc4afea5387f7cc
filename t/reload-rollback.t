#!/usr/bin/env python3
# A reload whose new generation never serves (issue 3, second review): the generation
# that keeps serving is restarted when one of its workers dies meanwhile, so the master
# never gives up a working service; and after the rollback the next generation gets a
# slot range of its own in the shared segment, so the permit pool stays exact when the
# rolled-back-to generation finally exits.
import os
import signal
import socket
import time

import servicetest as sv
import sluicetest as st
import tlsclient as tc


def old_worker_dies_during_failed_reload(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="dies.conf",
                          workers=1, watchdog_timeout=4)
    sl = t.start_sluice(conf, name="dies", env={"SLUICE_FAULT": "start-exit:0:2"})
    w1 = sl.ready_workers().get(0)
    os.kill(sl.pid, signal.SIGHUP)
    sl.wait_log(r"SIGHUP: reloading", timeout=st.scaled(5))
    time.sleep(0.3)
    os.kill(w1, signal.SIGKILL)
    t.ok(sl.wait_log(r"worker 0 \(pid %d, generation 1\) killed by signal 9" % w1,
                     timeout=st.scaled(3)), "generation 1's only worker is killed mid-reload")
    ok, body = tc.request(port, cert, "/after-kill", timeout=st.scaled(3))
    t.ok(ok, "generation 1's slot is restarted and serves while generation 2 fails (%s)"
         % (body,))
    t.ok(sl.wait_log(r"reload: generation 2 does not serve within .*generation 1 keeps serving",
                     timeout=st.scaled(15)), "generation 2 is rolled back")
    time.sleep(0.5)
    t.ok(sl.alive(), "the master keeps running (status %s)" % sl.proc.poll())
    ok, body = tc.request(port, cert, "/after-rollback", timeout=st.scaled(3))
    t.ok(ok, "generation 1 serves after the rollback")
    sl.stop_and_check(allow_errors=[r"does not serve within"], what="sluice (dies)")


def permits_exact_after_rollback(t, cert, key, be):
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="parity.conf",
                          workers=1, watchdog_timeout=4, handshake_permits=2,
                          handshake_timeout=60, drain_timeout=60)
    sl = t.start_sluice(conf, name="parity", env={"SLUICE_FAULT": "start-exit:0:2"})
    os.kill(sl.pid, signal.SIGHUP)
    t.ok(sl.wait_log(r"generation 1 keeps serving", timeout=st.scaled(20)),
         "generation 2 is rolled back")
    old = tc.stalled_hellos(port, 2, timeout=st.scaled(10))
    tc.poll_hellos(old, time.monotonic() + st.scaled(3),
                   stop=lambda cs: all(c.got_hello for c in cs))
    t.ok(all(c.got_hello for c in old), "generation 1 holds both permits")
    silent = socket.create_connection(("127.0.0.1", port))  # keeps generation 1 draining
    time.sleep(0.5)
    gen, _ = sv.reload(sl)
    t.ok(gen == 3, "HUP: generation 3 serves (%s)" % gen)
    for c in old:
        c.close()
    time.sleep(1.0)
    new = tc.stalled_hellos(port, 2, timeout=st.scaled(10))
    tc.poll_hellos(new, time.monotonic() + st.scaled(3),
                   stop=lambda cs: all(c.got_hello for c in cs))
    t.ok(all(c.got_hello for c in new), "generation 3 takes both permits")
    silent.close()
    t.ok(sl.wait_log(r"generation 1 has exited", timeout=st.scaled(10)),
         "generation 1 exits once its last connection closes")
    more = tc.stalled_hellos(port, 3, timeout=st.scaled(10))
    tc.poll_hellos(more, time.monotonic() + st.scaled(3))
    n = sum(c.got_hello for c in new) + sum(c.got_hello for c in more)
    t.ok(n == 2, "handshake-permits = 2: %d handshakes hold a permit at once "
         "(generation 1's exit freed none of generation 3's)" % n)
    for c in new + more:
        c.close()
    sl.stop_and_check(allow_errors=[r"does not serve within"], what="sluice (parity)")


def main(t):
    has_fault, why = st.sluice_has_fault_injection()
    if not has_fault:
        t.skip_all(why)
    sv.kill_strays_at_exit(t)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    old_worker_dies_during_failed_reload(t, cert, key, be)
    permits_exact_after_rollback(t, cert, key, be)


st.Test("reload-rollback").main(main)
