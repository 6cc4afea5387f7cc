#!/usr/bin/env python3
# sluicestat (issue 5), on a running sluice with two workers after N requests:
# - -p is valid Prometheus text (a strict parser here; promtool too when installed): one
#   HELP and one TYPE per metric before its samples, every required name, histograms
#   cumulative and ending in +Inf = _count = handshakes ok, and the counts add up to N;
# - -j parses and shows what the table shows (rows, pids, states, conns, restarts, totals);
#   with -w its rates are since the last look;
# - a missing, truncated, foreign, newer-layout or empty file: exit 1, the path on stderr,
#   nothing on stdout; usage errors exit 2;
# - it reads the file as nobody:nogroup (and not as nobody in another group);
# - it answers while the master and the workers are stopped (it never waits for sluice),
#   and within about a second, with a warning, when a fold seems stuck halfway;
# - -w prints look after look into a pipe and exits 0 on SIGTERM;
# - after kill -9 of the master: "not running", exit 1, and -p says only sluice_up 0.
import concurrent.futures
import grp
import json
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import time

import sluicetest as st
import tlsclient as tc

N = 20
PERMITS = 37
# The header of layout version 2 (shm/segment.h) through fold_seq, the fold's seqlock.
HEADER_V2 = struct.Struct("<QIIIIIIIIQQQQiIqIII")
LAYOUT_VERSION_OFFSET = 8  # after the 64-bit magic
FOLD_SEQ_OFFSET = HEADER_V2.size - 4

REQUIRED = {
    "sluice_up": "gauge",
    "sluice_start_time_seconds": "gauge",
    "sluice_generation": "gauge",
    "sluice_handshake_permits_total": "gauge",
    "sluice_handshake_permits_in_use": "gauge",
    "sluice_worker_up": "gauge",
    "sluice_connections_accepted_total": "counter",
    "sluice_connections_active": "gauge",
    "sluice_handshakes_active": "gauge",
    "sluice_handshakes_total": "counter",
    "sluice_handshakes_resumed_total": "counter",
    "sluice_handshakes_by_version_total": "counter",
    "sluice_handshake_duration_seconds": "histogram",
    "sluice_permit_waits_total": "counter",
    "sluice_bytes_total": "counter",
    "sluice_backend_connect_failures_total": "counter",
    "sluice_connections_closed_total": "counter",
    "sluice_loop_wakeups_total": "counter",
    "sluice_spurious_wakeups_total": "counter",
    "sluice_log_lines_dropped_total": "counter",
    "sluice_worker_restarts_total": "counter",
}

# ---------------------------------------------------------------------------------------
# A strict reader of the text exposition format 0.0.4

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_LINE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)(?: (-?[0-9]+))?$" % METRIC_NAME)
HELP_LINE = re.compile(r"^# HELP (%s) ((?:[^\\\n]|\\[\\n])*)$" % METRIC_NAME)
TYPE_LINE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$"
                       % METRIC_NAME)
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


class PromError(Exception):
    pass


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL_PAIR.match(text, pos)
        if not m:
            raise PromError("bad label syntax at %r" % text[pos:])
        name = m.group(1)
        if name in labels:
            raise PromError("label %s twice" % name)
        labels[name] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1),
                              m.group(2))
        pos = m.end()
    return labels


def family_of(name, families):
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and families.get(base, {}).get("type") in ("histogram",
                                                                             "summary"):
            return base
    raise PromError("sample %s has no HELP/TYPE before it" % name)


def parse_prom(text):
    """{family: {"type", "help", "samples": [(name, labels, value)]}}, or PromError."""
    if not text.endswith("\n"):
        raise PromError("output does not end with a newline")
    families, current, seen = {}, None, set()
    for ln in text[:-1].split("\n"):
        m = HELP_LINE.match(ln) or TYPE_LINE.match(ln)
        if m:
            kind = "help" if ln.startswith("# HELP") else "type"
            fam = families.setdefault(m.group(1), {"samples": []})
            if kind in fam or fam["samples"]:
                raise PromError("%s: a second %s, or one after its samples" % (ln, kind))
            fam[kind] = m.group(2)
            current = m.group(1)
            continue
        m = SAMPLE_LINE.match(ln)
        if not m:
            raise PromError("not a sample line: %r" % ln)
        name, labels = m.group(1), parse_labels(m.group(2) or "")
        fam = family_of(name, families)
        if fam != current or "help" not in families[fam] or "type" not in families[fam]:
            raise PromError("%s: not grouped under its own HELP and TYPE" % ln)
        try:
            value = float(m.group(3))
        except ValueError:
            raise PromError("%s: value is not a float" % ln)
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise PromError("%s: the same series twice" % ln)
        seen.add(key)
        families[fam]["samples"].append((name, labels, value))
    for name, fam in families.items():
        if fam.get("type") == "counter" and not name.endswith("_total"):
            raise PromError("counter %s does not end in _total" % name)
    return families


