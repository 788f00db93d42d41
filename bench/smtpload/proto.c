/* proto: the SMTP client side of one connection. Every command queued
 * pushes the reply it awaits on a ring, so pipelined replies (RFC 2920) are
 * matched in order; a reply decides the next commands. Counts outcomes in the
 * worker's stats. Never does I/O itself: conn.c writes and closes. */
#include "proto.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "tlsc.h"
#include "worker.h"

int proto_init(struct proto *p, unsigned rcpts)
{
	memset(p, 0, sizeof *p);
	/* Most in flight: DOT, then MAIL, every RCPT, DATA (or QUIT) of the next. */
	p->qcap = rcpts + 8;
	p->q = calloc(p->qcap, sizeof *p->q);
	return p->q ? 0 : -1;
}

void proto_fini(struct proto *p)
{
	free(p->q);
	p->q = NULL;
}

void proto_reset(struct proto *p, const char *sni, size_t slot)
{
	struct proto_wait *q = p->q;
	unsigned qcap = p->qcap;
	memset(p, 0, sizeof *p);
	p->q = q;
	p->qcap = qcap;
	p->sni = sni;
	p->sni_slot = slot;
}

bool proto_waiting(const struct conn *c)
{
	return c->p.qlen > 0;
}

static void proto_send(struct conn *c, const char *s, size_t len, enum proto_exp kind,
                       uint64_t t0)
{
	struct proto *p = &c->p;
	assert(p->qlen < p->qcap);
	p->q[(p->qhead + p->qlen) % p->qcap] = (struct proto_wait){(uint8_t)kind, t0};
	p->qlen++;
	conn_puts(c, s, len);
}

#define PROTO_SEND(c, lit, kind) proto_send((c), lit, sizeof lit - 1, (kind), 0)

static struct proto_wait proto_pop(struct proto *p)
{
	struct proto_wait w = p->q[p->qhead];
	p->qhead = (p->qhead + 1) % p->qcap;
	p->qlen--;
	return w;
}

/* A reply that ends this step of the dialogue badly: counted by its code. */
static void proto_count(struct conn *c, unsigned code)
{
	c->w->st->code[code]++;
}

static void proto_fail(struct conn *c, unsigned code)
{
	proto_count(c, code);
	conn_close(c, CONN_CLOSE_FAILED);
}

static void proto_ehlo(struct conn *c)
{
	const struct run *r = c->w->run;
	c->p.pipelining = c->p.starttls_offered = c->p.size_offered = false;
	proto_send(c, r->ehlo_cmd, r->ehlo_len, PROTO_EXP_EHLO, 0);
}

static void proto_quit(struct conn *c)
{
	c->p.quit_sent = true;
	PROTO_SEND(c, "QUIT\r\n", PROTO_EXP_QUIT);
}

static void proto_send_rcpt(struct conn *c)
{
	char buf[MSG_ADDR_MAX + 16];
	struct worker *w = c->w;
	memcpy(buf, "RCPT TO:<", 9);
	size_t n = 9 + msg_rcpt_format(w->run->rcpt, w->rcpt_seq++, buf + 9);
	memcpy(buf + n, ">\r\n", 3);
	c->p.rcpt_sent++;
	proto_send(c, buf, n + 3, PROTO_EXP_RCPT, 0);
}

/* Starts a transaction if this connection may send another message and one is
 * left: MAIL, and with PIPELINING every RCPT and DATA in the same write. */
static bool proto_begin(struct conn *c)
{
	struct proto *p = &c->p;
	const struct run *r = c->w->run;
	if (r->o->per_conn && p->msgs >= r->o->per_conn)
		return false;
	if (!worker_claim(c->w))
		return false;
	p->msgs++;
	p->txn_t0 = uv_hrtime();
	p->rcpt_sent = p->rcpt_ok = 0;
	p->txn_failed = false;
	if (p->size_offered)
		proto_send(c, r->mail_cmd_size, r->mail_size_len, PROTO_EXP_MAIL, 0);
	else
		proto_send(c, r->mail_cmd, r->mail_len, PROTO_EXP_MAIL, 0);
	if (p->pipelining) {
		while (p->rcpt_sent < r->o->rcpts)
			proto_send_rcpt(c);
		PROTO_SEND(c, "DATA\r\n", PROTO_EXP_DATA);
	}
	return true;
}

