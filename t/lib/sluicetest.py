"""Helper library for sluice's tests (t/*.t): TAP output, a temporary folder per test,
certificates made on the fly, configs, sluice in the foreground, test backends, real
clients (curl, openssl s_client), log and sanitizer checks, and cleanup on every exit path.

A test looks like:

    import sluicetest as st
    t = st.Test("proxy")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config(frontends=[t.frontend(port, be.address, cert, key)])
    sl = t.start_sluice(conf)
    rc, body, err, _ = t.curl(port, "/")
    t.ok(rc == 0 and b"hello from app" in body, "HTTP request through sluice")
    t.done()          # stops sluice with SIGTERM, checks exit status, log, sanitizers

sluice runs a master and workers: Sluice.worker_pids() (the master's children),
ready_workers() ({slot: pid} from the log), wait_workers(n); stats() sums the stats line
each worker logs at exit, worker_stats() gives them per pid. Tests run as root and the
workers as nobody, so the folder is 0755 and the backends' Unix sockets 0666.

The same file run as a script is the test backend: see backend_main() below.
Environment: SLUICE, SLUICE_BACKEND, SLUICE_SRCDIR, SLUICE_TEST_TIME_FACTOR,
SLUICE_KEEP_TMP=1 keeps the temporary folder, SLUICE_VALGRIND (make check-valgrind) runs
sluice under that valgrind command and checks each process's memcheck log.
"""

import atexit
import ctypes
import glob
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

FACTOR = float(os.environ.get("SLUICE_TEST_TIME_FACTOR") or "1")
SLUICE = os.environ.get("SLUICE", "")
SLUICESTAT = os.environ.get("SLUICESTAT", "")
SRCDIR = os.environ.get("SLUICE_SRCDIR", "")
KEEP_TMP = os.environ.get("SLUICE_KEEP_TMP") == "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# make check-valgrind: the valgrind command sluice runs under; each process (the master and
# every forked worker) writes its own log, NAME.valgrind.PID, in the test's folder.
VALGRIND = shlex.split(os.environ.get("SLUICE_VALGRIND", ""))
# Memcheck's headline for each error it reports, and its end-of-process summary lines.
VALGRIND_ERROR = re.compile(
    r"==\d+== (Invalid (read|write|free)|Mismatched free|Conditional jump|Use of uninitialised"
    r"|Syscall param|Source and destination overlap|Argument '\w+' of function"
    r"|Jump to the invalid address|Process terminating with default action of signal "
    r"(4|6|7|8|11) |[\d,]+ (\([\d,]+ direct, [\d,]+ indirect\) )?bytes in [\d,]+ blocks "
    r"are (definitely|indirectly) lost)")
VALGRIND_SUMMARY = re.compile(r"==\d+== +(ERROR SUMMARY: ([\d,]+) errors"
                              r"|(definitely|indirectly) lost: ([\d,]+) bytes)")

SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"LeakSanitizer"),
    re.compile(r"runtime error:"),
    re.compile(r"ERROR: UndefinedBehaviorSanitizer"),
    re.compile(r"SUMMARY: \w+Sanitizer"),
]
# One log line: "2026-11-25T18:00:00.123Z sluice[PID]: LEVEL: message"
ERROR_LINE = re.compile(r"\bsluice\[\d+\]: error: ")
STATS_LINE = re.compile(r"\bsluice\[(\d+)\]: info: stats: (.*)$")
WORKER_READY = re.compile(r"\bsluice\[\d+\]: info: worker (\d+) \(pid (\d+), generation \d+\) "
                          r"ready\b")


def scaled(seconds):
    """A coarse time bound, scaled for slow (sanitizer) builds."""
    return seconds * FACTOR


# ---------------------------------------------------------------------------------------
# processes: every child is registered and killed on every exit path

_children = []
_children_lock = threading.Lock()
try:
    _libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork, not in preexec
except OSError:
    _libc = None


