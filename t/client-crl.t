#!/usr/bin/env python3
# Certificate revocation lists for client certificates (issue 6, test 6): with
# verify-client = "require" and a crl, a client certificate signed by client-ca gets
# through, a revoked one is refused with "certificate revoked" in the connection log;
# under "optional" a client without a certificate still gets through and a revoked one
# does not. A CRL past its next update is a warning at load and refuses every client of
# its issuer. SIGHUP reads the file again: a certificate revoked since is refused after
# it. A crl without verify-client, or a file holding no CRL, is a config error naming the
# line.
import os
import re
import time

import servicetest as sv
import sluicetest as st

HELLO = "hello from app"
CA_CNF = """[ca]
default_ca = d
[d]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
policy = p
unique_subject = no
copy_extensions = none
[p]
commonName = supplied
organizationName = optional
[client]
extendedKeyUsage = clientAuth
"""


class ClientCA:
    """A CA run with `openssl ca`, so that it can revoke and publish CRLs."""

    def __init__(self, t):
        self.t = t
        self.dir = t.path("ca")
        os.makedirs(self.dir)
        for name, text in (("ca.cnf", CA_CNF), ("index.txt", ""), ("serial", "10\n"),
                           ("crlnumber", "01\n")):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.key = t.make_key("client-ca", "ec")
        self.cert = t.path("client-ca.pem")
        t._openssl("req", "-x509", "-new", "-key", self.key, "-out", self.cert, "-days", "30",
                   "-subj", "/CN=sluice test client CA", "-addext",
                   "basicConstraints=critical,CA:TRUE", "-addext",
                   "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(self.cert, 0o644)

    def _ca(self, *args):
        self.t._openssl("ca", "-batch", "-config", "ca.cnf", "-cert", self.cert, "-keyfile",
                        self.key, *args, cwd=self.dir)

    def issue(self, name):
        key = self.t.make_key(name, "ec")
        csr = self.t.path(name + ".csr")
        cert = self.t.path(name + ".pem")
        self.t._openssl("req", "-new", "-key", key, "-subj", "/CN=" + name, "-out", csr)
        self._ca("-in", csr, "-out", cert, "-days", "30", "-notext", "-extensions", "client")
        os.chmod(cert, 0o644)
        return cert, key

    def revoke(self, cert):
        self._ca("-revoke", cert)

    def crl(self, path, *validity):
        self._ca("-gencrl", "-out", path, *(validity or ("-crldays", "30")))
        os.chmod(path, 0o644)
        return path


def s_client(port, server_ca, cert=None, key=None):
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", server_ca, "-ign_eof"]
    if cert:
        argv += ["-cert", cert, "-key", key]
    rc, out, err, _ = st.run(argv, input=b"GET / HTTP/1.0\r\n\r\n", timeout=st.scaled(10))
    return rc == 0 and HELLO in out.decode(errors="replace")


def connection_line(sl, client_port_count):
    """The newest connection log line with reason=handshake_error, after waiting for it."""
    lines = sl.wait_log(r"event=connection .*reason=handshake_error", st.scaled(5),
                        count=client_port_count)
    return lines[-1] if lines else ""


def check_config_errors(t, be, cert, key, ca, crl):
    port = st.free_port()
    cases = [
        ("nocheck.conf", {"client-ca": ca, "crl": crl},
         r"crl needs verify-client", "a crl without verify-client"),
        ("garbage.conf", {"client-ca": ca, "verify-client": "require",
                          "crl": t.write_file("garbage.crl", "not a CRL\n", 0o644)},
         r"garbage\.conf:\d+: crl \S*garbage\.crl: no PEM CRL in the file",
         "a crl file holding no CRL"),
    ]
    for name, extra, pattern, what in cases:
        conf = t.write_config([t.frontend(port, be.address, cert, key, **extra)], name=name)
        rc, out, err, _ = st.run([os.environ["SLUICE"], "-t", "-f", conf],
                                 timeout=st.scaled(20))
        msg = (out + err).decode(errors="replace").strip()
        t.ok(rc == 1 and re.search(pattern, msg), "%s is a config error naming it (rc %d: %s)"
             % (what, rc, msg.splitlines()[-1:] if msg else ""))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    ca = ClientCA(t)
    good_cert, good_key = ca.issue("good")
    bad_cert, bad_key = ca.issue("revoked")
    later_cert, later_key = ca.issue("later")
    ca.revoke(bad_cert)
    crl = ca.crl(t.path("clients.crl"))
    stale = ca.crl(t.path("stale.crl"), "-crlsec", "1")
    p_require, p_optional, p_stale = st.free_ports(3)

    def fe(port, mode, crlfile):
        return t.frontend(port, be.address, cert, key,
                          **{"client-ca": ca.cert, "verify-client": mode, "crl": crlfile})

    time.sleep(1.5)  # the stale list's next update is past before sluice loads it
    conf = t.write_config([fe(p_require, "require", crl), fe(p_optional, "optional", crl),
                           fe(p_stale, "require", stale)], log_connections=True)
    sl = t.start_sluice(conf)

    t.ok(s_client(p_require, cert, good_cert, good_key),
         "require + crl: a certificate from client-ca that is not revoked gets through")
    t.ok(not s_client(p_require, cert, bad_cert, bad_key),
         "require + crl: a revoked certificate is refused")
    line = connection_line(sl, 1)
    t.ok("certificate revoked" in line,
         "... and the connection log says why: %s" % re.sub(r".*(error=.*)", r"\1", line))
    t.ok(s_client(p_optional, cert), "optional + crl: a client without a certificate gets "
         "through")
    t.ok(s_client(p_optional, cert, good_cert, good_key),
         "optional + crl: one with a valid certificate too")
    t.ok(not s_client(p_optional, cert, bad_cert, bad_key),
         "optional + crl: a revoked certificate is refused")

    warned = sl.wait_log(r"warning: \S+:\d+: crl \S*stale\.crl: a CRL's next update is past",
                         st.scaled(2))
    t.ok(warned, "a CRL past its next update is a warning at load, naming the file")
    t.ok(not s_client(p_stale, cert, good_cert, good_key),
         "... and refuses even a certificate it does not list")
    line = connection_line(sl, 3)
    t.ok("CRL has expired" in line,
         "... the connection log says so: %s" % re.sub(r".*(error=.*)", r"\1", line))

    t.ok(s_client(p_require, cert, later_cert, later_key),
         "before HUP: a certificate not yet revoked gets through")
    ca.revoke(later_cert)
    ca.crl(crl)
    gen, _ = sv.reload(sl)
    t.ok(gen == 2 and not s_client(p_require, cert, later_cert, later_key),
         "after the CA revoked it and HUP (generation %s): it is refused" % gen)
    t.ok(s_client(p_require, cert, good_cert, good_key),
         "... while a certificate still valid gets through")
    sl.stop_and_check(allow_errors=())

    check_config_errors(t, be, cert, key, ca.cert, crl)


st.Test("client-crl").main(main)
