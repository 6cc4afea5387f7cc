#!/usr/bin/env python3
# Workers (issue 3, point 1): with workers = 2 the master forks two workers, one per
# slot, and the port has one SO_REUSEPORT listening socket per slot; after 200
# connections both workers have served some (their exit stats) and the counts add up.
import concurrent.futures

import sluicetest as st
import tlsclient as tc

CONNS = 200


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2)
    sl = t.start_sluice(conf)

    pids = sl.wait_workers(2)
    t.ok(len(pids) == 2, "two workers run as children of the master (%s)" % pids)
    slots = sl.ready_workers()
    t.ok(sorted(slots) == [0, 1] and sorted(slots.values()) == pids,
         "each worker logged ready for its own slot (slot: pid %s)" % slots)
    t.ok(len(sl.wait_log(r"info: sluice \S+ ready \(2 workers, generation 1\)")) == 1,
         "the master logs ready once, naming 2 workers and generation 1")
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            migrate = int(f.read())
    except OSError:
        migrate = None
    warned = bool(sl.wait_log(r"warning: net\.ipv4\.tcp_migrate_req is 0", timeout=0.5))
    if migrate is None:
        t.skip("this kernel has no net.ipv4.tcp_migrate_req")
    else:
        t.ok(warned == (migrate == 0), "tcp_migrate_req is %d here: the start-up warning is %s"
             % (migrate, "logged" if warned else "not logged"))
    n = st.listen_socket_count(port)
    t.ok(n == 2, "port %d has %d listening sockets (want 2: one SO_REUSEPORT socket per slot)"
         % (port, n))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        res = list(pool.map(lambda i: tc.request(port, cert, "/w%d" % i, timeout=st.scaled(10)),
                            range(CONNS)))
    good = sum(1 for ok, body in res if ok and body == b"hello from app\n")
    t.ok(good == CONNS, "%d/%d requests through two workers succeeded" % (good, CONNS))
    for ok, what in res:
        if not ok:
            t.diag("  failed: %s" % what)
            break
    t.ok(sorted(sl.worker_pids()) == pids, "the same two workers still run")

    sl.stop_and_check()
    per = sl.worker_stats()
    accepted = {pid: d.get("accepted") for pid, d in per.items()}
    t.diag("accepted per worker: %s" % accepted)
    t.ok(sorted(per) == pids, "each worker logged its stats at exit (pids %s)" % sorted(per))
    t.ok(all((accepted.get(p) or 0) > 0 for p in pids),
         "both workers accepted some of the %d connections (%s)" % (CONNS, accepted))
    total = sl.stats()
    t.ok(total.get("accepted") == CONNS and total.get("handshakes_ok") == CONNS,
         "the workers' stats add up to %d accepted connections and handshakes (%s, %s)"
         % (CONNS, total.get("accepted"), total.get("handshakes_ok")))


st.Test("workers").main(main)
