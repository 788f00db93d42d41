/* backend_conn: one LMTP connection to the backend (RFC 2033), shared by the
 * pool that opens, keeps and closes it and the relay it is lent to. It
 * connects, frames and assembles replies, writes with bounded buffering and
 * times one wait; every event goes to whoever holds it now (its owner).
 * Knows nothing of SMTP transactions or of clients. */
#ifndef MXFRONT_BACKEND_CONN_H
#define MXFRONT_BACKEND_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "outq.h"
#include "smtp_parse.h"

struct backend_conn;

/* Events for the owner. Within any of them the owner may write, close the
 * connection or hand it to another owner. */
struct backend_conn_cbs {
	/* Connected (TCP or unix): the greeting is next. */
	void (*connected)(void *owner, struct backend_conn *c);
	/* One whole reply. R is borrowed for the call. */
	void (*reply)(void *owner, struct backend_conn *c, const struct smtp_reply *r);
	/* The connection is unusable (connect or I/O error, EOF, a reply that
	 * does not parse, the armed timer expired): close it. */
	void (*error)(void *owner, struct backend_conn *c, const char *reason);
	/* Bytes queued fell below BACKEND_CONN_LOW_WATER after exceeding
	 * BACKEND_CONN_HIGH_WATER. May be NULL. */
	void (*drained)(void *owner, struct backend_conn *c);
	/* Brackets the replies found in one read (true, then false), so that
	 * answers to a pipelined group can be passed on in one write. May be
	 * NULL. */
	void (*batch)(void *owner, struct backend_conn *c, bool begin);
};

#define BACKEND_CONN_HIGH_WATER (64 * 1024)
#define BACKEND_CONN_LOW_WATER (32 * 1024)

#define BACKEND_CONN_LINE_MAX 2048

/* A connection. Owners read the first group of fields; the pool keeps its
 * list links and generation in it; the rest is backend_conn.c's. */
struct backend_conn {
	unsigned caps;     /* SMTP_EXT_* of its last LHLO reply */
	unsigned xattrs;   /* BACKEND_XA_*: what its XCLIENT takes */
	char xclient[320]; /* the XCLIENT facts in effect ("" none), kept by the relay */
	struct outq out;   /* bytes for the backend: out.pending, out.written */

	struct backend_conn *next, *prev; /* the pool's lists */
	unsigned generation;              /* the pool's: config it was opened for */
	int pool_state;                   /* the pool's */
	uint64_t opened_ns;               /* the pool's: uv_hrtime() at backend_conn_new */

	union {
		uv_handle_t handle;
		uv_stream_t stream;
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} h;
	uv_connect_t connect;
	uv_timer_t timer;
	int open_handles;
	bool closing;
	const char *start_error;
	bool lhlo;         /* collecting capabilities from the reply being read */
	const struct backend_conn_cbs *cbs;
	void *owner;
	struct smtp_reply cur;
	struct smtp_framer framer;
	size_t inlen;
	char in[BACKEND_CONN_LINE_MAX];
};

enum {
	BACKEND_XA_ADDR = 1 << 0,
	BACKEND_XA_PORT = 1 << 1,
	BACKEND_XA_HELO = 1 << 2,
};

/* Starts connecting to ADDR (borrowed for the call) on LOOP; events go to
 * CBS/OWNER. NULL when out of memory. Owned by whoever holds it;
 * backend_conn_close() frees it. */
struct backend_conn *backend_conn_new(uv_loop_t *loop, const struct config_addr *addr,
                                      const struct backend_conn_cbs *cbs, void *owner);

/* Hands the connection's events to CBS/OWNER from now on. */
void backend_conn_set_owner(struct backend_conn *c, const struct backend_conn_cbs *cbs,
                            void *owner);

/* The next reply is an LHLO reply: collect its capabilities into c->caps. */
void backend_conn_expect_lhlo(struct backend_conn *c);

/* Queues a copy of BUF for writing. Errors arrive through cbs->error. */
void backend_conn_write(struct backend_conn *c, const char *buf, size_t len);

/* A buffer for backend_conn_write_owned(): CAP bytes at backend_wbuf_data(). */
struct backend_wbuf;
struct backend_wbuf *backend_wbuf_new(size_t cap);
char *backend_wbuf_data(struct backend_wbuf *w);
size_t *backend_wbuf_len(struct backend_wbuf *w);

/* Queues W (ownership taken) for writing. */
void backend_conn_write_owned(struct backend_conn *c, struct backend_wbuf *w);

/* Arms the connection's one timer: after MS without backend_conn_arm or
 * backend_conn_disarm, cbs->error(..., "timeout"). */
void backend_conn_arm(struct backend_conn *c, unsigned ms);
void backend_conn_disarm(struct backend_conn *c);

/* Closes without another byte and frees once libuv is done; no event after
 * this. */
void backend_conn_close(struct backend_conn *c);

#endif
