#!/usr/bin/env python3
# Half-close both ways: client close_notify -> the backend sees EOF and its reply still
# reaches the client; backend close -> the client receives close_notify. The trailing-
# bytes case (data, close_notify, then more raw bytes) and the buffered-records case end
# without busy looping: sluice's utime+stime grows by less than 5% of one core over 3 s.
import hashlib
import select
import socket
import ssl
import time

import sluicetest as st
import tlsclient as tc

CPU_WINDOW = 3.0
CPU_BOUND = 0.05 * CPU_WINDOW  # 5% of one core


def payload(n):
    return b"".join(st.random_bytes_chunks(n))


def eof_event(be, sha, timeout):
    return be.wait_event(lambda e: e["event"] == "eof" and e.get("sha") == sha, timeout)


def cpu_over_window(t, sl, what):
    c0 = sl.cpu_seconds()
    time.sleep(CPU_WINDOW)
    used = sl.cpu_seconds() - c0
    t.ok(used < CPU_BOUND, "%s: sluice used %.3f s CPU in %.0f s (bound %.2f s)"
         % (what, used, CPU_WINDOW, CPU_BOUND))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], close_timeout=5,
                          idle_timeout=60)
    sl = t.start_sluice(conf)
    bound = st.scaled(5)

    # 1. client close_notify -> backend EOF; the backend's reply still reaches the client
    data = payload(100 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    c = tc.BioClient(port, cert)
    c.handshake()
    c.send(b"EOF 0.3\n" + data)
    c.close_notify()
    ev = eof_event(be, sha, bound)
    t.ok(ev and ev[0]["bytes"] == len(data),
         "client close_notify: the backend reads all %d bytes, then EOF" % len(data))
    reply, how = c.read_to_close(bound)
    t.ok(reply == b"EOF-SEEN %d %s\n" % (len(data), sha.encode()),
         "... and its reply, sent after that EOF, reaches the client")
    t.ok(how == "close_notify", "... followed by close_notify (%s)" % how)
    c.close()

    # 2. client EOF without close_notify (like most browsers) -> backend EOF
    data = payload(50 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    s = tc.connect(port, cert)
    s.sendall(b"EOF 0.3\n" + data)
    s.shutdown(socket.SHUT_WR)  # drops the TLS layer: a bare FIN, no close_notify
    ev = eof_event(be, sha, bound)
    t.ok(ev and ev[0]["bytes"] == len(data),
         "client TCP FIN without close_notify: the backend reads all data, then EOF")
    how, _, got = tc.wait_closed(s, bound)
    t.diag("after a client FIN the client saw %d more raw bytes, then %s" % (len(got), how))
    s.close()

    # 3. backend close -> client close_notify, after everything the backend sent
    s = tc.connect(port, cert)
    s.sendall(b"BYE\n")
    reply, how = tc.read_to_close(s, bound)
    t.ok(reply == b"bye\n" and how == "close_notify",
         "backend close: the client gets its data, then close_notify (%r, %s)" % (reply, how))
    s.close()

    down = 3 << 20
    s = tc.connect(port, cert)
    s.sendall(b"SHA 0 %d\n" % down)
    reply, how = tc.read_to_close(s, bound)
    body, _, trailer = reply[:down], None, reply[down:].split()
    t.ok(len(reply) > down and len(trailer) == 5
         and trailer[4].decode() == hashlib.sha256(body).hexdigest() and how == "close_notify",
         "backend sends 3 MB and shuts down: the client gets all of it, then close_notify (%s)"
         % how)
    s.close()

    # 4. trailing bytes: data, close_notify, then more raw bytes on the same socket
    data = payload(64 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    c = tc.BioClient(port, cert)
    c.handshake()
    c.send(b"EOF 6\n" + data)
    c.close_notify()
    c.send_raw(b"trailing bytes after close_notify\r\n" * 40)
    ev = eof_event(be, sha, bound)
    t.ok(ev and ev[0]["bytes"] == len(data),
         "trailing bytes: the backend still reads all data, then EOF")
    time.sleep(0.5)
    cpu_over_window(t, sl, "trailing bytes after close_notify, backend still open")
    t.ok(sl.alive(), "sluice is alive")
    reply, how = c.read_to_close(st.scaled(6) + 6)
    t.ok(how in ("close_notify", "eof", "reset"),
         "trailing bytes: the connection ends once the backend closes (%s)" % how)
    t.diag("trailing bytes: client got %r then %s" % (reply[:60], how))
    c.close()

    # 5. records still buffered: data records, close_notify and junk in one write
    data = payload(256 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    c = tc.BioClient(port, cert)
    c.handshake()
    c.encrypt(b"EOF 5\n")
    for i in range(0, len(data), 4096):
        c.encrypt(data[i:i + 4096])
    c.close_notify(send=False)
    wire = c.pending_wire() + b"\x17\x03\x03\x00\x20" + b"x" * 32 + b"more junk" * 20
    c.send_raw(wire)
    ev = eof_event(be, sha, bound)
    t.ok(ev and ev[0]["bytes"] == len(data),
         "records, close_notify and junk in one burst: the backend reads all %d bytes, then "
         "EOF" % len(data))
    time.sleep(0.5)
    cpu_over_window(t, sl, "buffered records then close_notify, backend still open")
    reply, how = c.read_to_close(st.scaled(6) + 6)
    t.ok(how in ("close_notify", "eof", "reset"),
         "buffered records: the connection ends once the backend closes (%s)" % how)
    c.close()

    # sluice still serves, and nothing was closed as spinning
    rc, body, err, _ = t.curl(port, "/")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice still serves")
    spinning = [ln for ln in sl.log_lines() if "spinning" in ln]
    t.ok(not spinning, "no connection was closed as spinning")
    for ln in spinning[:5]:
        t.diag("  " + ln)
    sl.stop_and_check()
    stats = sl.stats()
    t.ok("spurious_wakeups" in stats and stats["spurious_wakeups"] <= 50,
         "exit stats show few spurious wake-ups (%s of %s, bound 50)"
         % (stats.get("spurious_wakeups"), stats.get("wakeups")))

    close_deadline_is_inactivity(t, cert, key, be)


def close_deadline_is_inactivity(t, cert, key, be):
    """close-timeout counts inactivity: the backend shuts only its write side (sluice says
    close_notify and enters CLOSING) while the client keeps uploading for 3 s, three
    times close-timeout. Nothing is cut while bytes move; once the client goes quiet,
    the close timeout ends the connection about close-timeout later."""
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="close-1.conf",
                          close_timeout=1, idle_timeout=60, log_connections=True)
    sl = t.start_sluice(conf, name="sluice-close-1")
    c = tc.BioClient(port, cert, timeout=st.scaled(5))
    c.handshake()
    c.send(b"SHUTWR\n")
    reply, how = c.read_to_close(st.scaled(5))
    t.ok(reply == b"shut-wr\n" and how == "close_notify",
         "close-timeout 1: backend shuts its write side -> the client gets its reply, then "
         "close_notify (%r, %s)" % (reply, how))

    cid = shutwr_conn(be)
    chunk = payload(16 * 1024)
    sent, cut, ended, t_end = 0, None, False, time.monotonic() + 3.0
    last = time.monotonic()
    while time.monotonic() < t_end:
        # After close_notify sluice ends its TCP stream too (a FIN, t/close-order.t):
        # the end of the stream is expected, a reset or a failed send is a cut.
        r, _, _ = select.select([] if ended else [c.sock], [], [], 0)
        if r:
            try:
                extra = c.sock.recv(65536)
            except OSError as e:
                cut = "%s after %.2f s" % (type(e).__name__, 3.0 - (t_end - time.monotonic()))
                break
            if extra:
                cut = "%d unexpected bytes after %.2f s" % (
                    len(extra), 3.0 - (t_end - time.monotonic()))
                break
            ended = True
        try:
            c.send(chunk)
        except (OSError, ssl.SSLError) as e:
            cut = "send failed after %.2f s: %s" % (3.0 - (t_end - time.monotonic()), e)
            break
        sent += len(chunk)
        last = time.monotonic()
        time.sleep(0.3)
    t.ok(cut is None, "... the client uploads a chunk every 0.3 s for 3 s after close_notify "
         "and the connection stays open meanwhile (%s)" % (cut or "open"))

    # Its stream to the client has ended already: its close shows in its connection log.
    closed = sl.wait_log(r"event=connection .*reason=close_timeout state=closing",
                         st.scaled(1) + 5)
    quiet = time.monotonic() - last
    t.ok(closed and 0.7 <= quiet <= st.scaled(1) + 0.6,
         "... once the client goes quiet, sluice closes it %.2f s later (bound 0.7..%.1f s)"
         % (quiet, st.scaled(1) + 0.6))
    c.close()
    ev = be.wait_event(lambda e: e["event"] == "eof" and e["conn"] == cid, st.scaled(5))
    t.ok(ev and ev[0]["bytes"] == sent > 0,
         "... every byte the client sent after close_notify reached the backend (%s of %d)"
         % (ev[0]["bytes"] if ev else "none", sent))
    t.ok(sl.wait_log(r"event=connection .*reason=close_timeout state=closing", st.scaled(2)),
         "... and the connection log gives its reason as close_timeout")
    sl.stop_and_check(what="sluice (close-timeout 1)")


def shutwr_conn(be):
    """The backend's connection id of its latest SHUTWR request."""
    reqs = [e for e in be.events("request") if e.get("cmd") == "SHUTWR"]
    return reqs[-1]["conn"] if reqs else None


st.Test("half-close").main(main)
