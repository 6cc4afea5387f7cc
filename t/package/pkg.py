"""The Debian package on the test machine (issue 9). Used by the tests in t/package/ (run
by `make check-package`, as root).

The package is built from a copy of the source tree: what git tracks plus the untracked
files git does not ignore, so uncommitted work is tested (without git, a plain copy that
leaves out build folders and in-place configure results). The copy goes to
BUILDDIR/t/package/work/src and is built there with `DEB_BUILD_OPTIONS="nocheck
parallel=2" dpkg-buildpackage -us -uc -b`; the .deb and .changes land in work/. A
fingerprint of the copy is kept with them, so a later test reuses the packages as long as
the tree has not changed (packages(fresh=False)); build.t always builds afresh.

install.t installs the package on this machine. Debian starts services from maintainer
scripts through invoke-rc.d, which asks /usr/sbin/policy-rc.d first; container images
ship one that forbids everything (exit 101). While install.t runs, PolicyRcd puts a
policy in its place that allows sluice and asks the original about every other service,
and puts the original back on every exit path (and at the next run, if a run was
killed).
"""

import fcntl
import glob
import hashlib
import os
import re
import shutil
import ssl
import stat
import subprocess
import time

import servicetest as sv
import sluicetest as st

PKG = "sluice"
CONF = "/etc/sluice/sluice.conf"
INITD = "/etc/init.d/sluice"
SBIN = "/usr/sbin/sluice"
PIDFILE = "/run/sluice.pid"
STATSFILE = "/run/sluice.stats"
LOGFILE = "/var/log/sluice/sluice.log"
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
USER = "_sluice"
PORT = 443
# What the package installs, with its mode (conffiles are listed in CONFFILES too).
FILES = {
    "/usr/sbin/sluice": 0o755,
    "/usr/bin/sluicestat": 0o755,
    "/etc/sluice/sluice.conf": 0o644,
    "/etc/init.d/sluice": 0o755,
    "/etc/logrotate.d/sluice": 0o644,
    "/lib/systemd/system/sluice.service": 0o644,
    "/usr/lib/tmpfiles.d/sluice.conf": 0o644,
    "/usr/lib/sysctl.d/60-sluice.conf": 0o644,
    "/usr/share/man/man8/sluice.8.gz": 0o644,
    "/usr/share/man/man8/sluicestat.8.gz": 0o644,
    "/usr/share/man/man5/sluice.conf.5.gz": 0o644,
    "/usr/share/doc/sluice/copyright": 0o644,
    "/usr/share/doc/sluice/changelog.gz": 0o644,
    "/usr/share/doc/sluice/examples/sluice.conf": 0o644,
}
CONFFILES = ["/etc/sluice/sluice.conf", "/etc/init.d/sluice", "/etc/logrotate.d/sluice"]
# The environment of every system command: the init script reads these from its
# environment first.
_ENV_DROP = ("DAEMON", "CONF", "PIDFILE", "STOP_TIMEOUT", "UPGRADE_TIMEOUT")


def unavailable():
    """Why these tests cannot run here ("" if they can)."""
    if os.geteuid() != 0:
        return "not root: building and installing a package needs root (uid %d)" % os.geteuid()
    if shutil.which("dpkg-buildpackage") is None:
        return "dpkg-buildpackage is not installed (Debian package dpkg-dev)"
    return ""


def missing_tools():
    """Tools the package build and its checks need beyond dpkg-buildpackage, as
    "tool (Debian package)" strings: a machine that has dpkg-buildpackage should have
    these too (./quickstart installs them), so their absence is a failure, not a skip."""
    need = [("dh", "debhelper"), ("lintian", "lintian"), ("fakeroot", "fakeroot"),
            ("make-ssl-cert", "ssl-cert"), ("curl", "curl"), ("openssl", "openssl")]
    return ["%s (%s)" % (tool, pkg) for tool, pkg in need if shutil.which(tool) is None]


def preflight(t):
    """Skip the whole test, saying why, where it cannot run here; False (a failed check)
    when tools the package needs are missing."""
    why = unavailable()
    if why:
        t.skip_all(why)
    missing = missing_tools()
    return t.ok(not missing, "the tools the package needs are installed (missing: %s)"
                % ", ".join(missing))


def system_env():
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    path = env.get("PATH", "")
    for d in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if d not in path.split(":"):
            path = d + ":" + path if path else d
    env["PATH"] = path
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env["LC_ALL"] = "C.UTF-8"
    return env


