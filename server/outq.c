/* outq: owns the bytes queued for one stream and their write requests.
 * Decides nothing but when to tell its owner: errors, going under the
 * low-water mark, and empty. */
#include "outq.h"

#include <stdlib.h>

/* One write in flight: owns BASE, freed in its callback. */
struct outq_req {
	uv_write_t req;
	struct outq *q;
	void *base;
	size_t len;
};

void outq_init(struct outq *q, uv_stream_t *stream, size_t high, size_t low,
               const struct outq_cbs *cbs, void *owner)
{
	*q = (struct outq){ .stream = stream, .cbs = cbs, .owner = owner, .high = high, .low = low };
}

void outq_close(struct outq *q)
{
	q->closed = true;
}

/* Bytes left the queue: tell the owner what changed. */
static void outq_done(struct outq *q, size_t len)
{
	q->pending -= len;
	q->written += len;
	if (q->closed)
		return;
	if (q->above_high && q->pending < q->low) {
		q->above_high = false;
		if (q->cbs->drained)
			q->cbs->drained(q->owner);
	}
	if (!q->closed && q->pending == 0 && q->cbs->empty)
		q->cbs->empty(q->owner);
}

static void outq_write_cb(uv_write_t *req, int status)
{
	struct outq_req *w = req->data;
	struct outq *q = w->q;
	size_t len = w->len;
	free(w->base);
	free(w);
	if (status < 0) {
		q->pending -= len;
		if (!q->closed)
			q->cbs->error(q->owner, status);
		return;
	}
	outq_done(q, len);
}

void outq_write(struct outq *q, void *base, const char *data, size_t len)
{
	if (q->closed || len == 0) {
		free(base);
		return;
	}
	uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
	/* Written at once when the socket takes it all: no request and no
	 * callback (libuv re-arms epoll after each completed request). Not
	 * while anything is queued or over the high-water mark: bytes stay in
	 * order, and the owner waits for drained, which only a completed
	 * request gives. */
	int done = q->pending ? 0 : uv_try_write(q->stream, &b, 1);
	if (done == (int)len) {
		free(base);
		q->written += len;
		return;
	}
	size_t skip = done > 0 ? (size_t)done : 0;
	q->written += skip;
	struct outq_req *w = malloc(sizeof *w);
	if (!w) {
		free(base);
		q->cbs->error(q->owner, UV_ENOMEM);
		return;
	}
	w->q = q;
	w->base = base;
	w->len = len - skip;
	w->req.data = w;
	q->pending += w->len;
	if (q->pending > q->high)
		q->above_high = true;
	b = uv_buf_init((char *)data + skip, (unsigned)w->len);
	int rc = uv_write(&w->req, q->stream, &b, 1, outq_write_cb);
	if (rc < 0) {
		q->pending -= w->len;
		free(w->base);
		free(w);
		q->cbs->error(q->owner, rc);
	}
}
