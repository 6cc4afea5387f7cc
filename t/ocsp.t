#!/usr/bin/env python3
# OCSP stapling (issue 6, test 4): a certs entry's `ocsp` file (DER, as `openssl ocsp
# -respout` writes it) is stapled for clients that ask (s_client -status); one that is
# stale, not yet valid, for another certificate, signed by someone else, of unknown status
# or not a response at all is not stapled and is logged with the file; a revoked one is
# stapled and logged. With an ECDSA and an RSA certificate each client gets the response
# of the certificate it was served. HUP reads the files again; a missing file is a config
# error naming FILE:LINE, at start (sluice -t) and on HUP (the running generation keeps
# its response). A response that expires while loaded stops being stapled, logged once.
#
# Good responses come from `openssl ocsp -index` (a real responder run offline). It can't
# backdate, so the stale, future and short-lived ones are signed by a few lines of Python
# (the cryptography package) with exactly the times wanted: no clock games, no long waits.
import datetime
import os
import re
import time

import servicetest as sv
import sluicetest as st

REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
RSA_ONLY = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:rsa_pkcs1_sha384"
WORKERS = 1  # "logged once per worker" is then "logged once"

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp as cocsp
    HAVE_CRYPTOGRAPHY = True
except ImportError:
    HAVE_CRYPTOGRAPHY = False


