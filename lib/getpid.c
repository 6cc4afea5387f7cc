/*
 * getpid(2), answered from memory. OpenSSL 3.0's random generator calls getpid() on
 * every request for random bytes, to notice that it runs in a new child of fork(2) and
 * must reseed rather than repeat its parent's stream: nine calls per TLS 1.3 handshake.
 * glibc stopped caching the answer in 2.25, so each one is a system call, and on a
 * virtual machine an expensive one: 22 µs of a 340 µs handshake in bench/.
 *
 * This definition takes the place of glibc's for every library in the process, since
 * the executable's symbols are bound first. Fork-safety rests on forgetting the answer
 * in every child: a pthread_atfork() handler does it in each child of fork(2), which is
 * how sluice makes all its processes (a child of vfork or a raw clone would keep its
 * parent's pid, and with it its parent's random stream; sluice makes none).
 * t/fork-random.t checks that workers forked from one master draw different bytes.
 */
#include "config.h"

#include <pthread.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>

static pid_t own_pid; /* 0: not asked yet in this process */

static void getpid_forget(void)
{
    own_pid = 0;
}

pid_t getpid(void)
{
    static bool forgotten_in_children;

    if (own_pid != 0)
        return own_pid;
    /* Without the handler a child would answer with its parent's pid: keep asking. */
    if (!forgotten_in_children) {
        if (pthread_atfork(NULL, NULL, getpid_forget) != 0)
            return (pid_t)syscall(SYS_getpid);
        forgotten_in_children = true;
    }
    own_pid = (pid_t)syscall(SYS_getpid);
    return own_pid;
}
