#ifndef SLUICE_TICKETKEYS_H
#define SLUICE_TICKETKEYS_H

#include <openssl/ssl.h>

/*
 * Session-ticket keys made once by the master, before any fork: every worker of every
 * generation encrypts and decrypts with them, so a ticket issued by one worker resumes on
 * any other, also after a reload (OpenSSL's own per-SSL_CTX keys would change on reload).
 */
int ticketkeys_init(char *err, size_t errsize);
/* Make ctx issue and accept tickets with the master's keys. */
int ticketkeys_install(SSL_CTX *ctx, char *err, size_t errsize);
void ticketkeys_wipe(void);

#endif