class Pki:
    """A CA, leaves it issued (cert file = leaf + CA) and OCSP responses about them."""

    def __init__(self, t):
        self.t = t
        self.ca_key = t.make_key("ca")
        self.ca = t.path("ca.pem")
        t._openssl("req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca, "-days",
                   "365", "-subj", "/CN=sluice OCSP test CA", "-addext",
                   "basicConstraints=critical,CA:TRUE", "-addext",
                   "keyUsage=critical,keyCertSign,cRLSign")
        # an unrelated CA, to sign responses that claim to be about our leaves
        self.rogue_key = t.make_key("rogue")
        self.rogue = t.path("rogue.pem")
        t._openssl("req", "-x509", "-new", "-key", self.rogue_key, "-out", self.rogue, "-days",
                   "365", "-subj", "/CN=sluice OCSP rogue", "-addext",
                   "basicConstraints=critical,CA:TRUE")
        t.write_file("leaf.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                     "basicConstraints=CA:FALSE\n")

    def leaf(self, name, serial, kind="ec"):
        """(cert file holding leaf + CA, leaf only, key)."""
        key = self.t.make_key(name, kind)
        csr, leaf = self.t.path(name + ".csr"), self.t.path(name + "-leaf.pem")
        self.t._openssl("req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr)
        self.t._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                        "-set_serial", "0x%X" % serial, "-days", "365", "-extfile",
                        self.t.path("leaf.ext"), "-out", leaf)
        chain = self.t.write_file(name + ".pem", open(leaf).read() + open(self.ca).read(),
                                  mode=0o644)
        return chain, leaf, key

    def respond(self, name, leaf, serial, status="V", signer=None, extra=()):
        """openssl ocsp as the CA's responder: a response about leaf, valid one day.
        status: V (good), R (revoked) or None (not in the index: unknown)."""
        index = self.t.path(name + ".index")
        line = ""
        if status == "V":
            line = "V\t301231235959Z\t\t%X\tunknown\t/CN=localhost\n" % serial
        elif status == "R":
            line = "R\t301231235959Z\t260101000000Z,keyCompromise\t%X\tunknown\t/CN=localhost\n" \
                % serial
        self.t.write_file(name + ".index", line)
        signer, signer_key = signer or (self.ca, self.ca_key)
        out = self.t.path(name + ".der")
        self.t._openssl("ocsp", "-index", index, "-rsigner", signer, "-rkey", signer_key,
                        "-CA", self.ca, "-issuer", self.ca, "-cert", leaf, "-no_nonce",
                        "-respout", out, "-ndays", "1", *extra)
        os.chmod(out, 0o644)
        return out

    def respond_at(self, name, leaf, this_update, next_update):
        """A good response signed by the CA with the given times (cryptography)."""
        load = lambda p: x509.load_pem_x509_certificate(open(p, "rb").read())
        ca, cert = load(self.ca), load(leaf)
        key = serialization.load_pem_private_key(open(self.ca_key, "rb").read(), None)
        resp = (cocsp.OCSPResponseBuilder()
                .add_response(cert=cert, issuer=ca, algorithm=hashes.SHA1(),
                              cert_status=cocsp.OCSPCertStatus.GOOD, this_update=this_update,
                              next_update=next_update, revocation_time=None,
                              revocation_reason=None)
                .responder_id(cocsp.OCSPResponderEncoding.HASH, ca)
                .sign(key, hashes.SHA256()))
        return self.t.write_file(name + ".der", resp.public_bytes(serialization.Encoding.DER),
                                 mode=0o644)


def status(port, cafile, ask=True, sigalgs=None, version="-tls1_3"):
    """s_client through sluice: (what it printed about OCSP, the stapled response's
    serial number or None, the exchange worked)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", cafile, "-verify_return_error", "-ign_eof", version]
    if ask:
        argv.append("-status")
    if sigalgs:
        argv += ["-sigalgs", sigalgs]
    rc, out, err, _ = st.run(argv, input=REQUEST, timeout=st.scaled(10))
    text = out.decode(errors="replace")
    worked = rc == 0 and "hello from app" in text
    if "OCSP response: no response sent" in text:
        return "none", None, worked
    m = re.search(r"OCSP Response Status: (\w+).*?Cert Status: (\w+)", text, re.S)
    serial = re.search(r"Certificate ID:.*?Serial Number: (\w+)", text, re.S)
    if m:
        return "%s/%s" % m.groups(), serial.group(1) if serial else None, worked
    return ("not asked" if "OCSP response" not in text else "?"), None, worked


def check_stapled(t, port, cafile, want, what, serial=None, **kw):
    got, ser, worked = status(port, cafile, **kw)
    good = worked and got == want and (serial is None or ser == serial)
    t.ok(good, "%s: %s (got %s, serial %s, exchange ok=%s)"
         % (what, "stapled: " + want if want != "none" else "nothing stapled", got, ser, worked))
    return good


def warned(sl, path, reason, after=0):
    """A warning naming the ocsp file and reason, among the log lines from index after."""
    rx = re.compile(r"warning: .*:\d+: ocsp %s: not stapled: .*%s" % (re.escape(path), reason))
    return st.wait_until(lambda: [ln for ln in sl.log_lines()[after:] if rx.search(ln)],
                         st.scaled(5))


def reload_and_settle(t, sl, what):
    old = sl.worker_pids()
    gen, slots = sv.reload(sl)
    left = st.wait_pids_gone(old, st.scaled(10))
    t.ok(gen is not None and not left, "%s: generation %s serves, the old one is gone (left %s)"
         % (what, gen, left))


def main(t):
    if not HAVE_CRYPTOGRAPHY:
        t.skip_all("the Python cryptography package is not installed (Debian: "
                   "python3-cryptography); it signs the stale and short-lived responses")
    pki = Pki(t)
    ec, ec_leaf, ec_key = pki.leaf("ec", 0x1001)
    ec2, ec2_leaf, _ = pki.leaf("ec2", 0x1002)
    rsa, rsa_leaf, rsa_key = pki.leaf("rsa", 0x1003, kind="rsa")
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    files = {
        "good": pki.respond("good", ec_leaf, 0x1001),
        "stale": pki.respond_at("stale", ec_leaf, now - 2 * day, now - day),
        "future": pki.respond_at("future", ec_leaf, now + day, now + 2 * day),
        "other": pki.respond("other", ec2_leaf, 0x1002),
        "garbage": t.write_file("garbage.der", os.urandom(600), mode=0o644),
        "rogue": pki.respond("rogue", ec_leaf, 0x1001, signer=(pki.rogue, pki.rogue_key)),
        "unknown": pki.respond("unknown", ec_leaf, 0x1001, status=None),
        "revoked": pki.respond("revoked", ec_leaf, 0x1001, status="R"),
        "ec": pki.respond("ec-resp", ec_leaf, 0x1001),
        # without the signer's certificate in it: sluice finds it in the cert file
        "rsa": pki.respond("rsa-resp", rsa_leaf, 0x1003, extra=("-resp_no_certs",)),
    }
    be = t.start_backend("app", "unix")
    # a frontend per response, "dual" with the ECDSA and the RSA certificate, "none" without
    names = [n for n in files if n not in ("ec", "rsa")] + ["dual", "none"]
    ports = dict(zip(names, st.free_ports(len(names))))
    fes = []
    for name in names:
        fe = t.frontend(ports[name], be.address, ec, ec_key)
        if name == "good":
            fe["certs"][0]["ocsp"] = "good.der"  # relative to the config's folder
        elif name == "dual":
            fe["certs"] = [{"cert": ec, "key": ec_key, "ocsp": files["ec"]},
                           {"cert": rsa, "key": rsa_key, "ocsp": files["rsa"]}]
        elif name != "none":
            fe["certs"][0]["ocsp"] = files[name]
        fes.append(fe)
    conf = t.write_config(fes, workers=WORKERS)

    # 8. a missing file is a config error naming the ocsp line
    missing = t.path("missing.der")
    text = open(conf).read().replace('"%s"' % files["stale"], '"%s"' % missing)
    broken = t.write_file("broken.conf", text, mode=0o644)
    line = next(i + 1 for i, ln in enumerate(text.splitlines()) if "missing.der" in ln)
    rc, out, err = t.sluice_check(broken)
    t.ok(rc == 1 and re.search(r"%s:%d: ocsp %s: No such file" % (re.escape(broken), line,
                                                                re.escape(missing)), err),
         "a missing ocsp file: sluice -t exits 1 naming %s:%d (rc=%s, %r)"
         % (os.path.basename(broken), line, rc, err.strip()[-200:]))

    sl = t.start_sluice(conf)
    sl.wait_workers(WORKERS)

    # 1. a good response is stapled; 7. a client that does not ask still gets through
    check_stapled(t, ports["good"], pki.ca, "successful/good", "good response, TLS 1.3",
                  serial="1001")
    check_stapled(t, ports["good"], pki.ca, "successful/good", "good response, TLS 1.2",
                  serial="1001", version="-tls1_2")
    check_stapled(t, ports["good"], pki.ca, "not asked", "a client without -status", ask=False)
    check_stapled(t, ports["none"], pki.ca, "none", "a certificate without ocsp")
    t.ok(sl.wait_log(r"info: .*ocsp %s: stapling it for %s, valid until 20" %
                     (re.escape(files["good"]), re.escape(ec))),
         "the master logs which response it staples and until when")

    # 2-4 and the other bad ones: not stapled, logged with the file and the reason
    bad = [("stale", "it expired on"), ("future", "it is not valid yet"),
           ("other", "the response is for another certificate"),
           ("garbage", "not a DER OCSP response"),
           ("rogue", "the signature does not check out against the issuer"),
           ("unknown", "the certificate status is unknown")]
    for name, reason in bad:
        check_stapled(t, ports[name], pki.ca, "none", "%s response" % name)
        t.ok(warned(sl, files[name], reason),
             "%s response: a warning names the file and says \"%s\"" % (name, reason))

    # revoked: stapled (clients must learn it), and a warning
    check_stapled(t, ports["revoked"], pki.ca, "successful/revoked", "revoked response")
    t.ok(sl.wait_log(r"warning: .*ocsp %s: certificate %s was REVOKED on " %
                     (re.escape(files["revoked"]), re.escape(ec))),
         "revoked response: a warning says the certificate is revoked")

    # 6. ECDSA and RSA in one frontend: each client gets its certificate's response
    for version in ("-tls1_3", "-tls1_2"):
        check_stapled(t, ports["dual"], pki.ca, "successful/good",
                      "dual certificates %s, an ECDSA client: the ECDSA one's response" % version,
                      serial="1001", version=version)
        check_stapled(t, ports["dual"], pki.ca, "successful/good",
                      "dual certificates %s, an RSA-only client: the RSA one's response" % version,
                      serial="1003", version=version, sigalgs=RSA_ONLY)

    # 5. HUP re-reads the files: stale -> good is stapled, good -> garbage is not any more;
    # a short-lived response goes in too, for the expiry check below
    sv.replace_file(files["good"], files["stale"])
    t.write_file("good.der.new", os.urandom(300), mode=0o644)
    os.replace(t.path("good.der.new"), files["good"])
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=st.scaled(8))
    pki.respond_at("short", ec_leaf, soon - day, soon)
    sv.replace_file(t.path("short.der"), files["future"])
    lines_before = len(sl.log_lines())
    reload_and_settle(t, sl, "HUP after replacing files")
    check_stapled(t, ports["future"], pki.ca, "successful/good",
                  "HUP: a response valid for a few seconds more is stapled")
    check_stapled(t, ports["stale"], pki.ca, "successful/good",
                  "HUP: the stale file replaced by a good one is stapled now", serial="1001")
    check_stapled(t, ports["good"], pki.ca, "none",
                  "HUP: the good file replaced by garbage is not stapled any more")
    t.ok(warned(sl, files["good"], "not a DER OCSP response", after=lines_before),
         "HUP: the garbage now in the good file is logged")

    # a file removed: the reload fails naming the line, the running generation keeps its
    # response
    os.rename(files["stale"], files["stale"] + ".away")
    os.kill(sl.pid, 1)
    hit = sl.wait_log(r"error: reload failed, generation \d+ keeps serving: .*:\d+: ocsp %s: "
                      r"No such file" % re.escape(files["stale"]), st.scaled(10))
    t.ok(hit, "HUP with an ocsp file removed: the reload fails, naming the file")
    check_stapled(t, ports["stale"], pki.ca, "successful/good",
                  "HUP with the file removed: the running generation still staples")
    os.rename(files["stale"] + ".away", files["stale"])

    # a response that expires while loaded is no longer stapled, and that is logged once
    wait = (soon - datetime.datetime.now(datetime.timezone.utc)).total_seconds() + 1
    if wait > 0:
        time.sleep(wait)
    expired = r"warning: .*ocsp %s: the response expired at .*no longer stapled" % re.escape(
        files["future"])
    check_stapled(t, ports["future"], pki.ca, "none",
                  "a response past its nextUpdate since it was loaded is not stapled")
    check_stapled(t, ports["future"], pki.ca, "none", "nor on the next handshake")
    t.ok(len(sl.wait_log(expired)) == 1 and
         len([ln for ln in sl.log_lines() if re.search(expired, ln)]) == 1,
         "the expiry is logged once (one worker), not per handshake")
    check_stapled(t, ports["stale"], pki.ca, "successful/good",
                  "other certificates keep their responses")
    sl.stop_and_check(allow_errors=[r"reload failed, generation \d+ keeps serving: .*ocsp"])


st.Test("ocsp").main(main)
