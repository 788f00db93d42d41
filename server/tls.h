/* tls: a non-blocking GnuTLS server session driven over the session's own
 * buffers (custom push/pull), and the per-generation TLS context (priority
 * cache, ticket key, certificate store, defaults). Chooses the credential for
 * the SNI name in the post-client-hello hook; never touches a socket. */
#ifndef MXFRONT_TLS_H
#define MXFRONT_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "certstore.h"
#include "config.h"

struct tls_context;
struct tls;

/* Builds the TLS context of one generation from CFG's [tls] settings and CS
 * (taking a reference to CS). Returns 0, or -1 with ERR ("default_cert:
 * no certificate serves 'x'"). */
int tls_context_new(const struct config *cfg, struct certstore *cs, struct tls_context **out,
                    char *err, size_t errsize);
struct tls_context *tls_context_ref(struct tls_context *tc);
void tls_context_unref(struct tls_context *tc);

/* True when at least one certificate is loaded (STARTTLS is offered). */
bool tls_context_usable(const struct tls_context *tc);

/* Where ciphertext goes: SEND copies LEN bytes for the socket. */
struct tls_io {
	void (*send)(void *ctx, const char *buf, size_t len);
};

/* A server session over TC (a reference is taken). LISTENER_DEFAULT is the
 * listener's own default certificate (an entry of TC's store, resolved
 * when the generation was built) or NULL; TICKETS says whether this client
 * may get session tickets (tls_tickets_wanted); ID is the session id for
 * logs. Everything borrowed must outlive the tls. */
struct tls *tls_new(struct tls_context *tc, const struct certstore_entry *listener_default,
                    bool tickets, const struct tls_io *io, void *ctx, const char *id);

/* Whether a client at CLIENT (NULL: unknown) of listener LISTEN (NULL: none)
 * may get session tickets: the listener's session_tickets= if given, else
 * [tls] session_tickets, and never for [tls] no_tickets_for. */
bool tls_tickets_wanted(const struct config *cfg, const struct config_addr *listen,
                        const struct sockaddr *client);

/* Frees the GnuTLS session first, then releases the context (GnuTLS keeps
 * pointers to the credentials until gnutls_deinit). */
void tls_free(struct tls *t);

/* Free space for ciphertext from the socket (none when out of memory);
 * then tls_received(N). */
void tls_rx_space(struct tls *t, char **buf, size_t *len);
void tls_received(struct tls *t, size_t n);

/* True when the receive buffer can take more (allocates nothing). */
bool tls_rx_room(const struct tls *t);

/* Frees the receive buffer when nothing waits in it: an idle session
 * should not keep 32 KiB. */
void tls_rx_trim(struct tls *t);

/* Advances the handshake: 1 done, 0 needs more input, -1 failed (an alert
 * was queued; tls_error() says why). */
int tls_handshake(struct tls *t);

/* Decrypts into BUF: >0 bytes, 0 needs more input, -1 closed or failed
 * (tls_error() says why; an alert of ours may be queued: a TLS 1.2
 * renegotiation gets no_renegotiation). */
ssize_t tls_recv(struct tls *t, char *buf, size_t len);

/* True when tls_recv may return data without more input. */
bool tls_has_input(const struct tls *t);

/* Encrypts LEN bytes (ciphertext leaves through io->send). Returns 0 or -1. */
int tls_send(struct tls *t, const char *buf, size_t len);

/* Queues close_notify. */
void tls_bye(struct tls *t);

/* After the handshake: what was negotiated and chosen. */
const char *tls_error(const struct tls *t);
const char *tls_sni(const struct tls *t);     /* normalised, or "none" */
const char *tls_cert(const struct tls *t);    /* certificate label */
const char *tls_match(const struct tls *t);   /* exact|wildcard|listener-default|default */
const struct certstore_entry *tls_entry(const struct tls *t); /* the name's entry, or NULL */
const char *tls_version(const struct tls *t); /* "TLS1.3" */
const char *tls_cipher(const struct tls *t);  /* "AES-128-GCM" */
bool tls_resumed(const struct tls *t);
bool tls_tickets(const struct tls *t); /* tickets were offered to this client */

#endif
