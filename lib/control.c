/*
 * Control messages are typed and size-checked: anything else on the channel is a bug
 * or a stranger, dropped and reported rather than trusted.
 */
#include "config.h"

#include "lib/control.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONTROL_MAGIC 0x534c4331u /* "SLC1" */

int control_pair(int fds[2])
{
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
}

int control_send(int fd, enum control_type type, uint32_t arg, int pass_fd)
{
    struct control_msg msg = {.magic = CONTROL_MAGIC, .type = type, .arg = arg};
    struct iovec iov = {.iov_base = &msg, .iov_len = sizeof(msg)};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    if (pass_fd >= 0) {
        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof(msg))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EMSGSIZE; /* a seqpacket send is all or nothing: cannot happen */
        return -1;
    }
}

static int control_take_fd(struct msghdr *mh)
{
    int fd = -1;

    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm != NULL; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfds = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfds; i++) {
            int passed;
            memcpy(&passed, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (fd < 0)
                fd = passed;
            else
                close(passed); /* one descriptor per message: never leak extras */
        }
    }
    return fd;
}

int control_recv(int fd, struct control_msg *msg, int *passed_fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } control;
    struct iovec iov = {.iov_base = msg, .iov_len = sizeof(*msg)};
    struct msghdr mh = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    ssize_t n;

    *passed_fd = -1;
    do
        n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return (int)n;
    int got = control_take_fd(&mh);
    if (n != (ssize_t)sizeof(*msg) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
        msg->magic != CONTROL_MAGIC) {
        if (got >= 0)
            close(got);
        errno = EBADMSG;
        return -1;
    }
    *passed_fd = got;
    return 1;
}

const char *control_type_name(uint32_t type)
{
    static const char *const names[] = {
        [CONTROL_READY] = "ready",     [CONTROL_HEARTBEAT] = "heartbeat",
        [CONTROL_RETIRE] = "retire",   [CONTROL_ADOPT] = "adopt",
        [CONTROL_RELEASE] = "release", [CONTROL_LOG_FILE] = "log-file",
    };

    return type < sizeof(names) / sizeof(names[0]) && names[type] ? names[type] : "unknown";
}
