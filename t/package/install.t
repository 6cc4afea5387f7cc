#!/usr/bin/env python3
# The Debian package on this machine, from install to purge (issue 9). It uses the
# packages t/package/build.t built (or builds them when the tree changed since).
# 1. Whatever an earlier run left is purged first, after which no file of the package
#    may remain; port 443 must be free (else the test fails, naming who holds it). The
#    file system (/etc /usr /var /run /lib, less dpkg's records, other programs' logs
#    and caches) and the account files are recorded.
# 2. Install while the test itself holds port 443: the postinst tries to start sluice as
#    Debian does (invoke-rc.d), the start fails, and dpkg still ends with the package
#    configured: a busy port must not leave dpkg failing on every later run. Then the
#    _sluice system user and group (no home, no shell), the files and their modes, the
#    log folder (root:adm, 2750), the backend socket folder (tmpfiles.d), the conffiles
#    as dpkg records them, and `sluice -t` on the shipped configuration.
# 3. A test backend listens on the shipped configuration's socket; `/etc/init.d/sluice
#    start` starts sluice on port 443; a request through it is served with the ssl-cert
#    snakeoil certificate (verified by curl and by Python for the certificate's own name,
#    and the served certificate is that very file); the workers run as _sluice.
#    `/etc/init.d/sluice reload` starts a new generation under the same master, which
#    serves.
# 4. A package upgrade (the same package, repacked with a higher version) with
#    `dpkg -i` while four clients keep making requests, each on a new connection: none
#    fails, the new master serves on the old one's listening sockets (the same inodes:
#    none was closed, as a restart would), it runs the new /usr/sbin/sluice (not the
#    deleted file), the old master logs the upgrade, drains and exits, and the
#    conffile, edited before the upgrade, is kept without a prompt or a .dpkg-dist.
# 5. A broken configuration: `/etc/init.d/sluice upgrade` exits 6 and the same master
#    keeps serving. A new binary that passes `sluice -t` but does not start: `upgrade`
#    gives up after UPGRADE_TIMEOUT with status 1, the old master logs "upgrade failed"
#    and keeps serving.
# 6. `/etc/init.d/sluice stop` (then `upgrade` says 7, not running), `dpkg --purge
#    sluice`: nothing is left behind but the _sluice user and group that Debian policy
#    keeps (what is left is listed).
# While it runs, invoke-rc.d may act on sluice whatever /usr/sbin/policy-rc.d says
# (pkg.PolicyRcd); the original policy is put back at the end.
# How it fails: a postinst that restarts instead of upgrading closes the listening
# sockets and the old master logs no upgrade (4; sluice's graceful TERM holds new
# connections off and clients send their SYN again a second later, so a quick restart
# may not fail a request here); without --no-stop-on-upgrade the prerm stops sluice
# first (4); a postrm
# that does not purge the logs leaves /var/log/sluice (6); without the error handler the
# install with port 443 busy leaves the package half-configured (2).
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import time

import pkg
import sluicetest as st

UPGRADE_VERSION_SUFFIX = "+pkgtest2"
CONF_EDIT = "# edited by t/package/install.t before the upgrade\n"


def say_command(t, what, rc, out):
    t.diag("%s: status %s" % (what, rc))
    for line in out.strip().splitlines()[-25:]:
        t.diag("  | " + line)


def leftovers(t):
    """Purge a package left by an earlier run (its prerm stops sluice); kill a package
    sluice that still runs without it."""
    status = pkg.dpkg_status()
    if status and not status.startswith("unknown ok not-installed"):
        rc, out, _ = pkg.command(["dpkg", "--purge", pkg.PKG], timeout=st.scaled(120))
        say_command(t, "purging the sluice package an earlier run left (%s)" % status, rc, out)
    for pid in pkg.package_processes():
        t.diag("killing a sluice left running by an earlier run: pid %d" % pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    st.wait_until(lambda: not pkg.package_processes(), st.scaled(10))
    # A fresh install makes the user: remove one an earlier run left (no file belongs to
    # it once the package is purged).
    if pkg.command(["getent", "passwd", pkg.USER], timeout=30)[0] == 0:
        rc, out, _ = pkg.command(["deluser", "--system", "--quiet", pkg.USER], timeout=60)
        say_command(t, "removing the user an earlier run left", rc, out)
    if pkg.command(["getent", "group", pkg.USER], timeout=30)[0] == 0:
        rc, out, _ = pkg.command(["delgroup", "--system", "--quiet", pkg.USER], timeout=60)
        say_command(t, "removing the group an earlier run left", rc, out)


# What the package makes or installs: none of it may be on the machine before the
# install, once an earlier run's package is purged.
OWN_PATHS = sorted(set(pkg.FILES) | {"/etc/sluice", "/var/log/sluice", "/run/sluice",
                                     pkg.PIDFILE, pkg.STATSFILE})


def clean_slate(t):
    """Fail on what an earlier purge left of the package, and remove it, so that the
    next run starts clean."""
    left = [p for p in OWN_PATHS if os.path.lexists(p)]
    t.ok(not left, "nothing of the package is left from an earlier run (%s)" % left)
    for p in left:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)


