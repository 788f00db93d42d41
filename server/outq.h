/* outq: the output queue of one libuv stream (a client's socket, a backend
 * connection): writes at once when the socket takes it all, else queues the
 * bytes (ownership taken) behind a uv_write; counts what is pending, says
 * when it went over the high-water mark and when it came back under the
 * low one. The one place where backpressure on output is decided. */
#ifndef MXFRONT_OUTQ_H
#define MXFRONT_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct outq_cbs {
	/* A write failed (STATUS, a libuv error): the stream is unusable. */
	void (*error)(void *owner, int status);
	/* Pending bytes fell below LOW after going over HIGH. May be NULL. */
	void (*drained)(void *owner);
	/* Every byte queued so far is written. May be NULL. */
	void (*empty)(void *owner);
};

/* Embedded in its owner, which must outlive every write callback (libuv
 * calls them before the stream's close callback). */
struct outq {
	uv_stream_t *stream;
	const struct outq_cbs *cbs;
	void *owner;
	size_t high, low;
	size_t pending;   /* given to outq_write, not yet written */
	uint64_t written; /* bytes written so far: progress */
	bool above_high;  /* pending went over HIGH, not yet under LOW */
	bool closed;      /* outq_close: no callback any more */
};

void outq_init(struct outq *q, uv_stream_t *stream, size_t high, size_t low,
               const struct outq_cbs *cbs, void *owner);

/* Writes DATA[0..LEN), which lies inside BASE, a malloc'd block the queue
 * now owns (freed once written, or at once). Failures arrive through
 * cbs->error, possibly before this returns. */
void outq_write(struct outq *q, void *base, const char *data, size_t len);

/* The owner is closing its stream: no callback from now on. */
void outq_close(struct outq *q);

#endif
