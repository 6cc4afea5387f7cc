#!/usr/bin/env python3
# Reload on SIGHUP (issue 3, point 6), under a continuous request loop (Python ssl and
# curl clients back to back): no request fails across four SIGHUPs; a connection opened
# before a reload keeps working on its old worker; each reload starts a new generation of
# workers under the same master pid and the old generation exits once idle; a certificate
# replaced on disk is served to new connections after SIGHUP (and not before); a broken
# config on SIGHUP is logged with file:line while the running generation keeps serving.
import os
import re
import signal
import time

import servicetest as sv
import sluicetest as st
import tlsclient as tc

WORKERS = 2
RELOAD_FAILED = r"reload failed, generation \d+ keeps serving: "


def gen_pids(gens, g):
    return sorted(gens.get(g, {}).values())


def check_generation(t, sl, g, pids, old_pids, what):
    """After a reload: WORKERS new workers, children of the same master, the old ones
    gone soon (they have no connection left)."""
    t.ok(g is not None and len(pids) == WORKERS and not set(pids) & set(old_pids),
         "%s: generation %s ready with %d new workers %s (old %s)"
         % (what, g, len(pids), pids, old_pids))
    t.ok(sl.alive() and pids and all(sv.ppid(p) == sl.pid for p in pids),
         "%s: the master (pid %d) is unchanged and is the new workers' parent" % (what, sl.pid))
    left = st.wait_pids_gone(old_pids, st.scaled(5))
    t.ok(old_pids and not left, "%s: the old generation's workers %s exit once idle (left: %s)"
         % (what, old_pids, left))
    kids = sl.worker_pids()
    t.ok(len(pids) == WORKERS and sorted(kids) == sorted(pids),
         "%s: the master's children are exactly the new generation (%s)" % (what, kids))


def peer_certs(port, cafile, n):
    """The DER certificates n new connections are served."""
    return [sv.https_get(port, cafile, timeout=st.scaled(10))["cert"] for _ in range(n)]