def command(argv, timeout=None, input=None):
    """Run a system command (dpkg, the init script, ...) with stdin closed or given:
    (rc, text of stdout and stderr together, elapsed)."""
    t0 = time.monotonic()
    p = st.spawn(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=system_env())
    try:
        out, _ = p.communicate(input=input, timeout=timeout or st.scaled(120))
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = None
    return rc, out.decode(errors="replace"), time.monotonic() - t0


# ---------------------------------------------------------------------------------------
# building


def builddir():
    """The build folder these tests run in (make check runs them there)."""
    return os.path.dirname(os.path.abspath(st.SLUICE)) if st.SLUICE else os.getcwd()


def workdir():
    return os.path.join(builddir(), "t", "package", "work")


# A plain copy (no git) leaves out build folders and what configuring in place writes.
_PLAIN_SKIP_DIRS = re.compile(r"^(\.git|build|build-.*|quickstart\.d|autom4te\.cache|"
                              r"__pycache__|\.deps)$")
_PLAIN_SKIP_TOP = {"config.status", "config.log", "config.h", "stamp-h1", "Makefile",
                   "libtool"}
_PLAIN_SKIP_DEBIAN = re.compile(r"^(build|\.debhelper|sluice|files|.*\.substvars|"
                                r".*\.debhelper(\.log)?|debhelper-build-stamp)$")


def _git_files(src):
    """Paths git tracks in src plus untracked ones it does not ignore; None without git."""
    if shutil.which("git") is None:
        return None
    rc, out, _, _ = st.run(["git", "-C", src, "rev-parse", "--show-toplevel"], timeout=60)
    if rc != 0 or os.path.realpath(out.decode().strip()) != os.path.realpath(src):
        return None
    rc, out, _, _ = st.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], timeout=60)
    if rc != 0:
        return None
    return sorted({p for p in out.decode().split("\0") if p})


def _plain_files(src):
    out = []
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        dirs[:] = sorted(d for d in dirs if not _PLAIN_SKIP_DIRS.match(d)
                         and not (rel == "debian" and _PLAIN_SKIP_DEBIAN.match(d)))
        for f in files:
            if rel == "." and f in _PLAIN_SKIP_TOP:
                continue
            if rel == "debian" and _PLAIN_SKIP_DEBIAN.match(f):
                continue
            if f.endswith((".o", ".pyc")):
                continue
            out.append(os.path.normpath(os.path.join(rel, f)))
    # symlinks to folders are listed in dirs by os.walk, not followed
    return sorted(out)


def copy_tree(src, dst):
    """Copy the source tree src to dst (which must not exist). Returns how ("git" or
    "plain copy") and the number of files."""
    files = _git_files(src)
    how = "git ls-files (tracked, and untracked but not ignored)"
    if files is None:
        files, how = _plain_files(src), "plain copy (no git)"
    n = 0
    for rel in files:
        s, d = os.path.join(src, rel), os.path.join(dst, rel)
        if not os.path.lexists(s):
            continue  # deleted in the work tree, not committed yet
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.islink(s):
            os.symlink(os.readlink(s), d)
        elif os.path.isfile(s):
            shutil.copy2(s, d)
        else:
            continue
        n += 1
    return how, n


