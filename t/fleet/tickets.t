#!/usr/bin/env python3
# A fleet behind haproxy (issue 8, second and third checks): session tickets across hosts.
# Both hosts hold their own copy of the fleet's ticket-key file. Which host serves is
# chosen with two more haproxy frontends, each using one host only (same PROXY v2 path),
# and the backend's answer names the host that served, so every check knows where it ran.
# 1. A ticket issued by host A resumes on host B, and B's on A (TLS 1.3 and TLS 1.2).
# 2. A key rotation rolled across both hosts with HUP, one host at a time, keeps
#    resumption working throughout; in each phase the files go [K1] -> [K1, K2] (the new
#    key decrypts only) -> [K2, K1] (it encrypts) -> [K2] (the old one is gone):
#    - while one host is HUPed and the other not yet, tickets from each resume on the
#      other (the point of phase 1: a host that already encrypts with K2 is never ahead
#      of one that cannot decrypt it);
#    - after every host is HUPed, a ticket from each host in the phase before resumes on
#      the other host;
#    - at the end, a ticket from before the rotation (K1) no longer resumes anywhere: a
#      full handshake, so the keys really changed on both hosts.
# How it fails: hosts with different keys, a host that cannot decrypt with its second key,
# or a HUP that does not re-read the file fail these resumption checks.
import ssl

import fleet as fl
import servicetest as sv
import sluicetest as st
import tlsclient as tc

VERSIONS = ((ssl.TLSVersion.TLSv1_3, "TLS 1.3"), (ssl.TLSVersion.TLSv1_2, "TLS 1.2"))
OTHER = {"a": "b", "b": "a"}


def main(t):
    f = fl.Fleet(t)
    ctxs = {name: tc.context(f.cert, version=v) for v, name in VERSIONS}

    def full(host, name, what):
        """A full handshake on host: returns its session (with a ticket)."""
        r = f.get(fl.PINNED_PORT[host], ctxs[name])
        ok = (r["ok"] and r["host"] == host and not r["reused"] and r["session"] is not None
              and r["session"].has_ticket)
        t.ok(ok, "%s, %s: a full handshake on host %s brings a ticket (%s)"
             % (what, name, host, r["error"] or "served by %s" % r["host"]))
        return r["session"]

    def resumes(host, name, sess, what, want=True):
        r = f.get(fl.PINNED_PORT[host], ctxs[name], session=sess)
        t.ok(r["ok"] and r["host"] == host and r["reused"] is want,
             "%s, %s: %s on host %s (served by %s, reused=%s%s)"
             % (what, name, "resumed" if want else "a full handshake", host, r["host"],
                r["reused"], ", " + r["error"] if r["error"] else ""))

    def hup(host, keys, what):
        f.write_keys(host, keys)
        g, slots = sv.reload(f.sluices[host])
        t.ok(g is not None and slots, "%s: host %s HUPed with keys %s, generation %s serves"
             % (what, host, label(keys), g))

    k1, k2 = f.keys[0], fl.new_ticket_key()
    names = {k1: "K1", k2: "K2"}

    def label(keys):
        return "[%s]" % ", ".join(names[k] for k in keys)

    # 1. the same keys on both hosts
    before = {}
    for name in ctxs:
        for h in fl.HOSTS:
            before[h, name] = full(h, name, "[K1] everywhere")
            resumes(OTHER[h], name, before[h, name], "[K1] everywhere, host %s's ticket" % h)

    # 2. the rotation, one host after the other in each phase
    phases = [[k1, k2], [k2, k1], [k2]]
    previous = before
    for n, keys in enumerate(phases, 1):
        for i, h in enumerate(fl.HOSTS):
            hup(h, keys, "phase %d" % n)
            if i == 0:  # one host HUPed, the other not yet
                for name in ctxs:
                    for x in fl.HOSTS:
                        s = full(x, name, "phase %d, only %s HUPed" % (n, h))
                        resumes(OTHER[x], name, s, "phase %d, only %s HUPed: host %s's new "
                                "ticket" % (n, h, x))
        current = {}
        for name in ctxs:
            for h in fl.HOSTS:
                resumes(OTHER[h], name, previous[h, name],
                        "phase %d %s on both: host %s's ticket from phase %d"
                        % (n, label(keys), h, n - 1))
                current[h, name] = full(h, name, "phase %d" % n)
        previous = current

    for name in ctxs:
        for h in fl.HOSTS:
            resumes(h, name, before[h, name], "after the rotation, a K1 ticket", want=False)
    for h in fl.HOSTS:
        f.stop(h)


st.Test("fleet-tickets").main(main)
