#!/usr/bin/env python3
# Config checking with `sluice -t`: the shipped example and a full example of our own
# pass; broken configs exit 1 and name FILE:LINE (or the offending file); floats for
# durations, relative paths, an expired certificate (warning only) and a backend socket
# that does not exist yet are all fine, also when sluice actually runs.
import grp
import os
import pwd
import re
import shutil

import sluicetest as st

SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehavior")


def base_lines(port, cert, key, backend):
    return [
        "# config.t",
        'log-level = "info";',
        "handshake-timeout = 10;",
        "drain-timeout = 2;",
        "frontends = (",
        "  {",
        '    listen = "127.0.0.1:%d";' % port,
        '    backend = "%s";' % backend,
        '    certs = ( { cert = "%s"; key = "%s"; } );' % (cert, key),
        "  }",
        ");",
    ]


def with_line(lines, match, new):
    """Replace the line containing match by new (or insert new as line 3 if match is
    None); returns (text, 1-based line number of new)."""
    out = list(lines)
    if match is None:
        out.insert(2, new)
        idx = 2
    else:
        idx = next(i for i, ln in enumerate(out) if match in ln)
        out[idx] = new
    return "\n".join(out) + "\n", idx + 1


def check_ok(t, conf, desc, cwd=None, as_nobody=False):
    rc, out, err = t.sluice_check(conf, cwd=cwd, as_nobody=as_nobody)
    good = rc == 0 and "configuration OK" in out and not SANITIZER.search(err)
    t.ok(good, desc)
    if not good:
        t.diag("rc=%s stdout=%r stderr=%r" % (rc, out, err))
    return rc, out, err


def check_bad(t, conf, desc, names, as_nobody=False):
    """Exit 1, no "configuration OK", stderr matches every regex in names."""
    rc, out, err = t.sluice_check(conf, as_nobody=as_nobody)
    missing = [n for n in names if not re.search(n, err)]
    good = (rc == 1 and "configuration OK" not in out and not missing
            and not SANITIZER.search(err))
    t.ok(good, "%s: exits 1 and names the place" % desc)
    if not good:
        t.diag("rc=%s stdout=%r stderr=%r want %r" % (rc, out, err, missing))


def full_example(t, d, port, port6):
    """Every key of DESIGN.md section 5, durations as floats, relative paths."""
    os.makedirs(os.path.join(d, "certs"), exist_ok=True)
    cert, key = t.make_cert("full")
    shutil.copy(cert, os.path.join(d, "certs", "site.pem"))
    shutil.copy(key, os.path.join(d, "certs", "site.key"))
    rcert, rkey = t.make_cert("full-rsa", kind="rsa")
    shutil.copy(rcert, os.path.join(d, "certs", "site-rsa.pem"))
    shutil.copy(rkey, os.path.join(d, "certs", "site-rsa.key"))
    text = """# full example written by t/config.t: every key, relative paths, float durations
workers = 2;
daemon = false;
pidfile = "run/sluice.pid";
user = "nobody"; group = "%(group)s";
chroot = "";
log-level = "debug";
syslog = false; syslog-facility = "local3";
log-file = "";
log-connections = true;
stats-file = "run/sluice.stats";

handshake-permits = 1024;
handshake-timeout = 10.0;
backend-connect-timeout = 0.5;
idle-timeout = 300.0;
close-timeout = 5;
drain-timeout = 30.5;
max-connections = 10000;
backlog = 0;
heartbeat-interval = 1; watchdog-timeout = 5.0;

tls = {
  protocols = [ "TLSv1.2", "TLSv1.3" ];
  ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20";
  ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  groups = "X25519:P-256";
  session-tickets = true;
  ticket-key-file = "";
};

frontends = (
  {
    listen = "*:%(port)d";
    backend = "unix:run/app.sock";
    proxy-protocol = "off";
    accept-proxy = false;
    certs = ( { cert = "certs/site.pem"; key = "certs/site.key"; },
              { cert = "certs/site-rsa.pem"; key = "certs/site-rsa.key"; } );
    alpn = [ "h2", "http/1.1" ];
    client-ca = "certs/site.pem"; verify-client = "optional";
  },
  {
    listen = "[::1]:%(port6)d";
    backend = "[::1]:8080";
    certs = ( { cert = "certs/site.pem"; key = "certs/site.key"; } );
    tls = { protocols = [ "TLSv1.3" ]; session-tickets = false; };
  }
);
""" % {"port": port, "port6": port6,
       "group": grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name}
    p = os.path.join(d, "sluice.conf")
    with open(p, "w") as f:
        f.write(text)
    return p