def fingerprint(tree):
    """sha256 over every file's path, exec bit and content (a symlink: its target)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        for f in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, tree).encode() + b"\0")
            if os.path.islink(p):
                h.update(b"L" + os.readlink(p).encode())
            else:
                h.update(b"X" if os.stat(p).st_mode & 0o111 else b"F")
                with open(p, "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


class Packages:
    """The result of a build: ok, the .deb and .changes paths, the build's log and time,
    how the tree was copied, and whether an earlier build was reused."""

    def __init__(self):
        self.ok = False
        self.deb = None
        self.changes = None
        self.log = ""
        self.seconds = 0.0
        self.copied = ""
        self.reused = False
        self.rc = None


def _outputs(work):
    return (glob.glob(os.path.join(work, "sluice_*.deb"))
            + glob.glob(os.path.join(work, "sluice-dbgsym_*.deb"))
            + glob.glob(os.path.join(work, "sluice_*.changes"))
            + glob.glob(os.path.join(work, "sluice_*.buildinfo")))


def packages(t, fresh):
    """Build the package from a copy of SLUICE_SRCDIR (or, unless fresh, reuse the one
    built from an identical tree). Serialised by a lock in the work folder."""
    work = workdir()
    os.makedirs(work, exist_ok=True)
    res = Packages()
    with open(os.path.join(work, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = os.path.join(work, "src.new")
        shutil.rmtree(new, ignore_errors=True)
        res.copied, n = copy_tree(st.SRCDIR, new)
        t.diag("copied %d files of %s (%s)" % (n, st.SRCDIR, res.copied))
        fp = fingerprint(new)
        stamp = os.path.join(work, "stamp")
        old = open(stamp).read().strip() if os.path.exists(stamp) else ""
        debs = glob.glob(os.path.join(work, "sluice_*.deb"))
        if not fresh and old == fp and len(debs) == 1:
            shutil.rmtree(new, ignore_errors=True)
            res.ok, res.reused, res.deb = True, True, debs[0]
            res.changes = (glob.glob(os.path.join(work, "sluice_*.changes")) or [None])[0]
            return res
        if os.path.exists(stamp):
            os.unlink(stamp)
        src = os.path.join(work, "src")
        shutil.rmtree(src, ignore_errors=True)
        os.rename(new, src)
        for p in _outputs(work):
            os.unlink(p)
        env = system_env()
        env["DEB_BUILD_OPTIONS"] = "nocheck parallel=2"
        logpath = os.path.join(work, "build.log")
        t0 = time.monotonic()
        with open(logpath, "wb") as logf:
            p = st.spawn(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env,
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            try:
                res.rc = p.wait(timeout=st.scaled(900))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        res.seconds = time.monotonic() - t0
        with open(logpath, errors="replace") as f:
            res.log = f.read()
        debs = glob.glob(os.path.join(work, "sluice_*.deb"))
        changes = glob.glob(os.path.join(work, "sluice_*.changes"))
        res.ok = res.rc == 0 and len(debs) == 1 and len(changes) == 1
        if res.ok:
            res.deb, res.changes = debs[0], changes[0]
            with open(stamp, "w") as f:
                f.write(fp + "\n")
        return res


def lintian(changes):
    """lintian on the .changes (and so on every .deb it lists): (rc, output). Fails on
    any error or warning."""
    rc, out, _ = command(["lintian", "--fail-on", "error,warning", changes],
                         timeout=st.scaled(300))
    out = "\n".join(ln for ln in out.splitlines()
                    if "running with root privileges is not recommended" not in ln)
    return rc, out


def deb_field(deb, field):
    rc, out, _ = command(["dpkg-deb", "-f", deb, field], timeout=60)
    return out.strip() if rc == 0 else None


def repack(deb, version, dst):
    """A copy of deb whose Version is version (dpkg-deb -R, edit, dpkg-deb -b)."""
    tree = dst + ".tree"
    shutil.rmtree(tree, ignore_errors=True)
    rc, out, _ = command(["dpkg-deb", "-R", deb, tree], timeout=120)
    if rc != 0:
        raise RuntimeError("dpkg-deb -R failed: " + out)
    control = os.path.join(tree, "DEBIAN", "control")
    with open(control) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^Version: .*$", "Version: " + version, text)
    if n != 1:
        raise RuntimeError("no Version field in " + control)
    with open(control, "w") as f:
        f.write(text)
    rc, out, _ = command(["dpkg-deb", "-b", tree, dst], timeout=120)
    shutil.rmtree(tree, ignore_errors=True)
    if rc != 0:
        raise RuntimeError("dpkg-deb -b failed: " + out)
    return dst


# ---------------------------------------------------------------------------------------
# the machine


def dpkg_status(pkg=PKG):
    """dpkg's Status of pkg ("install ok installed", "deinstall ok config-files", ...),
    or "" when dpkg does not know it."""
    rc, out, _ = command(["dpkg-query", "-W", "-f=${Status}", pkg], timeout=60)
    return out.strip() if rc == 0 else ""


def dpkg_version(pkg=PKG):
    rc, out, _ = command(["dpkg-query", "-W", "-f=${Version}", pkg], timeout=60)
    return out.strip() if rc == 0 else ""


def conffiles(pkg=PKG):
    """{path: (md5 recorded by dpkg, flags such as "obsolete")} of pkg's conffiles."""
    rc, out, _ = command(["dpkg-query", "-W", "-f=${Conffiles}", pkg], timeout=60)
    res = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2:
            res[words[0]] = (words[1], words[2:])
    return res


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def port_holders(port):
    """(pid, comm, exe) of the processes holding a socket that listens on TCP port, by
    inode (/proc/net/tcp{,6} and /proc/PID/fd); [(None, ...)] for a listener no visible
    process holds."""
    inodes = listen_inodes(port)
    if not inodes:
        return []
    want = {"socket:[%d]" % i for i in inodes}
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % d)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (d, fd)) in want:
                    found.append(int(d))
                    break
            except OSError:
                pass
    if not found:
        return [(None, "?", "?")]
    out = []
    for pid in sorted(found):
        try:
            comm = open("/proc/%d/comm" % pid).read().strip()
        except OSError:
            comm = "?"
        try:
            exe = os.readlink("/proc/%d/exe" % pid)
        except OSError:
            exe = "?"
        out.append((pid, comm, exe))
    return out