def main(t):
    cert1, key1 = t.make_cert("gen1", cn="sluice reload one")
    cert2, key2 = t.make_cert("gen2", cn="sluice reload two")
    site_cert, site_key = t.path("site.pem"), t.path("site.key")
    sv.replace_file(cert1, site_cert)
    sv.replace_file(key1, site_key)
    cafile = sv.ca_bundle(t, "both.pem", cert1, cert2)
    der1, der2 = sv.cert_der(cert1), sv.cert_der(cert2)
    be = t.start_backend("app", "unix")
    port = st.free_port()
    # drain-timeout is long, so an old generation that exits quickly shows it exits when
    # idle rather than at the drain deadline
    conf = t.write_config([t.frontend(port, be.address, site_cert, site_key)],
                          workers=WORKERS, drain_timeout=30)
    sl = t.start_sluice(conf)

    gens = sv.generations(sl.log_lines())
    g1 = sv.current_generation(sl.log_lines())
    pids1 = gen_pids(gens, g1)
    t.ok(g1 is not None and len(pids1) == WORKERS and sorted(sl.worker_pids()) == pids1,
         "start: generation %s with %d workers %s, the master's children %s"
         % (g1, len(pids1), pids1, sl.worker_pids()))

    # a connection that lives across the first reload (ECHO round trips)
    echo = tc.connect(port, cafile, timeout=st.scaled(10))
    echo.sendall(b"ECHO\n")

    def echo_round(tag):
        msg = b"round trip %s\n" % tag.encode()
        try:
            echo.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = echo.recv(len(msg) - len(got))
                if not d:
                    break
                got += d
            return got == msg
        except OSError as e:
            t.diag("echo connection: %s" % e)
            return False

    t.ok(echo_round("before"), "a long-lived connection echoes before the reload")

    loop = sv.RequestLoop(t, port, cafile, py_threads=2, curl_threads=1).start()
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "the request loop runs (%d requests)"
         % loop.count())

    # --- reload 1: same config
    time.sleep(0.5)
    g2, slots2 = sv.reload(sl)
    pids2 = sorted(slots2.values())
    t.ok(sl.wait_log(r"info: SIGHUP: reloading %s$" % re.escape(conf), st.scaled(2)),
         "reload 1: the master logs \"SIGHUP: reloading %s\"" % conf)
    t.ok(echo_round("after"), "reload 1: the connection opened before it still echoes "
         "(served by the retiring generation)")
    echo.close()
    check_generation(t, sl, g2, pids2, pids1, "reload 1")
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "reload 1: requests go on (%d so far)"
         % loop.count())

    # --- reload 2: the certificate and key replaced on disk
    sv.replace_file(cert2, site_cert)
    sv.replace_file(key2, site_key)
    seen = peer_certs(port, cafile, 4)
    t.ok(all(c == der1 for c in seen), "certificate replaced on disk: before SIGHUP new "
         "connections still get the old one (%d of 4)" % sum(c == der1 for c in seen))
    time.sleep(0.5)
    g3, slots3 = sv.reload(sl)
    pids3 = sorted(slots3.values())
    check_generation(t, sl, g3, pids3, pids2, "reload 2 (new certificate)")
    seen = peer_certs(port, cafile, 6)
    t.ok(all(c == der2 for c in seen), "reload 2: new connections get the new certificate "
         "(%d of 6)" % sum(c == der2 for c in seen))
    rc, out, err, _ = st.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                              "-servername", "localhost", "-showcerts", "-CAfile", cafile,
                              "-verify_return_error"], input=b"", timeout=st.scaled(10))
    text = out.decode(errors="replace")
    t.ok(rc == 0 and "CN = sluice reload two" in text and "CN = sluice reload one" not in text,
         "reload 2: openssl s_client -showcerts shows CN \"sluice reload two\"")
    if rc != 0:
        t.diag("s_client rc=%s: %s" % (rc, err.decode(errors="replace")[-300:]))
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "reload 2: requests go on (%d so far)"
         % loop.count())

    # --- reload 3: a broken config
    line, restore = sv.break_config(conf)
    n_workers_lines = len(sv.generations(sl.log_lines()))
    time.sleep(0.5)
    os.kill(sl.pid, signal.SIGHUP)
    want = r"error: reload failed, generation %d keeps serving: %s:%d: .*reload-test-typo" % (
        g3 if g3 is not None else -1, re.escape(conf), line)
    hit = sl.wait_log(want, st.scaled(10))
    t.ok(hit, "broken config: the master logs \"reload failed, generation %s keeps serving: "
         "%s:%d: ...\" naming the key" % (g3, conf, line))
    if not hit:
        t.diag("lines about the reload: %s" % [ln for ln in sl.log_lines()
                                              if "reload" in ln][-3:])
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "broken config: requests go on (%d so "
         "far)" % loop.count())
    time.sleep(0.5)
    t.ok(sl.alive() and len(pids3) == WORKERS and sorted(sl.worker_pids()) == pids3
         and len(sv.generations(sl.log_lines())) == n_workers_lines,
         "broken config: the same workers keep serving, no new generation (%s)"
         % sl.worker_pids())
    seen = peer_certs(port, cafile, 2)
    t.ok(all(c == der2 for c in seen), "broken config: the running certificate is still "
         "served")
    restore()

    # --- reload 4: the config fixed again reloads
    time.sleep(0.5)
    g4, slots4 = sv.reload(sl)
    pids4 = sorted(slots4.values())
    check_generation(t, sl, g4, pids4, pids3, "reload 4 (config fixed)")
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "reload 4: requests go on (%d so far)"
         % loop.count())

    loop.stop()
    fails = loop.failures()
    t.ok(not fails and loop.count() >= 40,
         "%d requests across four SIGHUPs, %d failed" % (loop.count(), len(fails)))
    for f in fails[:10]:
        t.diag("  failed %s request at +%.2f s: %s" % (f[3], f[1] - loop.records[0][0], f[4]))
    t.diag("longest time without a completed request: %.2f s" % loop.max_gap())
    gens = [g for g in (g1, g2, g3, g4)]
    t.ok(None not in gens and gens == list(range(g1, g1 + 4)),
         "generations count up by one per successful reload (%s)" % gens)
    sl.stop_and_check(allow_errors=[RELOAD_FAILED])


st.Test("reload").main(main)