def values(fams, name, sample=None, **match):
    """{worker: value} of the samples of family name matching the labels in match."""
    out = {}
    for sname, labels, v in fams.get(name, {}).get("samples", []):
        if sname == (sample or name) and all(labels.get(k) == x for k, x in match.items()):
            out[labels.get("worker")] = v
    return out


def histogram_problems(fams):
    """Per worker: le ascending, counts cumulative, last +Inf = _count = handshakes ok."""
    h = "sluice_handshake_duration_seconds"
    buckets = {}
    for sname, labels, v in fams[h]["samples"]:
        if sname == h + "_bucket":
            buckets.setdefault(labels["worker"], []).append((labels["le"], v))
    counts = values(fams, h, h + "_count")
    ok = values(fams, "sluice_handshakes_total", result="ok")
    problems = []
    for w, bs in sorted(buckets.items()):
        les = [float(le) for le, _ in bs]
        cum = [v for _, v in bs]
        if les != sorted(les) or len(set(les)) != len(les):
            problems.append("worker %s: le not ascending %s" % (w, les))
        if any(b < a for a, b in zip(cum, cum[1:])):
            problems.append("worker %s: counts not cumulative %s" % (w, cum))
        if bs[-1][0] != "+Inf" or cum[-1] != counts.get(w) or counts.get(w) != ok.get(w):
            problems.append("worker %s: last le %s = %s, _count %s, ok %s"
                            % (w, bs[-1][0], cum[-1], counts.get(w), ok.get(w)))
    return problems, sorted(buckets)


# ---------------------------------------------------------------------------------------
# The table

HEADER = re.compile(r"^sluice: master pid (\d+), up \S+, generation (\d+), "
                    r"permits (\d+)/(\d+) in use$")
COLUMNS = ("worker gen pid state uptime restarts conns hs permits acc/s hs/s in/s out/s "
           "p50 p99 spur/s").split()


def parse_table(text):
    """(header match groups, [row dicts], total dict) or raises ValueError."""
    lines = text.rstrip("\n").split("\n")
    m = HEADER.match(lines[0])
    if not m or lines[1].split() != COLUMNS:
        raise ValueError("bad header: %r" % lines[:2])
    rows = [dict(zip(COLUMNS, ln.split())) for ln in lines[2:]]
    if any(len(r) != len(COLUMNS) for r in rows) or rows[-1]["worker"] != "total":
        raise ValueError("bad rows: %r" % lines[2:])
    return m.groups(), rows[:-1], rows[-1]


def row_key(r):
    return tuple(str(r[k]) for k in ("worker", "gen", "pid", "state", "restarts", "conns",
                                     "hs", "permits"))


def json_row_key(r):
    return tuple(str(r[k]) for k in ("worker", "generation", "pid", "state", "restarts",
                                     "active_connections", "active_handshakes",
                                     "permits_held"))


# ---------------------------------------------------------------------------------------


def sluicestat(args, preexec=None, timeout=None):
    rc, out, err, el = st.run([st.SLUICESTAT] + args, timeout=timeout or st.scaled(10),
                              preexec=preexec)
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), el