def _pdeathsig():
    """preexec: the child gets SIGKILL if the test process dies (even by SIGKILL)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv, preexec=None, **kw):
    """Popen registered for cleanup. Call from the main thread for long-lived children:
    PR_SET_PDEATHSIG fires when the creating *thread* exits."""

    def pre():
        _pdeathsig()
        if preexec is not None:
            preexec()

    p = subprocess.Popen(argv, preexec_fn=pre, **kw)
    with _children_lock:
        _children.append(p)
    return p


def run(argv, input=None, timeout=30, **kw):
    """Run to completion; returns (rc, stdout, stderr, elapsed). rc is None on timeout."""
    t0 = time.monotonic()
    p = spawn(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
    return rc, out, err, time.monotonic() - t0


def kill_all_children():
    with _children_lock:
        procs = list(_children)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


# ---------------------------------------------------------------------------------------
# small helpers


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A TCP port that was free on host a moment ago."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n, family=socket.AF_INET, host="127.0.0.1"):
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def ipv6_loopback_available():
    """(True, "") if [::1] can be bound, else (False, reason)."""
    if not socket.has_ipv6:
        return False, "python built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
            with socket.create_connection(("::1", s.getsockname()[1]), timeout=2):
                pass
        return True, ""
    except OSError as e:
        return False, "IPv6 loopback [::1] unavailable: %s" % e


def _proc_tcp_sockets():
    """(family, local port, remote port, state, inode) of every TCP socket, from
    /proc/net/tcp{,6}; state "0A" is LISTEN."""
    for fam, path in ((4, "/proc/net/tcp"), (6, "/proc/net/tcp6")):
        try:
            with open(path) as f:
                next(f)
                rows = [line.split() for line in f]
        except OSError:
            continue
        for fields in rows:
            if len(fields) > 9:
                yield (fam, int(fields[1].rsplit(":", 1)[1], 16),
                       int(fields[2].rsplit(":", 1)[1], 16), fields[3], int(fields[9]))


def listen_socket_count(port):
    """How many TCP sockets are in LISTEN on port (IPv4 and IPv6): each SO_REUSEPORT
    socket is one, however many processes hold a copy of it. (listening_tcp_ports() only
    says whether any socket listens.)"""
    return sum(1 for _, local, _, state, _ in _proc_tcp_sockets()
               if state == "0A" and local == port)


def listening_tcp_ports():
    """Set of (family, port) in LISTEN state, from /proc/net/tcp{,6} (no probe connects)."""
    return {(fam, local) for fam, local, _, state, _ in _proc_tcp_sockets() if state == "0A"}


def proc_cpu_seconds(pid, with_children=True):
    """utime+stime of pid (all threads) plus, optionally, of its live descendants."""
    pids = [pid]
    if with_children:
        pids += _descendants(pid)
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])  # fields 14 and 15
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def _descendants(pid):
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                parent[int(d)] = int(rest[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def child_pids(pid):
    """Direct children of pid (from /proc/PID/task/PID/children), sorted; [] if gone."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return sorted(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(kids)


