#!/usr/bin/env python3
# kill -9 of the master (issue 3, point 11), workers = 2, drain-timeout 15 s, during a
# slow upload through sluice (8 MB at about 1 MB/s):
# - the orphaned workers stop accepting: new connects are refused or never answered
#   (no ServerHello); the idle worker exits at once;
# - the running transfer completes with equal sha256 on both ends, and the busy worker
#   exits when it is done, within drain-timeout of the master's death;
# - a new master started on the same config while the old worker still drains serves
#   every request (none lands in a queue of the orphaned generation), its workers are its
#   children, and the exit stats show the orphans accepted nothing after the death
#   while the new generation accepted every later request;
# - the old generation's log holds no error line and no sanitizer report.
import hashlib
import os
import signal
import socket
import threading
import time

import sluicetest as st
import tlsclient as tc

DRAIN = 15
UP = 8 << 20
RATE = 1 << 20  # bytes per second
CHUNK = 64 << 10


def slow_upload(port, cert, res):
    """SHA UP 0 through sluice, paced at RATE; fills res (ok, err, end)."""
    try:
        s = tc.connect(port, cert, timeout=st.scaled(30))
        res["sock"] = s
        s.sendall(b"SHA %d 0\n" % UP)
        h = hashlib.sha256()
        t0 = time.monotonic()
        sent = 0
        for chunk in st.random_bytes_chunks(UP, CHUNK):
            s.sendall(chunk)
            h.update(chunk)
            sent += len(chunk)
            res["sent"] = sent
            delay = t0 + sent / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        data, how = tc.read_to_close(s, st.scaled(30))
        s.close()
        w = data.split()
        res["ok"] = (how == "close_notify" and len(w) == 5 and w[0] == b"RESULT"
                     and int(w[1]) == UP and w[2].decode() == h.hexdigest())
        res["err"] = None if res["ok"] else "%s after %r" % (how, data[:120])
    except Exception as e:
        res["ok"], res["err"] = False, "%s: %s" % (type(e).__name__, e)
    res["end"] = time.monotonic()


def probes(port, n):
    """n new connections at once, each sending a ClientHello; after 1 s each is
    "refused", "server_hello" (someone did TLS work for it), "nothing" (no reply),
    "eof", "reset", or another reply."""
    out, clients = [], []
    for _ in range(n):
        try:
            clients.append(tc.StalledHello(port, timeout=2))
        except ConnectionRefusedError:
            out.append("refused")
        except (socket.timeout, TimeoutError):
            out.append("connect timeout")
        except ConnectionResetError:
            out.append("reset")
    tc.poll_hellos(clients, time.monotonic() + 1,
                   stop=lambda cs: all(c.reply or c.closed for c in cs))
    for c in clients:
        c.close()
        out.append(c.reply or c.closed or "nothing")
    return out


def requests(t, port, cert, n, what):
    res = []
    for i in range(n):
        t0 = time.monotonic()
        ok, body = tc.request(port, cert, "/r%d" % i, timeout=st.scaled(5))
        res.append((ok and body == b"hello from app\n", time.monotonic() - t0, body))
    good = sum(1 for ok, el, _ in res if ok and el < st.scaled(2))
    t.ok(good == n, "%s: %d/%d requests served, each within %.1f s" % (what, good, n,
                                                                       st.scaled(2)))
    for i, (ok, el, body) in enumerate(res):
        if not ok or el >= st.scaled(2):
            t.diag("  request %d: %s after %.3f s" % (i, "ok" if ok else body, el))
    return n


