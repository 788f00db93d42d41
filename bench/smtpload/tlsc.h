/* tlsc: GnuTLS client sessions driven over memory buffers (custom push/pull,
 * as a server drives them) and the per-thread TLS context: credentials,
 * priority cache and the resumption cache. GnuTLS codes become text here only. */
#ifndef SMTPLOAD_TLSC_H
#define SMTPLOAD_TLSC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "opts.h"

#define TLSC_AGAIN (-1)
#define TLSC_ERROR (-2)

struct tlsc_ctx;
struct tlsc;

/* Where the session's ciphertext goes: must take all of it, at once. */
typedef void tlsc_push_fn(void *arg, const void *data, size_t len);

/* One context per worker thread (cache slots: one per SNI name, one for none). */
int tlsc_ctx_new(const struct opts *o, struct tlsc_ctx **out, char *err, size_t errsize);
void tlsc_ctx_free(struct tlsc_ctx *ctx); /* NULL is fine */

/* One reusable session holder per connection slot; sessions come and go in it. */
struct tlsc *tlsc_new(struct tlsc_ctx *ctx, tlsc_push_fn *push, void *arg);
void tlsc_free(struct tlsc *t); /* ends a running session too */

/* Starts a client session naming SNI (NULL: no SNI) and resuming from cache
 * SLOT when --resume has something there. Returns 0 or -1. */
int tlsc_begin(struct tlsc *t, const char *sni, size_t slot);
/* Ends the session (gnutls_deinit); the holder is ready for tlsc_begin again. */
void tlsc_end(struct tlsc *t);

/* Receive buffer for ciphertext read from the socket. */
void tlsc_rx_space(struct tlsc *t, char **buf, size_t *len);
void tlsc_received(struct tlsc *t, size_t n);

/* 1: done, 0: needs more input, -1: failed (see tlsc_error). */
int tlsc_handshake(struct tlsc *t);
/* >0 plaintext octets, 0 close_notify, TLSC_AGAIN, TLSC_ERROR. */
ssize_t tlsc_recv(struct tlsc *t, char *buf, size_t len);
/* Encrypts all of BUF (records go to push). 0 or -1. */
int tlsc_send(struct tlsc *t, const void *buf, size_t len);
/* Queues close_notify (gnutls_bye SHUT_WR); does not wait for the peer's. */
void tlsc_bye(struct tlsc *t);
bool tlsc_resumed(const struct tlsc *t);
/* Keeps this session's data (the latest ticket) in its cache slot for --resume. */
void tlsc_save(struct tlsc *t);
/* The reason of the last failure, as GnuTLS words it (static text). */
const char *tlsc_error(const struct tlsc *t);

#endif