def main(t):
    cert, key = t.make_cert("server")
    other_cert, other_key = t.make_cert("other")
    port, port6, rport = st.free_ports(3)
    backend = "unix:" + t.path("app.sock")  # does not exist: fine at start
    lines = base_lines(port, cert, key, backend)

    def conf_file(name, text):
        return t.write_file(name + ".conf", text, 0o644)

    # --- valid configs --------------------------------------------------------------
    base = conf_file("base", "\n".join(lines) + "\n")
    check_ok(t, base, "a minimal config passes -t (backend socket does not exist yet)")

    example = os.path.join(st.SRCDIR, "conf", "sluice.conf") if st.SRCDIR else ""
    if example and os.path.exists(example):
        with open(example) as f:
            text = f.read()
        text, n1 = re.subn(r'"/etc/sluice/site\.pem"', '"%s"' % cert, text)
        text, n2 = re.subn(r'"/etc/sluice/site\.key"', '"%s"' % key, text)
        if n1 == 0 or n2 == 0:
            t.diag("example does not use /etc/sluice/site.pem and site.key; checked as is")
        check_ok(t, conf_file("example", text),
                 "the shipped example conf/sluice.conf passes -t (with test cert/key)")
    else:
        t.skip("conf/sluice.conf not found under SLUICE_SRCDIR=%r" % st.SRCDIR)

    full_dir = t.path("etc-full")
    full = full_example(t, full_dir, rport, port6)
    check_ok(t, full, "a full example with every key, float durations and relative paths "
             "passes -t when run from /", cwd="/")

    floats = "\n".join(lines).replace("handshake-timeout = 10;", "handshake-timeout = 10.0;")
    floats += "\nbackend-connect-timeout = 0.25;\nidle-timeout = 1e2;\n"
    check_ok(t, conf_file("floats", floats), "durations as floats (10.0, 0.25, 1e2) pass -t")

    rel_dir = t.path("etc-rel")
    os.makedirs(os.path.join(rel_dir, "certs"))
    shutil.copy(cert, os.path.join(rel_dir, "certs", "server.pem"))
    shutil.copy(key, os.path.join(rel_dir, "certs", "server.key"))
    rel_lines = base_lines(port, "certs/server.pem", "certs/server.key", "unix:app.sock")
    rel = os.path.join(rel_dir, "sluice.conf")
    with open(rel, "w") as f:
        f.write("\n".join(rel_lines) + "\n")
    check_ok(t, rel, "relative cert, key and backend paths resolve against the config "
             "folder (run from /)", cwd="/")
    # The same file one folder up, where certs/ does not exist: the error names the
    # path resolved against the config's own folder, not against the cwd.
    rel2_dir = t.path("etc-rel2")
    os.makedirs(rel2_dir)
    rel2 = os.path.join(rel2_dir, "sluice.conf")
    shutil.copy(rel, rel2)
    rc, out, err = t.sluice_check(rel2, cwd=rel_dir)
    t.ok(rc == 1 and os.path.join(rel2_dir, "certs/server.pem") in err,
         "a relative cert path is resolved against the config folder, not the cwd")
    if rc != 1:
        t.diag("rc=%s stderr=%r" % (rc, err))

    exp_cert, exp_key = t.make_cert("expired", expired=True)
    exp = conf_file("expired", "\n".join(base_lines(port, exp_cert, exp_key, backend)) + "\n")
    rc, out, err = check_ok(t, exp, "an expired certificate passes -t")
    t.ok(re.search(r"warning:.*" + re.escape(exp_cert), err) and "expired" in err
         and "error:" not in err,
         "... with a warning naming the expired certificate, no error")
    if "warning" not in err:
        t.diag("stderr=%r" % err)

    # --- broken configs: each exits 1 and names FILE:LINE -------------------------------
    def bad(name, match, new, desc, extra_names=()):
        text, line = with_line(lines, match, new)
        p = conf_file("bad-" + name, text)
        shown = new.strip() if len(new.strip()) < 60 else new.strip()[:56] + "..."
        check_bad(t, p, desc + " (%s)" % shown,
                  [re.escape(p) + ":%d\\b" % line] + list(extra_names))

    bad("syntax", None, "workers = ;", "syntax error")
    bad("unknown", None, "wrokers = 2;", "unknown top-level key")
    bad("unknown-fe", "backend =", '    bakend = "unix:app.sock";', "unknown frontend key")
    bad("unknown-tls", None, 'tls = { protocol = [ "TLSv1.3" ]; };', "unknown tls key")
    bad("range-workers", None, "workers = 0;", "out-of-range workers")
    bad("range-workers2", None, "workers = 1025;", "out-of-range workers")
    bad("range-timeout", "handshake-timeout", "handshake-timeout = 0;",
        "out-of-range handshake-timeout")
    bad("range-negative", "handshake-timeout", "handshake-timeout = -1.5;",
        "negative duration")
    bad("range-backlog", None, "backlog = 65536;", "out-of-range backlog")
    bad("range-maxconn", None, "max-connections = -1;", "negative max-connections")
    bad("workers-wrap", None, "workers = 4294967297;", "workers = 2^32+1 (must not wrap to 1)")
    bad("workers-huge", None, "workers = 99999999999999999999;", "workers beyond 64 bits")
    bad("nonfinite", "handshake-timeout", "handshake-timeout = 1e999;",
        "non-finite duration")
    bad("nonfinite-neg", None, "idle-timeout = -1e999;", "non-finite negative duration")
    bad("workers-float", None, "workers = 2.5;", "non-integer workers")
    bad("type", "handshake-timeout", 'handshake-timeout = "10";', "duration as a string")
    bad("enum", "log-level", 'log-level = "loud";', "unknown log-level")
    bad("listen-port", "listen =", '    listen = "127.0.0.1:99999";', "bad listen port")
    bad("listen-noport", "listen =", '    listen = "127.0.0.1";', "listen without port")
    bad("listen-bracket", "listen =", '    listen = "[::1:443";', "malformed IPv6 listen")
    bad("listen-empty", "listen =", '    listen = "";', "empty listen")
    bad("backend-noport", "backend =", '    backend = "127.0.0.1";', "backend without port")
    bad("backend-port0", "backend =", '    backend = "127.0.0.1:0";', "backend port 0")
    bad("backend-star", "backend =", '    backend = "*:8080";', "backend \"*:8080\"")
    bad("backend-unix", "backend =", '    backend = "unix:";', "backend unix: without path")
    bad("backend-long", "backend =", '    backend = "unix:/%s";' % ("x" * 200),
        "backend unix path longer than sun_path")
    # a cross-key check may name the key's line or its frontend's opening line
    text, line = with_line(lines, "backend =", '    backend = "%s"; verify-client = "require";'
                           % backend)
    p = conf_file("bad-verify", text)
    fe_line = lines.index("  {") + 1
    check_bad(t, p, "verify-client without client-ca",
              [re.escape(p) + ":(%d|%d)\\b" % (line, fe_line)])
    bad("protocols", None, 'tls = { protocols = [ "SSLv3" ]; };', "protocol SSLv3")
    bad("ciphers", None, 'tls = { ciphers = "NO-SUCH-CIPHER"; protocols = [ "TLSv1.2" ]; };',
        "cipher list selecting nothing")

    # certificates and keys: name FILE:LINE and the offending file
    missing = t.path("no-such-dir", "missing.pem")
    text, line = with_line(lines, "certs =", '    certs = ( { cert = "%s"; key = "%s"; } );'
                           % (missing, key))
    p = conf_file("bad-missing-cert", text)
    check_bad(t, p, "missing certificate file",
              [re.escape(p) + ":%d\\b" % line, re.escape(missing)])

    text, line = with_line(lines, "certs =", '    certs = ( { cert = "%s"; key = "%s"; } );'
                           % (cert, other_key))
    p = conf_file("bad-mismatch", text)
    check_bad(t, p, "key not matching the certificate",
              [re.escape(p) + ":%d\\b" % line, re.escape(other_key)])

    junk = t.write_file("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64 !!\n"
                        "-----END CERTIFICATE-----\n", 0o644)
    text, line = with_line(lines, "certs =", '    certs = ( { cert = "%s"; key = "%s"; } );'
                           % (junk, key))
    p = conf_file("bad-junk-cert", text)
    check_bad(t, p, "certificate file that is not a certificate",
              [re.escape(p) + ":%d\\b" % line, re.escape(junk)])

    # unreadable key: sluice -t run as nobody, key mode 000, everything else readable
    kdir = t.path("keys")
    os.makedirs(kdir, mode=0o755)
    os.chmod(kdir, 0o755)
    locked = os.path.join(kdir, "locked.key")
    shutil.copy(key, locked)
    text, line = with_line(lines, "certs =", '    certs = ( { cert = "%s"; key = "%s"; } );'
                           % (cert, locked))
    p = conf_file("bad-unreadable", text)
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        t.skip("unreadable key needs root and setpriv (run sluice -t as nobody)", 2)
    else:
        os.chmod(locked, 0o644)
        check_ok(t, p, "control: the same config passes -t as nobody while the key is "
                 "readable", as_nobody=True)
        os.chmod(locked, 0)
        check_bad(t, p, "unreadable key (mode 000, -t as nobody)",
                  [re.escape(p) + ":%d\\b" % line, re.escape(locked)], as_nobody=True)

    p = t.path("does-not-exist.conf")
    rc, out, err = t.sluice_check(p)
    t.ok(rc == 1 and p in err, "a config file that does not exist: exits 1 and names it")

    empty = conf_file("bad-nofrontends", "\n".join(lines[:4]) + "\n")
    rc, out, err = t.sluice_check(empty)
    t.ok(rc == 1 and empty in err, "a config without frontends: exits 1 and names the file")

    dup = "\n".join(lines[:-1]) + ",\n" + "\n".join(lines[5:]) + "\n"
    p = conf_file("bad-duplicate-listen", dup)
    rc, out, err = t.sluice_check(p)
    t.ok(rc == 1 and re.search(re.escape(p) + r":\d+", err),
         "two frontends on the same listen address: exits 1 and names FILE:LINE")
    if rc != 1:
        t.diag("rc=%s stderr=%r" % (rc, err))

    review_fixes(t, lines, cert, key, port, backend, conf_file)

    # --- the relative-path config actually runs from /; backend appears after start -----
    sl = t.start_sluice(rel, cwd="/")
    rc, body, err, _ = t.curl(port, "/", cacert=cert)
    t.ok(rc != 0, "before the backend exists, the request fails (curl rc=%s)" % rc)
    be = t.start_backend("late", "unix", path=os.path.join(rel_dir, "app.sock"))
    rc, body, err, _ = t.curl(port, "/", cacert=cert)
    t.ok(rc == 0 and body == b"hello from late\n",
         "a backend started after sluice, at a relative unix: path, is reached")
    if rc != 0:
        t.diag("curl rc=%s err=%s" % (rc, err))
    sl.stop_and_check()


