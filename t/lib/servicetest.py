"""Helpers for the process-model tests (t/reload.t, t/drain.t, t/daemon.t,
t/privileges.t, t/resume.t), on top of sluicetest: config edits, worker generations
(from the master's log), the ids a process runs as, a continuous request loop, HTTPS
requests that report the certificate and the session, and a daemonized sluice that is
not a Popen child.
"""

import glob
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import sluicetest as st
import tlsclient as tc

# "TS sluice[MASTER]: info: worker SLOT (pid P, generation G) ready"
WORKER_READY = re.compile(r"\bsluice\[(\d+)\]: info: worker (\d+) \(pid (\d+), "
                          r"generation (\d+)\) ready")
RELOAD_OK = re.compile(r"\bsluice\[(\d+)\]: info: reload: generation (\d+) ready, retiring "
                       r"generation (\d+)")
FIRST_READY = re.compile(r"\bsluice\[(\d+)\]: info: sluice \S+ ready \((\d+) workers?, "
                         r"generation (\d+)\)")


# ---------------------------------------------------------------------------------------
# configs


def conf_value_of(conf, key):
    """The string value of a top-level key in a config written by t.write_config."""
    with open(conf) as f:
        m = re.search(r'^%s\s*=\s*"([^"]*)"' % re.escape(key), f.read(), re.M)
    return m.group(1) if m else None


def break_config(conf, text='reload-test-typo = 1;'):
    """Append a line sluice must refuse (an unknown key) to conf; returns its line number
    and a function that restores the file."""
    with open(conf) as f:
        good = f.read()
    with open(conf, "w") as f:
        f.write(good if good.endswith("\n") else good + "\n")
        f.write(text + "\n")
    line = good.count("\n") + (0 if good.endswith("\n") else 1) + 1

    def restore():
        with open(conf, "w") as f:
            f.write(good)

    return line, restore


def replace_file(src, dst):
    """Atomically replace dst by a copy of src, keeping dst's mode."""
    mode = os.stat(dst).st_mode & 0o7777 if os.path.exists(dst) else 0o644
    tmp = dst + ".new"
    with open(src, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, dst)


def cert_der(pem_path):
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def ca_bundle(t, name, *pems):
    """One CA file holding several (self-signed) certificates."""
    data = "".join(open(p).read() for p in pems)
    return t.write_file(name, data, mode=0o644)


# ---------------------------------------------------------------------------------------
# processes


