/* smtp_core: what every part of the SMTP state machine builds on (see
 * smtp_int.h): its lifetime, replies and the error limit, the queue of
 * awaited backend answers, the transaction's reset, the state queries and
 * the session's first and last words. Calls no other smtp file; never
 * does I/O. */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "smtp.h"
#include "smtp_int.h"

/* ---- replies ---- */

void smtp_send(struct smtp *s, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof buf - 3)
		n = (int)sizeof buf - 3;
	buf[n++] = '\r';
	buf[n++] = '\n';
	s->ops->reply(s->ctx, buf, (size_t)n);
}

/* Formats R for the client, adding a generic enhanced status code to lines
 * without one (RFC 2034: every reply carries one). */
void smtp_send_reply(struct smtp *s, const struct smtp_reply *r)
{
	/* Worst case: every text byte a line of its own, each with "NNN-c.0.0 "
	 * and CRLF added: 13 bytes of overhead per line. */
	char buf[SMTP_REPLY_TEXT_MAX * 14 + 16];
	size_t o = 0;
	const char *p = r->text, *end = r->text + r->len;
	for (;;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *eol = nl ? nl : end;
		size_t len = (size_t)(eol - p);
		char sep = nl ? '-' : ' ';
		/* A reply line stays within 512 octets (RFC 5321 4.5.3.1.5). */
		if (len > SMTP_COMMAND_LINE_MAX - 14)
			len = SMTP_COMMAND_LINE_MAX - 14;
		int n;
		if (smtp_enhanced_code_len(p, len, r->code))
			n = snprintf(buf + o, sizeof buf - o, "%d%c%.*s\r\n", r->code, sep, (int)len, p);
		else
			n = snprintf(buf + o, sizeof buf - o, "%d%c%d.0.0 %.*s\r\n", r->code, sep,
			             r->code / 100, (int)len, p);
		assert(n > 0 && (size_t)n < sizeof buf - o);
		o += (size_t)n;
		if (!nl)
			break; /* the last line, even an empty one, ends the reply */
		p = nl + 1;
	}
	s->ops->reply(s->ctx, buf, o);
}

void smtp_close(struct smtp *s, const char *reason)
{
	s->state = SMTP_STATE_CLOSED;
	s->ops->close(s->ctx, reason);
}

void smtp_error(struct smtp *s, const char *reply)
{
	smtp_send(s, "%s", reply);
	if (++s->errors >= s->cfg->max_errors && s->state != SMTP_STATE_CLOSED) {
		log_info("sess=%s event=error_limit errors=%u", s->id, s->errors);
		smtp_send(s, "421 4.7.0 %s Too many errors, closing connection", s->cfg->hostname);
		smtp_close(s, "error_limit");
	}
}

/* ---- awaited answers ---- */

void smtp_await(struct smtp *s, enum smtp_wait what, char *rcpt)
{
	assert(s->qlen < SMTP_PIPE_MAX);
	struct smtp_await *a = &s->q[(s->qhead + s->qlen++) % SMTP_PIPE_MAX];
	a->what = what;
	a->ends_group = !s->group_open;
	a->rcpt = rcpt;
	if (what == SMTP_WAIT_RCPT)
		s->rcpts_waiting++;
}

enum smtp_wait smtp_awaiting(const struct smtp *s)
{
	return s->qlen ? s->q[s->qhead].what : SMTP_WAIT_NONE;
}

struct smtp_await smtp_await_pop(struct smtp *s)
{
	struct smtp_await a = s->q[s->qhead];
	s->qhead = (s->qhead + 1) % SMTP_PIPE_MAX;
	s->qlen--;
	if (a.what == SMTP_WAIT_RCPT)
		s->rcpts_waiting--;
	return a;
}

bool smtp_defer(struct smtp *s)
{
	if (!s->qlen)
		return false;
	s->deferring = true;
	return true;
}

static bool smtp_pipelining(const struct smtp *s)
{
	return s->caps_known && (s->caps & SMTP_EXT_PIPELINING);
}

/* ---- the transaction ---- */

void smtp_tx_reset(struct smtp *s)
{
	for (unsigned i = 0; i < s->nrcpt; i++)
		free(s->rcpts[i]);
	s->nrcpt = 0;
	s->refused = 0;
	s->from[0] = '\0';
	s->backend_tx = false;
	s->backend_lost = false;
	s->tx_utf8 = false;
	s->size = 0;
	s->bad.code = 0;
	s->received_due = false;
	if (s->state == SMTP_STATE_MAIL || s->state == SMTP_STATE_DATA)
		s->state = SMTP_STATE_READY;
}

/* ---- what the session asks ---- */

bool smtp_busy(const struct smtp *s)
{
	if (s->deferred)
		return true;
	if (!s->qlen)
		return false;
	const struct smtp_await *last = &s->q[(s->qhead + s->qlen - 1) % SMTP_PIPE_MAX];
	return !smtp_pipelining(s) || s->qlen >= SMTP_PIPE_MAX || last->ends_group;
}

bool smtp_waiting(const struct smtp *s)
{
	return s->qlen > 0;
}

bool smtp_idle(const struct smtp *s)
{
	return !s->qlen && !s->deferred &&
	       (s->state == SMTP_STATE_GREETED || s->state == SMTP_STATE_READY);
}

bool smtp_delivering(const struct smtp *s)
{
	return smtp_awaiting(s) == SMTP_WAIT_DATA_END;
}

bool smtp_in_data(const struct smtp *s)
{
	return s->state == SMTP_STATE_DATA;
}

unsigned smtp_commands(const struct smtp *s)
{
	return s->commands;
}

void smtp_set_tls_available(struct smtp *s, bool available)
{
	s->tls_available = available;
}

/* ---- the first and last words ---- */

void smtp_greet(struct smtp *s)
{
	smtp_send(s, "220 %s ESMTP mxfront", s->cfg->hostname);
}

void smtp_goodbye(struct smtp *s, const char *enhanced, const char *text, const char *reason)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	if (s->state == SMTP_STATE_DATA && !s->backend_lost)
		s->ops->backend_abort(s->ctx);
	smtp_send(s, "421 %s %s %s", enhanced, s->cfg->hostname, text);
	smtp_close(s, reason);
}

void smtp_early_talker(struct smtp *s)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	smtp_send(s, "554 5.5.0 %s SMTP synchronization error: talked before the greeting",
	          s->cfg->hostname);
	smtp_close(s, "early_talker");
}

void smtp_refuse(struct smtp *s, const char *why)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	smtp_send(s, "421 4.7.0 %s %s", s->cfg->hostname, why);
	smtp_close(s, "refused");
}

/* ---- lifetime ---- */

struct smtp *smtp_new(const struct config *cfg, const struct smtp_ops *ops, void *ctx,
                      const char *id, const char *client_ip)
{
	struct smtp *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->cfg = cfg;
	s->ops = ops;
	s->ctx = ctx;
	s->id = id;
	s->client_ip = client_ip;
	s->state = SMTP_STATE_GREETED;
	return s;
}

void smtp_free(struct smtp *s)
{
	if (!s)
		return;
	smtp_tx_reset(s);
	while (s->qlen)
		free(smtp_await_pop(s).rcpt);
	free(s->rcpts);
	free(s);
}
