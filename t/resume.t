#!/usr/bin/env python3
# Session resumption across workers (issue 3, point 10), workers = 2. One session ticket
# (TLS 1.3, then TLS 1.2) presented on 20 new connections: every one is resumed, whichever
# worker accepts it; the debug line "handshake done: ... resumed" of each connection
# (found by its client port) names the accepting worker's pid, showing both workers
# resumed tickets, including ones the other worker issued. openssl s_client -sess_out /
# -sess_in resumes too. A ticket issued before SIGHUP still resumes on the new
# generation's workers.
import re
import ssl

import servicetest as sv
import sluicetest as st
import tlsclient as tc

WORKERS = 2
N = 20
EXTRA = 40  # more connections if the kernel happened to hash all N to one worker


def handshake_line(sl, cport, timeout):
    """(pid, text) of the "handshake done" debug line of the connection from cport."""
    rx = re.compile(r"\bsluice\[(\d+)\]: debug: client=127\.0\.0\.1:%d frontend=\S+: "
                    r"handshake done: (.*)$" % cport)
    hits = sl.wait_log(rx.pattern, timeout)
    if not hits:
        return None, None
    m = rx.search(hits[-1])
    return int(m.group(1)), m.group(2)


def first_ticket(t, sl, port, cert, ctx, what):
    r = sv.https_get(port, cert, ctx=ctx, timeout=st.scaled(10))
    pid, line = handshake_line(sl, r["port"] or -1, st.scaled(5))
    t.ok(r["ok"] and r["session"] is not None and r["session"].has_ticket and pid,
         "%s: a first connection gets a session ticket (issued by worker pid %s; %s)"
         % (what, pid, r["error"] or "ok"))
    return r["session"], pid


def resume_many(t, sl, port, cert, ctx, session, issuer, workers, what):
    """N connections presenting session; then more, up to EXTRA, until both workers
    have accepted one. Checks that all were resumed, on both workers."""
    results = []
    bad = []
    while len(results) < N or (len({p for p, _ in results}) < WORKERS
                               and len(results) < N + EXTRA):
        r = sv.https_get(port, cert, ctx=ctx, session=session, timeout=st.scaled(10))
        pid, line = handshake_line(sl, r["port"] or -1, st.scaled(5))
        results.append((pid, line))
        if not (r["ok"] and r["reused"] and line and " resumed" in line):
            bad.append("port %s: ok=%s reused=%s worker=%s line=%r error=%s"
                       % (r["port"], r["ok"], r["reused"], pid, line, r["error"]))
    per = {}
    for pid, _ in results:
        per[pid] = per.get(pid, 0) + 1
    t.ok(not bad, "%s: %d/%d connections presenting the ticket are resumed (client and "
         "server agree)" % (what, len(results) - len(bad), len(results)))
    for b in bad[:5]:
        t.diag("  " + b)
    t.ok(set(per) == set(workers), "%s: both workers %s accepted some (per worker: %s)"
         % (what, sorted(workers), per))
    others = sum(n for p, n in per.items() if p != issuer)
    t.ok(others > 0, "%s: %d resumptions on the worker that did not issue the ticket (pid "
         "%s issued it)" % (what, others, issuer))


def s_client_resume(t, port, cert):
    sess = t.path("s_client.sess")
    base = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", cert, "-verify_return_error", "-ign_eof"]
    req = b"GET / HTTP/1.0\r\n\r\n"  # TLS 1.3 tickets arrive after the handshake: read
    renewed = t.path("s_client-renewed.sess")
    again = t.path("s_client-again.sess")
    rc1, out1, _, _ = st.run(base + ["-sess_out", sess], input=req, timeout=st.scaled(10))
    rc2, out2, _, _ = st.run(base + ["-sess_in", sess, "-sess_out", renewed], input=req,
                             timeout=st.scaled(10))
    o1, o2 = out1.decode(errors="replace"), out2.decode(errors="replace")
    t.ok(rc1 == 0 and rc2 == 0 and "hello from app" in o2 and re.search(r"^Reused, TLSv1\.3",
                                                                         o2, re.M)
         and re.search(r"^New, TLSv1\.3", o1, re.M),
         "openssl s_client -sess_out, then -sess_in: \"Reused, TLSv1.3\" (status %s, %s)"
         % (rc2, (re.findall(r"^(?:New|Reused), .*$", o2, re.M) or ["?"])[0]))
    # OpenSSL's client will not offer a TLS 1.3 ticket twice: the resumed connection must
    # have brought a new one, or the client's next connection is a full handshake.
    tickets = o2.count("Post-Handshake New Session Ticket arrived")
    rc3, out3, _, _ = st.run(base + ["-sess_in", renewed, "-sess_out", again], input=req,
                             timeout=st.scaled(10))
    o3 = out3.decode(errors="replace")
    t.ok(tickets > 0 and rc3 == 0 and "hello from app" in o3
         and re.search(r"^Reused, TLSv1\.3", o3, re.M),
         "a resumed TLS 1.3 connection gets %d new ticket(s), and the next connection resumes "
         "with them (%s)" % (tickets, (re.findall(r"^(?:New|Reused), .*$", o3, re.M) or ["?"])[0]))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=WORKERS,
                          log_level="debug", drain_timeout=5)
    sl = t.start_sluice(conf)
    workers = sl.wait_workers(WORKERS)
    t.ok(len(workers) == WORKERS, "%d workers run (%s)" % (WORKERS, workers))

    for version, name in ((ssl.TLSVersion.TLSv1_3, "TLS 1.3"),
                          (ssl.TLSVersion.TLSv1_2, "TLS 1.2")):
        ctx = tc.context(cert, version=version)
        session, issuer = first_ticket(t, sl, port, cert, ctx, name)
        resume_many(t, sl, port, cert, ctx, session, issuer, workers, name)

    s_client_resume(t, port, cert)

    # a ticket issued before SIGHUP, presented to the next generation
    ctx = tc.context(cert, version=ssl.TLSVersion.TLSv1_3)
    session, issuer = first_ticket(t, sl, port, cert, ctx, "before SIGHUP")
    g, slots = sv.reload(sl)
    new = sorted(slots.values())
    left = st.wait_pids_gone(workers, st.scaled(5))
    t.ok(g is not None and len(new) == WORKERS and not left and sl.worker_pids() == new,
         "SIGHUP: generation %s with workers %s replaced %s" % (g, new, workers))
    resume_many(t, sl, port, cert, ctx, session, issuer, new, "across SIGHUP (TLS 1.3)")
    sl.stop_and_check()


st.Test("resume").main(main)
