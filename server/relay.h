/* relay: the backend LMTP client of one session (RFC 2033). Connects on
 * demand, says LHLO (and XCLIENT when offered), passes MAIL/RCPT/RSET/DATA
 * through one at a time, streams message data with bounded buffering and
 * collects one reply per recipient after the final dot. Never talks to the
 * client: everything comes back through struct relay_cbs. */
#ifndef MXFRONT_RELAY_H
#define MXFRONT_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

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
	/* Brackets the answers found in one read from the backend (true, then
	 * false), so that the client's replies to a pipelined group can leave
	 * in one write. */
	void (*batch)(void *ctx, bool begin);
};

#define RELAY_HIGH_WATER (64 * 1024)

struct relay;

/* A relay for one session; CFG, ID and CLIENT are borrowed for its lifetime
 * (the session outlives it). Owned by the caller: relay_free(). */
struct relay *relay_new(uv_loop_t *loop, const struct config *cfg, const struct relay_cbs *cbs,
                        void *ctx, const char *id, const char *client_ip, int client_port);

/* Closes any backend connection (without a final dot) and frees the relay
 * once its handles are closed. No callback after this. */
void relay_free(struct relay *r);

/* Connects if not connected, remembering HELO for XCLIENT; answer: cbs->hello. */
void relay_hello(struct relay *r, const char *helo);

/* Sends one command line (with CRLF); answer: cbs->reply. MAIL connects first
 * when there is no connection. */
void relay_command(struct relay *r, const char *line, size_t len);

/* Queues message bytes after a 354; relay_flush() starts writing them. */
void relay_data(struct relay *r, const char *buf, size_t len);

/* Sends the final dot; answer: cbs->data_done with NRCPT replies. */
void relay_data_end(struct relay *r, unsigned nrcpt);

/* Drops the connection without a final dot: nothing is delivered. */
void relay_abort(struct relay *r);

/* Writes what relay_command and relay_data gathered. */
void relay_flush(struct relay *r);

/* Bytes queued or being written to the backend. */
size_t relay_pending(const struct relay *r);

#endif