def pid_state(pid):
    """The state letter of /proc/PID/stat (R, S, T, Z...), or None if there is no such
    process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid):
    """True while pid runs (or is stopped); False once it has exited, even if nobody has
    reaped it yet (an orphan's zombie may linger under a non-reaping pid 1)."""
    return pid_state(pid) not in (None, "Z", "X")


def wait_pids_gone(pids, timeout):
    """Wait until none of pids is alive; returns the list still alive ([] = all gone)."""
    gone = wait_until(lambda: not [p for p in pids if pid_alive(p)], timeout)
    return [] if gone else [p for p in pids if pid_alive(p)]


def _tcp_inode(local_port, remote_port):
    """Inode of the IPv4/IPv6 TCP socket local_port <-> remote_port (loopback), or None."""
    for _, local, remote, _, inode in _proc_tcp_sockets():
        if local == local_port and remote == remote_port and inode:
            return inode
    return None


def server_socket_owner(client_sock, pids):
    """Which of pids holds the server end of the TCP connection client_sock (a connected
    client socket to a local server), found from /proc/net/tcp and /proc/PID/fd. Returns
    the pid or None (not accepted yet, or held by none of pids)."""
    try:
        cport = client_sock.getsockname()[1]
        sport = client_sock.getpeername()[1]
    except OSError:
        return None
    inode = _tcp_inode(sport, cport)
    if inode is None:
        return None
    want = "socket:[%d]" % inode
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == want:
                    return pid
            except OSError:
                pass
    return None


def sluice_has_fault_injection():
    """(True, "") if $SLUICE -V says "(fault injection)", else (False, reason)."""
    rc, out, err, _ = run([SLUICE, "-V"], timeout=10)
    text = (out + err).decode(errors="replace").strip()
    if rc == 0 and "(fault injection)" in text:
        return True, ""
    return False, ("this sluice was built without --enable-fault-injection (sluice -V: %r)"
                   % text)


class NeverAccepts:
    """Listeners that never accept and whose queue is full, so a connect can't finish.
    tcp(): a new connect stays pending (SYN dropped) until the connector times out.
    unix(path): a nonblocking connect fails at once with EAGAIN.
    check() tells whether the condition holds: (True, "") or (False, reason)."""

    def __init__(self):
        self.socks = []

    def tcp(self, host="127.0.0.1"):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind((host, 0))
        lst.listen(0)
        self.socks.append(lst)
        port = lst.getsockname()[1]
        for _ in range(16):  # fill the accept queue until a connect stays pending
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            self.socks.append(c)
            try:
                c.connect((host, port))
            except BlockingIOError:
                pass
            import select
            _, w, _ = select.select([], [c], [], 0.3)
            if not w:
                return port
        raise RuntimeError("could not fill the accept queue of a TCP listener")

    def tcp_pending(self, port, host="127.0.0.1", wait=0.5):
        import select
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect((host, port))
        except BlockingIOError:
            pass
        _, w, _ = select.select([], [c], [], wait)
        c.close()
        return not w

    def unix(self, path):
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        os.chmod(path, 0o666)  # workers run as nobody when the tests run as root
        lst.listen(0)
        self.socks.append(lst)
        for _ in range(16):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            self.socks.append(c)
            try:
                c.connect(path)
            except BlockingIOError:
                return path
        raise RuntimeError("could not fill the queue of a unix listener")

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []


def refused_unix_socket(path):
    """A unix socket file with nobody listening: connect gives ECONNREFUSED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o666)  # so a worker running as nobody sees the refusal, not EACCES
    s.close()
    return path


class Raw:
    """A config value written verbatim (e.g. Raw("1e999"))."""

    def __init__(self, text):
        self.text = text


def conf_value(v, indent="  "):
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            inner = (",\n" + indent + "  ").join(conf_group(x, indent + "  ") for x in v)
            return "(\n%s  %s\n%s)" % (indent, inner, indent)
        return "[ %s ]" % ", ".join(conf_value(x) for x in v)
    if isinstance(v, dict):
        return conf_group(v, indent)
    raise TypeError("cannot write %r" % (v,))


def conf_group(d, indent="  "):
    items = "".join("%s  %s = %s;\n" % (indent, k, conf_value(v, indent + "  "))
                    for k, v in d.items())
    return "{\n%s%s}" % (items, indent)


def conf_text(settings):
    """libconfig text for an ordered dict of top-level settings."""
    return "".join("%s = %s;\n" % (k, conf_value(v, "")) for k, v in settings.items())


# ---------------------------------------------------------------------------------------
# sluice


class Sluice:
    def __init__(self, test, conf, proc, logpath, ports, log_offset=0):
        self.test = test
        self.conf = conf
        self.proc = proc
        self.pid = proc.pid
        self.logpath = logpath
        self.ports = ports
        self.log_offset = log_offset  # size of the log file before this start
        self.checked = False
        self.exit_status = None

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_lines(self):
        return self.log().splitlines()

    def run_log_lines(self):
        """The log lines written since this Sluice object started (the log file is
        appended to, so an earlier run with the same name may precede them)."""
        try:
            with open(self.logpath, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def wait_log(self, pattern, timeout=None, count=1):
        """Wait until pattern (regex) matches count lines; returns the matches or []."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + (timeout if timeout is not None else scaled(5))
        while True:
            hits = [ln for ln in self.log_lines() if rx.search(ln)]
            if len(hits) >= count or time.monotonic() > deadline:
                return hits if len(hits) >= count else []
            time.sleep(0.05)

    def alive(self):
        return self.proc.poll() is None

    def cpu_seconds(self):
        return proc_cpu_seconds(self.pid)

    def open_fds(self):
        try:
            return len(os.listdir("/proc/%d/fd" % self.pid))
        except OSError:
            return -1

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signal and wait; returns the exit status (negative: killed by a signal)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout if timeout is not None else scaled(20))
            except subprocess.TimeoutExpired:
                self.test.diag("sluice did not exit within the bound after signal %d" % sig)
                self.proc.kill()
                self.proc.wait()
                self.exit_status = "timeout"
                return self.exit_status
        if self.exit_status is None:
            self.exit_status = self.proc.returncode
        return self.exit_status

    def _stats_lines(self):
        """[(pid, {key: int})] for every stats line of this run, in log order."""
        out = []
        for ln in self.run_log_lines():
            m = STATS_LINE.search(ln)
            if m:
                out.append((int(m.group(1)),
                            {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}))
        return out

    def worker_stats(self):
        """{pid: {key: int}}: the stats line each worker of this run logged at exit."""
        return {pid: d for pid, d in self._stats_lines() if pid != self.pid}

    def stats(self):
        """The key=value stats lines logged at exit by the workers of this run, summed,
        as a dict of ints ({} if there are none). A build that serves from the master
        process itself logs one line from the master pid: that one is used then."""
        lines = self._stats_lines()
        use = [d for pid, d in lines if pid != self.pid] or [d for _, d in lines[-1:]]
        total = {}
        for d in use:
            for k, v in d.items():
                total[k] = total.get(k, 0) + v
        return total

    # --- workers: children of the master process
    def worker_pids(self):
        """Pids of the master's live children (its workers), sorted; [] if it is gone."""
        return [p for p in child_pids(self.pid) if pid_alive(p)]

    def ready_workers(self):
        """{slot: pid} from the "worker SLOT (pid P, generation G) ready" lines of this
        run, the latest per slot."""
        slots = {}
        for ln in self.run_log_lines():
            m = WORKER_READY.search(ln)
            if m:
                slots[int(m.group(1))] = int(m.group(2))
        return slots

    def slot_of(self, pid):
        for slot, p in self.ready_workers().items():
            if p == pid:
                return slot
        return None

    def wait_workers(self, n, timeout=None, exclude=()):
        """Wait until the master has exactly n live children, none of them in exclude and
        each announced by a ready line. Returns their sorted pids, or [] on timeout."""
        exclude = set(exclude)

        def check():
            kids = self.worker_pids()
            ready = set(self.ready_workers().values())
            if len(kids) == n and not exclude & set(kids) and all(k in ready for k in kids):
                return kids
            return None

        return wait_until(check, timeout if timeout is not None else scaled(10)) or []

    def unexpected_errors(self, allow=()):
        rxs = [re.compile(a) for a in allow]
        return [ln for ln in self.log_lines()
                if ERROR_LINE.search(ln) and not any(r.search(ln) for r in rxs)]

    def sanitizer_reports(self):
        return ([ln for ln in self.log_lines() if any(p.search(ln) for p in SANITIZER_PATTERNS)]
                + self.valgrind_reports())

    def valgrind_reports(self):
        """Under make check-valgrind: each memcheck error headline and each non-zero error
        or definite/indirect leak summary, as "LOGFILE: line", from every process's log.
        (A process killed by SIGKILL leaves no summary, but its errors so far are there.)"""
        summaries, errors = [], []  # summaries first: the diagnosis shows the first lines
        stem = os.path.splitext(self.logpath)[0] + ".valgrind."
        for path in sorted(glob.glob(glob.escape(stem) + "*")):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            name = os.path.basename(path)
            for i, ln in enumerate(lines):
                m = VALGRIND_SUMMARY.search(ln)
                if m and (m.group(2) or m.group(4)).replace(",", "") != "0":
                    summaries.append("%s: %s" % (name, ln))
                elif VALGRIND_ERROR.search(ln):  # with the top of its stack
                    stack = [s for s in lines[i + 1:i + 9] if re.match(r"==\d+== +(at|by) ", s)]
                    errors += ["%s: %s" % (name, s) for s in [ln] + stack]
        return summaries + errors

    def stop_and_check(self, allow_errors=(), what="sluice"):
        """The end of every test: SIGTERM -> exit 0, no unexpected error line, no
        sanitizer report. Emits three TAP results."""
        self.checked = True
        t = self.test
        rc = self.stop()
        t.ok(rc == 0, "%s exits 0 on SIGTERM (status %s)" % (what, rc))
        self.check_log(allow_errors, what)
        return rc

    def check_log(self, allow_errors=(), what="sluice"):
        """The log half of stop_and_check, for a sluice that was not stopped with SIGTERM
        (e.g. its master was killed): no unexpected error line, no sanitizer report.
        Marks it checked. Emits two TAP results."""
        self.checked = True
        t = self.test
        errs = self.unexpected_errors(allow_errors)
        t.ok(not errs, "%s log holds no unexpected error line" % what)
        for ln in errs[:20]:
            t.diag("  " + ln)
        san = self.sanitizer_reports()
        t.ok(not san, "%s log holds no sanitizer report" % what)
        if san:
            t.diag_log(self.log(), 80)
            for ln in san[:40]:
                t.diag("  " + ln)
        return not errs and not san


