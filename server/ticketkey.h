/* ticketkey: the master key that TLS session tickets are encrypted under
 * (tls.c derives one key per SNI name from it): made from the contents of
 * [tls] ticket_key_file, so that every box of a fleet that has the same file
 * resumes the others' sessions (read again at each reload, as nginx's
 * ssl_session_ticket_key and HAProxy's tls-ticket-keys are), or random and
 * made once per process. Reads one small file; never logs. */
#ifndef MXFRONT_TICKETKEY_H
#define MXFRONT_TICKETKEY_H

#include <stdbool.h>
#include <stddef.h>

#define TICKETKEY_SIZE 64     /* what gnutls_session_ticket_enable_server takes */
#define TICKETKEY_FILE_MIN 32 /* bytes of the file, at least 256 bits */
#define TICKETKEY_FILE_MAX 4096

struct ticketkey {
	unsigned char key[TICKETKEY_SIZE];
	char id[17];          /* 16 hex digits naming the key in logs (not secret) */
	bool others_can_read; /* the file is readable by others than its owner and group */
};

/* Reads PATH (any TICKETKEY_FILE_MIN..MAX bytes, e.g. from `head -c 64
 * /dev/urandom`; the key is their SHA-512) into OUT. Returns 0, or -1 with
 * ERR ("FILE: reason"). */
int ticketkey_load(const char *path, struct ticketkey *out, char *err, size_t errsize);

/* The process's own random key, made on the first call (thread-safe), into
 * OUT. Returns 0, or -1 if the random generator failed. */
int ticketkey_process(struct ticketkey *out);

#endif
