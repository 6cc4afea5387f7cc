#!/usr/bin/env python3
# Dual certificates (issue 6, test 2): a frontend with an ECDSA and an RSA certificate for
# the same name serves the ECDSA one to clients that accept ECDSA signatures and the RSA
# one to a client limited to RSA signature algorithms, over TLS 1.3 and 1.2, whichever
# order the config lists them in; a client that accepts neither gets a handshake failure,
# not a wrong certificate.
import re

import sluicetest as st

REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
RSA_ONLY = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:rsa_pkcs1_sha384"
ECDSA_ONLY = "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384"


def served(t, port, cafile, version, sigalgs=None):
    """(the server certificate's public-key type from s_client, the exchange worked)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", cafile, "-verify_return_error", "-ign_eof", version]
    if sigalgs:
        argv += ["-sigalgs", sigalgs]
    rc, out, err, _ = st.run(argv, input=REQUEST, timeout=st.scaled(10))
    text = out.decode(errors="replace")
    m = re.search(r"Server public key is (\d+) bit", text)
    kind = re.search(r"Peer signature type: (\S+)", text)
    return ((kind.group(1) if kind else None), (m.group(1) if m else None),
            rc == 0 and "hello from app" in text)


def main(t):
    ec_cert, ec_key = t.make_cert("ec", kind="ec")
    rsa_cert, rsa_key = t.make_cert("rsa", kind="rsa")
    be = t.start_backend("app", "unix")
    ec = {"cert": ec_cert, "key": ec_key}
    rsa = {"cert": rsa_cert, "key": rsa_key}
    # the same pair in both orders: the client's algorithms decide, not the config's order
    orders = {"ECDSA first": [ec, rsa], "RSA first": [rsa, ec]}
    ports = dict(zip(orders, st.free_ports(len(orders))))
    fes = []
    for name, certs in orders.items():
        fe = t.frontend(ports[name], be.address, ec_cert, ec_key)
        fe["certs"] = certs
        fes.append(fe)
    sl = t.start_sluice(t.write_config(fes))
    bundle = t.write_file("both.pem", open(ec_cert, "rb").read() + open(rsa_cert, "rb").read())
    for name, port in ports.items():
        for version in ("-tls1_3", "-tls1_2"):
            what = "%s, %s" % (name, version)
            sig, bits, ok = served(t, port, bundle, version)
            t.ok(ok and sig == "ECDSA" and bits == "256",
                 "%s, any signature algorithm: the ECDSA certificate (%s, %s bits, ok=%s)"
                 % (what, sig, bits, ok))
            sig, bits, ok = served(t, port, bundle, version, RSA_ONLY)
            t.ok(ok and sig in ("RSA-PSS", "RSA") and bits == "2048",
                 "%s, RSA signature algorithms only: the RSA certificate (%s, %s bits, ok=%s)"
                 % (what, sig, bits, ok))
            sig, bits, ok = served(t, port, bundle, version, ECDSA_ONLY)
            t.ok(ok and sig == "ECDSA",
                 "%s, ECDSA signature algorithms only: the ECDSA certificate (%s, ok=%s)"
                 % (what, sig, ok))
    sig, bits, ok = served(t, ports["ECDSA first"], bundle, "-tls1_3", "ed25519")
    t.ok(not ok and sig is None, "-tls1_3, Ed25519 only: the handshake fails (%s, ok=%s)"
         % (sig, ok))
    sl.stop_and_check()


st.Test("dual-certs").main(main)
