/* relay: one session's LMTP client. Owns the backend connection, its timer
 * and the bytes queued for it; reports every outcome through relay_cbs.
 * Never replies to the SMTP client and never holds more than
 * RELAY_HIGH_WATER plus one chunk of message data. */
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "growbuf.h"
#include "log.h"

#define RELAY_CHUNK (16 * 1024)
#define RELAY_LOW_WATER (32 * 1024)
#define RELAY_REPLY_LINE_MAX 2048

enum relay_state {
	RELAY_IDLE,       /* no connection */
	RELAY_CONNECTING,
	RELAY_GREETING,   /* waiting for 220 */
	RELAY_LHLO,
	RELAY_XCLIENT,
	RELAY_LHLO2,      /* LHLO with the client's HELO after XCLIENT */
	RELAY_READY,
	RELAY_WAIT,       /* commands sent (pipelined), their replies awaited */
	RELAY_DATA,       /* message data flowing */
	RELAY_DATA_END,   /* final dot sent, per-recipient replies awaited */
};

static const char *const relay_state_names[] = {
	"idle", "connecting", "greeting", "lhlo", "xclient", "lhlo", "ready", "command", "data",
	"end_of_data",
};

enum relay_op { RELAY_OP_NONE, RELAY_OP_HELLO, RELAY_OP_COMMAND };

enum {
	RELAY_XA_ADDR = 1 << 0,
	RELAY_XA_PORT = 1 << 1,
	RELAY_XA_HELO = 1 << 2,
};

/* One backend connection; freed in its close callback, after any write
 * callbacks. r is NULL once the relay has let go of it. */
struct relay_conn {
	union {
		uv_handle_t handle;
		uv_stream_t stream;
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} h;
	uv_connect_t connect;
	struct relay *r;
	struct smtp_framer framer;
	size_t inlen;
	char in[RELAY_REPLY_LINE_MAX];
};

/* One write: owns its bytes, freed in its callback. */
struct relay_wbuf {
	uv_write_t req;
	struct relay_conn *conn;
	size_t len;
	char data[];
};

struct relay {
	uv_loop_t *loop;
	const struct config *cfg;
	const struct relay_cbs *cbs;
	void *ctx;
	const char *id;
	const char *client_ip;
	int client_port;

	uv_timer_t timer;
	struct relay_conn *conn;
	enum relay_state state;
	enum relay_op op;
	bool freeing;
	bool above_high;
	unsigned inflight;  /* commands sent whose replies are awaited */
	bool data_inflight; /* the last of them is DATA */

	char helo[256];
	unsigned caps;
	unsigned xattrs;
	/* commands given while the connection is being set up */
	char *queued;
	size_t queued_len, queued_cap;
	unsigned nqueued;
	bool queued_data;

	struct smtp_reply cur;         /* reply being assembled */
	struct smtp_reply *replies;    /* per-recipient replies after the dot, owned */
	unsigned nexpect, ngot;

	struct relay_wbuf *wcur;       /* data being gathered, not yet written */
	size_t pending;                /* bytes queued or in flight */
};

static void relay_conn_close_cb(uv_handle_t *h)
{
	free(h->data);
}

/* Lets go of the connection: closed without another byte (no final dot). */
static void relay_drop(struct relay *r)
{
	if (!r->conn)
		return;
	r->conn->r = NULL;
	uv_close(&r->conn->h.handle, relay_conn_close_cb);
	r->conn = NULL;
	free(r->wcur);
	r->wcur = NULL;
	r->pending = 0;
	uv_timer_stop(&r->timer);
}

static void relay_lost(struct smtp_reply *out, const char *text)
{
	smtp_reply_set(out, 451, text);
	out->lost = true;
}

/* No command is in flight or queued any more (the connection is gone). */
static void relay_forget_commands(struct relay *r)
{
	r->inflight = 0;
	r->data_inflight = false;
	r->nqueued = 0;
	r->queued_len = 0;
	r->queued_data = false;
}

