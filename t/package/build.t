#!/usr/bin/env python3
# The Debian package builds (issue 9). A copy of the source tree (git's files, uncommitted
# ones too) builds with `DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b`, and
# lintian finds no error and no warning in the .deb and .changes. The package's version
# is configure.ac's. Its contents, without installing it: the binaries, man pages and
# files the package promises, with their modes, root-owned; the conffiles are the
# configuration, the init script and the logrotate snippet; the init script, systemd
# unit and sysctl snippet are contrib/'s very files (one source of truth) and the
# logrotate snippet is contrib/'s with only the log path changed; the shipped
# configuration is debian/sluice.conf and agrees with them (pid file, log file, user,
# the folder of its backend socket).
# The packages stay in BUILDDIR/t/package/work for t/package/install.t.
# How it fails: a lintian warning (say, a maintainer script calling the init script
# directly), a file the package no longer installs or a hand-kept copy of a contrib file
# that drifted from the original.
import os
import re
import stat

import pkg
import sluicetest as st


def extract(t, deb):
    tree = t.path("deb")
    rc, out, _ = pkg.command(["dpkg-deb", "-R", deb, tree], timeout=120)
    if rc != 0:
        raise RuntimeError("dpkg-deb -R %s: %s" % (deb, out))
    return tree


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def contents(t, tree):
    for path, mode in sorted(pkg.FILES.items()):
        p = tree + path
        s = os.lstat(p) if os.path.lexists(p) else None
        t.ok(s and stat.S_ISREG(s.st_mode) and stat.S_IMODE(s.st_mode) == mode
             and s.st_uid == 0 and s.st_gid == 0,
             "the package installs %s, mode %04o, root:root (%s)"
             % (path, mode, "missing" if s is None else "%04o %d:%d"
                % (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)))
    t.ok(os.path.isdir(tree + "/var/log/sluice"), "... and the log folder /var/log/sluice")
    extra = [p for p in ("/usr/share/doc/sluice/contrib", "/usr/local")
             if os.path.lexists(tree + p)]
    t.ok(not extra, "... and neither contrib/ as documentation nor /usr/local (%s)" % extra)
    listed = read(os.path.join(tree, "DEBIAN", "conffiles")).split()
    t.ok(sorted(listed) == sorted(pkg.CONFFILES),
         "its conffiles are %s (DEBIAN/conffiles: %s)" % (pkg.CONFFILES, listed))


def one_source(t, tree):
    src = st.SRCDIR
    for inst, orig in (("/etc/init.d/sluice", "contrib/sluice.init"),
                       ("/lib/systemd/system/sluice.service", "contrib/sluice.service"),
                       ("/usr/lib/sysctl.d/60-sluice.conf", "contrib/sluice-sysctl.conf"),
                       ("/etc/sluice/sluice.conf", "debian/sluice.conf")):
        t.ok(read(tree + inst, "rb") == read(os.path.join(src, orig), "rb"),
             "%s is %s as it is in the tree" % (inst, orig))
    orig = read(os.path.join(src, "contrib/sluice.logrotate"))
    inst = read(tree + "/etc/logrotate.d/sluice")
    t.ok(inst == orig.replace("/var/log/sluice.log", "/var/log/sluice/sluice.log")
         and inst != orig, "/etc/logrotate.d/sluice is contrib/sluice.logrotate with the "
         "package's log path")
    return inst


def consistent(t, tree, logrotate):
    conf = tree + pkg.CONF
    unit = read(tree + "/lib/systemd/system/sluice.service")
    init = read(tree + "/etc/init.d/sluice")
    tmpfiles = read(tree + "/usr/lib/tmpfiles.d/sluice.conf")
    pidfile = pkg.conf_string("pidfile", conf)
    m = re.search(r"(?m)^PIDFile=(\S+)$", unit)
    t.ok(pidfile == pkg.PIDFILE and m and m.group(1) == pidfile
         and "PIDFILE:-%s}" % pidfile in init,
         "the configuration's pidfile %s is the unit's PIDFile= and the init script's "
         "default" % pidfile)
    logfile = pkg.conf_string("log-file", conf)
    t.ok(logfile == pkg.LOGFILE and re.search(r"(?m)^%s \{$" % re.escape(logfile), logrotate),
         "the configuration's log-file %s is the one logrotate rotates" % logfile)
    t.ok(pkg.conf_string("user", conf) == pkg.USER and pkg.conf_string("group", conf)
         == pkg.USER, "the configuration's user and group are %s" % pkg.USER)
    backend = pkg.conf_string("backend", conf) or ""
    folder = os.path.dirname(backend[len("unix:"):]) if backend.startswith("unix:") else None
    m = re.search(r"(?m)^d\s+(\S+)\s+(\d+)\s+(\S+)\s+(\S+)", tmpfiles)
    t.ok(folder and m and m.group(1) == folder and m.group(4) == pkg.USER,
         "the backend %s is in the folder tmpfiles.d makes for it, group %s (%s)"
         % (backend, pkg.USER, m.group(0) if m else tmpfiles.strip()))
    t.ok(pkg.conf_string("cert", conf) == pkg.SNAKEOIL_CERT
         and pkg.conf_string("key", conf) == pkg.SNAKEOIL_KEY,
         "the configuration serves the ssl-cert snakeoil pair")


def main(t):
    if not pkg.preflight(t):
        return
    res = pkg.packages(t, fresh=True)
    if not t.ok(res.ok, "dpkg-buildpackage -us -uc -b (nocheck) builds the package in %.0f s "
                "(status %s)" % (res.seconds, res.rc)):
        t.diag_log(res.log, 60)
        return
    t.diag("package build: %.0f s; %s" % (res.seconds, os.path.basename(res.deb)))
    rc, out = pkg.lintian(res.changes)
    t.ok(rc == 0, "lintian --fail-on error,warning on %s: status %s"
         % (os.path.basename(res.changes), rc))
    for line in out.splitlines():
        t.diag("lintian: " + line)

    with open(os.path.join(st.SRCDIR, "configure.ac")) as f:
        m = re.search(r"AC_INIT\(\[sluice\],\s*\[([^]]+)\]", f.read())
    version = pkg.deb_field(res.deb, "Version")
    t.ok(m and version == m.group(1), "the package's version %s is configure.ac's %s"
         % (version, m.group(1) if m else None))

    tree = extract(t, res.deb)
    contents(t, tree)
    logrotate = one_source(t, tree)
    consistent(t, tree, logrotate)


st.Test("package-build", need_sluice=False).main(main)