# ---------------------------------------------------------------------------------------
# backends (separate processes running this file, see backend_main)


class Backend:
    def __init__(self, name, address, proc, report, sockpath=None, host=None, port=None):
        self.name = name
        self.address = address  # as written in sluice's config
        self.proc = proc
        self.report = report
        self.sockpath = sockpath
        self.host = host
        self.port = port

    def events(self, kind=None):
        out = []
        try:
            with open(self.report) as f:
                for line in f:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if kind is None or ev.get("event") == kind:
                        out.append(ev)
        except OSError:
            pass
        return out

    def wait_event(self, pred, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else scaled(5))
        while True:
            hits = [e for e in self.events() if pred(e)]
            if hits or time.monotonic() > deadline:
                return hits
            time.sleep(0.05)

    def accepted(self):
        return len(self.events("accept"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------
# the test context


class Test:
    def __init__(self, name, need_sluice=True):
        self.name = name
        self.n = 0
        self.failed = 0
        self.sluices = []
        self.backends = []
        self.cleanups = []
        self.finished = False
        self.plan_printed = False
        self._cert_serial = 1
        sys.stdout.reconfigure(line_buffering=True)
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard != resource.RLIM_INFINITY else 65536
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))
        except (ValueError, OSError):
            pass
        self.dir = tempfile.mkdtemp(prefix="sluice-%s-" % name)
        os.chmod(self.dir, 0o755)  # config.t runs sluice -t as nobody
        atexit.register(self._atexit)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if need_sluice:
            if not SLUICE:
                self.skip_all("SLUICE is not set (run through make check)")
            if not os.access(SLUICE, os.X_OK):
                self.skip_all("SLUICE=%s is not an executable" % SLUICE)
        for tool in ("openssl", "curl"):
            if shutil.which(tool) is None:
                self.skip_all("the %s command-line tool is not installed" % tool)

    # --- TAP
    def ok(self, cond, desc):
        self.n += 1
        cond = bool(cond)
        if not cond:
            self.failed += 1
        print("%s %d - %s" % ("ok" if cond else "not ok", self.n, desc.replace("#", "\\#")))
        return cond

    def skip(self, reason, count=1):
        for _ in range(count):
            self.n += 1
            print("ok %d # SKIP %s" % (self.n, reason))

    def diag(self, msg):
        for line in str(msg).splitlines() or [""]:
            print("# " + line)

    def diag_log(self, text, lines=40):
        tail = text.splitlines()[-lines:]
        for ln in tail:
            self.diag("  | " + ln)

    def skip_all(self, reason):
        print("1..0 # SKIP %s" % reason)
        self.plan_printed = True
        self.finished = True
        sys.stdout.flush()
        self._cleanup()
        os._exit(0)

    def bail(self, reason):
        print("Bail out! %s" % reason)
        self.finished = True
        sys.stdout.flush()
        self._cleanup()
        os._exit(1)

    # --- temp files
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write_file(self, name, data, mode=None):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        if mode is not None:
            os.chmod(p, mode)
        return p

    # --- certificates
    def _openssl(self, *args, cwd=None):
        rc, out, err, _ = run(["openssl"] + list(args), timeout=60, cwd=cwd or self.dir)
        if rc != 0:
            raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                          err.decode(errors="replace")))
        return out

    def make_key(self, name, kind="ec"):
        key = self.path(name + ".key")
        if kind == "ec":
            self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-out", key)
        elif kind == "rsa":
            self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                          "-out", key)
        else:
            raise ValueError(kind)
        os.chmod(key, 0o644)  # world-readable on purpose: config.t reads as nobody
        return key

    def make_cert(self, name="server", kind="ec", cn="localhost", expired=False, key=None,
                  days=365):
        """Self-signed certificate for localhost, 127.0.0.1 and ::1. kind "ec" (P-256) or
        "rsa"; expired=True makes one valid 2020-01-01..2021-01-01. Returns (cert, key)."""
        key = key or self.make_key(name, kind)
        cert = self.path(name + ".pem")
        san = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
        if not expired:
            self._openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", str(days),
                          "-subj", "/CN=" + cn, "-addext", san, "-addext",
                          "basicConstraints=critical,CA:TRUE")
        else:
            cadir = self.path("ca-" + name)
            os.makedirs(cadir, exist_ok=True)
            with open(os.path.join(cadir, "ca.cnf"), "w") as f:
                f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
                        "serial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                        "[p]\ncommonName = supplied\n[ext]\n%s\n" % san.replace("=", " = ", 1))
            open(os.path.join(cadir, "index.txt"), "w").close()
            with open(os.path.join(cadir, "serial"), "w") as f:
                f.write("%02X\n" % self._cert_serial)
            self._cert_serial += 1
            self._openssl("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", "req.csr",
                          cwd=cadir)
            self._openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", key,
                          "-in", "req.csr", "-startdate", "20200101000000Z", "-enddate",
                          "20210101000000Z", "-extensions", "ext", "-notext", "-out", cert,
                          cwd=cadir)
        os.chmod(cert, 0o644)
        if self.default_ca is None and not expired:
            self.default_ca = cert
        return cert, key

    # --- configs
    def frontend(self, port, backend, cert, key, host="127.0.0.1", **extra):
        listen = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        fe = {"listen": listen, "backend": backend,
              "certs": [{"cert": cert, "key": key}]}
        fe.update(extra)
        return fe

    def write_config(self, frontends, name="sluice.conf", tls=None, **globals_):
        """Write a config: test-friendly defaults (log-level info, short drain and close
        timeouts, pidfile and stats-file NAME.pid and NAME.stats in the temporary folder,
        syslog off), then globals_ (underscores in names become dashes)."""
        base = os.path.splitext(self.path(name))[0]
        settings = {"log-level": "info", "drain-timeout": 2, "close-timeout": 2,
                    # per test (tests run in parallel), not /run/sluice.{pid,stats}
                    "pidfile": base + ".pid", "stats-file": base + ".stats",
                    "syslog": False}  # no /dev/log on the test machines
        if VALGRIND:  # a busy worker under memcheck beats and finishes handshakes late
            settings.update({"watchdog-timeout": scaled(5), "handshake-timeout": scaled(10),
                             "backend-connect-timeout": scaled(5)})
        for k, v in globals_.items():
            settings[k.replace("_", "-")] = v
        if tls is not None:
            settings["tls"] = tls
        settings["frontends"] = frontends
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write("# written by t/%s.t\n" % self.name)
            f.write(conf_text(settings))
        os.chmod(p, 0o644)
        return p

    # --- sluice
    def start_sluice(self, conf, name="sluice", rlimit_nofile=None, cwd=None, wait=True,
                     ports=None, env=None, prefix=()):
        """Start `$SLUICE -F -f conf`, stderr+stdout to NAME.log (appended); wait for the
        ready line and for every listen port (parsed from conf unless given) to be in
        LISTEN. env: extra environment variables (e.g. {"SLUICE_FAULT": "hang:1"}).
        prefix: a command that execs the rest (e.g. ["ip", "netns", "exec", NS]); the
        LISTEN check sees only this test's own network namespace, so pass ports=[] then."""
        logpath = self.path(name + ".log")
        logf = open(logpath, "ab")
        log_offset = logf.seek(0, os.SEEK_END)
        child_env = None
        if env:
            child_env = dict(os.environ)
            child_env.update(env)

        def pre():
            if rlimit_nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))

        if VALGRIND:
            prefix = list(prefix) + VALGRIND + ["--log-file=" + self.path(name + ".valgrind.%p")]
        proc = spawn(list(prefix) + [SLUICE, "-F", "-f", conf], preexec=pre,
                     stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=cwd or self.dir,
                     env=child_env)
        logf.close()
        if ports is None:
            with open(conf) as f:
                ports = [int(m) for m in re.findall(r'listen\s*=\s*"[^"]*:(\d+)"', f.read())]
        sl = Sluice(self, conf, proc, logpath, ports, log_offset)
        self.sluices.append(sl)
        if wait:
            self.wait_ready(sl)
        return sl

    def wait_ready(self, sl, timeout=None):
        deadline = time.monotonic() + (timeout or scaled(10))
        while True:
            if not sl.alive():
                self.diag("sluice exited early with status %s; log:" % sl.proc.returncode)
                self.diag_log(sl.log())
                raise RuntimeError("sluice did not start")
            ready = any(re.search(r"info: sluice \S+ ready", ln) for ln in sl.run_log_lines())
            listening = {p for _, p in listening_tcp_ports()}
            if ready and all(p in listening for p in sl.ports):
                return
            if time.monotonic() > deadline:
                self.diag_log(sl.log())
                raise RuntimeError("sluice not ready after %.0f s" % (timeout or scaled(10)))
            time.sleep(0.05)

    def sluice_check(self, conf, as_nobody=False, cwd=None, timeout=None):
        """`sluice -t -f conf`: (rc, stdout, stderr)."""
        argv = [SLUICE, "-t", "-f", conf]
        if as_nobody:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        rc, out, err, _ = run(argv, timeout=timeout or scaled(20), cwd=cwd or self.dir)
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    # --- backends
    def start_backend(self, name, kind="unix", host="127.0.0.1", port=0, path=None):
        """A test backend process (see backend_main for what it speaks). kind "unix" (socket
        at path, default TMP/NAME.sock) or "tcp" (host:port, port 0 = any)."""
        report = self.path("backend-%s.jsonl" % name)
        errlog = open(self.path("backend-%s.log" % name), "ab")
        if kind == "unix":
            path = path or self.path(name + ".sock")
            listen = "unix:" + path
        else:
            listen = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        proc = spawn([sys.executable, os.path.abspath(__file__), "backend", name, listen,
                      report], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog)
        errlog.close()
        line = _readline_timeout(proc.stdout, scaled(10))
        m = re.match(r"READY (\S+)", line or "")
        if not m:
            raise RuntimeError("backend %s did not start: %r" % (name, line))
        addr = m.group(1)
        if kind == "unix":
            be = Backend(name, addr, proc, report, sockpath=path)
        else:
            bport = int(addr.rsplit(":", 1)[1])
            be = Backend(name, addr, proc, report, host=host, port=bport)
        self.backends.append(be)
        return be

    # --- clients
    def curl(self, port, path="/", host="127.0.0.1", cacert=None, timeout=None, extra=()):
        """curl over https to localhost:port (resolved to host). Returns (rc, body, stderr,
        elapsed)."""
        if shutil.which("curl") is None:
            raise RuntimeError("curl is not installed")
        hostpart = "[%s]" % host if ":" in host else host
        argv = ["curl", "-q", "-sS", "--noproxy", "*", "--fail", "--max-time",
                str(timeout or scaled(10)), "--cacert", cacert or self.default_ca,
                "--resolve", "localhost:%d:%s" % (port, hostpart),
                "https://localhost:%d%s" % (port, path)] + list(extra)
        rc, out, err, el = run(argv, timeout=(timeout or scaled(10)) + 5)
        return rc, out, err.decode(errors="replace"), el

    def s_client(self, port, data, host="127.0.0.1", cacert=None, timeout=None, extra=()):
        """openssl s_client: send data, print what the server sends until it closes.
        Returns (rc, stdout, stderr, elapsed)."""
        hostpart = "[%s]" % host if ":" in host else host
        argv = ["openssl", "s_client", "-connect", "%s:%d" % (hostpart, port), "-servername",
                "localhost", "-verify_hostname", "localhost", "-CAfile",
                cacert or self.default_ca, "-verify_return_error", "-quiet", "-ign_eof"]
        argv += list(extra)
        rc, out, err, el = run(argv, input=data, timeout=timeout or scaled(10))
        return rc, out, err.decode(errors="replace"), el

    default_ca = None

    # --- end
    def done(self):
        """Check every sluice not yet checked, print the plan, clean up, exit."""
        try:
            for sl in self.sluices:
                if not sl.checked:
                    sl.stop_and_check()
        except Exception:
            self.ok(False, "end-of-test checks raised")
            self.diag(traceback.format_exc())
        self._finish()

    def _finish(self):
        if self.failed:
            for sl in self.sluices:
                self.diag("last lines of %s:" % sl.logpath)
                self.diag_log(sl.log(), 30)
        if not self.plan_printed:
            print("1..%d" % self.n)
            self.plan_printed = True
        self.finished = True
        sys.stdout.flush()
        self._cleanup()
        os._exit(1 if self.failed else 0)

    def _cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass
        self.cleanups = []
        for sl in self.sluices:
            if sl.alive():
                try:
                    sl.proc.kill()
                except OSError:
                    pass
        for be in self.backends:
            try:
                be.stop()
            except Exception:
                pass
        kill_all_children()
        if os.path.isdir(self.dir):
            if KEEP_TMP:
                print("# kept temporary folder %s" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _atexit(self):
        if not self.finished:
            print("not ok %d - test script ended without done()" % (self.n + 1))
            self.n += 1
            self.failed += 1
            if not self.plan_printed:
                print("1..%d" % self.n)
                self.plan_printed = True
            self._cleanup()

    def _on_signal(self, signum, frame):
        print("# caught signal %d, cleaning up" % signum)
        self.finished = True
        if not self.plan_printed:
            print("not ok %d - interrupted by signal %d" % (self.n + 1, signum))
            print("1..%d" % (self.n + 1))
            self.plan_printed = True
        sys.stdout.flush()
        self._cleanup()
        os._exit(128 + signum)

    def main(self, fn):
        """Run fn(self); an exception is a failed test point; then done()."""
        try:
            fn(self)
        except Exception:
            self.ok(False, "test body raised an exception")
            self.diag(traceback.format_exc())
        self.done()


def _readline_timeout(stream, timeout):
    box = []
    th = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    th.start()
    th.join(timeout)
    return box[0].decode(errors="replace") if box else None


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class ClientLoop:
    """Client threads making requests back to back, each on a new connection, until
    stop(). A subclass gives request(kind, state) -> (ok, who, detail) and, optionally,
    thread_state(kind), made once per thread (an ssl context). Every request is recorded
    as (start, end, ok, who, detail)."""

    def __init__(self, kinds, join_timeout):
        self.join_timeout = join_timeout
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.records = []
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True)
                        for kind in kinds]

    def thread_state(self, kind):
        return None

    def _run(self, kind):
        state = self.thread_state(kind)
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                ok, who, detail = self.request(kind, state)
            except Exception as e:  # a client that cannot even run is a failed request
                ok, who, detail = False, kind, "%s: %s" % (type(e).__name__, e)
            with self.lock:
                self.records.append((t0, time.monotonic(), ok, who, detail))

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self.stopping.set()
        for th in self.threads:
            th.join(self.join_timeout + 10)
        return self

    def count(self):
        with self.lock:
            return len(self.records)

    def failures(self):
        with self.lock:
            return [r for r in self.records if not r[2]]

    def since(self, t0):
        with self.lock:
            return [r for r in self.records if r[0] >= t0]

    def wait_more(self, n, timeout):
        """Wait until n more requests have completed than now; True if they did."""
        base = self.count()
        return wait_until(lambda: self.count() >= base + n, timeout)

    def max_gap(self):
        """The longest time without a completed request while the loop ran."""
        with self.lock:
            ends = sorted(r[1] for r in self.records)
        return max((b - a for a, b in zip(ends, ends[1:])), default=0.0)


