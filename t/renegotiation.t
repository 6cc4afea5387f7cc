#!/usr/bin/env python3
# Renegotiation is refused, KeyUpdate is not (issue 7, edge case 5).
# 1. TLS 1.2: openssl s_client's "R" command renegotiates from the client side. sluice
#    answers the second ClientHello with a no_renegotiation warning and sends no second
#    ServerHello; the client gives up with a fatal alert, the connection log records it
#    as a client error, and sluice serves the next client.
# 2. TLS 1.3: "k" and "K" send KeyUpdate (K asks for one back). That is not
#    renegotiation: data keeps flowing both ways after each, and sluice answers K with
#    a KeyUpdate of its own.
# 3. TLS 1.3: a plaintext ClientHello record in the middle of the encrypted stream ends
#    the connection with an unexpected_message alert.
# (sslscan's renegotiation probe in t/tls-scan.t looks from outside; this one watches
# the messages on the wire and the connection log.)
import json
import os
import queue
import re
import ssl
import subprocess
import threading
import time

import sluicetest as st
import tlsclient as tc

SERVER_HELLO = re.compile(r"<<< TLS 1\.[23], Handshake \[length [0-9a-f]+\], ServerHello\b")
RENEG_REFUSED = re.compile(r"<<< TLS 1\.2, Alert \[length 0002\], warning no_renegotiation")
KEY_UPDATE_IN = re.compile(r"<<< TLS 1\.3, Handshake \[length [0-9a-f]+\], KeyUpdate")
KEY_UPDATE_OUT = re.compile(r">>> TLS 1\.3, Handshake \[length [0-9a-f]+\], KeyUpdate")


