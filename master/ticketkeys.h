#ifndef SLUICE_TICKETKEYS_H
#define SLUICE_TICKETKEYS_H

#include <openssl/ssl.h>

#include "conf/conf.h"

/*
 * Session-ticket keys. Without a ticket-key-file, keys made once by the master before
 * any fork: every worker of every generation encrypts and decrypts with them, so a ticket
 * issued by one worker resumes on any other, also after a reload (OpenSSL's own
 * per-SSL_CTX keys would change on reload).
 *
 * With a ticket-key-file, the keys read from it belong to the SSL_CTX they were installed
 * in: a HUP builds new contexts and so reads the file again, while the draining
 * generation keeps the contexts, and the keys, it was forked with. The first key
 * encrypts, every key decrypts; a ticket under any key but the first is renewed.
 */
int ticketkeys_init(char *err, size_t errsize);
/*
 * Make ctx issue and accept tickets: with the keys of tls->ticket_key_file when it is
 * set (read now; "FILE:LINE: message" in err when it is unreadable or malformed), else
 * with the master's keys.
 */
int ticketkeys_install(SSL_CTX *ctx, const struct conf_tls *tls, char *err, size_t errsize);
/* Wipe the master's keys; keys read from files are wiped with their SSL_CTX. */
void ticketkeys_wipe(void);

#endif