# ---------------------------------------------------------------------------------------
# The test backend: `python3 sluicetest.py backend NAME LISTEN REPORT`
# LISTEN is unix:PATH, HOST:PORT or [V6]:PORT (port 0 = any). Prints "READY ADDR".
# Each connection's first line selects what it does:
#   GET/HEAD/POST ... (HTTP): answers "hello from NAME" with Connection: close, closes.
#   SHA UP DOWN    : reads exactly UP bytes while sending DOWN random bytes, then sends
#                    "RESULT UPGOT UPSHA DOWNSENT DOWNSHA\n", shuts down its write side
#                    and reads to EOF.
#   ECHO           : echoes until EOF, then shuts down its write side.
#   EOF DELAY      : reads to EOF, logs it, waits DELAY s, sends "EOF-SEEN N SHA\n", closes.
#   BYE            : sends "bye\n" and closes.
#   HOLD           : reads to EOF, closes.
#   SHUTWR         : sends "shut-wr\n", shuts down its write side only, keeps reading to
#                    EOF (logs "eof" with the bytes after the command line), closes.
# Every connection appends JSON lines (accept, eof, done...) to REPORT.

_POOL = None


def _random_pool():
    global _POOL
    if _POOL is None:
        _POOL = os.urandom(4 << 20)
    return _POOL