def two_frontends(lines, listen1, listen2):
    """base_lines with its frontend listening on listen1, then a second frontend on
    listen2. Returns (text, line of the second frontend's "{", line of its listen)."""
    first = [ln if "listen =" not in ln else '    listen = "%s";' % listen1 for ln in lines]
    second = [ln if "listen =" not in ln else '    listen = "%s";' % listen2
              for ln in lines[lines.index("  {"):]]
    out = first[:-1]
    out[-1] += ","
    brace = len(out) + 1
    out += second
    return "\n".join(out) + "\n", brace, brace + 1


def review_fixes(t, lines, cert, key, port, backend, conf_file):
    """Overlapping listens, a wrapped integer on the line after its key, @include beside
    the config, FIFOs as cert/key/CA paths, a config reached through a symlink."""
    # overlapping listen addresses are refused by address, not by text
    host = st.socket.getaddrinfo("localhost", None, type=st.socket.SOCK_STREAM,
                                 flags=st.socket.AI_ADDRCONFIG)[0][4][0]
    host = "[%s]" % host if ":" in host else host
    for name, l1, l2 in (("any", "127.0.0.1:%d" % port, "*:%d" % port),
                         ("name", "localhost:%d" % port, "%s:%d" % (host, port))):
        text, brace, listen = two_frontends(lines, l1, l2)
        p = conf_file("bad-overlap-" + name, text)
        check_bad(t, p, "frontends on %s and %s overlap" % (l1, l2),
                  [re.escape(p) + ":(%d|%d)\\b" % (brace, listen), "overlap"])
    text, _, _ = two_frontends(lines, "127.0.0.1:%d" % port, "127.0.0.2:%d" % port)
    check_ok(t, conf_file("overlap-distinct", text),
             "frontends on 127.0.0.1:P and 127.0.0.2:P (same port, distinct hosts) pass -t")

    # a wrapped integer whose literal sits on the line after the key
    text = "\n".join(lines[:2] + ["max-connections =", "  4294967297;"] + lines[2:]) + "\n"
    p = conf_file("bad-maxconn-wrap-nextline", text)
    check_bad(t, p, "max-connections = <newline> 4294967297 (2^32+1 on the next line)",
              [re.escape(p) + ":3\\b", "number too large"])

    # @include "inc.conf" is found beside the config, whatever the cwd
    inc_dir = t.path("etc-include")
    os.makedirs(inc_dir)
    be = t.start_backend("inc", "unix")
    iport = st.free_port()
    inc_lines = base_lines(iport, cert, key, be.address)
    with open(os.path.join(inc_dir, "inc.conf"), "w") as f:
        f.write("\n".join(inc_lines[inc_lines.index("frontends = ("):]) + "\n")
    main_conf = os.path.join(inc_dir, "sluice.conf")
    # its own pidfile and stats file: the defaults in /run may belong to an installed sluice
    own_files = ['pidfile = "%s";' % t.path("inc.pid"), 'stats-file = "%s";' % t.path("inc.stats")]
    with open(main_conf, "w") as f:
        f.write("\n".join(inc_lines[:inc_lines.index("frontends = (")] + own_files)
                + '\n@include "inc.conf"\n')
    rc, _, _ = check_ok(t, main_conf, '@include "inc.conf" (relative) resolves beside the '
                        "config when run from /", cwd="/")
    if rc == 0:
        sl = t.start_sluice(main_conf, name="sluice-include", cwd="/", ports=[iport])
        rc, body, err, _ = t.curl(iport, "/", cacert=cert)
        t.ok(rc == 0 and body == b"hello from inc\n",
             "... and sluice run from / serves the frontend from the included file")
        if rc != 0:
            t.diag("curl rc=%s err=%s" % (rc, err))
        sl.stop_and_check(what="sluice with @include")
    else:
        t.ok(False, "... and sluice run from / serves the frontend from the included file "
             "(not started: -t failed)")
        t.skip("sluice with @include not started", 3)
    be.stop()

    # a FIFO as cert, key or client-ca: refused at once, never opened (open would block)
    fifo = t.path("fifo.pem")
    os.mkfifo(fifo, 0o644)
    certs_line = next(ln for ln in lines if "certs =" in ln)
    for what, new in (
            ("cert", '    certs = ( { cert = "%s"; key = "%s"; } );' % (fifo, key)),
            ("key", '    certs = ( { cert = "%s"; key = "%s"; } );' % (cert, fifo)),
            ("client-ca", certs_line + ' client-ca = "%s"; verify-client = "require";'
             % fifo)):
        text, line = with_line(lines, "certs =", new)
        p = conf_file("bad-fifo-" + what, text)
        bound = st.scaled(2)
        rc, out, err = t.sluice_check(p, timeout=bound)
        good = rc == 1 and re.search(re.escape(p) + ":%d\\b" % line, err) and fifo in err
        t.ok(good, "%s path that is a FIFO: exits 1 within %.0f s naming FILE:LINE and the "
             "FIFO (%s)" % (what, bound, "timed out" if rc is None else "rc=%s" % rc))
        if not good:
            t.diag("rc=%s stderr=%r" % (rc, err))

    # a config named through a symlink in another folder: relative paths resolve beside
    # the symlink's name (certs/ exists only there), not beside its target
    real_dir, link_dir = t.path("etc-real"), t.path("etc-link")
    os.makedirs(real_dir)
    os.makedirs(os.path.join(link_dir, "certs"))
    shutil.copy(cert, os.path.join(link_dir, "certs", "server.pem"))
    shutil.copy(key, os.path.join(link_dir, "certs", "server.key"))
    target = os.path.join(real_dir, "sluice.conf")
    with open(target, "w") as f:
        f.write("\n".join(base_lines(port, "certs/server.pem", "certs/server.key", backend))
                + "\n")
    link = os.path.join(link_dir, "sluice.conf")
    os.symlink(os.path.relpath(target, link_dir), link)
    check_ok(t, link, "a config named through a symlink: relative cert paths resolve beside "
             "the symlink, not its target (run from /)", cwd="/")


st.Test("config").main(main)