def listen_inodes(port):
    """Inodes of the sockets listening on TCP port (IPv4 and IPv6)."""
    return {inode for _, local, _, state, inode in st._proc_tcp_sockets()
            if state == "0A" and local == port}


def exe_of(pid):
    """readlink /proc/PID/exe: the binary's path, with " (deleted)" once the file was
    replaced; None if the process is gone."""
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None


def pidfile_pid(path=PIDFILE):
    return sv.pidfile_pid(path)


def package_processes():
    """Pids of live processes running the package's binary (also a replaced one)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            e = exe_of(int(d))
            if e and (e == SBIN or e.startswith(SBIN + " ")) and st.pid_alive(int(d)):
                out.append(int(d))
    return sorted(out)


def package_masters():
    """The package_processes() that are masters: not the child of another one (a
    worker, or a new master its old one started and has not left yet)."""
    procs = set(package_processes())
    out = []
    for pid in procs:
        try:
            with open("/proc/%d/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid not in procs:
            out.append(pid)
    return sorted(out)


def ids(pid):
    """(real uid, real gid) of pid, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def conf_string(key, path=CONF):
    """The string value of key (its first setting outside comments) in a sluice
    config, or None. (No string in the configurations read here holds a "#".)"""
    with open(path) as f:
        text = re.sub(r"(?m)#.*$", "", f.read())
    m = re.search(r'(?m)(?:^|[{;\s])%s\s*=\s*"([^"]*)"' % re.escape(key), text)
    return m.group(1) if m else None


def cert_name(cert):
    """The first DNS name of the certificate's subjectAltName, else its CN."""
    rc, out, _ = command(["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName",
                          "-subject", "-nameopt", "multiline"], timeout=30)
    m = re.search(r"DNS:([^\s,]+)", out) or re.search(r"commonName\s*=\s*(\S+)", out)
    return m.group(1) if m else None


class PolicyRcd:
    """A policy-rc.d that lets invoke-rc.d act on sluice, the original asked about every
    other service; restore() puts the original back (also one left by a killed run)."""

    PATH = "/usr/sbin/policy-rc.d"
    SAVED = "/usr/sbin/policy-rc.d.sluice-package-test"
    MARK = "# sluice t/package policy"

    @classmethod
    def restore(cls):
        """Undo install(): the saved original back in place, or no policy at all if
        there was none. Returns what it did, for the diagnostics."""
        try:
            with open(cls.PATH) as f:
                ours = cls.MARK in f.read()
        except OSError:
            ours = False
        if os.path.exists(cls.SAVED):
            os.replace(cls.SAVED, cls.PATH)
            return "restored the original policy-rc.d"
        if ours:
            os.unlink(cls.PATH)
            return "removed the test's policy-rc.d (there was none before)"
        return ""

    @classmethod
    def install(cls):
        had = os.path.exists(cls.PATH)
        if had:
            os.replace(cls.PATH, cls.SAVED)
        other = ('exec %s "$@"' % cls.SAVED) if had else "exit 0"
        text = ("#!/bin/sh\n%s (restored when the test ends): invoke-rc.d may act on\n"
                "# sluice; %s.\n"
                "for arg; do\n"
                "\tcase $arg in\n\t--*) ;;\n\tsluice) exit 0 ;;\n\t*) break ;;\n\tesac\n"
                "done\n%s\n"
                % (cls.MARK, "the original policy decides for the others" if had
                   else "there was no policy before", other))
        tmp = cls.PATH + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, cls.PATH)
        return had


# ---------------------------------------------------------------------------------------
# what the package leaves behind


# Paths that change for reasons other than this package: dpkg's and debconf's own records,
# logs of other programs, caches rebuilt by triggers (man-db), other tests' network
# namespaces and temporary files, and the stamp that systemd's unit loader (here the
# test's own `systemd-analyze verify`) leaves in /run/systemd the first time it runs.
SNAPSHOT_ROOTS = ["/etc", "/usr", "/var", "/run", "/lib"]
SNAPSHOT_SKIP = re.compile(r"^(/var/lib/dpkg|/var/cache/debconf|/var/cache/man|"
                           r"/var/cache/ldconfig|/var/log/(?!sluice(/|$))[^/]+|/var/tmp|"
                           r"/run/netns|/run/user|/var/cache/apt|/var/lib/apt|"
                           r"/run/systemd/systemd-units-load)(/|$)|"
                           r"/__pycache__(/|$)")
