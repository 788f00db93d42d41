/* backend_conn: owns one backend socket, its timer, its read buffer and the
 * bytes queued for it. Turns bytes into whole replies for its current owner;
 * never decides what a reply means, never reuses or reconnects. */
#include "backend_conn.h"

#include <stdlib.h>
#include <string.h>

/* Bytes for backend_conn_write_owned: the queue frees the whole block. */
struct backend_wbuf {
	size_t len;
	size_t cap;
	char data[];
};

struct backend_wbuf *backend_wbuf_new(size_t cap)
{
	struct backend_wbuf *w = malloc(sizeof *w + cap);
	if (w) {
		w->len = 0;
		w->cap = cap;
	}
	return w;
}

char *backend_wbuf_data(struct backend_wbuf *w)
{
	return w->data;
}

size_t *backend_wbuf_len(struct backend_wbuf *w)
{
	return &w->len;
}

static void backend_conn_fail(struct backend_conn *c, const char *reason)
{
	if (c->closing)
		return;
	uv_timer_stop(&c->timer);
	uv_read_stop(&c->h.stream);
	c->cbs->error(c->owner, c, reason);
}

static void backend_conn_closed_cb(uv_handle_t *h)
{
	struct backend_conn *c = h->data;
	if (--c->open_handles == 0)
		free(c);
}

void backend_conn_close(struct backend_conn *c)
{
	if (!c || c->closing)
		return;
	c->closing = true;
	outq_close(&c->out);
	uv_close(&c->h.handle, backend_conn_closed_cb);
	uv_close((uv_handle_t *)&c->timer, backend_conn_closed_cb);
}

void backend_conn_write_owned(struct backend_conn *c, struct backend_wbuf *w)
{
	if (c->closing) {
		free(w);
		return;
	}
	outq_write(&c->out, w, w->data, w->len);
}

void backend_conn_write(struct backend_conn *c, const char *buf, size_t len)
{
	struct backend_wbuf *w = backend_wbuf_new(len);
	if (!w) {
		backend_conn_fail(c, "out of memory");
		return;
	}
	memcpy(w->data, buf, len);
	w->len = len;
	backend_conn_write_owned(c, w);
}

static void backend_conn_out_error_cb(void *owner, int status)
{
	backend_conn_fail(owner, uv_strerror(status));
}

static void backend_conn_out_drained_cb(void *owner)
{
	struct backend_conn *c = owner;
	if (c->cbs->drained)
		c->cbs->drained(c->owner, c);
}

static const struct outq_cbs backend_conn_out_cbs = {
	.error = backend_conn_out_error_cb,
	.drained = backend_conn_out_drained_cb,
};

static void backend_conn_timer_cb(uv_timer_t *t)
{
	backend_conn_fail(t->data, "timeout");
}

void backend_conn_arm(struct backend_conn *c, unsigned ms)
{
	if (!c->closing)
		uv_timer_start(&c->timer, backend_conn_timer_cb, ms, 0);
}

void backend_conn_disarm(struct backend_conn *c)
{
	uv_timer_stop(&c->timer);
}

void backend_conn_expect_lhlo(struct backend_conn *c)
{
	c->lhlo = true;
	c->caps = 0;
	c->xattrs = 0;
}

/* Parses the attribute names of an "XCLIENT ADDR PORT HELO ..." line. */
static unsigned backend_conn_xattrs(const char *text, size_t len)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = { { "ADDR", BACKEND_XA_ADDR }, { "PORT", BACKEND_XA_PORT },
		      { "HELO", BACKEND_XA_HELO } };
	unsigned attrs = 0;
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *sp = memchr(p, ' ', (size_t)(end - p));
		size_t n = (size_t)((sp ? sp : end) - p);
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
			if (strlen(names[i].name) == n && strncasecmp(p, names[i].name, n) == 0)
				attrs |= names[i].bit;
		p = sp ? sp + 1 : end;
	}
	return attrs;
}

/* One reply line (with its ending). Returns -1 when reading must stop (the
 * connection failed or was closed by the owner). */
