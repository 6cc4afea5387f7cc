#!/usr/bin/env python3
# Several frontends in one config, IPv4 and IPv6: each reaches its own backend, and
# each listens only where it was told to.
import socket

import sluicetest as st


def refused(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def main(t):
    cert, key = t.make_cert()
    v6, why = st.ipv6_loopback_available()
    if not v6:
        t.diag("IPv6 parts skipped: %s" % why)
    alpha = t.start_backend("alpha", "unix")
    gamma = t.start_backend("gamma", "tcp", host="127.0.0.1")
    delta = t.start_backend("delta", "unix")
    beta = t.start_backend("beta", "tcp", host="::1") if v6 else None

    pa, pc, pd = st.free_ports(3)
    fes = [t.frontend(pa, alpha.address, cert, key),
           t.frontend(pc, gamma.address, cert, key),
           t.frontend(pd, delta.address, cert, key, host="*")]
    pb = None
    if v6:
        pb = st.free_port(socket.AF_INET6, "::1")
        fes.append(t.frontend(pb, beta.address, cert, key, host="::1"))
    conf = t.write_config(fes)
    sl = t.start_sluice(conf)

    routes = [("127.0.0.1", pa, alpha, "IPv4 frontend -> unix backend"),
              ("127.0.0.1", pc, gamma, "IPv4 frontend -> TCP backend"),
              ("127.0.0.1", pd, delta, "*:PORT frontend over IPv4 -> unix backend")]
    if v6:
        routes += [("::1", pb, beta, "[::1] frontend -> [::1] TCP backend"),
                   ("::1", pd, delta, "*:PORT frontend over IPv6 -> unix backend")]
    for host, port, be, desc in routes:
        rc, body, err, _ = t.curl(port, "/", host=host)
        t.ok(rc == 0 and body == b"hello from %s\n" % be.name.encode(),
             "curl: %s reaches %s" % (desc, be.name))
        if rc != 0 or b"hello" not in body:
            t.diag("curl rc=%s body=%r err=%s" % (rc, body, err))
        rc, out, err, _ = t.s_client(port, b"GET / HTTP/1.0\r\n\r\n", host=host)
        t.ok(rc == 0 and out.endswith(b"hello from %s\n" % be.name.encode()),
             "s_client: %s reaches %s" % (desc, be.name))
    if not v6:
        t.skip(why, 4)

    if v6:
        t.ok(refused("::1", pa), "the 127.0.0.1 frontend does not listen on [::1]")
        t.ok(refused("127.0.0.1", pb), "the [::1] frontend does not listen on 127.0.0.1")
    else:
        t.skip(why, 2)

    want = {"alpha": 2, "gamma": 2, "delta": 4 if v6 else 2, "beta": 2}
    for be in (alpha, gamma, delta, beta):
        if be is None:
            t.skip(why)
            continue
        n = be.accepted()
        t.ok(n == want[be.name], "backend %s got exactly its own %d connections (%d)"
             % (be.name, want[be.name], n))
    sl.stop_and_check()


st.Test("frontends").main(main)