def check_prometheus(t, statsfile, pids):
    rc, out, err, _ = sluicestat(["-f", statsfile, "-p"])
    t.ok(rc == 0 and not err, "-p exits 0 without a message (%s %r)" % (rc, err[:200]))
    try:
        fams = parse_prom(out)
        t.ok(True, "-p output parses under the strict exposition-format reader")
    except PromError as e:
        t.ok(False, "-p output parses under the strict exposition-format reader: %s" % e)
        return
    wrong = {n: fams.get(n, {}).get("type") for n, ty in REQUIRED.items()
             if fams.get(n, {}).get("type") != ty}
    t.ok(not wrong, "every required metric is there with its type (wrong: %s)" % wrong)
    t.ok(values(fams, "sluice_up") == {None: 1.0}
         and values(fams, "sluice_generation") == {None: 1.0}
         and values(fams, "sluice_handshake_permits_total") == {None: float(PERMITS)},
         "sluice_up 1, generation 1, %d permits" % PERMITS)
    started = values(fams, "sluice_start_time_seconds").get(None, 0)
    t.ok(0 < time.time() - started < 600, "sluice_start_time_seconds is a recent epoch time "
         "(%s)" % started)
    t.ok(values(fams, "sluice_worker_up") == {"0": 1.0, "1": 1.0},
         "workers 0 and 1 are up (%s)" % values(fams, "sluice_worker_up"))
    problems, workers = histogram_problems(fams)
    t.ok(not problems and workers == ["0", "1"],
         "histogram per worker: le ascending, cumulative, +Inf = _count = handshakes ok "
         "(%s; workers %s)" % (problems, workers))
    accepted = sum(values(fams, "sluice_connections_accepted_total").values())
    ok = sum(values(fams, "sluice_handshakes_total", result="ok").values())
    t.ok(accepted == N and ok == N, "after %d requests: %d accepted, %d handshakes ok"
         % (N, accepted, ok))
    up = sum(values(fams, "sluice_bytes_total", direction="client_to_backend").values())
    down = sum(values(fams, "sluice_bytes_total", direction="backend_to_client").values())
    t.ok(up > 0 and down > up, "bytes both ways are counted (%d up, %d down)" % (up, down))
    reasons = {lb["reason"] for _, lb, _ in fams["sluice_connections_closed_total"]["samples"]}
    t.ok({"client_close", "backend_close", "handshake_timeout", "drained"} <= reasons,
         "connections closed carry every reason label (%d reasons)" % len(reasons))
    if shutil.which("promtool") is None:
        t.skip("promtool is not installed")
    else:
        prc, pout, perr, _ = st.run(["promtool", "check", "metrics"], input=out.encode())
        text = (pout + perr).decode(errors="replace")
        # sluice_handshake_permits_total is a gauge by contract (DESIGN §7): lint only
        findings = [ln for ln in text.splitlines()
                    if ln.strip() and "sluice_handshake_permits_total" not in ln]
        t.ok(prc == 0 or not findings, "promtool check metrics accepts it: %s" % text[:300])


def check_json(t, statsfile, pids):
    rc, table, err, _ = sluicestat(["-f", statsfile])
    rc2, out, err2, _ = sluicestat(["-f", statsfile, "-j"])
    t.ok(rc == 0 and rc2 == 0 and not err and not err2, "table and -j exit 0 (%s, %s)"
         % (rc, rc2))
    try:
        header, rows, total = parse_table(table)
        doc = json.loads(out)
    except (ValueError, IndexError) as e:
        t.ok(False, "table and JSON parse: %s" % e)
        t.diag(table)
        return
    t.ok(out.count("\n") == 1 and out.endswith("\n"), "-j prints one object on one line")
    m = doc["master"]
    t.ok(header == (str(m["pid"]), str(m["generation"]), str(m["permits_in_use"]),
                    str(m["permits_total"])) and m["alive"] is True
         and m["permits_total"] == PERMITS,
         "the header line and JSON's master agree (%s)" % (header,))
    t.ok([row_key(r) for r in rows] == [json_row_key(r) for r in doc["workers"]],
         "JSON's workers are the table's rows, in order (%s)" % [row_key(r) for r in rows])
    t.ok(sorted(int(r["pid"]) for r in rows) == pids
         and all(r["state"] == "ready" for r in rows),
         "one ready row per worker, naming its pid (%s)" % [r["pid"] for r in rows])
    tot = doc["totals"]
    t.ok((total["restarts"], total["conns"], total["hs"], total["permits"])
         == tuple(str(tot[k]) for k in ("restarts", "active_connections",
                                        "active_handshakes", "permits_held")),
         "the total row and JSON's totals agree (%s)" % total)
    c = tot["counters"]
    t.ok(c["accepted"] == N and c["handshakes"]["ok"] == N
         and sum(c["handshake_duration"]["counts"]) == N
         and len(c["handshake_duration"]["counts"])
         == len(c["handshake_duration"]["bounds_seconds"]) + 1,
         "JSON totals count %d accepted, %d ok handshakes in the histogram"
         % (c["accepted"], sum(c["handshake_duration"]["counts"])))
    p50, p99 = tot["handshake_p50_seconds"], tot["handshake_p99_seconds"]
    t.ok(p50 is not None and p99 is not None and 0 < p50 <= p99 < 10
         and total["p50"] != "-", "handshake p50 %s <= p99 %s seconds (table: %s)"
         % (p50, p99, total["p50"]))


