#!/usr/bin/env python3
# Backend down, refusing or never accepting: the client gets a clean close (close_notify),
# the reason is logged, and sluice keeps serving others.
import time

import sluicetest as st
import tlsclient as tc

CONNECT_TIMEOUT = 2.0


def main(t):
    cert, key = t.make_cert()
    ok_be = t.start_backend("ok", "unix")
    never = st.NeverAccepts()
    t.cleanups.append(never.close)
    blackhole_port = never.tcp()
    if not never.tcp_pending(blackhole_port):
        t.skip_all("a connect to a full TCP accept queue completes here; cannot make a "
                   "never-accepting backend")
    cases = [
        # name, backend address, reason regex in the log
        ("unix socket absent", "unix:" + t.path("absent.sock"),
         r"backend connect failed: .*No such file or directory"),
        ("unix socket refusing", "unix:" + st.refused_unix_socket(t.path("refusing.sock")),
         r"backend connect failed: .*Connection refused"),
        ("TCP port closed", "127.0.0.1:%d" % st.free_port(),
         r"backend connect failed: .*Connection refused"),
        ("unix listener never accepting (queue full)",
         "unix:" + never.unix(t.path("full.sock")), r"backend connect (failed|timeout)"),
        ("TCP listener never accepting (queue full)", "127.0.0.1:%d" % blackhole_port,
         r"backend connect timeout"),
    ]
    ports = st.free_ports(len(cases) + 1)
    ok_port = ports[-1]
    fes = [t.frontend(p, c[1], cert, key) for p, c in zip(ports, cases)]
    fes.append(t.frontend(ok_port, ok_be.address, cert, key))
    conf = t.write_config(fes, backend_connect_timeout=CONNECT_TIMEOUT)
    sl = t.start_sluice(conf)

    for port, (name, addr, reason) in zip(ports, cases):
        blackhole = "TCP listener never" in name
        s = tc.connect(port, cert)
        cport = s.getsockname()[1]
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if blackhole:
            # sluice keeps serving others while this connect is pending
            rc, body, err, el = t.curl(ok_port, "/during")
            t.ok(rc == 0 and body == b"hello from ok\n" and el < CONNECT_TIMEOUT * 0.75,
                 "%s: another client is served (%.2f s) while the connect is pending"
                 % (name, el))
        data, how = tc.read_to_close(s, CONNECT_TIMEOUT + st.scaled(2))
        el = time.monotonic() - t0
        s.close()
        t.ok(data == b"" and how == "close_notify",
             "%s: the client gets a clean close (%s after %.2f s, %d bytes)"
             % (name, how, el, len(data)))
        if blackhole:
            t.ok(el >= CONNECT_TIMEOUT * 0.9,
                 "%s: closed after backend-connect-timeout (%.2f s)" % (name, el))
        else:
            t.ok(el < st.scaled(2), "%s: closed promptly (%.2f s)" % (name, el))
        hits = sl.wait_log(r"warning: .*client=127\.0\.0\.1:%d\b.*%s" % (cport, reason),
                           timeout=st.scaled(2))
        t.ok(hits, "%s: the reason is logged as a warning (/%s/)" % (name, reason))
        if not hits:
            t.diag("log lines for client port %d:" % cport)
            for ln in sl.log_lines():
                if ":%d " % cport in ln:
                    t.diag("  " + ln)
        t.ok(sl.alive(), "%s: sluice is alive" % name)
        rc, body, err, _ = t.curl(ok_port, "/after")
        t.ok(rc == 0 and body == b"hello from ok\n",
             "%s: sluice still serves the healthy frontend" % name)

    # the absent backend appears: the same frontend now works (no restart)
    t.start_backend("late", "unix", path=t.path("absent.sock"))
    rc, body, err, _ = t.curl(ports[0], "/late")
    t.ok(rc == 0 and body == b"hello from late\n",
         "once the absent backend starts, its frontend serves without a restart")

    sl.stop_and_check()
    stats = sl.stats()
    t.ok(stats.get("backend_failures") == len(cases),
         "exit stats count %d backend failures (%s)" % (len(cases),
                                                        stats.get("backend_failures")))


st.Test("backend-down").main(main)