class SClient:
    """openssl s_client in its interactive mode (no -quiet, so the command letters work),
    with -msg: every TLS message either way is printed. stdout is read by a thread."""

    def __init__(self, t, port, version):
        argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
                "localhost", "-verify_hostname", "localhost", "-CAfile", t.default_ca,
                "-verify_return_error", "-msg", version]
        self.proc = st.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        self.lines = []
        self.q = queue.Queue()
        self.reader = threading.Thread(target=self._reader, daemon=True)
        self.reader.start()

    def _reader(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def send(self, text):
        try:
            self.proc.stdin.write(text)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def wait_line(self, pattern, timeout):
        """Wait for a new output line matching pattern (regex); the line or None."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.q.put(None)
                return None
            if rx.search(line):
                return line

    def count(self, rx, since=0):
        return sum(1 for ln in self.lines[since:] if rx.search(ln))

    def close(self, timeout):
        """End stdin (s_client then closes the connection) and wait; the exit status."""
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.reader.join(timeout)
        return rc

    def exited(self, timeout):
        """The exit status once s_client has exited (all its output read), or None."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(timeout)
        return rc


def connection_records(sl):
    return [ln for ln in sl.log_lines() if "event=connection " in ln]


def read_json(statsfile):
    rc, out, err, _ = st.run([st.SLUICESTAT, "-j", "-f", statsfile], timeout=st.scaled(10))
    return json.loads(out) if rc == 0 else None


def tls12_renegotiation(t, sl, port):
    bound = st.scaled(5)
    c = SClient(t, port, "-tls1_2")
    c.send(b"ECHO\nbefore renegotiation\n")
    t.ok(c.wait_line(r"^before renegotiation$", bound),
         "TLS 1.2: the relay echoes a line before the renegotiation attempt")
    hellos = c.count(SERVER_HELLO)
    t.ok(hellos == 1, "TLS 1.2: one ServerHello for the first handshake (%d)" % hellos)
    mark = len(c.lines)
    c.send(b"R\n")
    t.ok(c.wait_line(r"RENEGOTIATING", bound), "TLS 1.2: s_client starts a renegotiation")
    refused = c.wait_line(RENEG_REFUSED.pattern, bound)
    t.ok(refused, "TLS 1.2: sluice answers the second ClientHello with a no_renegotiation "
         "warning alert")
    c.send(b"after renegotiation\n")
    rc = c.exited(bound)
    again = c.count(SERVER_HELLO, mark)
    t.ok(again == 0, "TLS 1.2: no second ServerHello: the renegotiation never happened (%d)"
         % again)
    t.ok(not any(ln == "after renegotiation" for ln in c.lines[mark:]),
         "TLS 1.2: no data moved over a renegotiated session")
    t.ok(rc is not None, "TLS 1.2: the client gives up on the refused renegotiation and ends "
         "(s_client status %s)" % rc)
    if rc is None:
        c.close(bound)
    if not refused or again:
        t.diag("s_client output after R:")
        for ln in c.lines[mark:][:60]:
            t.diag("  " + ln)

    recs = [r for r in connection_records(sl) if "tls=TLSv1.2" in r]
    t.ok(len(recs) == 1 and "reason=client_error" in recs[0] and "state=relay" in recs[0]
         and re.search(r'error="TLS read: .*alert', recs[0]),
         "TLS 1.2: the connection log records the refused renegotiation as a client error "
         "with the client's alert")
    for r in recs:
        t.diag("  " + r)


def tls13_key_update(t, sl, port):
    bound = st.scaled(5)
    before = len(connection_records(sl))
    c = SClient(t, port, "-tls1_3")
    c.send(b"ECHO\none\n")
    t.ok(c.wait_line(r"^one$", bound), "TLS 1.3: the relay echoes a line")
    mark = len(c.lines)
    c.send(b"k\n")
    t.ok(c.wait_line(KEY_UPDATE_OUT.pattern, bound), "TLS 1.3: s_client sends a KeyUpdate (k)")
    c.send(b"two\n")
    t.ok(c.wait_line(r"^two$", bound), "TLS 1.3: data flows both ways after the KeyUpdate")
    theirs = c.count(KEY_UPDATE_IN, mark)
    t.ok(theirs == 0, "TLS 1.3: k asks for no KeyUpdate back, and sluice sends none (%d)"
         % theirs)
    c.send(b"K\n")
    t.ok(c.wait_line(KEY_UPDATE_OUT.pattern, bound),
         "TLS 1.3: s_client sends a KeyUpdate asking for one back (K)")
    c.send(b"three\n")
    got = c.wait_line(r"^three$", bound)
    t.ok(got, "TLS 1.3: data flows both ways after the requested KeyUpdate")
    theirs = c.count(KEY_UPDATE_IN, mark)
    t.ok(theirs == 1, "TLS 1.3: sluice answered K with one KeyUpdate of its own (%d)" % theirs)
    rc = c.close(bound)
    t.ok(rc == 0, "TLS 1.3: s_client ends normally (status %s)" % rc)
    if not got:
        for ln in c.lines[mark:][:60]:
            t.diag("  " + ln)
    t.ok(c.count(SERVER_HELLO) == 1, "TLS 1.3: a single handshake took place")
    sent = len(b"ECHO\none\ntwo\nthree\n")
    recs = st.wait_until(lambda: [r for r in connection_records(sl)[before:]
                                  if "bytes_client_to_backend=%d " % sent in r], bound)
    t.ok(recs and "tls=TLSv1.3" in recs[0] and re.search(r"reason=(client|backend)_close",
                                                         recs[0])
         and recs[0].endswith(" error=-"),
         "TLS 1.3: the connection log shows an orderly close, no error (%s)"
         % (recs[0] if recs else "no record"))


def tls13_plaintext_hello(t, port, cert):
    """A plaintext ClientHello record where only encrypted records may come."""
    c = tc.BioClient(port, cert, timeout=st.scaled(5), version=ssl.TLSVersion.TLSv1_3)
    c.handshake()
    c.send(b"ECHO\nping\n")
    c.send_raw(tc.client_hello())
    data, how = c.read_to_close(st.scaled(5))
    c.close()
    t.ok("UNEXPECTED_MESSAGE" in how.upper() or "unexpected message" in how,
         "TLS 1.3: a plaintext ClientHello mid-stream gets an unexpected_message alert (%s)"
         % how)
    return data


def main(t):
    if not st.SLUICESTAT or not os.path.exists(st.SLUICESTAT):
        t.skip_all("sluicestat is not built (SLUICESTAT=%r)" % st.SLUICESTAT)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=1,
                          log_connections=True)
    statsfile = t.path("sluice.stats")
    sl = t.start_sluice(conf)

    tls12_renegotiation(t, sl, port)
    rc, body, err, _ = t.curl(port, "/after-renegotiation")
    t.ok(rc == 0 and body == b"hello from app\n",
         "after the refused renegotiation sluice serves the next client")
    doc = read_json(statsfile)
    closes = doc["totals"]["counters"]["closes"] if doc else {}
    t.ok(doc and doc["totals"]["counters"]["handshakes"]["ok"] == 2
         and closes.get("client_error") == 1,
         "stats: 2 handshakes (the TLS 1.2 client and curl), 1 client_error close (%s)"
         % ({k: v for k, v in closes.items() if v} if doc else "sluicestat -j failed"))

    tls13_key_update(t, sl, port)
    tls13_plaintext_hello(t, port, cert)
    t.ok(sl.alive(), "sluice is alive")
    rc, body, err, _ = t.curl(port, "/at-end")
    t.ok(rc == 0 and body == b"hello from app\n", "sluice still serves")
    sl.stop_and_check()


st.Test("renegotiation").main(main)