static int backend_conn_line(struct backend_conn *c, const char *line, size_t len, unsigned flags)
{
	int code;
	bool last;
	const char *text;
	size_t textlen;
	if (flags || len < 2 ||
	    smtp_parse_reply_line(line, len - 2, &code, &last, &text, &textlen) < 0) {
		backend_conn_fail(c, "garbage reply");
		return -1;
	}
	if (c->cur.code == 0) {
		c->cur.code = code;
		c->cur.len = 0;
		c->cur.lost = false;
	} else if (c->cur.code != code) {
		backend_conn_fail(c, "reply code changed within a multi-line reply");
		return -1;
	}
	if (c->lhlo) {
		unsigned ext = smtp_parse_ext(text, textlen);
		c->caps |= ext;
		if (ext == SMTP_EXT_XCLIENT)
			c->xattrs = backend_conn_xattrs(text, textlen);
	}
	smtp_reply_add_line(&c->cur, text, textlen);
	if (!last)
		return 0;
	struct smtp_reply r = c->cur;
	c->cur.code = 0;
	c->lhlo = false;
	c->cbs->reply(c->owner, c, &r);
	return c->closing ? -1 : 0;
}

static void backend_conn_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct backend_conn *c = h->data;
	buf->base = c->in + c->inlen;
	buf->len = sizeof c->in - c->inlen;
}

static void backend_conn_read_lines(struct backend_conn *c);

static void backend_conn_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct backend_conn *c = stream->data;
	if (c->closing || nread == 0)
		return;
	if (nread < 0) {
		backend_conn_fail(c, nread == UV_EOF ? "backend closed the connection"
		                                     : uv_strerror((int)nread));
		return;
	}
	c->inlen += (size_t)nread;
	const struct backend_conn_cbs *cbs = c->cbs;
	void *owner = c->owner;
	if (cbs->batch)
		cbs->batch(owner, c, true);
	backend_conn_read_lines(c);
	/* The owner that saw the batch begin sees it end, even if the
	 * connection changed hands or closed in between. */
	if (cbs->batch)
		cbs->batch(owner, c, false);
}

/* Takes every whole reply line read so far. */
static void backend_conn_read_lines(struct backend_conn *c)
{
	size_t off = 0;
	for (;;) {
		const char *line;
		size_t linelen;
		unsigned flags;
		size_t n = smtp_frame(&c->framer, c->in + off, c->inlen - off, sizeof c->in, &line,
		                      &linelen, &flags);
		if (n == 0)
			break;
		off += n;
		if (!line) {
			backend_conn_fail(c, "reply line too long");
			return;
		}
		if (backend_conn_line(c, line, linelen, flags) < 0)
			return;
	}
	memmove(c->in, c->in + off, c->inlen - off);
	c->inlen -= off;
}

static void backend_conn_connect_cb(uv_connect_t *req, int status)
{
	struct backend_conn *c = req->data;
	if (c->closing)
		return;
	if (status < 0) {
		backend_conn_fail(c, uv_strerror(status));
		return;
	}
	int rc = uv_read_start(&c->h.stream, backend_conn_alloc_cb, backend_conn_read_cb);
	if (rc < 0) {
		backend_conn_fail(c, uv_strerror(rc));
		return;
	}
	if (c->cbs->connected)
		c->cbs->connected(c->owner, c);
}

void backend_conn_set_owner(struct backend_conn *c, const struct backend_conn_cbs *cbs,
                            void *owner)
{
	c->cbs = cbs;
	c->owner = owner;
}

/* Reports a failure to start from the loop, never from inside the call. */
static void backend_conn_start_failed_cb(uv_timer_t *t)
{
	struct backend_conn *c = t->data;
	backend_conn_fail(c, c->start_error);
}

struct backend_conn *backend_conn_new(uv_loop_t *loop, const struct config_addr *addr,
                                      const struct backend_conn_cbs *cbs, void *owner)
{
	struct backend_conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->cbs = cbs;
	c->owner = owner;
	c->h.handle.data = c;
	c->connect.data = c;
	c->timer.data = c;
	c->open_handles = 2;
	outq_init(&c->out, &c->h.stream, BACKEND_CONN_HIGH_WATER, BACKEND_CONN_LOW_WATER,
	          &backend_conn_out_cbs, c);
	uv_timer_init(loop, &c->timer);
	int rc;
	if (addr->unix_path) {
		uv_pipe_init(loop, &c->h.pipe, 0);
		uv_pipe_connect(&c->connect, &c->h.pipe, addr->unix_path, backend_conn_connect_cb);
		return c;
	}
	uv_tcp_init(loop, &c->h.tcp);
	uv_tcp_nodelay(&c->h.tcp, 1);
	rc = uv_tcp_connect(&c->connect, &c->h.tcp, (const struct sockaddr *)&addr->sa,
	                    backend_conn_connect_cb);
	if (rc < 0) { /* e.g. EMFILE: said through the error event, like any failure */
		c->start_error = uv_strerror(rc);
		uv_timer_start(&c->timer, backend_conn_start_failed_cb, 0, 0);
	}
	return c;
}