/* The connection is unusable: drop it and answer whatever was awaited. */
static void relay_fail(struct relay *r, const char *reason)
{
	enum relay_state st = r->state;
	enum relay_op op = r->op;
	unsigned unanswered = st == RELAY_WAIT ? r->inflight : op == RELAY_OP_COMMAND ? r->nqueued : 0;
	relay_forget_commands(r);
	log_warn("sess=%s event=backend_error backend=%s stage=%s reason=\"%s\"", r->id,
	         r->cfg->backend.text, relay_state_names[st], reason);
	relay_drop(r);
	r->state = RELAY_IDLE;
	r->op = RELAY_OP_NONE;
	bool resume = r->above_high;
	r->above_high = false;
	struct smtp_reply rep;
	if (st >= RELAY_CONNECTING && st <= RELAY_LHLO2) {
		relay_lost(&rep, "4.4.1 Backend unavailable, try again later");
		if (op == RELAY_OP_HELLO)
			r->cbs->hello(r->ctx, &rep, 0);
		for (unsigned i = 0; i < unanswered && !r->freeing; i++)
			r->cbs->reply(r->ctx, &rep);
	} else if (st == RELAY_WAIT) {
		relay_lost(&rep, "4.4.2 Backend connection lost, try again later");
		for (unsigned i = 0; i < unanswered && !r->freeing; i++)
			r->cbs->reply(r->ctx, &rep);
	} else if (st == RELAY_DATA_END) {
		for (unsigned i = r->ngot; i < r->nexpect; i++)
			relay_lost(&r->replies[i], "4.4.2 Backend connection lost after the message, "
			                           "try again later");
		r->cbs->data_done(r->ctx, r->replies, r->nexpect);
	} else {
		if (resume && !r->freeing)
			r->cbs->drained(r->ctx);
		if (!r->freeing)
			r->cbs->failed(r->ctx);
	}
}

static void relay_timer_cb(uv_timer_t *t)
{
	relay_fail(t->data, "timeout");
}

static void relay_arm(struct relay *r, unsigned ms)
{
	uv_timer_start(&r->timer, relay_timer_cb, ms, 0);
}

static void relay_write_cb(uv_write_t *req, int status)
{
	struct relay_wbuf *w = req->data;
	struct relay *r = w->conn->r;
	size_t len = w->len;
	free(w);
	if (!r)
		return;
	if (status < 0) {
		relay_fail(r, uv_strerror(status));
		return;
	}
	r->pending -= len;
	if (r->state == RELAY_DATA) {
		/* Only bytes handed to the socket are the backend's to take;
		 * what is still gathered waits for the client. */
		if (r->pending > (r->wcur ? r->wcur->len : 0))
			relay_arm(r, r->cfg->backend_timeout_ms);
		else
			uv_timer_stop(&r->timer);
	}
	if (r->above_high && r->pending < RELAY_LOW_WATER) {
		r->above_high = false;
		r->cbs->drained(r->ctx);
	}
}

static void relay_write_buf(struct relay *r, struct relay_wbuf *w)
{
	uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
	/* Written at once when the socket takes it all: no request and no
	 * callback (libuv re-arms epoll after each completed request). Not
	 * while above the high-water mark: the session then waits for the
	 * drained callback, which only a completed request gives. */
	int done = r->above_high ? 0 : uv_try_write(&r->conn->h.stream, &b, 1);
	if (done == (int)w->len) {
		r->pending -= w->len;
		free(w);
		return;
	}
	if (done > 0) {
		r->pending -= (size_t)done;
		w->len -= (size_t)done;
		memmove(w->data, w->data + done, w->len);
		b = uv_buf_init(w->data, (unsigned)w->len);
	}
	w->conn = r->conn;
	w->req.data = w;
	int rc = uv_write(&w->req, &r->conn->h.stream, &b, 1, relay_write_cb);
	if (rc < 0) {
		r->pending -= w->len;
		free(w);
		relay_fail(r, uv_strerror(rc));
	}
}