static void proto_next(struct conn *c)
{
	if (!proto_begin(c))
		proto_quit(c);
}

static void proto_established(struct conn *c)
{
	c->p.established = true;
	if (c->p.tls_done)
		tlsc_save(c->tls);
	if (c->w->run->o->idle) {
		c->p.idle = true;
		worker_established(c->w, c);
		return;
	}
	worker_established(c->w, c);
	proto_next(c);
}

/* RFC 1869 4.3: a keyword per line of the EHLO reply. */
static void proto_feature(struct conn *c, const char *s, size_t len)
{
	static const struct {
		const char *kw;
		size_t len;
	} kws[] = {{"PIPELINING", 10}, {"STARTTLS", 8}, {"SIZE", 4}};
	for (unsigned i = 0; i < 3; i++) {
		if (len < kws[i].len || strncasecmp(s, kws[i].kw, kws[i].len) != 0 ||
		    (len > kws[i].len && s[kws[i].len] != ' '))
			continue;
		if (i == 0)
			c->p.pipelining = c->w->run->o->pipelining;
		else if (i == 1)
			c->p.starttls_offered = true;
		else
			c->p.size_offered = true;
	}
}

/* ---- one handler per awaited reply ---- */

static void proto_on_greeting(struct conn *c, unsigned code)
{
	if (code != 220) {
		proto_fail(c, code);
		return;
	}
	proto_ehlo(c);
}

static void proto_on_ehlo(struct conn *c, unsigned code)
{
	if (code != 250) {
		proto_fail(c, code);
		return;
	}
	if (!c->w->run->o->starttls || c->p.tls_done) {
		proto_established(c);
		return;
	}
	if (!c->p.starttls_offered) {
		conn_close(c, STATS_ERR_NO_STARTTLS);
		return;
	}
	PROTO_SEND(c, "STARTTLS\r\n", PROTO_EXP_STARTTLS);
}

static void proto_on_starttls(struct conn *c, unsigned code)
{
	if (code != 220) {
		proto_fail(c, code);
		return;
	}
	/* RFC 3207 5 (CVE-2011-0411 class): nothing may follow the 220 in plaintext. */
	if (conn_rx_pending(c) != 0) {
		conn_close(c, STATS_ERR_PROTOCOL);
		return;
	}
	c->p.t_starttls = uv_hrtime();
	conn_start_tls(c);
}

void proto_on_tls_done(struct conn *c)
{
	struct stats *st = c->w->st;
	stats_hist_add(&st->tls_lat, uv_hrtime() - c->p.t_starttls);
	st->handshakes++;
	if (tlsc_resumed(c->tls))
		st->resumed++;
	c->p.tls_done = true;
	proto_ehlo(c); /* RFC 3207 4.2: forget what was learnt before TLS */
}

static void proto_rset(struct conn *c)
{
	PROTO_SEND(c, "RSET\r\n", PROTO_EXP_RSET);
}

static void proto_on_mail(struct conn *c, unsigned code)
{
	if (code / 100 != 2) {
		proto_count(c, code);
		c->p.txn_failed = true;
		if (!c->p.pipelining)
			proto_rset(c);
		return;
	}
	if (!c->p.pipelining)
		proto_send_rcpt(c);
}

static void proto_on_rcpt(struct conn *c, unsigned code)
{
	struct proto *p = &c->p;
	if (code / 100 == 2) {
		p->rcpt_ok++;
		c->w->st->rcpt_ok++;
	} else {
		proto_count(c, code);
	}
	if (p->pipelining)
		return;
	if (p->rcpt_sent < c->w->run->o->rcpts)
		proto_send_rcpt(c);
	else if (p->rcpt_ok > 0)
		PROTO_SEND(c, "DATA\r\n", PROTO_EXP_DATA);
	else
		proto_rset(c);
}

