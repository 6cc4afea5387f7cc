#!/usr/bin/env python3
# Handshake permits seen from outside (issue 3, point 5): handshake-permits = 8 shared by
# workers = 2, handshake-timeout 30 s (a client that never sends its Finished keeps its
# permit that long). A "stalled" client sends a real ClientHello, reads, never answers.
# A. 50 stalled clients: exactly 8 get a ServerHello, the other 42 get nothing (parked,
#    not refused); once all 50 close, a healthy client is served again.
# B. 500 silent connects (no ClientHello) hold no permit: a healthy client is served at
#    once beside them, and 8 stalled clients still all get their ServerHello.
# C. kill -9 of the worker holding the most of those 8 permits (found from /proc: which
#    worker holds the server end of each connection), k of them: once it is replaced,
#    9 new stalled clients get exactly k ServerHellos (the dead worker's permits are back,
#    no more); when the surviving 8-k close, 8 of the 9 have one and 1 is still parked.
import os
import signal
import time

import sluicetest as st
import tlsclient as tc

PERMITS = 8


def settle():
    """How long a parked client must keep getting nothing to count as parked."""
    return st.scaled(1.5)


def hellos(clients):
    return sum(1 for c in clients if c.got_hello)


def wait_hellos(clients, want):
    """Poll until want clients have a ServerHello (or scaled(10)), then settle() more."""
    tc.poll_hellos(clients, time.monotonic() + st.scaled(10),
                   stop=lambda cs: hellos(cs) >= want)
    tc.poll_hellos(clients, time.monotonic() + settle())
    return hellos(clients)


def healthy(t, port, cert, what):
    t0 = time.monotonic()
    ok, body = tc.request(port, cert, "/healthy", timeout=st.scaled(10))
    el = time.monotonic() - t0
    t.ok(ok and body == b"hello from app\n" and el < st.scaled(2),
         "%s: a healthy client is served in %.3f s (bound %.1f s)" % (what, el, st.scaled(2)))
    if not ok:
        t.diag("  request: %s" % body)


def close_all(clients):
    for c in clients:
        c.close()


def phase_a(t, port, cert):
    clients = tc.stalled_hellos(port, 50)
    n = wait_hellos(clients, PERMITS)
    t.diag("50 stalled clients: %s" % tc.hello_summary(clients))
    t.ok(1 <= n <= PERMITS, "of 50 stalled clients at most %d get a ServerHello (%d)"
         % (PERMITS, n))
    t.ok(n == PERMITS, "all %d permits are used: %d ServerHellos" % (PERMITS, n))
    parked = [c for c in clients if c.reply is None and not c.closed]
    t.ok(len(parked) == 50 - n, "the other %d clients got nothing and are still open "
         "(parked, not refused)" % len(parked))
    close_all(clients)
    # the closes return the permits (the parked handshakes may resume and fail first)
    ok = st.wait_until(lambda: tc.request(port, cert, "/free", timeout=st.scaled(2))[0],
                       st.scaled(10))
    t.ok(ok, "once the 50 stalled clients close, a healthy client is served again")


def phase_b(t, port, cert):
    silent = tc.open_many(port, 500)
    time.sleep(0.5)  # let the workers accept them
    healthy(t, port, cert, "beside 500 silent connects")
    clients = tc.stalled_hellos(port, PERMITS)
    n = wait_hellos(clients, PERMITS)
    t.ok(n == PERMITS, "beside 500 silent connects %d/%d stalled clients get a ServerHello: "
         "silent connects hold no permit" % (n, PERMITS))
    close_all(silent)
    return clients


def phase_c(t, sl, port, cert, holders):
    pids = sl.wait_workers(2)
    owner = {c: st.server_socket_owner(c.sock, pids) for c in holders}
    per = {p: sum(1 for c in holders if owner[c] == p) for p in pids}
    t.diag("the %d permit holders per worker: %s" % (len(holders), per))
    t.ok(sum(per.values()) == len(holders),
         "each permit holder's server end is found in a worker (%s)" % per)
    victim = max(pids, key=lambda p: per[p])
    k = per[victim]
    slot = sl.slot_of(victim)
    os.kill(victim, signal.SIGKILL)
    new = st.wait_until(lambda: sl.ready_workers().get(slot) not in (None, victim),
                        st.scaled(5))
    t.ok(new and sl.wait_workers(2, exclude=[victim]),
         "kill -9 of worker %s (pid %d, holding %d permits): it was replaced" % (slot, victim, k))
    survivors = [c for c in holders if owner[c] != victim]
    dead = [c for c in holders if owner[c] == victim]
    tc.poll_hellos(dead, time.monotonic() + st.scaled(2), stop=lambda cs: all(c.closed for c in cs))
    t.ok(all(c.closed for c in dead), "the %d connections of the killed worker were closed"
         % len(dead))
    close_all(dead)
    fresh = tc.stalled_hellos(port, PERMITS + 1)
    n = wait_hellos(fresh, k)
    t.diag("9 new stalled clients while %d survivors hold permits: %s"
           % (len(survivors), tc.hello_summary(fresh)))
    t.ok(n == k, "the killed worker's %d permits are usable again, and no more: %d of 9 new "
         "stalled clients got a ServerHello" % (k, n))
    close_all(survivors)
    n = wait_hellos(fresh, PERMITS)
    t.ok(n == PERMITS, "once the %d survivors close, %d of the 9 new clients have a "
         "ServerHello (want %d: all permits usable)" % (len(survivors), n, PERMITS))
    parked = [c for c in fresh if c.reply is None and not c.closed]
    t.ok(len(parked) == 1, "and %d is parked (want 1: never more than %d at once)"
         % (len(parked), PERMITS))
    close_all(fresh)


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          handshake_permits=PERMITS, handshake_timeout=30)
    sl = t.start_sluice(conf)
    phase_a(t, port, cert)
    holders = phase_b(t, port, cert)
    phase_c(t, sl, port, cert, holders)
    ok = st.wait_until(lambda: tc.request(port, cert, "/end", timeout=st.scaled(2))[0],
                       st.scaled(10))
    t.ok(ok, "a healthy client is served at the end")
    sl.stop_and_check()


st.Test("permits").main(main)
