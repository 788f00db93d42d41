/* conn: one client connection slot over libuv: connect, reads framed into
 * reply lines (decrypted first after STARTTLS), and output through two
 * alternating buffers so nothing is copied per write and the shared message
 * goes out by reference. One close path; the slot is reused after it.
 * Never decides what to send (proto.c) nor when to start (worker.c). */
#include "conn.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlsc.h"
#include "worker.h"

#define CONN_TLS_CHUNK 16384  /* one full TLS record of the message per send */

static void conn_oom(void)
{
	fprintf(stderr, "smtpload: out of memory\n");
	abort();
}

static uint64_t conn_timeout_ns(const struct conn *c)
{
	return (uint64_t)(c->w->run->o->timeout * 1e9);
}

static void conn_tls_push_cb(void *arg, const void *data, size_t len);

int conn_init(struct conn *c, struct worker *w, unsigned index)
{
	memset(c, 0, sizeof *c);
	c->w = w;
	c->index = index;
	c->state = CONN_FREE;
	for (int i = 0; i < 2; i++) {
		c->txcap[i] = 4096;
		if (!(c->tx[i] = malloc(c->txcap[i])))
			return -1;
	}
	if (w->tls && !(c->tls = tlsc_new(w->tls, conn_tls_push_cb, c)))
		return -1;
	return proto_init(&c->p, w->run->o->rcpts);
}

void conn_fini(struct conn *c)
{
	free(c->tx[0]);
	free(c->tx[1]);
	free(c->stage);
	tlsc_free(c->tls);
	proto_fini(&c->p);
}

/* ---- closing ---- */

static void conn_close_cb(uv_handle_t *h)
{
	struct conn *c = h->data;
	if (c->tls)
		tlsc_end(c->tls);
	c->tls_on = c->handshaking = false;
	c->state = CONN_FREE;
	worker_slot_done(c->w, c);
}

