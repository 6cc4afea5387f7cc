#!/usr/bin/env python3
# Fuzzing regression (issue 7): each fuzz target (t/fuzz/README.md) replays its committed
# corpus once, built by the compiler of this build (no libFuzzer): the config loader, the
# PROXY header parser, and the server side of a TLS handshake with sluice's own SSL_CTXs.
# Every input runs to the end without a crash, a broken invariant or a sanitizer report,
# and the targets leave no temporary file behind. The corpora stay small.
import os
import re

import sluicetest as st

TARGETS = ["conf", "proxy", "handshake"]
MIN_INPUTS = 10  # a corpus that shrank to a handful replays nothing worth the name
CORPUS_MAX_BYTES = 1024 * 1024
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehavior|"
                       r"invariant broken")
REPLAYED = re.compile(r"^replay: (\d+) inputs from (.*) \((\d+) refused\)$", re.M)


def replay(t, target, paths, tmp):
    prog = os.path.join(os.path.dirname(st.SLUICE), "t", "fuzz", "replay-" + target)
    # Leaks that are a library's, not sluice's: each explained in the file.
    supp = "suppressions=%s:print_suppressions=0" % os.path.join(st.SRCDIR, "t", "fuzz",
                                                                 "lsan.supp")
    env = dict(os.environ, TMPDIR=tmp, LSAN_OPTIONS=supp)
    return st.run([prog] + paths, timeout=st.scaled(120), env=env)


def check_target(t, target):
    corpus = os.path.join(st.SRCDIR, "t", "fuzz", "corpus", target)
    files = [f for f in os.listdir(corpus) if not f.startswith(".")]
    tmp = t.path("tmp-" + target)
    os.makedirs(tmp)
    rc, out, err, elapsed = replay(t, target, [corpus], tmp)
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    m = REPLAYED.search(out)
    inputs = int(m.group(1)) if m else 0
    t.ok(rc == 0 and inputs == len(files) and inputs >= MIN_INPUTS,
         "%s: the corpus replays, all %d inputs (at least %d), exit 0 (rc=%s, %.1fs)"
         % (target, len(files), MIN_INPUTS, rc, elapsed))
    report = SANITIZER.search(err)
    t.ok(report is None, "%s: no crash, broken invariant or sanitizer report" % target)
    if rc != 0 or report is not None:
        t.diag_log(err, 40)
    left = os.listdir(tmp)
    t.ok(not left, "%s: the target removed its temporary files (left: %s)" % (target, left))


def main(t):
    if not st.SRCDIR:
        t.skip_all("SLUICE_SRCDIR is not set (run through make check)")
    total = 0
    for target in TARGETS:
        check_target(t, target)
        corpus = os.path.join(st.SRCDIR, "t", "fuzz", "corpus", target)
        total += sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus))
    t.ok(total <= CORPUS_MAX_BYTES, "the committed corpora are small: %d bytes in all (at most %d)"
         % (total, CORPUS_MAX_BYTES))

    # The driver itself: an empty corpus is a failure, not a pass with nothing run.
    empty = t.path("empty")
    os.makedirs(empty)
    rc, out, _, _ = replay(t, "proxy", [empty], t.path("tmp-proxy"))
    t.ok(rc == 1 and b"replay: 0 inputs" in out, "an empty corpus directory fails the replay")


st.Test("fuzz-replay", need_sluice=True).main(main)