def snakeoil(t):
    """The pair the shipped configuration uses; ssl-cert makes it when installed, but an
    image may lack it. Made before the snapshot: it is not the package's."""
    if os.path.exists(pkg.SNAKEOIL_CERT) and os.path.exists(pkg.SNAKEOIL_KEY):
        return True
    rc, out, _ = pkg.command(["make-ssl-cert", "generate-default-snakeoil"], timeout=60)
    say_command(t, "make-ssl-cert generate-default-snakeoil (the machine had no snakeoil "
                "pair)", rc, out)
    return rc == 0


def install_with_port_busy(t, deb):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # (SO_REUSEADDR: a port in TIME_WAIT from an earlier run is no obstacle; it does not
    # let sluice, which sets SO_REUSEPORT, listen beside this socket.)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("0.0.0.0", pkg.PORT))
    blocker.listen(1)
    try:
        rc, out, el = pkg.command(["dpkg", "-i", deb], timeout=st.scaled(180))
    finally:
        blocker.close()
    say_command(t, "dpkg -i %s (port %d held by the test)" % (os.path.basename(deb), pkg.PORT),
                rc, out)
    status = pkg.dpkg_status()
    t.ok(rc == 0 and status == "install ok installed",
         "dpkg -i with port %d busy: status %s, the package is configured (%s)"
         % (pkg.PORT, rc, status))
    t.ok("sluice: the service is not running" in out and not pkg.package_processes()
         and not os.path.exists(pkg.PIDFILE),
         "... the postinst tried to start sluice, said it does not run, and none runs")


def check_installed(t):
    rc, pw, _ = pkg.command(["getent", "passwd", pkg.USER], timeout=30)
    rc2, gr, _ = pkg.command(["getent", "group", pkg.USER], timeout=30)
    f = pw.strip().split(":")
    g = gr.strip().split(":")
    ok = (rc == 0 and rc2 == 0 and len(f) == 7 and len(g) == 4 and 0 < int(f[2]) < 1000
          and f[3] == g[2] and f[5] == "/nonexistent" and f[6].endswith("nologin")
          and not os.path.exists("/nonexistent"))
    t.ok(ok, "system user and group %s: uid below 1000, its own group, home /nonexistent "
         "(not made), no shell (%s; %s)" % (pkg.USER, pw.strip(), gr.strip()))
    uid = int(f[2]) if ok else None
    gid = int(g[2]) if ok else None

    bad = []
    for path, mode in sorted(pkg.FILES.items()):
        s = os.lstat(path) if os.path.lexists(path) else None
        if not (s and stat.S_ISREG(s.st_mode) and stat.S_IMODE(s.st_mode) == mode
                and s.st_uid == 0):
            bad.append(path)
    t.ok(not bad, "the %d files are installed with their modes (wrong: %s)"
         % (len(pkg.FILES), bad))
    for path, owner, group, mode in (("/var/log/sluice", 0, 4, 0o2750),
                                     ("/run/sluice", 0, gid, 0o2770)):
        s = os.lstat(path) if os.path.lexists(path) else None
        t.ok(s and stat.S_ISDIR(s.st_mode) and (s.st_uid, s.st_gid) == (owner, group)
             and stat.S_IMODE(s.st_mode) == mode,
             "%s: a folder, %d:%s, mode %04o (%s)" % (path, owner, group, mode,
                                                    "missing" if s is None else "%d:%d %04o"
                                                    % (s.st_uid, s.st_gid,
                                                       stat.S_IMODE(s.st_mode))))
    conff = pkg.conffiles()
    bad = [p for p in pkg.CONFFILES if p not in conff or conff[p][1]
           or not os.path.exists(p) or pkg.md5(p) != conff[p][0]]
    t.ok(not bad and sorted(conff) == sorted(pkg.CONFFILES),
         "dpkg-query ${Conffiles}: %s, unmodified, none obsolete (wrong: %s; %s)"
         % (pkg.CONFFILES, bad, conff))
    rc, out, _ = pkg.command([pkg.SBIN, "-t", "-f", pkg.CONF], timeout=st.scaled(30))
    t.ok(rc == 0 and "configuration OK" in out, "sluice -t on the shipped configuration: %s"
         % out.strip()[-300:])
    if shutil.which("systemd-analyze"):
        rc, out, _ = pkg.command(["systemd-analyze", "verify", "sluice.service"],
                                 timeout=st.scaled(60))
        t.ok(rc == 0 and not out.strip(), "systemd-analyze verify sluice.service: status %s "
             "%s" % (rc, out.strip()[-400:]))
    else:
        t.skip("no systemd-analyze here")
    rc, out, _ = pkg.command(["sh", "-c", "ls /etc/rc2.d/S*sluice"], timeout=30)
    t.ok(rc == 0, "update-rc.d enabled the init script (%s)" % out.strip())
    migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
    if os.path.exists(migrate) and os.access(migrate, os.W_OK):
        with open(migrate) as f:
            value = f.read().strip()
        t.ok(value == "1", "the postinst applied the sysctl snippet: tcp_migrate_req is %s"
             % value)
    else:
        t.skip("net.ipv4.tcp_migrate_req is missing or read-only here")
    return uid, gid