static void relay_send(struct relay *r, const char *buf, size_t len)
{
	struct relay_wbuf *w = malloc(sizeof *w + len);
	if (!w) {
		relay_fail(r, "out of memory");
		return;
	}
	memcpy(w->data, buf, len);
	w->len = len;
	r->pending += len;
	relay_write_buf(r, w);
}

static void relay_xtext(char *out, size_t size, const char *in)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (; *in && o + 4 < size; in++) {
		unsigned char c = (unsigned char)*in;
		if (c < 33 || c > 126 || c == '+' || c == '=') {
			out[o++] = '+';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = '\0';
}

static void relay_send_xclient(struct relay *r)
{
	char line[600], helo[300];
	size_t o = (size_t)snprintf(line, sizeof line, "XCLIENT");
	if (r->xattrs & RELAY_XA_ADDR)
		o += (size_t)snprintf(line + o, sizeof line - o, " ADDR=%s%s",
		                      strchr(r->client_ip, ':') ? "IPV6:" : "", r->client_ip);
	if (r->xattrs & RELAY_XA_PORT)
		o += (size_t)snprintf(line + o, sizeof line - o, " PORT=%d", r->client_port);
	if (r->xattrs & RELAY_XA_HELO) {
		relay_xtext(helo, sizeof helo, r->helo);
		o += (size_t)snprintf(line + o, sizeof line - o, " HELO=%s", helo);
	}
	o += (size_t)snprintf(line + o, sizeof line - o, "\r\n");
	r->state = RELAY_XCLIENT;
	relay_arm(r, r->cfg->backend_timeout_ms);
	relay_send(r, line, o);
}

static void relay_send_lhlo(struct relay *r, const char *name, enum relay_state next)
{
	char line[300];
	int n = snprintf(line, sizeof line, "LHLO %s\r\n", name);
	r->caps = 0;
	r->state = next;
	/* connect_timeout covers the connection and greeting; each reply after
	 * that gets the ordinary reply timeout. */
	relay_arm(r, r->cfg->backend_timeout_ms);
	relay_send(r, line, (size_t)n);
}

static void relay_ready(struct relay *r)
{
	r->state = RELAY_READY;
	uv_timer_stop(&r->timer);
	enum relay_op op = r->op;
	r->op = RELAY_OP_NONE;
	if (op == RELAY_OP_HELLO) {
		struct smtp_reply ok;
		smtp_reply_set(&ok, 250, "2.0.0 Ok");
		r->cbs->hello(r->ctx, &ok, r->caps);
	} else if (op == RELAY_OP_COMMAND) {
		r->state = RELAY_WAIT;
		r->inflight = r->nqueued;
		r->data_inflight = r->queued_data;
		r->nqueued = 0;
		r->queued_data = false;
		relay_arm(r, r->cfg->backend_timeout_ms);
		size_t len = r->queued_len;
		r->queued_len = 0;
		relay_send(r, r->queued, len);
	}
}

/* Parses the attribute names of an "XCLIENT ADDR PORT HELO ..." line. */
static unsigned relay_xclient_attrs(const char *text, size_t len)
{
	unsigned attrs = 0;
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = { { "ADDR", RELAY_XA_ADDR }, { "PORT", RELAY_XA_PORT }, { "HELO", RELAY_XA_HELO } };
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *sp = memchr(p, ' ', (size_t)(end - p));
		size_t n = (size_t)((sp ? sp : end) - p);
		for (size_t i = 0; i < 3; i++)
			if (strlen(names[i].name) == n && strncasecmp(p, names[i].name, n) == 0)
				attrs |= names[i].bit;
		p = sp ? sp + 1 : end;
	}
	return attrs;
}