def _stat_fields(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ppid(pid):
    f = _stat_fields(pid)
    return int(f[1]) if f else None


def exe(pid):
    try:
        return os.path.realpath("/proc/%d/exe" % pid)
    except OSError:
        return None


def status_fields(pid):
    """/proc/PID/status as a dict of name -> list of words ({} if gone)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.split()
    except OSError:
        pass
    return out


def ids(pid):
    """(uids, gids, groups): the four uids and gids (real, effective, saved, fs) and the
    supplementary groups of pid, as ints; None if the process is gone."""
    s = status_fields(pid)
    if "Uid" not in s:
        return None
    return ([int(x) for x in s["Uid"]], [int(x) for x in s["Gid"]],
            [int(x) for x in s.get("Groups", [])])


def pidfile_pid(path):
    """The pid written in a pidfile, or None (missing, empty or not a number)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------
# generations, from the master's log


def generations(lines):
    """{generation: {slot: pid}} from the master's "worker SLOT (pid P, generation G)
    ready" lines (a restarted slot keeps its latest pid)."""
    gens = {}
    for ln in lines:
        m = WORKER_READY.search(ln)
        if m:
            gens.setdefault(int(m.group(4)), {})[int(m.group(2))] = int(m.group(3))
    return gens


def current_generation(lines):
    """The generation serving now according to the log: the latest "reload: generation G
    ready" line, else the first "sluice ... ready (N workers, generation G)" line."""
    g = None
    for ln in lines:
        m = RELOAD_OK.search(ln) or FIRST_READY.search(ln)
        if m:
            g = int(m.group(2) if RELOAD_OK.search(ln) else m.group(3))
    return g


def reload(sl, timeout=None, signal_pid=None):
    """Send SIGHUP to the master and wait for "reload: generation G ready, retiring
    generation G-1" (a line more than before). Returns (G, {slot: pid}) of the new
    generation, or (None, {}) if no such line came within timeout. sl is anything with
    log_lines() and, unless signal_pid is given, pid."""
    timeout = timeout if timeout is not None else st.scaled(10)
    before = sum(1 for ln in sl.log_lines() if RELOAD_OK.search(ln))
    os.kill(signal_pid or sl.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = sl.log_lines()
        hits = [RELOAD_OK.search(ln) for ln in lines if RELOAD_OK.search(ln)]
        if len(hits) > before:
            g = int(hits[before].group(2))
            return g, generations(lines).get(g, {})
        time.sleep(0.05)
    return None, {}


# ---------------------------------------------------------------------------------------
# clients


def https_get(port, cafile, ctx=None, timeout=10, session=None, path="/", name="localhost"):
    """One HTTPS request with Python's ssl over a new connection to 127.0.0.1, for the
    server name name. Returns a dict: ok (a 200 answer from the backend ending in
    close_notify), body, how it ended, the server certificate (DER), the client port,
    session, session_reused, error."""
    res = {"ok": False, "error": None, "how": None, "cert": None, "port": None,
           "session": None, "reused": None, "data": b""}
    ctx = ctx or tc.context(cafile)
    raw = None
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        res["port"] = raw.getsockname()[1]
        s = ctx.wrap_socket(raw, server_hostname=name, suppress_ragged_eofs=False,
                            session=session)
        raw = s
        res["cert"] = s.getpeercert(binary_form=True)
        res["reused"] = s.session_reused
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                  % (path.encode(), name.encode()))
        data, how = tc.read_to_close(s, timeout)
        res["data"], res["how"] = data, how
        res["session"] = s.session
        res["ok"] = (data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\n")
                     and b"hello from " in data and how == "close_notify")
        if not res["ok"]:
            res["error"] = "answer %r, ended by %s" % (data[-80:], how)
    except (OSError, ssl.SSLError, ValueError) as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass
    return res


class RequestLoop(st.ClientLoop):
    """Client threads doing HTTPS requests back to back, each on a new connection, until
    stop(): py_threads with Python's ssl, curl_threads with curl. Every request is
    recorded as (start, end, ok, client kind, what went wrong)."""

    def __init__(self, t, port, cafile, py_threads=3, curl_threads=1, timeout=None):
        self.t = t
        self.port = port
        self.cafile = cafile
        self.timeout = timeout or st.scaled(10)
        super().__init__(["python"] * py_threads + ["curl"] * curl_threads, self.timeout)

    def thread_state(self, kind):
        return tc.context(self.cafile) if kind == "python" else None

    def request(self, kind, ctx):
        if kind == "python":
            r = https_get(self.port, self.cafile, ctx=ctx, timeout=self.timeout)
            return r["ok"], kind, r["error"]
        rc, body, err, _ = self.t.curl(self.port, "/", cacert=self.cafile, timeout=self.timeout)
        ok = rc == 0 and body.startswith(b"hello from ")
        return ok, kind, None if ok else "rc=%s %s" % (rc, err.strip())


def wait_requests(loop, n, timeout):
    """Wait until loop has completed n more requests than now; True if it did."""
    return loop.wait_more(n, timeout)


# ---------------------------------------------------------------------------------------
# a daemonized sluice


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Make this process the subreaper of its descendants, so a daemon that detaches
    (double fork) is reparented to us and its exit status can be collected. Returns
    True on success."""
    if st._libc is None:
        return False
    return st._libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def sanitizer_env(t, tag):
    """The environment for a sluice whose stderr goes nowhere (a daemon): sanitizer
    reports are written to TMP/sanitizer-TAG.* instead."""
    env = dict(os.environ)
    prefix = t.path("sanitizer-%s" % tag)
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        old = env.get(var, "")
        env[var] = (old + ":" if old else "") + "log_path=" + prefix
    return env


def sanitizer_files(t, tag):
    return sorted(glob.glob(t.path("sanitizer-%s*" % tag)))


class Daemon:
    """A sluice master that detached (sluice -d, or the init script). Not a Popen child:
    its pid comes from the pidfile and its log from log-file. With become_subreaper()
    done first, it is reaped by a thread as soon as it exits, so exit_status is known and
    no zombie keeps `kill -0` succeeding."""

    def __init__(self, t, conf, pidfile, logpath, tag="daemon"):
        self.t = t
        self.conf = conf
        self.pidfile = pidfile
        self.logpath = logpath
        self.tag = tag
        self.pid = None
        self.exit_status = None
        self.reap_error = None
        self._stop = threading.Event()
        self._reaper = None
        t.cleanups.append(self.kill)

    # the same log helpers as sluicetest.Sluice
    log = st.Sluice.log
    log_lines = st.Sluice.log_lines
    wait_log = st.Sluice.wait_log
    unexpected_errors = st.Sluice.unexpected_errors
    sanitizer_reports = st.Sluice.sanitizer_reports
    valgrind_reports = st.Sluice.valgrind_reports

    def start(self, extra=("-d",), timeout=None):
        """Run `sluice -d -f conf` (or extra argv) as a shell would: wait for its exit
        only (its stdout and stderr are files, not pipes whose closing could be waited
        for). Returns (rc, stdout, stderr, elapsed), rc None on timeout. On rc 0 the
        master's pid is taken from the pidfile and a reaper watches it."""
        outp = self.t.path("%s.stdout" % self.tag)
        errp = self.t.path("%s.stderr" % self.tag)
        with open(outp, "wb") as out, open(errp, "wb") as err:
            t0 = time.monotonic()
            p = st.spawn([st.SLUICE] + list(extra) + ["-f", self.conf],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.t.dir,
                         env=sanitizer_env(self.t, self.tag))
        try:
            rc = p.wait(timeout=timeout or st.scaled(20))
        except subprocess.TimeoutExpired:
            rc = None
        el = time.monotonic() - t0
        # what a caller sees the moment the command returns
        self.log_at_return = self.log()
        self.pid_at_return = pidfile_pid(self.pidfile)
        if rc == 0:
            self.adopt()
        with open(outp, "rb") as out, open(errp, "rb") as err:
            return rc, out.read().decode(errors="replace"), err.read().decode(
                errors="replace"), el

    def adopt(self):
        """Take the master's pid from the pidfile and start reaping it."""
        self.pid = pidfile_pid(self.pidfile)
        if self.pid is not None and self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, daemon=True)
            self._reaper.start()
        return self.pid

    def _reap(self):
        pid = self.pid
        while not self._stop.is_set():
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.reap_error = "pid %d is not a child of the test (no subreaper?)" % pid
                return
            if got == pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.02)

    def alive(self):
        return self.pid is not None and st.pid_alive(self.pid)

    def workers(self):
        return st.child_pids(self.pid) if self.alive() else []

    def wait_exit(self, timeout):
        """Wait for the master to be gone (and reaped); True if it is."""
        return st.wait_until(lambda: not self.alive() and (
            self.exit_status is not None or self.reap_error is not None
            or self._reaper is None), timeout)

    def stop_and_check(self, allow_errors=(), what="daemon", stopper=None):
        """SIGTERM the master (or call stopper(), e.g. an init script's stop); it exits 0
        (known when we could reap it), its workers and the pidfile are gone, no unexpected
        error line in log-file, no sanitizer report. Four TAP results."""
        t = self.t
        workers = self.workers()
        if stopper is not None:
            stopper()
        elif self.alive():
            os.kill(self.pid, signal.SIGTERM)
        gone = self.wait_exit(st.scaled(20))
        t.ok(gone and self.exit_status == 0,
             "%s: the master (pid %s) exits 0 on SIGTERM (status %s%s)"
             % (what, self.pid, self.exit_status,
                "; " + self.reap_error if self.reap_error else ""))
        left = st.wait_pids_gone(workers, st.scaled(5))
        t.ok(not left and not os.path.exists(self.pidfile),
             "%s: its workers are gone and the pidfile is removed (left: %s, pidfile %s)"
             % (what, left, "present" if os.path.exists(self.pidfile) else "gone"))
        errs = self.unexpected_errors(allow_errors)
        t.ok(not errs, "%s: log holds no unexpected error line" % what)
        for ln in errs[:20]:
            t.diag("  " + ln)
        san = self.sanitizer_reports() + sanitizer_files(t, self.tag)
        t.ok(not san, "%s: no sanitizer report" % what)
        for item in san[:5]:
            t.diag("  " + item)
        self.pid_done()
        return self.exit_status

    def pid_done(self):
        self._stop.set()

    def kill(self):
        """Cleanup: SIGKILL the master and its workers if still there."""
        self._stop.set()
        if self.pid is not None and st.pid_alive(self.pid):
            pids = [self.pid] + st.child_pids(self.pid)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.waitpid(self.pid, 0)
            except OSError:
                pass


def procs_with_arg(arg):
    """Pids of live processes one of whose arguments contains arg (e.g. a config path)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(arg.encode() in a for a in argv) and st.pid_alive(int(d)):
                out.append(int(d))
    return out


def kill_strays_at_exit(t):
    """Cleanup for tests that start daemons: SIGKILL every sluice process left running
    with a config in this test's temporary folder (e.g. a start that should have been
    refused but was not)."""

    def kill():
        sluice = os.path.realpath(st.SLUICE) if st.SLUICE else None
        for pid in procs_with_arg(t.dir):
            if sluice and exe(pid) == sluice:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    t.cleanups.insert(0, kill)  # cleanups run in reverse: this one last
