#!/usr/bin/env python3
# What a TLS 1.3 connection costs on the wire, counted by the kernel (ss -i data_segs_out
# on sluice's socket) once the exchange has settled:
# - a client that sends nothing after the handshake gets the server's flight in one data
#   segment and, once sluice stops waiting for an answer to send them with
#   (HELD_OUTPUT_WAIT), both session tickets together in a second (OpenSSL's own socket BIO
#   sends each ticket on its own, as soon as the handshake ends);
# - a client whose request is answered at once gets the flight, then the tickets in the
#   answer's segment: two in all, where sending the tickets first costs three.
import re
import shutil
import socket
import ssl
import time

import sluicetest as st
import tlsclient as tc


def data_segs_out(port, client_port):
    """data_segs_out of the established socket port -> client_port, or None."""
    rc, out, _, _ = st.run(["ss", "-tinH", "state", "established",
                            "( sport = :%d and dport = :%d )" % (port, client_port)],
                           timeout=st.scaled(5))
    m = re.search(r"\bdata_segs_out:(\d+)", out.decode(errors="replace")) if rc == 0 else None
    return int(m.group(1)) if m else None


def settled_segments(port, client_port):
    """data_segs_out once it has stopped growing for a while."""
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + st.scaled(3)
    while time.monotonic() < deadline:
        now = data_segs_out(port, client_port)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif now is not None and time.monotonic() - stable_since >= 0.3:
            break
        time.sleep(0.05)
    return last


def read_to_close_notify(s):
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ssl.SSLZeroReturnError:
            return data
        if not chunk:
            return data
        data += chunk


def tls13_client(t, port, cert):
    ctx = tc.context(cert, version=ssl.TLSVersion.TLSv1_3)
    raw = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(10))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main(t):
    if shutil.which("ss") is None:
        t.skip_all("ss (iproute2) is not installed")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)])
    sl = t.start_sluice(conf)

    s = tls13_client(t, port, cert)
    segments = settled_segments(port, s.getsockname()[1])
    t.ok(segments == 2,
         "TLS 1.3 handshake, then silence: sluice sent %s data segments (want 2: the flight, "
         "then both tickets together, without an answer to wait for)" % segments)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    t.ok(b"hello from app" in read_to_close_notify(s), "the request then gets its answer")
    s.close()

    s = tls13_client(t, port, cert)
    s.sendall(b"ECHO\nping")
    echoed = read_exactly(s, 4)
    segments = settled_segments(port, s.getsockname()[1])
    t.ok(echoed == b"ping" and segments == 2,
         "TLS 1.3 handshake and an answer at once: sluice sent %s data segments (want 2: the "
         "flight, then the tickets with the answer %r)" % (segments, echoed))
    s.close()
    sl.stop_and_check()


st.Test("segments").main(main)
