#!/usr/bin/env python3
# A fleet behind haproxy (issue 8, first check): the backends see the real client's
# address. The chain: a client in its own network namespace -> haproxy (mode tcp,
# send-proxy-v2) -> sluice (accept-proxy = true) -> sluice's own PROXY v2 header -> the
# host's backend. Forty requests through the balancer's round robin reach both hosts;
# every backend connection's header names the client's namespace address and the very
# port each client connected from, and the address the client connected to (haproxy's
# frontend), not haproxy's address on the hosts' side. Each host's backend answers with
# what it saw, and the client compares it with its own socket. Then both hosts stop
# cleanly and their logs hold no error. And the haproxy configuration of doc/fleet.md
# is valid (haproxy -c) and the same as this one but for addresses, names and timeouts.
# How it fails: without accept-proxy (or with its addresses not carried into sluice's own
# header) the backends see the balancer's address 10.231.x.1; without send-proxy-v2 on
# haproxy no handshake succeeds.
import fleet as fl
import sluicetest as st

REQUESTS = 40


def main(t):
    f = fl.Fleet(t)
    sent = {}  # "addr:port" the client connected from -> the host that answered
    bad = []
    for _ in range(REQUESTS):
        r = f.get()
        if r["ok"]:
            sent[r["local"]] = r["host"]
        if not r["ok"] or r["client"] != r["local"]:
            bad.append(r)
    t.ok(not bad, "%d requests through the balancer: each answered, and each backend saw the "
         "client's own address and port" % REQUESTS)
    for r in bad[:5]:
        t.diag("  client %s, the backend saw %s (%s)" % (r["local"], r["client"], r["error"]))
    served = {h: sum(1 for v in sent.values() if v == h) for h in fl.HOSTS}
    t.ok(all(n >= REQUESTS // 4 for n in served.values()),
         "round robin: both hosts served (%r)" % served)

    for h, be in f.backends.items():
        recs = be.requests()
        heads = [r["header"] for r in recs]
        seen = {"%s:%d" % (hd["src"], hd["sport"]) for hd in heads}
        want = {local for local, host in sent.items() if host == h}
        t.ok(seen == want and len(recs) == len(want),
             "host %s: the backend's %d PROXY headers name exactly the %d client "
             "address:port pairs it served (all from %s)" % (h, len(recs), len(want),
                                                             fl.CLIENT_ADDR))
        if seen != want:
            t.diag("  seen only by the backend: %s" % sorted(seen - want)[:5])
            t.diag("  sent but not seen: %s" % sorted(want - seen)[:5])
        odd = [hd for hd in heads if hd["ver_cmd"] != 0x21 or hd["fam"] != 0x11
               or hd["dst"] != fl.LB_ADDR or hd["dport"] != fl.TLS_PORT]
        t.ok(heads and not odd,
             "host %s: every header is v2 PROXY over TCP/IPv4, to %s:%d (the address the client "
             "connected to)" % (h, fl.LB_ADDR, fl.TLS_PORT))
        for hd in odd[:3]:
            t.diag("  %r" % {k: v for k, v in hd.items() if k != "tlvs"})
        t.ok(not be.errors(), "host %s: no backend connection went wrong %s"
             % (h, [r["error"] for r in be.errors()][:3]))
    rc, out, missing = f.doc_config_differences()
    t.ok(rc == 0 and not missing, "doc/fleet.md's haproxy configuration passes haproxy -c "
         "and has this test's defaults and health checks (%s%s)"
         % (out, "; lacks: %s" % missing if missing else ""))
    for h in fl.HOSTS:
        f.stop(h)


st.Test("fleet-client-address").main(main)