void conn_close(struct conn *c, int err)
{
	if (c->state == CONN_FREE || c->state == CONN_CLOSING)
		return;
	if (err >= 0)
		c->w->st->err[err]++;
	if (err == STATS_ERR_TLS && c->tls && !c->w->tls_reason)
		c->w->tls_reason = tlsc_error(c->tls);
	if (err != CONN_CLOSE_OK)
		c->failed = true;
	c->state = CONN_CLOSING;
	c->deadline = 0;
	/* Cancels a pending connect or write: their callbacks see CONN_CLOSING. */
	uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

void conn_check_timeout(struct conn *c, uint64_t now)
{
	if ((c->state == CONN_CONNECTING || c->state == CONN_OPEN) && c->deadline &&
	    now >= c->deadline)
		conn_close(c, STATS_ERR_TIMEOUT);
}

void conn_expect(struct conn *c)
{
	c->deadline = uv_hrtime() + conn_timeout_ns(c);
}

void conn_unexpect(struct conn *c)
{
	c->deadline = 0;
}

/* After every event: a timeout runs while anything is awaited. */
static void conn_rearm(struct conn *c)
{
	if (c->state != CONN_OPEN)
		return;
	if (c->handshaking || proto_waiting(c) || c->inflight)
		conn_expect(c);
	else
		conn_unexpect(c);
}

/* ---- output ---- */

static void conn_tx_append(struct conn *c, const void *data, size_t len)
{
	int a = c->txact;
	if (c->txlen[a] + len > c->txcap[a]) {
		size_t cap = c->txcap[a];
		while (cap < c->txlen[a] + len)
			cap *= 2;
		char *p = realloc(c->tx[a], cap);
		if (!p)
			conn_oom();
		c->tx[a] = p;
		c->txcap[a] = cap;
	}
	memcpy(c->tx[a] + c->txlen[a], data, len);
	struct conn_seg *last = c->nseg ? &c->seg[c->nseg - 1] : NULL;
	if (last && !last->base && last->off + last->len == c->txlen[a]) {
		last->len += len;
	} else {
		assert(c->nseg < sizeof c->seg / sizeof c->seg[0]);
		c->seg[c->nseg++] = (struct conn_seg){NULL, c->txlen[a], len};
	}
	c->txlen[a] += len;
}

static void conn_tls_push_cb(void *arg, const void *data, size_t len)
{
	conn_tx_append(arg, data, len);
}

void conn_puts(struct conn *c, const char *s, size_t len)
{
	if (!c->tls_on) {
		conn_tx_append(c, s, len);
		return;
	}
	/* Collected, so that a pipelined group becomes one record. */
	if (c->stagelen + len > c->stagecap) {
		size_t cap = c->stagecap ? c->stagecap : 1024;
		while (cap < c->stagelen + len)
			cap *= 2;
		char *p = realloc(c->stage, cap);
		if (!p)
			conn_oom();
		c->stage = p;
		c->stagecap = cap;
	}
	memcpy(c->stage + c->stagelen, s, len);
	c->stagelen += len;
}

static int conn_seal_stage(struct conn *c)
{
	if (c->stagelen == 0)
		return 0;
	size_t n = c->stagelen;
	c->stagelen = 0;
	return tlsc_send(c->tls, c->stage, n);
}

void conn_put_body(struct conn *c)
{
	const struct msg *m = c->w->run->msg;
	if (!c->tls_on) {
		assert(c->nseg < sizeof c->seg / sizeof c->seg[0]);
		c->seg[c->nseg++] = (struct conn_seg){m->wire, 0, m->wire_len};
		return;
	}
	if (conn_seal_stage(c) < 0) {
		conn_close(c, STATS_ERR_TLS);
		return;
	}
	c->body_tls = true;
	c->body_off = 0;
}

static size_t conn_tx_pending(const struct conn *c)
{
	return c->txlen[c->txact] + (c->inflight ? c->inflight_len : 0);
}

/* Encrypts more of the message while little ciphertext is waiting, then the
 * commands queued after it. */
static int conn_tls_pump(struct conn *c)
{
	const struct msg *m = c->w->run->msg;
	while (c->body_tls) {
		if (conn_tx_pending(c) >= CONN_TX_HIGH)
			return 0;
		size_t n = m->wire_len - c->body_off;
		if (n > CONN_TLS_CHUNK)
			n = CONN_TLS_CHUNK;
		if (tlsc_send(c->tls, m->wire + c->body_off, n) < 0)
			return -1;
		c->body_off += n;
		if (c->body_off == m->wire_len)
			c->body_tls = false;
	}
	return conn_seal_stage(c);
}

static void conn_write_cb(uv_write_t *req, int status)
{
	struct conn *c = req->data;
	c->inflight = false;
	c->txlen[!c->txact] = 0;
	if (c->state != CONN_OPEN)
		return; /* cancelled by conn_close */
	if (status < 0) {
		conn_close(c, STATS_ERR_CLOSED);
		return;
	}
	conn_flush(c);
	conn_rearm(c);
}

/* Writes what it can now; the rest goes in one uv_write from the buffer that
 * then stops collecting (the other one collects meanwhile). */
static void conn_write_out(struct conn *c)
{
	uv_buf_t bufs[4];
	size_t total = 0;
	unsigned n = c->nseg, i = 0;
	for (unsigned k = 0; k < n; k++) {
		const struct conn_seg *s = &c->seg[k];
		const char *base = s->base ? s->base : c->tx[c->txact];
		bufs[k] = uv_buf_init((char *)base + s->off, (unsigned)s->len);
		total += s->len;
	}
	c->nseg = 0;
	int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
	if (r == UV_EAGAIN)
		r = 0;
	if (r < 0) {
		conn_close(c, STATS_ERR_CLOSED);
		return;
	}
	if ((size_t)r == total) {
		c->txlen[c->txact] = 0;
		return;
	}
	size_t done = (size_t)r;
	while (done >= bufs[i].len)
		done -= bufs[i++].len;
	bufs[i].base += done;
	bufs[i].len -= done;
	c->wreq.data = c;
	if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs + i, n - i, conn_write_cb) < 0) {
		conn_close(c, STATS_ERR_CLOSED);
		return;
	}
	c->inflight = true;
	c->inflight_len = total - (size_t)r;
	c->txact = !c->txact;
	c->txlen[c->txact] = 0;
}

void conn_flush(struct conn *c)
{
	/* Ends: each round either sends everything queued (and the message is
	 * finite) or leaves a write in flight; the next round then only fills
	 * the other buffer up to CONN_TX_HIGH. The write callback flushes again. */
	while (c->state == CONN_OPEN) {
		if (c->tls_on && !c->handshaking && conn_tls_pump(c) < 0) {
			conn_close(c, STATS_ERR_TLS);
			return;
		}
		if (c->inflight || c->nseg == 0)
			break;
		conn_write_out(c);
	}
	if (c->state == CONN_OPEN && c->close_after_flush && !c->inflight && c->nseg == 0 &&
	    !c->body_tls && c->stagelen == 0)
		conn_close(c, CONN_CLOSE_OK);
}

void conn_finish(struct conn *c)
{
	if (c->tls_on && !c->handshaking)
		tlsc_bye(c->tls);
	c->close_after_flush = true;
	conn_flush(c);
}

/* ---- input ---- */

size_t conn_rx_pending(const struct conn *c)
{
	return c->rxlen - c->rxpos;
}

/* Hands every complete line to proto, keeps a partial one for the next read. */
static void conn_parse(struct conn *c)
{
	size_t off = 0;
	while (c->state == CONN_OPEN) {
		char *start = c->rx + off;
		char *nl = memchr(start, '\n', c->rxlen - off);
		if (!nl)
			break;
		size_t len = (size_t)(nl - start);
		if (len > 0 && start[len - 1] == '\r')
			len--;
		off = (size_t)(nl - c->rx) + 1;
		c->rxpos = off;
		proto_on_line(c, start, len);
		if (c->rx_switched) {
			c->rx_switched = false;
			return; /* STARTTLS: the plaintext buffer was emptied */
		}
	}
	if (c->state != CONN_OPEN)
		return;
	memmove(c->rx, c->rx + off, c->rxlen - off);
	c->rxlen -= off;
	c->rxpos = 0;
	if (c->rxlen == sizeof c->rx)
		conn_close(c, STATS_ERR_PROTOCOL); /* a reply line longer than the buffer */
}

