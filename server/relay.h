/* relay: the backend side of one session's transactions (RFC 2033). It
 * borrows an LMTP connection from the worker's pool at MAIL, says XCLIENT
 * when this session's facts are not in effect on it yet, passes MAIL and
 * RCPT through as they come (pipelined when the backend offers it), answers
 * DATA itself and holds the first part of the message, so that a slow client
 * holds no backend connection: a transaction whose client is silent for
 * RELAY_HOLD_MS, or whose message is not complete RELAY_HOLD_MS after its
 * DATA, gives its connection back (RSET) and gets one again, with MAIL and
 * its accepted RCPTs said again, when the client goes on. Then it
 * sends DATA, streams the message with bounded buffering and collects one
 * reply per recipient after the final dot. Never talks to the client:
 * everything comes back through struct relay_cbs. */
#ifndef MXFRONT_RELAY_H
#define MXFRONT_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "backend_pool.h"
#include "config.h"
#include "smtp_parse.h"

/* Answers; each may be called before the call that asked returns. None is
 * called after relay_free(). */
struct relay_cbs {
	void (*hello)(void *ctx, const struct smtp_reply *r, unsigned caps);
	void (*reply)(void *ctx, const struct smtp_reply *r);
	void (*data_done)(void *ctx, const struct smtp_reply *replies, unsigned n);
	/* The connection broke while no answer was awaited. */
	void (*failed)(void *ctx);
	/* Buffered output fell below the low-water mark after relay_pending()
	 * had exceeded RELAY_HIGH_WATER. */
	void (*drained)(void *ctx);
	/* Answers came from outside the session's own calls (a backend read,
	 * a timer, the pool): the session goes on with them now. Once per
	 * backend read, so that the replies to a pipelined group leave in one
	 * write. */
	void (*settled)(void *ctx);
};

#define RELAY_HIGH_WATER (64 * 1024)
/* Message bytes held before the backend's DATA is sent. */
#define RELAY_HOLD_MAX (48 * 1024)
/* A transaction whose client is silent this long gives its connection back. */
#define RELAY_HOLD_MS 1000

struct relay;

/* A relay for one session, borrowing from POOL; CFG, ID and CLIENT are
 * borrowed for its lifetime (the session outlives it). Owned by the caller:
 * relay_free(). */
struct relay *relay_new(uv_loop_t *loop, struct backend_pool *pool, const struct config *cfg,
                        const struct relay_cbs *cbs, void *ctx, const char *id,
                        const char *client_ip, int client_port);

/* Gives any connection back (closed when in doubt: nothing half-sent is
 * delivered) and frees the relay once its handles are closed. No callback
 * after this. */
void relay_free(struct relay *r);

/* Remembers HELO (for XCLIENT) and answers at once through cbs->hello with
 * the backend's capabilities as the pool knows them (a 4xx when it knows
 * nothing yet). Needs no backend connection. */
void relay_hello(struct relay *r, const char *helo);

/* The client's last HELO/EHLO name ("" before one), borrowed. */
const char *relay_helo(const struct relay *r);

/* One command line (with CRLF): MAIL, RCPT, DATA or RSET; answer:
 * cbs->reply. DATA and RSET are answered by the relay itself, in order. */
void relay_command(struct relay *r, const char *line, size_t len);

/* Message bytes after a 354; relay_flush() writes what is due. */
void relay_data(struct relay *r, const char *buf, size_t len);

/* The message is complete: sends it with its final dot; answer:
 * cbs->data_done with NRCPT replies. */
void relay_data_end(struct relay *r, unsigned nrcpt);

/* Drops the transaction without a final dot: nothing is delivered. */
void relay_abort(struct relay *r);

/* Writes what relay_command and relay_data gathered. */
void relay_flush(struct relay *r);

/* Bytes held, queued or being written to the backend. */
size_t relay_pending(const struct relay *r);

#endif