def initd(t, action, timeout=None):
    rc, out, _ = pkg.command([pkg.INITD, action], timeout=timeout or st.scaled(90))
    say_command(t, "/etc/init.d/sluice %s" % action, rc, out)
    return rc, out


def log_text():
    try:
        with open(pkg.LOGFILE, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def workers_of(master):
    return [p for p in st.child_pids(master) if st.pid_alive(p)]


def serves(t, name, what):
    ok, detail = pkg.curl(pkg.PORT, pkg.SNAKEOIL_CERT, name, st.scaled(10))
    t.ok(ok, "%s: curl verifying the snakeoil certificate for %s is answered by the backend"
         " (%s)" % (what, name, detail))
    return ok


def start_and_serve(t, uid, gid, name):
    rc, out = initd(t, "start")
    master = pkg.pidfile_pid()
    t.ok(rc == 0 and master and st.pid_alive(master) and pkg.exe_of(master) == pkg.SBIN,
         "/etc/init.d/sluice start: status %s, the pidfile names a master running %s (%s, %s)"
         % (rc, pkg.SBIN, master, master and pkg.exe_of(master)))
    if not master:
        return None
    serves(t, name, "after start")
    ok, detail, der = pkg.https_get(pkg.PORT, pkg.SNAKEOIL_CERT, name, st.scaled(10))
    with open(pkg.SNAKEOIL_CERT) as f:
        snake = ssl.PEM_cert_to_DER_cert(f.read())
    t.ok(ok and der == snake, "a Python client gets the answer, and the served certificate "
         "is %s (%s)" % (pkg.SNAKEOIL_CERT, detail))
    kids = st.wait_until(lambda: workers_of(master), st.scaled(5)) or []
    who = {p: pkg.ids(p) for p in kids}
    t.ok(kids and all(v == (uid, gid) for v in who.values()),
         "the workers run as %s (%d:%d): %s" % (pkg.USER, uid or -1, gid or -1, who))
    return master


def reload(t, master, name):
    before = len(re.findall(r"reload: generation \d+ ready", log_text()))
    rc, _ = initd(t, "reload")
    done = st.wait_until(lambda: len(re.findall(r"reload: generation \d+ ready", log_text()))
                         > before, st.scaled(15))
    t.ok(rc == 0 and done and pkg.pidfile_pid() == master and st.pid_alive(master),
         "/etc/init.d/sluice reload: status %s, a new generation under the same master %d"
         % (rc, master))
    serves(t, name, "after reload")


def upgrade(t, deb, master, name):
    version = pkg.deb_field(deb, "Version") + UPGRADE_VERSION_SUFFIX
    deb2 = pkg.repack(deb, version, t.path("sluice_%s.deb" % version))
    with open(pkg.CONF, "a") as f:
        f.write(CONF_EDIT)
    old_workers = workers_of(master)
    sockets = pkg.listen_inodes(pkg.PORT)
    loop = pkg.RequestLoop(pkg.PORT, pkg.SNAKEOIL_CERT, name).start()
    try:
        st.wait_until(lambda: loop.count() >= 20, st.scaled(10))
        before = loop.count()
        rc, out, el = pkg.command(["dpkg", "-i", deb2], timeout=st.scaled(180))
        during = loop.count() - before
        new = pkg.pidfile_pid()
        # the old master drains its connections (each a single request), then exits
        gone = st.wait_pids_gone([master] + old_workers, st.scaled(45))
        base = loop.count()
        st.wait_until(lambda: loop.count() >= base + 20, st.scaled(10))
    finally:
        loop.stop()
    say_command(t, "dpkg -i %s while clients connect (%.1f s)" % (os.path.basename(deb2), el),
                rc, out)
    t.ok(rc == 0 and pkg.dpkg_status() == "install ok installed"
         and pkg.dpkg_version() == version,
         "dpkg -i of version %s: status %s, installed" % (version, rc))
    fails = loop.failures()
    t.ok(not fails and during > 0 and loop.count() > 40,
         "no request failed or was refused: %d requests, %d during dpkg -i, %d failed"
         % (loop.count(), during, len(fails)))
    for r in fails[:10]:
        t.diag("  failed (%s, at %.2f s): %s" % (r[3], r[0] - loop.records[0][0], r[4]))
    t.diag("the longest request took %.2f s" % max(r[1] - r[0] for r in loop.records))
    after = pkg.listen_inodes(pkg.PORT)
    t.ok(sockets and after == sockets, "the new master serves on the very listening sockets "
         "of the old one, none was closed (inodes before %s, after %s)"
         % (sorted(sockets), sorted(after)))
    t.ok(new and new != master and st.pid_alive(new) and pkg.exe_of(new) == pkg.SBIN,
         "a new master %s runs the new %s (old master %d; exe %r)"
         % (new, pkg.SBIN, master, new and pkg.exe_of(new)))
    t.ok(not gone, "the old master and its workers have exited (left: %s)" % gone)
    text = log_text()
    t.ok("SIGUSR2: upgrading to %s" % pkg.SBIN in text
         and re.search(r"upgrade: new master \(pid %s\) serves; draining" % new, text),
         "the old master logged the upgrade to the new one")
    with open(pkg.CONF) as f:
        kept = f.read().endswith(CONF_EDIT)
    extra = [p for p in os.listdir("/etc/sluice") if p != "sluice.conf"]
    t.ok(kept and not extra and "Configuration file" not in out,
         "the edited conffile is kept, without a prompt or a copy beside it (%s)" % extra)
    serves(t, name, "after the upgrade")
    return new


def failed_upgrade(t, master, name):
    with open(pkg.CONF) as f:
        good = f.read()
    with open(pkg.CONF, "a") as f:
        f.write("package-test-typo = 1;\n")
    try:
        rc, out = initd(t, "upgrade")
    finally:
        with open(pkg.CONF, "w") as f:
            f.write(good)
    line = good.count("\n") + 1
    t.ok(rc == 6 and "%s:%d" % (pkg.CONF, line) in out,
         "/etc/init.d/sluice upgrade with a broken configuration: status %s (6), the error "
         "names %s:%d" % (rc, pkg.CONF, line))
    masters = pkg.package_masters()
    t.ok(pkg.pidfile_pid() == master and masters == [master],
         "the same master %d keeps running, alone (masters: %s)" % (master, masters))
    serves(t, name, "after the refused upgrade")


def upgrade_to_broken_binary(t, master, name):
    """A new /usr/sbin/sluice that passes `sluice -t` but cannot start: the init script
    gives up after UPGRADE_TIMEOUT and the old master keeps serving."""
    real = pkg.SBIN + ".package-test"
    os.rename(pkg.SBIN, real)
    try:
        with open(pkg.SBIN, "w") as f:
            f.write('#!/bin/sh\ncase " $* " in *" -t "*) exec %s "$@" ;; esac\n'
                    'echo "sluice: t/package/install.t: this binary does not start" >&2\n'
                    'exit 2\n' % real)
        os.chmod(pkg.SBIN, 0o755)
        limit = 5
        rc, out, el = pkg.command(["env", "UPGRADE_TIMEOUT=%d" % limit, pkg.INITD, "upgrade"],
                                  timeout=st.scaled(60))
        say_command(t, "/etc/init.d/sluice upgrade to a binary that does not start (%.1f s)"
                    % el, rc, out)
    finally:
        os.replace(real, pkg.SBIN)
    t.ok(rc == 1 and "no new master took over within %ds" % limit in out
         and limit <= el < limit + st.scaled(10),
         "/etc/init.d/sluice upgrade: status %s (1) after UPGRADE_TIMEOUT=%d s (%.1f s)"
         % (rc, limit, el))
    t.ok(re.search(r"upgrade failed: ", log_text()), "the old master logged \"upgrade failed\"")
    masters = pkg.package_masters()
    t.ok(pkg.pidfile_pid() == master and masters == [master],
         "the same master %d keeps running, alone (masters: %s)" % (master, masters))
    serves(t, name, "after the failed upgrade")


def stop(t, master):
    workers = workers_of(master)
    rc, _ = initd(t, "stop")
    left = st.wait_pids_gone([master] + workers, st.scaled(5))
    t.ok(rc == 0 and not left and not os.path.exists(pkg.PIDFILE)
         and not os.path.exists(pkg.STATSFILE),
         "/etc/init.d/sluice stop: status %s, master and workers gone (left %s), pidfile and "
         "stats-file removed" % (rc, left))
    errors = [ln for ln in log_text().splitlines() if re.search(r"sluice\[\d+\]: error: ", ln)
              and "Address already in use" not in ln and "upgrade failed: " not in ln]
    t.ok(not errors, "%s holds no error line but the busy port's and the failed upgrade's"
         % pkg.LOGFILE)
    for ln in errors[:10]:
        t.diag("  " + ln)
    rc, _ = initd(t, "upgrade")
    t.ok(rc == 7, "/etc/init.d/sluice upgrade when sluice does not run: status %s (7)" % rc)


def purge(t, before, accounts):
    rc, out, _ = pkg.command(["dpkg", "--purge", pkg.PKG], timeout=st.scaled(120))
    say_command(t, "dpkg --purge sluice", rc, out)
    t.ok(rc == 0 and pkg.dpkg_status() in ("", "unknown ok not-installed"),
         "dpkg --purge sluice: status %s, dpkg no longer knows it (%r)"
         % (rc, pkg.dpkg_status()))
    diff = pkg.snapshot_diff(before, pkg.snapshot())
    t.ok(not diff, "after the purge the file system is as before (%d differences)" % len(diff))
    for line in diff[:60]:
        t.diag("  " + line)
    other, own = pkg.account_diff(accounts, pkg.account_lines())
    t.ok(not other and len(own) == 4,
         "the account files differ only by the %s user and group, which policy keeps (%s)"
         % (pkg.USER, own))
    for line in other[:20]:
        t.diag("  " + line)


def main(t):
    if not pkg.preflight(t):
        return
    t0 = time.monotonic()
    restored = pkg.PolicyRcd.restore()
    if restored:
        t.diag("an earlier run was killed: " + restored)
    leftovers(t)
    clean_slate(t)
    holders = pkg.port_holders(pkg.PORT)
    if not t.ok(not holders, "port %d is free (held by %s)" % (pkg.PORT, ", ".join(
            "pid %s (%s, %s)" % h for h in holders))):
        return
    res = pkg.packages(t, fresh=False)
    if not t.ok(res.ok, "the package is built (%s)" % ("reused t/package/build.t's"
                                                       if res.reused else "%.0f s" % res.seconds)):
        t.diag_log(res.log, 60)
        return
    if not t.ok(snakeoil(t), "the ssl-cert snakeoil pair exists"):
        return

    migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
    if os.path.exists(migrate):
        with open(migrate) as f:
            value = f.read().strip()

        def put_back():
            with open(migrate, "w") as f:
                f.write(value)

        t.cleanups.append(put_back)
    pkg.PolicyRcd.install()
    t.cleanups.append(pkg.PolicyRcd.restore)

    def purge_on_failure():
        if pkg.dpkg_status() not in ("", "unknown ok not-installed"):
            pkg.command(["dpkg", "--purge", pkg.PKG], timeout=st.scaled(120))
        for pid in pkg.package_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    t.cleanups.append(purge_on_failure)
    before = pkg.snapshot()
    accounts = pkg.account_lines()

    install_with_port_busy(t, res.deb)
    uid, gid = check_installed(t)
    name = pkg.cert_name(pkg.SNAKEOIL_CERT)
    backend = pkg.conf_string("backend")
    sock = backend[len("unix:"):]
    be = t.start_backend("app", "unix", path=sock)
    master = start_and_serve(t, uid, gid, name)
    if master:
        reload(t, master, name)
        master = upgrade(t, res.deb, master, name) or master
        failed_upgrade(t, master, name)
        upgrade_to_broken_binary(t, master, name)
        stop(t, master)
    be.stop()
    if os.path.exists(sock):
        os.unlink(sock)
    purge(t, before, accounts)
    t.diag("t/package/install.t: %.0f s" % (time.monotonic() - t0))


st.Test("package-install", need_sluice=False).main(main)
