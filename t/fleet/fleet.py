"""A fleet of sluice hosts behind haproxy, on one machine, with network namespaces
(issue 8). Used by the tests in t/fleet/ (run by `make check-fleet`).

    client ns  10.231.0.2 --veth-- 10.231.0.1  balancer ns: haproxy, mode tcp
                                   10.231.1.1 --veth-- 10.231.1.2  host a: sluice, backend
                                   10.231.2.1 --veth-- 10.231.2.2  host b: sluice, backend

Every namespace is named after this test's pid (sl<PID>-cl, -lb, -a, -b), so runs in
parallel do not meet; the veth ends are made directly inside them, so nothing is added to
the host's own interfaces; the namespaces and everything running in them go on every exit
path (the test's cleanups; namespaces left by a run killed outright are removed by the
next). haproxy (Debian's /usr/sbin/haproxy) runs in the balancer
namespace with its own configuration in the test's temporary folder: send-proxy-v2
towards the hosts, a TLS health check through the PROXY header (check-ssl,
check-send-proxy), retries with redispatch. Each host runs sluice with accept-proxy =
true and proxy-protocol = "v2" towards its own backend, and its own copy of the fleet's
ticket-key file. The backends (Unix sockets, threads of the test process: a pathname
socket is reached from any namespace) record the PROXY header sluice sent and answer
"host=NAME client=ADDR:PORT". Clients are sockets of the test process made inside the
client namespace (setns around socket()), so the address the backends should see is
CLIENT_ADDR.
"""

import base64
import csv
import ctypes
import io
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import proxyproto as pp
import sluicetest as st
import tlsclient as tc

NET = "10.231"
CLIENT_ADDR = NET + ".0.2"
LB_ADDR = NET + ".0.1"
HOSTS = {"a": NET + ".1.2", "b": NET + ".2.2"}
LB_SIDE = {"a": NET + ".1.1", "b": NET + ".2.1"}
TLS_PORT = 443
PINNED_PORT = {"a": 8441, "b": 8442}  # haproxy frontends that use only one host
# The health check: every CHECK_INTER s; FALL failures mark a host down, RISE successes up.
CHECK_INTER = 0.5
FALL = 2
RISE = 2
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable():
    """Why this machine cannot run a fleet ("" if it can): root, ip, haproxy, netns, veth
    are tried for real (a namespace with a veth pair, removed at once)."""
    if os.geteuid() != 0:
        return "not root: network namespaces and veth pairs need CAP_NET_ADMIN/CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        return "no ip command (Debian package iproute2)"
    if not os.access(HAPROXY, os.X_OK):
        return "haproxy is not installed (Debian package haproxy)"
    ns = "sl%d-probe" % os.getpid()
    rc, _, err, _ = st.run(["ip", "netns", "add", ns], timeout=20)
    if rc != 0:
        return "ip netns add failed: %s" % err.decode(errors="replace").strip()
    try:
        rc, _, err, _ = st.run(["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer",
                                "name", "p1"], timeout=20)
        if rc != 0:
            return "no veth pairs: %s" % err.decode(errors="replace").strip()
    finally:
        st.run(["ip", "netns", "del", ns], timeout=20)
    return ""


def new_ticket_key():
    """80 random bytes, as `openssl rand -base64 80` prints them (one line)."""
    return base64.b64encode(os.urandom(80)).decode()


# ---------------------------------------------------------------------------------------
# the backends


class Backend:
    """A backend on a Unix socket, in a thread of the test: per connection it reads
    sluice's PROXY header, then an HTTP request, and answers "host=NAME client=SRC:SPORT"
    (from the header). Each connection is recorded: {"host", "header" (parsed), "request"
    (False for a connection that ended before one, e.g. haproxy's TLS health check)}."""

    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.lock = threading.Lock()
        self.records = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        os.chmod(path, 0o666)  # sluice's workers run as nobody
        self.srv.listen(256)
        self.address = "unix:" + path
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(sock,), daemon=True).start()

    def _conn(self, sock):
        rec = {"host": self.name, "request": False}
        try:
            sock.settimeout(30)
            raw = pp.read_header(sock)
            if raw[13] == 0x00:
                # UNSPEC, no addresses: a health check that left before sluice read them
                rec["header"] = {"ver_cmd": raw[12], "fam": 0}
            else:
                rec["header"] = pp.parse_v2(raw)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = sock.recv(4096)
                if not d:
                    break
                buf += d
            if buf.startswith(b"GET "):
                rec["request"] = True
                with self.lock:  # before the answer: a client that has it finds the record
                    self.records.append(rec)
                h = rec["header"]
                body = b"host=%s client=%s:%d\n" % (self.name.encode(), h["src"].encode(),
                                                    h["sport"])
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close"
                             b"\r\n\r\n%s" % (len(body), body))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        except Exception as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            sock.close()
            if not rec["request"]:
                with self.lock:
                    self.records.append(rec)

    def requests(self):
        with self.lock:
            return [r for r in self.records if r["request"]]

    def errors(self):
        with self.lock:
            return [r for r in self.records if "error" in r]

    def close(self):
        self.srv.close()