# Account files: compared line by line (only the package's user and group may appear);
# their backups (passwd- ...) change with every adduser.
ACCOUNT_FILES = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
ACCOUNT_SKIP = re.compile(r"^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$")


def snapshot():
    """{path: (type, mode, uid, gid, size or link target)} of everything under
    SNAPSHOT_ROOTS but what SNAPSHOT_SKIP names; sizes of regular files are recorded but
    only compared for files of /etc (configuration a package may have edited)."""
    snap = {}
    for top in SNAPSHOT_ROOTS:
        if os.path.islink(top):  # /lib -> usr/lib on a merged /usr: walked as /usr/lib
            snap[top] = (stat.S_IFLNK, 0o777, 0, 0, os.readlink(top))
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not SNAPSHOT_SKIP.search(os.path.join(root, d))]
            for name in dirs + files:
                p = os.path.join(root, name)
                if SNAPSHOT_SKIP.search(p) or ACCOUNT_SKIP.match(p):
                    continue
                try:
                    s = os.lstat(p)
                except OSError:
                    continue
                extra = None
                if stat.S_ISLNK(s.st_mode):
                    try:
                        extra = os.readlink(p)
                    except OSError:
                        pass
                elif stat.S_ISREG(s.st_mode) and p.startswith("/etc/"):
                    extra = s.st_size
                snap[p] = (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_uid,
                           s.st_gid, extra)
    return snap


def snapshot_diff(before, after):
    """Lines describing what was added, removed or changed."""
    out = []
    for p in sorted(set(before) | set(after)):
        a, b = before.get(p), after.get(p)
        if a == b:
            continue
        if a is None:
            out.append("left behind: %s %s" % (p, _describe(b)))
        elif b is None:
            out.append("removed: %s %s" % (p, _describe(a)))
        else:
            out.append("changed: %s %s -> %s" % (p, _describe(a), _describe(b)))
    return out


def _describe(e):
    kind, mode, uid, gid, extra = e
    kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "link",
             stat.S_IFSOCK: "socket", stat.S_IFIFO: "fifo"}
    s = "(%s %04o %d:%d" % (kinds.get(kind, kind), mode, uid, gid)
    return s + (", %s)" % extra if extra is not None else ")")


def account_lines():
    out = {}
    for p in ACCOUNT_FILES:
        try:
            with open(p) as f:
                out[p] = f.read().splitlines()
        except OSError:
            out[p] = []
    return out


def account_diff(before, after, name=USER):
    """(lines added or removed that are not name's own, lines added for name)."""
    other, own = [], []
    for p in ACCOUNT_FILES:
        b, a = set(before.get(p, [])), set(after.get(p, []))
        for line in sorted(a - b):
            (own if line.split(":", 1)[0] == name else other).append("%s: +%s" % (p, line))
        for line in sorted(b - a):
            other.append("%s: -%s" % (p, line))
    return other, own


# ---------------------------------------------------------------------------------------
# clients


def https_get(port, cafile, name, timeout):
    """One HTTPS request to 127.0.0.1:port with Python's ssl, verifying the certificate
    against cafile for name. Returns (ok, detail, server certificate DER)."""
    r = sv.https_get(port, cafile, ctx=ssl.create_default_context(cafile=cafile),
                     timeout=timeout, name=name)
    return r["ok"], r["error"], r["cert"]


def curl(port, cafile, name, timeout):
    """curl https://NAME:port/ resolved to 127.0.0.1, verifying against cafile: (ok,
    detail)."""
    argv = ["curl", "-q", "-sS", "--noproxy", "*", "--fail", "--max-time", str(timeout),
            "--cacert", cafile, "--resolve", "%s:%d:127.0.0.1" % (name, port),
            "https://%s:%d/" % (name, port)]
    rc, out, err, _ = st.run(argv, timeout=timeout + 5)
    ok = rc == 0 and out.startswith(b"hello from ")
    return ok, None if ok else "curl rc=%s %s %r" % (rc, err.decode(errors="replace").strip(),
                                                     out[:80])


class RequestLoop(st.ClientLoop):
    """Client threads making HTTPS requests back to back, each on a new connection, until
    stop(): py_threads with Python's ssl, curl_threads with curl. Each request is
    recorded as (start, end, ok, kind, detail)."""

    def __init__(self, port, cafile, name, py_threads=3, curl_threads=1):
        self.args = (port, cafile, name, st.scaled(10))
        super().__init__(["python"] * py_threads + ["curl"] * curl_threads, self.args[3])

    def request(self, kind, state):
        if kind == "python":
            ok, detail, _ = https_get(*self.args)
        else:
            ok, detail = curl(*self.args)
        return ok, kind, detail