/* A whole reply arrived in r->cur: advance the state machine. */
static void relay_reply_done(struct relay *r)
{
	int code = r->cur.code;
	switch (r->state) {
	case RELAY_GREETING:
		if (code != 220)
			return relay_fail(r, "backend refused the connection");
		return relay_send_lhlo(r, r->cfg->hostname, RELAY_LHLO);
	case RELAY_LHLO:
		if (code != 250)
			return relay_fail(r, "LHLO refused");
		if (r->cfg->xclient && (r->caps & SMTP_EXT_XCLIENT) && r->xattrs)
			return relay_send_xclient(r);
		return relay_ready(r);
	case RELAY_XCLIENT:
		if (code / 100 != 2) {
			log_warn("sess=%s event=xclient_refused code=%d", r->id, code);
			return relay_ready(r);
		}
		/* XCLIENT restarts the session with a new greeting; LHLO again with
		 * the client's own name so the backend records it (Dovecot, Postfix). */
		return relay_send_lhlo(r, r->helo, RELAY_LHLO2);
	case RELAY_LHLO2:
		if (code != 250)
			return relay_fail(r, "LHLO after XCLIENT refused");
		return relay_ready(r);
	case RELAY_WAIT: {
		/* 3xx is only an answer to DATA (354), the last command of a
		 * group; anything else means the backend and mxfront no longer
		 * agree on where they are. */
		bool to_data = r->inflight == 1 && r->data_inflight;
		if (code / 100 == 3 && !(to_data && code == 354))
			return relay_fail(r, "unexpected intermediate reply");
		if (--r->inflight) {
			relay_arm(r, r->cfg->backend_timeout_ms);
		} else {
			uv_timer_stop(&r->timer);
			r->data_inflight = false;
			r->state = to_data && code == 354 ? RELAY_DATA : RELAY_READY;
		}
		r->cbs->reply(r->ctx, &r->cur);
		return;
	}
	case RELAY_DATA_END:
		if (code / 100 == 3)
			return relay_fail(r, "intermediate reply after the final dot");
		r->replies[r->ngot++] = r->cur;
		if (r->ngot < r->nexpect) {
			relay_arm(r, r->cfg->backend_timeout_ms);
			return;
		}
		uv_timer_stop(&r->timer);
		r->state = RELAY_READY;
		r->cbs->data_done(r->ctx, r->replies, r->nexpect);
		return;
	default:
		return relay_fail(r, "reply without a command");
	}
}

/* One reply line (with its ending). Returns -1 once the connection is gone. */
static int relay_line(struct relay *r, const char *line, size_t len, unsigned flags)
{
	int code;
	bool last;
	const char *text;
	size_t textlen;
	if (flags || len < 2 ||
	    smtp_parse_reply_line(line, len - 2, &code, &last, &text, &textlen) < 0) {
		relay_fail(r, "garbage reply");
		return -1;
	}
	if (r->cur.code == 0) {
		r->cur.code = code;
		r->cur.len = 0;
		r->cur.lost = false;
	} else if (r->cur.code != code) {
		relay_fail(r, "reply code changed within a multi-line reply");
		return -1;
	}
	if (r->state == RELAY_LHLO || r->state == RELAY_LHLO2) {
		unsigned ext = smtp_parse_ext(text, textlen);
		r->caps |= ext;
		if (ext == SMTP_EXT_XCLIENT)
			r->xattrs = relay_xclient_attrs(text, textlen);
	}
	smtp_reply_add_line(&r->cur, text, textlen);
	if (!last)
		return 0;
	struct relay_conn *conn = r->conn;
	relay_reply_done(r);
	r->cur.code = 0;
	return (r->conn == conn && !r->freeing) ? 0 : -1;
}

static void relay_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct relay_conn *c = h->data;
	buf->base = c->in + c->inlen;
	buf->len = sizeof c->in - c->inlen;
}

/* Takes every whole reply line read so far. */
static void relay_read_lines(struct relay *r, struct relay_conn *c)
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
		if (!line || relay_line(r, line, linelen, flags) < 0) {
			if (!line)
				relay_fail(r, "reply line too long");
			return;
		}
	}
	memmove(c->in, c->in + off, c->inlen - off);
	c->inlen -= off;
}