def start_new_master(t, conf, name):
    try:
        return t.start_sluice(conf, name=name)
    except RuntimeError:
        sl = t.sluices[-1]
        sl.checked = True
        t.diag("the new master's log:")
        t.diag_log(sl.log(), 10)
        return None


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          drain_timeout=DRAIN)
    sl = t.start_sluice(conf)
    old = sl.wait_workers(2)
    t.ok(len(old) == 2, "two workers run (%s)" % old)
    old_accepted = requests(t, port, cert, 1, "before the kill")

    res = {"ok": None}
    th = threading.Thread(target=slow_upload, args=(port, cert, res), daemon=True)
    th.start()
    old_accepted += 1
    st.wait_until(lambda: res.get("sent", 0) >= RATE // 2, st.scaled(5))
    busy = st.server_socket_owner(res["sock"], old) if "sock" in res else None
    idle = [p for p in old if p != busy]
    t.ok(busy in old, "the transfer runs through worker pid %s" % busy)

    t_kill = time.monotonic()
    os.kill(sl.pid, signal.SIGKILL)
    sl.proc.wait()
    gone = st.wait_pids_gone(idle, st.scaled(2))
    t.ok(not gone, "the idle worker %s exits within %.1f s of the master's death"
         % (idle, st.scaled(2)))
    time.sleep(max(0.0, t_kill + st.scaled(1) - time.monotonic()))
    got = probes(port, 6)
    t.diag("probes after the death: %s; %d sockets listen on the port"
           % (got, st.listen_socket_count(port)))
    t.ok(not [p for p in got if p not in ("refused", "nothing", "eof", "reset")],
         "the orphaned generation accepts no new connection: refused or never answered")
    t.ok(res["ok"] is None and busy is not None and st.pid_alive(busy),
         "the transfer is still running in worker %s (%d of %d bytes sent)"
         % (busy, res.get("sent", 0), UP))

    sl2 = start_new_master(t, conf, "sluice2")
    t.ok(sl2 is not None, "a new master starts on the same config while the old worker "
         "drains")
    new_accepted = 0
    if sl2 is not None:
        new = sl2.wait_workers(2)
        t.ok(len(new) == 2 and not set(new) & set(old),
             "the new master's two workers are its children (%s)" % new)
        t.ok(res["ok"] is None and st.pid_alive(busy),
             "the old worker is still draining the transfer (%d of %d bytes sent)"
             % (res.get("sent", 0), UP))
        new_accepted += requests(t, port, cert, 20, "while the old worker drains")

    th.join(DRAIN + st.scaled(10))
    t.ok(res["ok"], "the transfer completed with equal sha256 on both ends (%s)"
         % (res.get("err") or "ok"))
    end = res.get("end") or time.monotonic()
    t.ok(end - t_kill <= DRAIN, "it ended %.2f s after the master's death (drain-timeout %d s)"
         % (end - t_kill, DRAIN))
    gone = st.wait_pids_gone(old, max(st.scaled(2), t_kill + DRAIN + 1 - time.monotonic()))
    t_gone = time.monotonic()
    t.ok(not gone and t_gone - end <= st.scaled(2) and t_gone - t_kill <= DRAIN + 1,
         "every old worker has exited, %.2f s after the transfer ended (%s still alive)"
         % (t_gone - end, gone))

    if sl2 is None:
        sl2 = start_new_master(t, conf, "sluice3")
        t.ok(sl2 is not None, "a new master starts once the old workers are gone")
        if sl2 is None:
            sl.check_log(what="the old generation")
            return
    old_stats = sl.stats()
    sl.check_log(what="the old generation")
    t.ok(old_stats.get("accepted") == old_accepted,
         "the orphaned workers accepted nothing after the master died: %s accepted in all "
         "(want %d)" % (old_stats.get("accepted"), old_accepted))
    new = sl2.worker_pids()
    t.ok(len(new) == 2 and all(st.pid_state(p) for p in new) and
         not [p for p in old if st.pid_alive(p)],
         "the new master's workers %s are its children and no old worker is alive" % new)
    new_accepted += requests(t, port, cert, 10, "after the old generation is gone")
    sl2.stop_and_check(what="the new master")
    got = sl2.stats().get("accepted")
    t.ok(got == new_accepted, "the new generation accepted every request made after the "
         "death: %s (want %d)" % (got, new_accepted))


st.Test("master-death").main(main)
