#!/usr/bin/env python3
# TLS options of a frontend, seen from real clients (openssl s_client): ALPN selection
# (and no ALPN when nothing matches), protocols pinned to TLS 1.3 or TLS 1.2,
# session-tickets off (no TLS 1.3 ticket at all) and on (a ticket resumes), client
# certificates with verify-client "require" and "optional", the certificate chain sent
# as the cert file has it (never completed from client-ca), and a cipher string that
# selects nothing refused by `sluice -t` at its FILE:LINE.
import os
import re

import sluicetest as st

REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
HELLO = "hello from app"


def s_client(t, port, cafile, extra=(), data=REQUEST):
    """openssl s_client (not quiet: session details are printed): send data, read until
    the server closes. Returns (rc, stdout, stderr)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-verify_hostname", "localhost", "-CAfile", cafile,
            "-verify_return_error", "-ign_eof"] + list(extra)
    rc, out, err, _ = st.run(argv, input=data, timeout=st.scaled(10))
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def openssl(t, *args):
    rc, out, err, _ = st.run(["openssl"] + list(args), timeout=60, cwd=t.dir)
    if rc != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                      err.decode(errors="replace")))


def make_client_pki(t):
    """A CA, a client certificate it signed (clientAuth), and a self-signed stranger."""
    ca_key, ca = t.path("client-ca.key"), t.path("client-ca.pem")
    openssl(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", ca_key, "-out", ca, "-days", "30", "-subj", "/CN=test client CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key, csr, cert = t.path("client.key"), t.path("client.csr"), t.path("client.pem")
    openssl(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=test client")
    ext = t.write_file("client.ext", "basicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    openssl(t, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "30", "-extfile", ext, "-out", cert)
    skey, scert = t.path("stranger.key"), t.path("stranger.pem")
    openssl(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", skey, "-out", scert, "-days", "30", "-subj", "/CN=stranger")
    for p in (ca, cert, key, scert, skey):
        os.chmod(p, 0o644)
    return ca, cert, key, scert, skey


def make_server_leaf(t, ca):
    """A localhost server certificate issued by the client CA: (leaf-only file, key)."""
    key, csr, leaf = t.path("issued.key"), t.path("issued.csr"), t.path("issued.pem")
    openssl(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = t.write_file("issued.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                       "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl(t, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", t.path("client-ca.key"),
            "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", leaf)
    for p in (leaf, key):
        os.chmod(p, 0o644)
    return leaf, key


def chain_sent(out):
    """The subjects of the certificates the server sent, from s_client -showcerts."""
    return re.findall(r"^ *\d+ s:(.*)$", out, re.M)


def requests_seen(be):
    return len(be.events("request"))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    ca, ccert, ckey, scert, skey = make_client_pki(t)
    issued, issued_key = make_server_leaf(t, ca)
    issued_chain = t.write_file("issued-chain.pem", open(issued).read() + open(ca).read(),
                                mode=0o644)
    (p_alpn, p_13, p_12, p_noticket, p_ticket, p_require, p_optional, p_leaf,
     p_chain) = st.free_ports(9)

    def fe(port, **kw):
        return t.frontend(port, be.address, cert, key, **kw)

    conf = t.write_config([
        fe(p_alpn, alpn=["h2", "http/1.1"]),
        fe(p_13, tls={"protocols": ["TLSv1.3"]}),
        fe(p_12, tls={"protocols": ["TLSv1.2"]}),
        fe(p_noticket, tls={"session-tickets": False}),
        fe(p_ticket, tls={"session-tickets": True}),
        fe(p_require, **{"client-ca": ca, "verify-client": "require"}),
        fe(p_optional, **{"client-ca": ca, "verify-client": "optional"}),
        t.frontend(p_leaf, be.address, issued, issued_key,
                   **{"client-ca": ca, "verify-client": "optional"}),
        t.frontend(p_chain, be.address, issued_chain, issued_key,
                   **{"client-ca": ca, "verify-client": "optional"}),
    ], workers=2)
    sl = t.start_sluice(conf)

    # --- ALPN -----------------------------------------------------------------------
    rc, out, err = s_client(t, p_alpn, cert, ["-alpn", "http/1.1"])
    t.ok("ALPN protocol: http/1.1" in out and HELLO in out,
         "alpn [h2, http/1.1]: a client offering http/1.1 gets it, and the request works")
    if "ALPN protocol: http/1.1" not in out:
        t.diag("rc=%s alpn lines %r stderr=%r" % (rc, re.findall(r".*ALPN.*", out), err[-300:]))
    rc, out, err = s_client(t, p_alpn, cert, ["-alpn", "foo"])
    t.ok("No ALPN negotiated" in out and HELLO in out,
         "... a client offering only \"foo\" completes the handshake without ALPN")
    if HELLO not in out:
        t.diag("rc=%s stderr=%r" % (rc, err[-300:]))

    # --- protocols --------------------------------------------------------------------
    for port, only, works, fails in ((p_13, "TLSv1.3", "-tls1_3", "-tls1_2"),
                                     (p_12, "TLSv1.2", "-tls1_2", "-tls1_3")):
        before = requests_seen(be)
        rc, out, err = s_client(t, port, cert, [fails])
        t.ok(rc != 0 and HELLO not in out and requests_seen(be) == before,
             "protocols [%s]: s_client %s fails, nothing reaches the backend (rc=%s)"
             % (only, fails, rc))
        rc, out, err = s_client(t, port, cert, [works])
        t.ok(rc == 0 and HELLO in out and ("Protocol  : %s" % only) in out,
             "protocols [%s]: s_client %s works end to end" % (only, works))
        if HELLO not in out:
            t.diag("rc=%s stderr=%r" % (rc, err[-300:]))

    # --- session tickets --------------------------------------------------------------
    ticket_line = "Post-Handshake New Session Ticket arrived"
    sess = t.path("noticket.sess")
    rc, out, err = s_client(t, p_noticket, cert, ["-tls1_3", "-sess_out", sess])
    n = out.count(ticket_line)
    has_ticket = False
    if os.path.exists(sess):
        r2, so, se, _ = st.run(["openssl", "sess_id", "-in", sess, "-text", "-noout"])
        has_ticket = "TLS session ticket:" in so.decode(errors="replace")
    t.ok(HELLO in out and n == 0 and not has_ticket,
         "session-tickets = false: a TLS 1.3 client gets no ticket at all (%d arrived, "
         "ticket in -sess_out: %s)" % (n, has_ticket))
    # No session cache either (sluice.conf(5)): a TLS 1.2 client gets no session id to
    # come back with.
    rc, out, err = s_client(t, p_noticket, cert, ["-tls1_2"])
    ids = re.findall(r"^[ \t]*Session-ID:[ \t]*(\S*)[ \t]*$", out, re.M)
    t.ok(HELLO in out and ids == [""],
         "session-tickets = false: a TLS 1.2 client gets an empty session id (nothing to "
         "resume with): %r" % ids)

    sess = t.path("ticket.sess")
    rc, out, err = s_client(t, p_ticket, cert, ["-tls1_3", "-sess_out", sess])
    n = out.count(ticket_line)
    t.ok(HELLO in out and n >= 1 and os.path.exists(sess),
         "session-tickets = true: a TLS 1.3 client gets %d ticket(s)" % n)
    rc, out, err = s_client(t, p_ticket, cert, ["-tls1_3", "-sess_in", sess])
    t.ok(HELLO in out and "Reused, TLSv1.3" in out,
         "... and a second connection with that ticket resumes (Reused, TLSv1.3)")
    if "Reused" not in out:
        t.diag("rc=%s session lines %r" % (rc, re.findall(r"^(?:New|Reused),.*", out, re.M)))

    # --- client certificates ----------------------------------------------------------
    before = requests_seen(be)
    rc, out, err = s_client(t, p_require, cert)
    t.ok(HELLO not in out and requests_seen(be) == before,
         "verify-client = require: a client without a certificate gets no data and "
         "nothing reaches the backend (rc=%s)" % rc)
    before = requests_seen(be)
    rc, out, err = s_client(t, p_require, cert, ["-cert", scert, "-key", skey])
    t.ok(HELLO not in out and requests_seen(be) == before,
         "... a client certificate from another issuer is refused too (rc=%s)" % rc)
    rc, out, err = s_client(t, p_require, cert, ["-cert", ccert, "-key", ckey])
    t.ok(rc == 0 and HELLO in out,
         "... a client with a certificate from client-ca gets through end to end")
    if HELLO not in out:
        t.diag("rc=%s stderr=%r" % (rc, err[-300:]))
    rc, out, err = s_client(t, p_optional, cert)
    t.ok(rc == 0 and HELLO in out,
         "verify-client = optional: a client without a certificate gets through")
    rc, out, err = s_client(t, p_optional, cert, ["-cert", ccert, "-key", ckey])
    t.ok(rc == 0 and HELLO in out, "... and so does one with a certificate from client-ca")

    # --- the certificate chain: the cert file's, as it is -------------------------------
    # The issuing CA is in client-ca's trust store. OpenSSL left to itself would complete
    # a leaf-only chain from there and send the CA too.
    rc, out, err = s_client(t, p_leaf, ca, ["-showcerts"])
    sent = chain_sent(out)
    t.ok(rc == 0 and HELLO in out and sent == ["CN = localhost"],
         "a cert file with the leaf alone: the leaf alone is sent, the issuer in client-ca "
         "is not added (sent %r)" % sent)
    rc, out, err = s_client(t, p_chain, ca, ["-showcerts"])
    sent = chain_sent(out)
    t.ok(rc == 0 and HELLO in out and sent == ["CN = localhost", "CN = test client CA"],
         "a cert file with leaf and CA: both are sent, in the file's order (sent %r)" % sent)

    # --- a cipher string that selects nothing ---------------------------------------
    bad = t.write_config([fe(st.free_port(), tls={"ciphers": "NOPE"})], name="bad-ciphers.conf")
    with open(bad) as f:
        line = next(i for i, ln in enumerate(f, 1) if 'ciphers = "NOPE"' in ln)
    rc, out, err = t.sluice_check(bad)
    t.ok(rc == 1 and "configuration OK" not in out
         and re.search(re.escape(bad) + r":%d\b" % line, err),
         "ciphers = \"NOPE\": sluice -t exits 1 naming FILE:LINE of the ciphers key (:%d)"
         % line)
    if rc != 1 or bad not in err:
        t.diag("rc=%s stderr=%r" % (rc, err))

    sl.stop_and_check()


st.Test("tls-options").main(main)
