#!/usr/bin/env python3
# What a TLS 1.3 handshake costs on the wire: sluice sends the server's flight in one data
# segment and both session tickets together in a second (OpenSSL's own socket BIO sends
# each ticket on its own). Counted by the kernel (ss -i data_segs_out on sluice's socket)
# once the client has finished and waits; then the request still gets its answer.
import re
import shutil
import socket
import ssl
import time

import sluicetest as st
import tlsclient as tc

WANT_SEGMENTS = 2


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


def main(t):
    if shutil.which("ss") is None:
        t.skip_all("ss (iproute2) is not installed")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)])
    sl = t.start_sluice(conf)
    ctx = tc.context(cert, version=ssl.TLSVersion.TLSv1_3)
    raw = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(10))
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    segments = settled_segments(port, s.getsockname()[1])
    t.ok(segments == WANT_SEGMENTS,
         "TLS 1.3 handshake with two session tickets: sluice sent %s data segments (want %d: "
         "the flight, then both tickets together)" % (segments, WANT_SEGMENTS))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    t.ok(b"hello from app" in read_to_close_notify(s), "the request then gets its answer")
    s.close()
    sl.stop_and_check()


st.Test("segments").main(main)
