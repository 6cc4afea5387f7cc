#ifndef SLUICE_CONTROL_H
#define SLUICE_CONTROL_H

/*
 * The control channel between the master and one worker: a SOCK_SEQPACKET socketpair,
 * so each message arrives whole or not at all, of one fixed size. A message may carry
 * one descriptor (a reopened log file).
 */
#include <stdint.h>

enum control_type {
    CONTROL_READY = 1, /* worker -> master: the loop runs */
    CONTROL_HEARTBEAT, /* worker -> master: the loop still runs */
    CONTROL_RETIRE,    /* master -> worker: stop accepting, drain, exit */
    CONTROL_ADOPT,     /* master -> worker: also accept on slot `arg`'s sockets */
    CONTROL_RELEASE,   /* master -> worker: stop accepting on slot `arg`'s sockets */
    CONTROL_LOG_FILE,  /* master -> worker: log to the passed descriptor from now on */
};

struct control_msg {
    uint32_t magic;
    uint32_t type; /* enum control_type */
    uint32_t arg;
    uint32_t reserved;
};

/* Both ends nonblocking and close-on-exec. */
int control_pair(int fds[2]);
/* 0 sent; -1 with errno (EAGAIN: the peer is not reading, drop it). */
int control_send(int fd, enum control_type type, uint32_t arg, int pass_fd);
/*
 * 1: a valid message in *msg (and a descriptor in *passed_fd, else -1); 0: the peer
 * closed; -1 with errno (EAGAIN: nothing now; EBADMSG: a malformed message, dropped).
 */
int control_recv(int fd, struct control_msg *msg, int *passed_fd);
const char *control_type_name(uint32_t type);

#endif