static void relay_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct relay_conn *c = stream->data;
	struct relay *r = c->r;
	if (!r || nread == 0)
		return;
	if (nread < 0) {
		relay_fail(r, nread == UV_EOF ? "backend closed the connection" : uv_strerror((int)nread));
		return;
	}
	c->inlen += (size_t)nread;
	/* r stays allocated through the callbacks (relay_free only marks it). */
	r->cbs->batch(r->ctx, true);
	relay_read_lines(r, c);
	r->cbs->batch(r->ctx, false);
}

static void relay_connect_cb(uv_connect_t *req, int status)
{
	struct relay_conn *c = req->data;
	struct relay *r = c->r;
	if (!r)
		return;
	if (status < 0) {
		relay_fail(r, uv_strerror(status));
		return;
	}
	r->state = RELAY_GREETING;
	int rc = uv_read_start(&c->h.stream, relay_alloc_cb, relay_read_cb);
	if (rc < 0)
		relay_fail(r, uv_strerror(rc));
}

static void relay_connect(struct relay *r, enum relay_op op)
{
	struct relay_conn *c = calloc(1, sizeof *c);
	if (!c) {
		r->op = op;
		r->state = RELAY_CONNECTING;
		relay_fail(r, "out of memory");
		return;
	}
	c->r = r;
	c->h.handle.data = c;
	c->connect.data = c;
	r->conn = c;
	r->op = op;
	r->state = RELAY_CONNECTING;
	r->cur.code = 0;
	relay_arm(r, r->cfg->backend_connect_timeout_ms);
	const struct config_addr *a = &r->cfg->backend;
	int rc;
	if (a->unix_path) {
		uv_pipe_init(r->loop, &c->h.pipe, 0);
		uv_pipe_connect(&c->connect, &c->h.pipe, a->unix_path, relay_connect_cb);
		return;
	}
	uv_tcp_init(r->loop, &c->h.tcp);
	uv_tcp_nodelay(&c->h.tcp, 1);
	rc = uv_tcp_connect(&c->connect, &c->h.tcp, (const struct sockaddr *)&a->sa, relay_connect_cb);
	if (rc < 0)
		relay_fail(r, uv_strerror(rc));
}

void relay_hello(struct relay *r, const char *helo)
{
	snprintf(r->helo, sizeof r->helo, "%s", helo);
	if (r->state == RELAY_IDLE) {
		relay_connect(r, RELAY_OP_HELLO);
		return;
	}
	struct smtp_reply ok;
	smtp_reply_set(&ok, 250, "2.0.0 Ok");
	r->cbs->hello(r->ctx, &ok, r->caps);
}

static void relay_gather(struct relay *r, const char *buf, size_t len);

void relay_command(struct relay *r, const char *line, size_t len)
{
	struct smtp_reply rep;
	bool is_data = len >= 4 && strncasecmp(line, "DATA", 4) == 0;
	bool connecting = r->state >= RELAY_CONNECTING && r->state <= RELAY_LHLO2;
	if ((r->state == RELAY_READY || r->state == RELAY_WAIT) && !r->data_inflight) {
		/* Gathered with the rest of this round's output: a pipelined
		 * group leaves in one write (relay_flush). */
		r->state = RELAY_WAIT;
		r->inflight++;
		r->data_inflight = is_data;
		relay_arm(r, r->cfg->backend_timeout_ms);
		relay_gather(r, line, len);
		return;
	}
	if ((r->state == RELAY_IDLE && len >= 4 && strncasecmp(line, "MAIL", 4) == 0) ||
	    (connecting && r->op == RELAY_OP_COMMAND && !r->queued_data)) {
		if (growbuf_append(&r->queued, &r->queued_len, &r->queued_cap, line, len) < 0) {
			relay_lost(&rep, "4.3.0 Out of memory, try again later");
			r->cbs->reply(r->ctx, &rep);
			return;
		}
		r->nqueued++;
		r->queued_data = is_data;
		if (r->state == RELAY_IDLE)
			relay_connect(r, RELAY_OP_COMMAND);
		return;
	}
	if (r->state == RELAY_IDLE && len >= 4 && strncasecmp(line, "RSET", 4) == 0) {
		smtp_reply_set(&rep, 250, "2.0.0 Ok");
		r->cbs->reply(r->ctx, &rep);
		return;
	}
	/* Any other command on a broken connection: its transaction is gone. */
	relay_lost(&rep, "4.4.2 Backend connection lost, try again later");
	r->cbs->reply(r->ctx, &rep);
}