int conn_start_tls(struct conn *c)
{
	if (tlsc_begin(c->tls, c->p.sni, c->p.sni_slot) < 0) {
		conn_close(c, STATS_ERR_TLS);
		return -1;
	}
	c->tls_on = c->handshaking = true;
	c->rx_switched = true;
	c->rxlen = c->rxpos = 0;
	if (tlsc_handshake(c->tls) < 0) { /* queues the ClientHello */
		conn_close(c, STATS_ERR_TLS);
		return -1;
	}
	return 0;
}

/* Ciphertext arrived: advance the handshake, then decrypt every record. */
static void conn_tls_input(struct conn *c)
{
	if (c->handshaking) {
		int rc = tlsc_handshake(c->tls);
		if (rc < 0) {
			conn_close(c, STATS_ERR_TLS);
			return;
		}
		if (rc == 0)
			return;
		c->handshaking = false;
		proto_on_tls_done(c);
	}
	/* Ends: every round consumes input or stops at TLSC_AGAIN. */
	while (c->state == CONN_OPEN) {
		if (c->rxlen == sizeof c->rx) {
			conn_close(c, STATS_ERR_PROTOCOL);
			return;
		}
		ssize_t n = tlsc_recv(c->tls, c->rx + c->rxlen, sizeof c->rx - c->rxlen);
		if (n == TLSC_AGAIN)
			return;
		if (n == TLSC_ERROR) {
			conn_close(c, STATS_ERR_TLS);
			return;
		}
		if (n == 0) {
			proto_on_eof(c);
			return;
		}
		c->rxlen += (size_t)n;
		conn_parse(c);
	}
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = h->data;
	char *base;
	size_t len;
	if (c->tls_on) {
		tlsc_rx_space(c->tls, &base, &len);
	} else {
		base = c->rx + c->rxlen;
		len = sizeof c->rx - c->rxlen;
	}
	*buf = uv_buf_init(base, (unsigned)len);
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (c->state != CONN_OPEN || nread == 0)
		return;
	if (nread == UV_EOF)
		proto_on_eof(c);
	else if (nread == UV_ENOBUFS)
		conn_close(c, STATS_ERR_PROTOCOL);
	else if (nread < 0)
		conn_close(c, STATS_ERR_CLOSED);
	else if (c->tls_on) {
		tlsc_received(c->tls, (size_t)nread);
		conn_tls_input(c);
	} else {
		c->rxlen += (size_t)nread;
		conn_parse(c);
	}
	conn_flush(c);
	conn_rearm(c);
}

/* ---- connecting ---- */

static void conn_connect_cb(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	if (c->state != CONN_CONNECTING)
		return; /* closed meanwhile (timeout or stop) */
	if (status < 0) {
		conn_close(c, status == UV_ECONNREFUSED ? STATS_ERR_CONNECT_REFUSED : STATS_ERR_CONNECT);
		return;
	}
	stats_hist_add(&c->w->st->conn_lat, uv_hrtime() - c->t_connect);
	c->state = CONN_OPEN;
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb) < 0) {
		conn_close(c, STATS_ERR_CLOSED);
		return;
	}
	proto_on_connected(c);
	conn_flush(c);
	conn_rearm(c);
}

int conn_start(struct conn *c)
{
	struct worker *w = c->w;
	size_t slot = 0;
	const char *sni = w->tls ? worker_next_sni(w, &slot) : NULL;
	assert(c->state == CONN_FREE);
	w->st->connects++;
	if (uv_tcp_init(&w->loop, &c->tcp) < 0) {
		w->st->err[STATS_ERR_CONNECT]++;
		return -1;
	}
	c->tcp.data = c;
	c->creq.data = c;
	c->rxlen = c->rxpos = 0;
	c->rx_switched = false;
	c->txlen[0] = c->txlen[1] = 0;
	c->nseg = 0;
	c->inflight = c->close_after_flush = c->failed = false;
	c->tls_on = c->handshaking = c->body_tls = false;
	c->stagelen = 0;
	proto_reset(&c->p, sni, slot);
	c->state = CONN_CONNECTING;
	c->t_connect = uv_hrtime();
	c->deadline = c->t_connect + conn_timeout_ns(c);
	int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&w->run->o->addr,
	                        conn_connect_cb);
	if (rc < 0)
		conn_close(c, rc == UV_ECONNREFUSED ? STATS_ERR_CONNECT_REFUSED : STATS_ERR_CONNECT);
	return 0;
}