# ---------------------------------------------------------------------------------------
# the fleet


class Fleet:
    """The namespaces, both hosts' sluice (self.sluices[h], started and serving), their
    backends, and haproxy; skips the test when the machine cannot (unavailable()). Emits
    one result: haproxy's health checks see both hosts UP."""

    def __init__(self, t, workers=2):
        self.t = t
        self.workers = workers
        self.ns = {}  # role -> namespace name, in the order made
        self._nsfd = {}
        self.sluices = {}
        self.backends = {}
        self.confs = {}
        self.haproxy = None
        why = unavailable()
        if why:
            t.skip_all(why)
        t.cleanups.append(self._teardown)
        self._network()
        self.cert, self.key = t.make_cert()
        self.keys = [new_ticket_key()]
        for h in HOSTS:
            self.write_keys(h, self.keys)
            self.backends[h] = Backend(h, t.path("backend-%s.sock" % h))
            t.cleanups.append(self.backends[h].close)
            self.confs[h] = t.write_config(
                [t.frontend(TLS_PORT, self.backends[h].address, self.cert, self.key,
                            host=HOSTS[h], **{"accept-proxy": True, "proxy-protocol": "v2"})],
                name="%s.conf" % h, workers=workers, max_connections=1000,
                tls={"ticket-key-file": "%s.keys" % h})
            self.start(h)
        self._start_haproxy()
        ok = self.wait_status({h: "UP" for h in HOSTS}, st.scaled(10))
        t.ok(ok, "haproxy's TLS health checks, each behind a PROXY v2 header, see both hosts "
             "UP (%r)" % self.status())
        if not ok:
            t.diag_log(self.haproxy_log())
            raise RuntimeError("the fleet did not come up")

    # --- namespaces
    def _ip(self, *args):
        rc, out, err, _ = st.run(["ip"] + list(args), timeout=st.scaled(20))
        if rc != 0:
            raise RuntimeError("ip %s: %s" % (" ".join(args), err.decode(errors="replace")))
        return out.decode()

    def _sweep(self):
        """Namespaces a fleet test left when it was killed outright (SIGKILL): named after a
        pid that no longer runs."""
        rc, out, _, _ = st.run(["ip", "netns", "list"], timeout=20)
        for name in re.findall(r"^(sl(\d+)-(?:cl|lb|a|b|probe))\b", out.decode(), re.M):
            if not st.pid_alive(int(name[1])):
                st.run(["ip", "netns", "del", name[0]], timeout=20)

    def _network(self):
        self._sweep()
        base = "sl%d" % os.getpid()
        for role in ("cl", "lb", "a", "b"):
            name = "%s-%s" % (base, role)
            self._ip("netns", "add", name)
            self.ns[role] = name
            self._ip("-n", name, "link", "set", "lo", "up")
        links = [("cl", CLIENT_ADDR, "lb", LB_ADDR)]
        links += [("lb", LB_SIDE[h], h, HOSTS[h]) for h in HOSTS]
        for left, laddr, right, raddr in links:
            # Each end is made inside its namespace: nothing appears on the host's links.
            self._ip("link", "add", "to-" + right, "netns", self.ns[left], "type", "veth",
                     "peer", "name", "to-" + left, "netns", self.ns[right])
            for ns, dev, addr in ((left, "to-" + right, laddr), (right, "to-" + left, raddr)):
                self._ip("-n", self.ns[ns], "addr", "add", addr + "/24", "dev", dev)
                self._ip("-n", self.ns[ns], "link", "set", dev, "up")
        for h in HOSTS:
            # As contrib/sluice-sysctl.conf sets it (the setting is per namespace).
            self._ip("netns", "exec", self.ns[h], "sysctl", "-q", "-w",
                     "net.ipv4.tcp_migrate_req=1")
        for role in ("cl", "lb"):
            self._nsfd[role] = os.open("/run/netns/" + self.ns[role], os.O_RDONLY)

    def _teardown(self):
        """Kill what runs in the namespaces (all of it started by this test), drop them."""
        for fd in self._nsfd.values():
            os.close(fd)
        self._nsfd = {}
        for name in self.ns.values():
            rc, out, _, _ = st.run(["ip", "netns", "pids", name], timeout=20)
            for pid in (out.split() if rc == 0 else []):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        for name in self.ns.values():
            st.run(["ip", "netns", "del", name], timeout=20)
        self.ns = {}

    def exec_prefix(self, role):
        return ["ip", "netns", "exec", self.ns[role]]

    def client_socket(self, role="cl"):
        """A TCP socket of the client (or "lb": the balancer's) namespace; only this thread
        enters it, briefly."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            if _libc.setns(self._nsfd[role], CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into namespace %s" % self.ns[role])
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    os._exit(99)  # a thread stuck in the wrong namespace: nothing is sure
        finally:
            os.close(own)

    # --- sluice hosts
    def write_keys(self, host, keys):
        """The host's copy of the ticket-key file, replaced atomically (mode 0600)."""
        path = self.t.path("%s.keys" % host)
        tmp = path + ".new"
        with open(tmp, "w") as f:
            f.write("# session-ticket keys of the fleet; the first one encrypts\n")
            f.write("".join(k + "\n" for k in keys))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def start(self, host):
        sl = self.t.start_sluice(self.confs[host], name=host, ports=[],
                                 prefix=self.exec_prefix(host))
        self.sluices[host] = sl
        return sl

    def pids(self, host):
        """The host's sluice master and its workers."""
        sl = self.sluices[host]
        return [sl.pid] + sl.worker_pids()

    def listen_queue(self, host):
        """Connections waiting in the accept queues of the host's listening sockets on
        TLS_PORT (the rx_queue of a LISTEN row in the namespace's /proc/net/tcp)."""
        try:
            with open("/proc/%d/net/tcp" % self.sluices[host].pid) as f:
                rows = [line.split() for line in f][1:]
        except OSError:
            return None
        return sum(int(r[4].split(":")[1], 16) for r in rows
                   if r[3] == "0A" and int(r[1].split(":")[1], 16) == TLS_PORT)

    def stop(self, host):
        """SIGTERM to the host's master: it exits 0, its log is clean (three results)."""
        return self.sluices[host].stop_and_check(what="host %s: sluice" % host)

    # --- haproxy
    def haproxy_config(self, stats_socket=None, ca_file=None):
        """The balancer's configuration (doc/fleet.md shows it cleaned up)."""
        ca_file = ca_file or self.cert
        lines = ["global"]
        if stats_socket:
            lines += ["    stats socket %s mode 600 level admin" % stats_socket]
        lines += [
            "    log stdout format raw local0 info",
            "",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    # A refused connect is tried again, on another host each time.",
            "    retries 3",
            "    option redispatch 1",
            "",
            "frontend tls",
            "    bind %s:%d" % (LB_ADDR, TLS_PORT),
            "    default_backend sluice",
            "",
            "backend sluice",
            "    balance roundrobin",
            "    # PROXY v2 on every connection, and a TLS handshake as the health check",
            "    # (with its own PROXY header, which sluice's accept-proxy expects).",
            "    default-server send-proxy-v2 check inter %dms fall %d rise %d check-send-proxy "
            "check-ssl check-sni localhost verify required ca-file %s"
            % (CHECK_INTER * 1000, FALL, RISE, ca_file),
        ]
        lines += ["    server %s %s:%d" % (h, HOSTS[h], TLS_PORT) for h in HOSTS]
        for h in HOSTS:
            # Test only: one frontend per host, to pick the host that serves a client.
            lines += ["", "frontend tls-%s" % h, "    bind %s:%d" % (LB_ADDR, PINNED_PORT[h]),
                      "    default_backend sluice-%s" % h, "",
                      "backend sluice-%s" % h,
                      "    server %s %s:%d send-proxy-v2 track sluice/%s" % (h, HOSTS[h],
                                                                          TLS_PORT, h)]
        return "\n".join(lines) + "\n"

    def _start_haproxy(self):
        self.stats_socket = self.t.path("haproxy.sock")
        cfg = self.t.write_file("haproxy.cfg", self.haproxy_config(self.stats_socket))
        rc, out, err, _ = st.run([HAPROXY, "-c", "-f", cfg], timeout=st.scaled(20))
        if rc != 0:
            raise RuntimeError("haproxy -c: %s" % (out + err).decode(errors="replace"))
        logf = open(self.t.path("haproxy.log"), "ab")
        self.haproxy = st.spawn(self.exec_prefix("lb") + [HAPROXY, "-db", "-f", cfg],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        logf.close()

    def doc_config_differences(self):
        """doc/fleet.md's haproxy configuration against the test's: (haproxy -c status and
        output, [lines of the test's defaults and backend sections the doc lacks]), the
        values that name the site (check-sni, ca-file) left aside."""
        with open(os.path.join(st.SRCDIR, "doc", "fleet.md")) as f:
            doc = f.read()
        m = re.search(r"^    global\n(?:    .*\n|\n)*?    +server b .*\n", doc, re.M)
        if not m:
            return None, "no haproxy configuration in doc/fleet.md", []
        text = "\n".join(ln[4:] for ln in m.group(0).splitlines()) + "\n"
        text = text.replace("/etc/ssl/certs/ca-certificates.crt", self.cert)
        text = text.replace("/run/haproxy/admin.sock", self.t.path("doc-admin.sock"))
        cfg = self.t.write_file("doc-haproxy.cfg", text)
        rc, out, err, _ = st.run([HAPROXY, "-c", "-f", cfg], timeout=st.scaled(20))

        def norm(ln):
            return re.sub(r"(check-sni|ca-file) \S+", r"\1 X", " ".join(ln.split()))

        ours = self.haproxy_config().split("\nfrontend tls-")[0]
        section = None
        missing = []
        have = {norm(ln) for ln in text.splitlines()}
        for ln in ours.splitlines():
            if ln and not ln.startswith(" "):
                section = ln.split()[0]
            elif section in ("defaults", "backend") and ln.strip() and \
                    not ln.strip().startswith(("#", "server ", "timeout client", "timeout server")):
                if norm(ln) not in have:
                    missing.append(ln.strip())
        return rc, (out + err).decode(errors="replace").strip(), missing

    def haproxy_cmd(self, cmd):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(st.scaled(5))
            s.connect(self.stats_socket)
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    return out.decode(errors="replace")
                out += d

    def status(self):
        """{host: haproxy's status of it in backend "sluice"}: "UP", "DOWN", "UP 1/2"..."""
        try:
            text = self.haproxy_cmd("show stat")
        except OSError as e:
            return {"error": str(e)}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows
                if r.get("pxname") == "sluice" and r.get("svname") in HOSTS}

    def wait_status(self, want, timeout):
        """Wait until haproxy's status of each host in want is want[host]; True if so."""
        return st.wait_until(lambda: all(self.status().get(h) == s for h, s in want.items()),
                             timeout, step=0.02)

    def haproxy_log(self):
        try:
            with open(self.t.path("haproxy.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # --- clients
    def get(self, port=TLS_PORT, ctx=None, session=None, timeout=None):
        """One HTTPS request from the client namespace to the balancer. Returns a dict: ok,
        host (that served), client (the address the backend saw), local (the client's own
        address and port), reused, session, error."""
        res = {"ok": False, "host": None, "client": None, "local": None, "reused": None,
               "session": None, "error": None}
        ctx = ctx or tc.context(self.cert)
        timeout = timeout or st.scaled(10)
        raw = self.client_socket()
        try:
            raw.settimeout(timeout)
            raw.connect((LB_ADDR, port))
            res["local"] = "%s:%d" % raw.getsockname()
            s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False,
                                session=session)
            raw = s
            res["reused"] = s.session_reused
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data, how = tc.read_to_close(s, timeout)
            res["session"] = s.session
            m = re.search(rb"\r\n\r\nhost=(\w+) client=(\S+)\n$", data)
            if data.startswith(b"HTTP/1.1 200 ") and m and how == "close_notify":
                res["ok"] = True
                res["host"], res["client"] = m.group(1).decode(), m.group(2).decode()
            else:
                res["error"] = "answer %r, ended by %s" % (data[-80:], how)
        except (OSError, ssl.SSLError, ValueError) as e:
            res["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            raw.close()
        return res


class RequestLoop(st.ClientLoop):
    """Client threads doing requests through the balancer back to back, each on a new
    connection, until stop(). Every request is recorded: (start, end, ok, host, error)."""

    def __init__(self, fleet, threads=4):
        self.fleet = fleet
        super().__init__(["fleet"] * threads, st.scaled(10))

    def thread_state(self, kind):
        return tc.context(self.fleet.cert)

    def request(self, kind, ctx):
        r = self.fleet.get(ctx=ctx)
        return r["ok"], r["host"], r["error"]