void relay_flush(struct relay *r)
{
	struct relay_wbuf *w = r->wcur;
	if (!w || !r->conn)
		return;
	r->wcur = NULL;
	relay_write_buf(r, w);
	if (r->conn && r->state == RELAY_DATA && r->pending)
		relay_arm(r, r->cfg->backend_timeout_ms);
}

/* Appends to the output being gathered; a full chunk is written at once. */
static void relay_gather(struct relay *r, const char *buf, size_t len)
{
	while (len && r->conn) {
		if (!r->wcur) {
			r->wcur = malloc(sizeof *r->wcur + RELAY_CHUNK);
			if (!r->wcur) {
				relay_fail(r, "out of memory");
				return;
			}
			r->wcur->len = 0;
		}
		size_t n = RELAY_CHUNK - r->wcur->len;
		if (n > len)
			n = len;
		memcpy(r->wcur->data + r->wcur->len, buf, n);
		r->wcur->len += n;
		r->pending += n;
		buf += n;
		len -= n;
		if (r->wcur->len == RELAY_CHUNK)
			relay_flush(r);
	}
}

void relay_data(struct relay *r, const char *buf, size_t len)
{
	if (r->state != RELAY_DATA)
		return;
	relay_gather(r, buf, len);
	if (r->pending > RELAY_HIGH_WATER)
		r->above_high = true;
}

void relay_data_end(struct relay *r, unsigned nrcpt)
{
	free(r->replies);
	r->replies = calloc(nrcpt ? nrcpt : 1, sizeof *r->replies);
	r->nexpect = nrcpt;
	r->ngot = 0;
	if (r->state != RELAY_DATA || !r->replies) {
		if (r->replies) {
			for (unsigned i = 0; i < nrcpt; i++)
				relay_lost(&r->replies[i], "4.4.2 Backend connection lost, try again later");
			r->cbs->data_done(r->ctx, r->replies, nrcpt);
		} else {
			relay_fail(r, "out of memory");
		}
		return;
	}
	relay_data(r, ".\r\n", 3);
	r->state = RELAY_DATA_END;
	relay_flush(r);
	if (r->conn)
		relay_arm(r, r->cfg->backend_timeout_ms);
}

void relay_abort(struct relay *r)
{
	if (r->conn)
		log_info("sess=%s event=backend_abort stage=%s", r->id, relay_state_names[r->state]);
	relay_drop(r);
	r->state = RELAY_IDLE;
	r->op = RELAY_OP_NONE;
	relay_forget_commands(r);
	if (r->above_high) {
		r->above_high = false;
		r->cbs->drained(r->ctx);
	}
}

size_t relay_pending(const struct relay *r)
{
	return r->pending;
}

struct relay *relay_new(uv_loop_t *loop, const struct config *cfg, const struct relay_cbs *cbs,
                        void *ctx, const char *id, const char *client_ip, int client_port)
{
	struct relay *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->loop = loop;
	r->cfg = cfg;
	r->cbs = cbs;
	r->ctx = ctx;
	r->id = id;
	r->client_ip = client_ip;
	r->client_port = client_port;
	uv_timer_init(loop, &r->timer);
	r->timer.data = r;
	return r;
}

static void relay_timer_close_cb(uv_handle_t *h)
{
	struct relay *r = h->data;
	free(r->replies);
	free(r->queued);
	free(r);
}

void relay_free(struct relay *r)
{
	if (!r)
		return;
	r->freeing = true;
	relay_drop(r);
	uv_close((uv_handle_t *)&r->timer, relay_timer_close_cb);
}
