#!/usr/bin/env python3
# Proxying to a Unix-socket backend and to a TCP backend: an HTTP request with curl and
# with openssl s_client (TLS 1.2 and 1.3); 10 MB up and 10 MB down at once with sha256
# equal on both ends; 200 concurrent connections each moving 1 MB both ways.
import time

import sluicetest as st
import tlsclient as tc

MB = 1 << 20


def check_transfers(t, results, max_open, want_open, what):
    good = [r for r in results if isinstance(r, dict) and r.get("ok")]
    t.ok(len(good) == len(results),
         "%s: %d/%d transfers with equal sha256 on both ends" % (what, len(good), len(results)))
    for r in results:
        if not (isinstance(r, dict) and r.get("ok")):
            t.diag("  failed transfer: %r" % (r if not isinstance(r, dict) else
                                             {k: v for k, v in r.items() if k != "trailer"}))
            break
    if want_open is not None:
        t.ok(max_open == want_open, "%s: %d connections open at once" % (what, max_open))


def main(t):
    ec_cert, ec_key = t.make_cert("ec")
    rsa_cert, rsa_key = t.make_cert("rsa", kind="rsa")
    ube = t.start_backend("unix", "unix")
    tbe = t.start_backend("tcp", "tcp")
    uport, tport = st.free_ports(2)
    conf = t.write_config([
        t.frontend(uport, ube.address, ec_cert, ec_key, alpn=["http/1.1"]),
        t.frontend(tport, tbe.address, rsa_cert, rsa_key),
    ])
    sl = t.start_sluice(conf)
    clients = {uport: 0, tport: 0}

    for port, cert, be in ((uport, ec_cert, ube), (tport, rsa_cert, tbe)):
        rc, body, err, _ = t.curl(port, "/hello", cacert=cert)
        clients[port] += 1
        t.ok(rc == 0 and body == b"hello from %s\n" % be.name.encode(),
             "curl through sluice reaches the %s backend" % be.name)
        if rc != 0:
            t.diag("curl rc=%s: %s" % (rc, err))

    for port, cert, be, ver in ((uport, ec_cert, ube, "-tls1_2"), (tport, rsa_cert, tbe,
                                                                   "-tls1_3")):
        rc, out, err, _ = t.s_client(port, b"GET / HTTP/1.0\r\n\r\n", cacert=cert,
                                     extra=[ver])
        clients[port] += 1
        t.ok(rc == 0 and out.startswith(b"HTTP/1.1 200 OK")
             and out.endswith(b"hello from %s\n" % be.name.encode()),
             "openssl s_client %s through sluice reaches the %s backend" % (ver, be.name))
        if rc != 0 or b"hello" not in out:
            t.diag("s_client rc=%s out=%r err=%s" % (rc, out[:200], err[-500:]))

    for port, cert, be in ((uport, ec_cert, ube), (tport, rsa_cert, tbe)):
        s = tc.connect(port, cert)
        clients[port] += 1
        s.sendall(b"ECHO\n")
        t0 = time.monotonic()
        good = 0
        for i in range(200):
            msg = b"ping %03d " % i + b"x" * 90
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(len(msg) - len(got))
                if not d:
                    break
                got += d
            good += got == msg
        el = time.monotonic() - t0
        s.close()
        t.ok(good == 200 and el < st.scaled(2),
             "200 small round trips through the %s backend's echo in %.2f s (%d right)"
             % (be.name, el, good))

    for port, cert, be in ((uport, ec_cert, ube), (tport, rsa_cert, tbe)):
        res, _ = tc.run_sha_transfers([(port, 10 * MB, 10 * MB)], cert, st.scaled(60))
        clients[port] += 1
        check_transfers(t, res, None, None, "10 MB up and 10 MB down at once, %s backend"
                        % be.name)

    for port, cert, be in ((uport, ec_cert, ube), (tport, rsa_cert, tbe)):
        res, max_open = tc.run_sha_transfers([(port, MB, MB)] * 200, cert, st.scaled(90))
        clients[port] += 200
        check_transfers(t, res, max_open, 200, "200 concurrent x 1 MB both ways, %s backend"
                        % be.name)

    for port, be in ((uport, ube), (tport, tbe)):
        n = len(be.events("sha"))
        t.ok(n == 201, "the %s backend checked %d SHA transfers (want 201)" % (be.name, n))

    t.ok(sl.alive(), "sluice is still running")
    sl.stop_and_check()
    stats = sl.stats()
    total = sum(clients.values())
    t.ok(stats.get("accepted") == total and stats.get("handshakes_ok") == total,
         "exit stats count %d accepted connections and handshakes (%s)" % (total, stats))
    t.ok(stats.get("backend_failures") == 0 and stats.get("handshakes_failed") == 0,
         "exit stats count no backend or handshake failure")


st.Test("proxy").main(main)