def random_bytes_chunks(n, chunk=65536):
    """n pseudo-random bytes in chunks, sliced from a 4 MB random pool at random offsets."""
    pool = _random_pool()
    rnd = random.Random()
    while n > 0:
        k = min(chunk, n)
        off = rnd.randrange(0, len(pool) - k)
        yield pool[off:off + k]
        n -= k


class _Reporter:
    def __init__(self, path, name):
        self.f = open(path, "a")
        self.lock = threading.Lock()
        self.name = name

    def __call__(self, conn, event, **kw):
        kw.update(name=self.name, conn=conn, event=event, t=time.time())
        with self.lock:
            self.f.write(json.dumps(kw) + "\n")
            self.f.flush()


def _recv_line(sock, limit=65536):
    buf = b""
    while b"\n" not in buf:
        d = sock.recv(4096)
        if not d:
            return buf, b""
        buf += d
        if len(buf) > limit:
            break
    line, _, rest = buf.partition(b"\n")
    return line + b"\n", rest


def _read_to_eof(sock, first=b""):
    h = hashlib.sha256(first)
    n = len(first)
    while True:
        d = sock.recv(262144)
        if not d:
            return n, h.hexdigest()
        h.update(d)
        n += len(d)


def _backend_conn(sock, cid, name, report):
    try:
        line, rest = _recv_line(sock)
        words = line.split()
        cmd = words[0].decode(errors="replace") if words else ""
        report(cid, "request", cmd=cmd, line=line[:200].decode(errors="replace"))
        if cmd in ("GET", "HEAD", "POST", "PUT"):
            buf = line + rest
            while b"\r\n\r\n" not in buf:
                d = sock.recv(4096)
                if not d:
                    break
                buf += d
            body = ("hello from %s\n" % name).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d"
                         b"\r\nConnection: close\r\n\r\n%s" % (len(body), body if cmd != "HEAD"
                                                                  else b""))
            sock.shutdown(socket.SHUT_WR)
            _read_to_eof(sock)
        elif cmd == "SHA":
            up, down = int(words[1]), int(words[2])
            res = {}

            def sender():
                h = hashlib.sha256()
                sent = 0
                for chunk in random_bytes_chunks(down):
                    sock.sendall(chunk)
                    h.update(chunk)
                    sent += len(chunk)
                res["sent"], res["sent_sha"] = sent, h.hexdigest()

            th = threading.Thread(target=sender, daemon=True)
            th.start()
            h = hashlib.sha256(rest[:up])
            got = len(rest[:up])
            while got < up:
                d = sock.recv(min(262144, up - got))
                if not d:
                    break
                h.update(d)
                got += len(d)
            th.join()
            sock.sendall(b"RESULT %d %s %d %s\n" % (got, h.hexdigest().encode(), res["sent"],
                                                      res["sent_sha"].encode()))
            report(cid, "sha", up=got, up_sha=h.hexdigest(), down=res["sent"],
                   down_sha=res["sent_sha"])
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(60)
            n, _ = _read_to_eof(sock)
            report(cid, "eof", bytes=n)
        elif cmd == "ECHO":
            if rest:
                sock.sendall(rest)
            n = len(rest)
            while True:
                d = sock.recv(262144)
                if not d:
                    break
                n += len(d)
                sock.sendall(d)
            report(cid, "eof", bytes=n)
            sock.shutdown(socket.SHUT_WR)
        elif cmd == "EOF":
            delay = float(words[1]) if len(words) > 1 else 0.0
            n, sha = _read_to_eof(sock, rest)
            report(cid, "eof", bytes=n, sha=sha)
            time.sleep(delay)
            sock.sendall(b"EOF-SEEN %d %s\n" % (n, sha.encode()))
            report(cid, "replied")
        elif cmd == "BYE":
            sock.sendall(b"bye\n")
            report(cid, "closing")
        elif cmd == "HOLD":
            n, _ = _read_to_eof(sock, rest)
            report(cid, "eof", bytes=n)
        elif cmd == "SHUTWR":
            sock.sendall(b"shut-wr\n")
            sock.shutdown(socket.SHUT_WR)
            report(cid, "shut-wr")
            n, sha = _read_to_eof(sock, rest)
            report(cid, "eof", bytes=n, sha=sha)
        else:
            report(cid, "unknown")
    except Exception as e:
        report(cid, "exception", error="%s: %s" % (type(e).__name__, e))
    finally:
        try:
            sock.close()
        except OSError:
            pass
        report(cid, "closed")


def backend_main(argv):
    name, listen, report_path = argv
    report = _Reporter(report_path, name)
    threading.stack_size(512 * 1024)
    if listen.startswith("unix:"):
        path = listen[5:]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        os.chmod(path, 0o666)  # workers run as nobody when the tests run as root
        addr = "unix:" + path
    else:
        host, port = listen.rsplit(":", 1)
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        srv = socket.socket(fam, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, int(port)))
        port = srv.getsockname()[1]
        addr = "[%s]:%d" % (host, port) if fam == socket.AF_INET6 else "%s:%d" % (host, port)
    srv.listen(1024)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    print("READY " + addr, flush=True)
    cid = 0
    while True:
        sock, peer = srv.accept()
        cid += 1
        report(cid, "accept")
        threading.Thread(target=_backend_conn, args=(sock, cid, name, report),
                         daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "backend":
        _pdeathsig()
        backend_main(sys.argv[2:])
    else:
        sys.exit("usage: sluicetest.py backend NAME LISTEN REPORT")
