/* backend_pool: one worker's LMTP connections to the backend. It opens them
 * (connect, greeting, LHLO), lends one to a relay for one transaction, takes
 * it back (after an RSET when asked), keeps it idle for reuse and closes it
 * when idle too long or in doubt. It bounds them ([backend] max_connections
 * split over the workers), queues relays that want one in FIFO order for at
 * most [backend] queue_timeout, notices a dead backend once for everybody
 * and retries it with backoff, and caches what the backend offers (its LHLO
 * capabilities) so that EHLO needs no backend. */
#ifndef MXFRONT_BACKEND_POOL_H
#define MXFRONT_BACKEND_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "backend_conn.h"
#include "config.h"

struct backend_pool;

enum backend_get_result {
	BACKEND_GOT,     /* the connection is the caller's until backend_pool_put() */
	BACKEND_DOWN,    /* the backend cannot be reached now */
	BACKEND_BUSY,    /* every connection stayed busy for queue_timeout */
};

/* A relay's place in the queue; embedded in the relay, owned by it. */
struct backend_waiter {
	struct backend_waiter *next, *prev;
	bool queued;
	uint64_t since;
	/* The answer; C is NULL unless RESULT is BACKEND_GOT. */
	void (*ready)(struct backend_waiter *w, struct backend_conn *c,
	              enum backend_get_result result);
};

/* A pool on LOOP for CFG (a reference is taken), holding at most
 * max_connections / NWORKERS connections. Opens one connection at once to
 * learn the backend's capabilities. NULL when out of memory. */
struct backend_pool *backend_pool_new(uv_loop_t *loop, struct config *cfg, unsigned nworkers);

/* A new generation: CFG's backend address, limits and timeouts apply from
 * now on; connections opened for the old one are closed as they come back,
 * and the capabilities are learnt again. */
void backend_pool_update(struct backend_pool *p, struct config *cfg);

/* What the backend offers (SMTP_EXT_* bits); *KNOWN false when no LHLO
 * reply has been seen yet (the backend has been down since start). */
unsigned backend_pool_caps(const struct backend_pool *p, bool *known);

/* Asks for a connection; W->ready answers, possibly before this returns. */
void backend_pool_get(struct backend_pool *p, struct backend_waiter *w);

/* Leaves the queue without an answer (no-op when W is not queued). */
void backend_pool_cancel(struct backend_pool *p, struct backend_waiter *w);

enum backend_put {
	BACKEND_PUT_CLEAN, /* no transaction open, every reply read: reuse as is */
	BACKEND_PUT_RESET, /* a transaction is open at a command boundary: RSET first */
	BACKEND_PUT_CLOSE, /* in doubt (mid-DATA, timeout, bad reply): close */
};

/* Gives C back (ownership returns to the pool). */
void backend_pool_put(struct backend_pool *p, struct backend_conn *c, enum backend_put how);

/* Closes every connection the pool holds and frees it once its handles are
 * closed. No connection may be lent and no relay queued. */
void backend_pool_free(struct backend_pool *p);

#endif