def check_errors(t, statsfile):
    with open(statsfile, "rb") as f:
        data = f.read()
    newer = bytearray(data[:1 << 20]) + data[1 << 20:]
    struct.pack_into("<I", newer, LAYOUT_VERSION_OFFSET, 3)
    cases = [("missing", None, r"No such file"),
             ("short", data[:100], r"truncated"),
             ("half", data[:len(data) // 2], r"truncated"),
             ("foreign", os.urandom(len(data)), r"not a sluice stats file"),
             ("newer", bytes(newer), r"version 3.*version"),
             ("empty", b"", r"truncated")]
    for name, content, why in cases:
        path = t.path("copy-%s.stats" % name)
        if content is not None:
            t.write_file(os.path.basename(path), content)
        for mode in ([], ["-p"], ["-j"]) if name == "missing" else ([],):
            rc, out, err, _ = sluicestat(["-f", path] + mode)
            t.ok(rc == 1 and not out and path in err and re.search(why, err),
                 "%s file%s: exit 1, nothing on stdout, %r on stderr (%s: %r)"
                 % (name, " " + mode[0] if mode else "", why, rc, err.strip()))
    rc, out, err, _ = sluicestat(["-f", t.dir])
    t.ok(rc == 1 and "not a regular file" in err, "a folder: exit 1 (%r)" % err.strip())
    for args in (["-p", "-j"], ["-w", "0"], ["-w", "0.05"], ["-w", "3601"], ["-w", "nan"],
                 ["-w", "1s"], ["-x"], ["extra"]):
        rc, out, err, _ = sluicestat(["-f", statsfile] + args)
        t.ok(rc == 2 and not out and "usage: sluicestat" in err,
             "usage error %s: exit 2 with the usage on stderr (%s)" % (" ".join(args), rc))
    rc, out, _, _ = sluicestat(["-h"])
    t.ok(rc == 0 and out.startswith("usage: sluicestat"), "-h prints the usage, exit 0")


def as_user(uid, gid):
    def pre():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return pre


def check_unprivileged(t, statsfile):
    if os.geteuid() != 0:
        t.skip("not running as root: cannot switch to nobody", 2)
        return
    nobody = pwd.getpwnam("nobody").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    rc, out, err, _ = sluicestat(["-f", statsfile, "-p"], preexec=as_user(nobody, nogroup))
    t.ok(rc == 0 and "\nsluice_up 1\n" in out, "nobody:nogroup reads the file (%s %r)"
         % (rc, err.strip()))
    other = 1 if nogroup != 1 else 2  # daemon or bin on Debian: not the file's group
    rc, out, err, _ = sluicestat(["-f", statsfile, "-p"], preexec=as_user(nobody, other))
    t.ok(rc == 1 and "Permission denied" in err and not out,
         "nobody outside the file's group cannot (%s %r)" % (rc, err.strip()))


def check_stopped(t, sl, statsfile, pids):
    stopped = [sl.pid] + pids
    try:
        for p in stopped:
            os.kill(p, signal.SIGSTOP)
        st.wait_until(lambda: all(st.pid_state(p) == "T" for p in stopped), st.scaled(2))
        rc, out, err, el = sluicestat(["-f", statsfile, "-p"], timeout=st.scaled(10))
        states = [st.pid_state(p) for p in stopped]
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
    t.ok(states == ["T"] * len(stopped) and rc == 0 and el < st.scaled(2)
         and "\nsluice_up 1\n" in out,
         "with master and workers stopped (%s), -p answers in %.2f s (%s)" % (states, el, rc))


def check_stuck_fold(t, statsfile):
    """A copy whose fold_seq is odd: a master stopped in the middle of a fold."""
    with open(statsfile, "rb") as f:
        data = bytearray(f.read())
    seq = struct.unpack_from("<I", data, FOLD_SEQ_OFFSET)[0]
    struct.pack_into("<I", data, FOLD_SEQ_OFFSET, seq | 1)
    path = t.write_file("copy-folding.stats", bytes(data))
    rc, out, err, el = sluicestat(["-f", path, "-p"])
    t.ok(seq % 2 == 0 and rc == 0 and "inconsistent" in err and "\nsluice_up 1\n" in out
         and 0.9 < el < st.scaled(3),
         "a fold stuck halfway: -p retries for about a second (%.2f s), then answers with "
         "a warning (%s %r)" % (el, rc, err.strip()))


def watch_for(args, steps):
    """Run sluicestat -w 0.2 ARGS, calling each of steps then sleeping 0.7 s; then
    SIGTERM. Returns (exit status, stdout, stderr) as text."""
    p = st.spawn([st.SLUICESTAT, "-w", "0.2"] + args, stdin=subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for step in steps:
        step()
        time.sleep(0.7)
    p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=st.scaled(5))
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def check_watch(t, statsfile):
    for fmt, min_looks in (([], 3), (["-j"], 3)):
        rc, out, _ = watch_for(["-f", statsfile] + fmt, [lambda: None, lambda: None])
        if not fmt:
            looks = out.split("\n\n")
            good = all(HEADER.match(lk.split("\n")[0]) for lk in looks)
            t.ok(rc == 0 and len(looks) >= min_looks and good and "\033" not in out,
                 "-w 0.2 into a pipe: %d tables separated by blank lines, no screen "
                 "clearing, exit 0 on SIGTERM (%s)" % (len(looks), rc))
            continue
        docs = [json.loads(ln) for ln in out.splitlines()]
        t.ok(rc == 0 and len(docs) >= min_looks,
             "-j -w 0.2: %d JSON lines, exit 0 on SIGTERM" % len(docs))
        first = [d["totals"]["rates"]["accepted"] for d in docs]
        p50 = [d["totals"]["handshake_p50_seconds"] for d in docs]
        t.ok(first[0] > 0 and all(r == 0 for r in first[1:]) and p50[0] is not None
             and all(x is None for x in p50[1:]),
             "rates since the last look: since start at first (%s/s), then 0 and no p50 "
             "while idle (%s, %s)" % (first[0], first[1:], p50[1:]))


def check_watch_survives(t, statsfile):
    """-w goes on through looks that fail (no file yet) and shows sluice once it is there."""
    missing = statsfile + ".not-yet"
    rc, out, err = watch_for(["-f", missing],
                             [lambda: None, lambda: os.link(statsfile, missing)])
    os.unlink(missing)
    t.ok(rc == 0 and "No such file or directory" in err
         and HEADER.match(out.split("\n")[0] if out else ""),
         "-w on a file that appears later: reports the missing file, keeps watching, then "
         "shows the table (exit %s, %d bytes out)" % (rc, len(out)))


def check_master_gone(t, sl, statsfile, pids):
    master = sl.pid
    sl.stop(signal.SIGKILL)
    left = st.wait_pids_gone(pids, st.scaled(10))
    t.ok(not left and os.path.exists(statsfile),
         "after kill -9 of the master its workers exit and the file stays (left: %s)" % left)
    gone = r"%s: sluice is not running \(master pid %d is gone\)" % (re.escape(statsfile),
                                                                    master)
    for mode in ([], ["-j"]):
        rc, out, err, _ = sluicestat(["-f", statsfile] + mode)
        t.ok(rc == 1 and not out and re.search(gone, err),
             "stale file%s: exit 1, nothing on stdout, 'not running' (%r)"
             % (" " + mode[0] if mode else "", err.strip()))
    rc, out, err, _ = sluicestat(["-f", statsfile, "-p"])
    try:
        fams = parse_prom(out)
    except PromError as e:
        fams = {"error": str(e)}
    t.ok(rc == 1 and re.search(gone, err) and list(fams) == ["sluice_up"]
         and values(fams, "sluice_up") == {None: 0.0},
         "stale file -p: exit 1, only sluice_up 0 (%r)" % out)


def main(t):
    if not st.SLUICESTAT or not os.access(st.SLUICESTAT, os.X_OK):
        t.skip_all("SLUICESTAT is not set to an executable (run through make check)")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          heartbeat_interval=0.2, handshake_permits=PERMITS)
    statsfile = t.path("sluice.stats")
    sl = t.start_sluice(conf)
    pids = sl.wait_workers(2)
    t.ok(len(pids) == 2, "two workers run (%s)" % pids)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        res = list(pool.map(lambda i: tc.request(port, cert, "/s%d" % i,
                                                 timeout=st.scaled(10)), range(N)))
    t.ok(all(ok for ok, _ in res), "%d requests through sluice succeed" % N)

    check_prometheus(t, statsfile, pids)
    check_json(t, statsfile, pids)
    check_errors(t, statsfile)
    check_unprivileged(t, statsfile)
    check_stopped(t, sl, statsfile, pids)
    check_stuck_fold(t, statsfile)
    check_watch(t, statsfile)
    check_watch_survives(t, statsfile)
    t.ok(sorted(sl.worker_pids()) == pids, "the same two workers still run")
    check_master_gone(t, sl, statsfile, pids)
    sl.check_log()


st.Test("sluicestat").main(main)