static void proto_on_data(struct conn *c, unsigned code)
{
	struct proto *p = &c->p;
	if (code != 354) {
		proto_count(c, code);
		proto_rset(c);
		return;
	}
	conn_put_body(c);
	assert(p->qlen < p->qcap);
	p->q[(p->qhead + p->qlen) % p->qcap] = (struct proto_wait){PROTO_EXP_DOT, p->txn_t0};
	p->qlen++;
	/* RFC 2920 3.1: the message may be followed by the next group. */
	if (c->w->run->o->pipeline_dot && p->pipelining) {
		p->next_started = proto_begin(c);
		if (!p->next_started)
			proto_quit(c);
	}
}

static void proto_on_dot(struct conn *c, unsigned code, uint64_t t0)
{
	struct stats *st = c->w->st;
	if (code == 250) { /* RFC 5321 4.3.2: the only success after the dot */
		st->sent++;
		st->bytes += c->w->run->msg->size;
		stats_hist_add(&st->msg_lat, uv_hrtime() - t0);
	} else {
		proto_count(c, code);
	}
	if (c->p.next_started)
		c->p.next_started = false;
	else if (!c->p.quit_sent)
		proto_next(c);
}

static void proto_on_rset(struct conn *c, unsigned code)
{
	if (code / 100 != 2) {
		proto_fail(c, code);
		return;
	}
	proto_next(c);
}

static void proto_dispatch(struct conn *c, struct proto_wait w, unsigned code)
{
	switch ((enum proto_exp)w.kind) {
	case PROTO_EXP_GREETING:
		proto_on_greeting(c, code);
		break;
	case PROTO_EXP_EHLO:
		proto_on_ehlo(c, code);
		break;
	case PROTO_EXP_STARTTLS:
		proto_on_starttls(c, code);
		break;
	case PROTO_EXP_MAIL:
		proto_on_mail(c, code);
		break;
	case PROTO_EXP_RCPT:
		proto_on_rcpt(c, code);
		break;
	case PROTO_EXP_DATA:
		proto_on_data(c, code);
		break;
	case PROTO_EXP_DOT:
		proto_on_dot(c, code, w.t0);
		break;
	case PROTO_EXP_RSET:
		proto_on_rset(c, code);
		break;
	case PROTO_EXP_QUIT:
		conn_finish(c);
		break;
	}
}

void proto_on_connected(struct conn *c)
{
	c->p.q[(c->p.qhead + c->p.qlen) % c->p.qcap] = (struct proto_wait){PROTO_EXP_GREETING, 0};
	c->p.qlen++;
}

void proto_on_line(struct conn *c, const char *line, size_t len)
{
	struct proto *p = &c->p;
	if (len < 3 || (unsigned)(line[0] - '0') > 9 || (unsigned)(line[1] - '0') > 9 ||
	    (unsigned)(line[2] - '0') > 9 || (len > 3 && line[3] != ' ' && line[3] != '-')) {
		conn_close(c, STATS_ERR_PROTOCOL);
		return;
	}
	unsigned code = (unsigned)((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
	if (p->qlen > 0 && p->q[p->qhead].kind == PROTO_EXP_EHLO && len > 4)
		proto_feature(c, line + 4, len - 4);
	if (len > 3 && line[3] == '-')
		return; /* continuation: the last line decides */
	if (p->qlen == 0) {
		/* Unsolicited: a 421 before closing (RFC 5321 3.8), else garbage. */
		if (code == 421)
			proto_fail(c, code);
		else
			conn_close(c, STATS_ERR_PROTOCOL);
		return;
	}
	struct proto_wait w = proto_pop(p);
	if (code == 421 && w.kind != PROTO_EXP_QUIT) {
		proto_fail(c, code); /* the server is closing: no QUIT */
		return;
	}
	proto_dispatch(c, w, code);
}

void proto_on_eof(struct conn *c)
{
	/* Closing after QUIT is fine, not before an earlier reply came. */
	const struct proto *p = &c->p;
	bool quitting = p->quit_sent &&
	                (p->qlen == 0 || (p->qlen == 1 && p->q[p->qhead].kind == PROTO_EXP_QUIT));
	conn_close(c, quitting ? CONN_CLOSE_OK : STATS_ERR_CLOSED);
}

void proto_quit_idle(struct conn *c)
{
	if (!c->p.idle || c->p.quit_sent || c->state != CONN_OPEN)
		return;
	c->p.idle = false;
	proto_quit(c);
	conn_flush(c);
	conn_expect(c);
}
