/* smtp_data: the message part of the SMTP state machine: the backend's
 * 354, the message lines on their way to the backend (Received header, bare
 * CR/LF, size and line limits, the end of data) and its per-recipient
 * verdicts. The DATA command itself is smtp_cmd.c's. Builds on smtp_core.c
 * only; never does I/O, never keeps a line. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "smtp.h"
#include "smtp_data.h"
#include "smtp_int.h"

static void smtp_data_received(struct smtp *s)
{
	/* Every field is bounded (HELO 255, address 512, names 253, TLS info
	 * 160), so the header always fits: it is never dropped. */
	char date[64], hdr[2048];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	bool v6 = strchr(s->client_ip, ':') != NULL;
	char with[200];
	/* RFC 3848 "ESMTPS"; the TLS details as a comment (RFC 8314 4.3 style). */
	if (s->tls)
		snprintf(with, sizeof with, "%s (%s)", s->esmtp ? "ESMTPS" : "SMTPS", s->tls_info);
	else
		snprintf(with, sizeof with, "%s", s->esmtp ? "ESMTP" : "SMTP");
	int n;
	/* RFC 5321 4.4; "for" only names a single recipient, never a list. */
	if (s->nrcpt == 1)
		n = snprintf(hdr, sizeof hdr,
		             "Received: from %s ([%s%s])\r\n\tby %s (mxfront) with %s id %s.%u\r\n"
		             "\tfor <%s>; %s\r\n",
		             s->helo, v6 ? "IPv6:" : "", s->client_ip, s->cfg->hostname, with, s->id,
		             s->ntx, s->rcpts[0], date);
	else
		n = snprintf(hdr, sizeof hdr,
		             "Received: from %s ([%s%s])\r\n\tby %s (mxfront) with %s id %s.%u;\r\n"
		             "\t%s\r\n",
		             s->helo, v6 ? "IPv6:" : "", s->client_ip, s->cfg->hostname, with, s->id,
		             s->ntx, date);
	assert(n > 0 && (size_t)n < sizeof hdr);
	s->ops->backend_data(s->ctx, hdr, (size_t)n);
}

void smtp_data_refuse(struct smtp *s, int code, const char *text)
{
	if (s->bad.code)
		return;
	smtp_reply_set(&s->bad, code, text);
	if (!s->backend_lost)
		s->ops->backend_abort(s->ctx);
	s->backend_lost = true;
}

static void smtp_data_log(struct smtp *s, const struct smtp_reply *r, unsigned delivered)
{
	char from[300], reply[300], text[SMTP_REPLY_TEXT_MAX + 8];
	int n = snprintf(text, sizeof text, "%d %s", r->code, r->text);
	metrics_message(r->code, delivered, s->nrcpt, s->size);
	log_info("sess=%s event=transaction id=%s.%u from=<%s> rcpts_ok=%u rcpts_refused=%u size=%llu "
	         "delivered=%u reply=%s",
	         s->id, s->id, s->ntx, log_quote(from, sizeof from, s->from, strlen(s->from)),
	         s->nrcpt, s->refused, (unsigned long long)s->size, delivered,
	         log_quote(reply, sizeof reply, text, n > 0 ? (size_t)n : 0));
}

static void smtp_data_finish(struct smtp *s, const struct smtp_reply *r, unsigned delivered)
{
	smtp_send_reply(s, r);
	smtp_data_log(s, r, delivered);
	smtp_tx_reset(s);
}

/* [smtp] bare_newline = normalize: every bare CR or LF leaves as CRLF, so
 * the backend still gets canonical lines. The end of DATA is not affected:
 * only a real CRLF.CRLF ends it, and mxfront never forwards that line. So
 * any line that comes out of this as a lone "." is an anomaly and is
 * stuffed to "..": the backend must not see an end of data that mxfront
 * did not see. */
static void smtp_data_normalized(struct smtp *s, const char *line, size_t len)
{
	char out[SMTP_TEXT_LINE_MAX * 3];
	size_t o = 0;
	bool fresh = true;
	for (size_t i = 0; i < len; i++) {
		if (fresh && line[i] == '.' &&
		    (i + 1 == len || line[i + 1] == '\r' || line[i + 1] == '\n'))
			out[o++] = '.';
		fresh = false;
		if (line[i] == '\r' && i + 1 < len && line[i + 1] == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			i++;
		} else if (line[i] == '\r' || line[i] == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			fresh = true;
		} else {
			out[o++] = line[i];
		}
	}
	/* Adding CRs may push a line past the limit the backend may enforce. */
	size_t start = 0;
	for (size_t i = 1; i < o; i++) {
		if (out[i] == '\n') {
			if (i + 1 - start > SMTP_TEXT_LINE_MAX) {
				smtp_data_refuse(s, 554, "5.6.0 Message has a line longer than 1000 octets");
				return;
			}
			start = i + 1;
		}
	}
	s->ops->backend_data(s->ctx, out, o);
}

void smtp_data_line(struct smtp *s, const char *line, size_t len, unsigned flags)
{
	bool end = len == 3 && memcmp(line, ".\r\n", 3) == 0 && s->prev_crlf && flags == 0;
	bool after_bare = !s->prev_crlf;
	if (s->received_due) {
		s->received_due = false;
		if (!s->bad.code) /* refused already: nothing more goes to the backend */
			smtp_data_received(s);
	}
	s->prev_crlf = !(flags & SMTP_LINE_BARE_LF);
	if (end) {
		if (s->bad.code) {
			smtp_data_finish(s, &s->bad, 0);
			return;
		}
		smtp_await(s, SMTP_WAIT_DATA_END, NULL);
		s->ops->backend_data_end(s->ctx, s->nrcpt);
		return;
	}
	/* RFC 1870: the size is of the message, without dot-stuffing. */
	s->size += len - (line[0] == '.');
	bool normalize = s->cfg->bare_newline_normalize && !(flags & SMTP_LINE_TOO_LONG) &&
	                 (flags & (SMTP_LINE_BARE_LF | SMTP_LINE_BARE_CR));
	if (flags & SMTP_LINE_TOO_LONG)
		smtp_data_refuse(s, 554, "5.6.0 Message has a line longer than 1000 octets");
	else if ((flags & (SMTP_LINE_BARE_LF | SMTP_LINE_BARE_CR)) && !normalize)
		smtp_data_refuse(s, 554, "5.6.0 Message has a bare CR or LF (RFC 5321 2.3.8)");
	else if (flags & SMTP_LINE_NUL)
		smtp_data_refuse(s, 554, "5.6.0 Message has a NUL byte");
	else if (s->size > s->cfg->max_message_size)
		smtp_data_refuse(s, 552, "5.3.4 Message size exceeds fixed maximum message size");
	if (s->bad.code)
		return;
	if (normalize || after_bare)
		smtp_data_normalized(s, line, len);
	else
		s->ops->backend_data(s->ctx, line, len);
}

unsigned smtp_map_lmtp(const struct smtp_reply *r, unsigned n, struct smtp_reply *out)
{
	unsigned ok = 0;
	const struct smtp_reply *refusal = NULL;
	bool odd = false;
	for (unsigned i = 0; i < n; i++) {
		if (r[i].code / 100 == 2)
			ok++;
		else if (r[i].code / 100 != 4 && r[i].code / 100 != 5)
			odd = true; /* not a verdict: never passed on */
		else if (!refusal || (refusal->code / 100 == 5 && r[i].code / 100 == 4))
			refusal = &r[i];
	}
	if (ok == n && n > 0)
		smtp_reply_set(out, 250, "2.0.0 Ok: delivered");
	else if (ok == 0 && odd)
		smtp_reply_set(out, 451, "4.4.2 Backend protocol error, try again later");
	else if (ok == 0 && refusal)
		*out = *refusal;
	else
		smtp_reply_set(out, 451, "4.3.0 Delivered to some recipients only, try again later");
	return ok;
}

void smtp_backend_data_done(struct smtp *s, const struct smtp_reply *replies, unsigned n)
{
	if (smtp_awaiting(s) != SMTP_WAIT_DATA_END)
		return;
	smtp_await_pop(s);
	struct smtp_reply out;
	unsigned ok = smtp_map_lmtp(replies, n, &out);
	if (n != s->nrcpt) {
		/* Every recipient must have its own answer; anything else is not a 250. */
		smtp_reply_set(&out, 451, "4.4.2 Backend protocol error, try again later");
	}
	if (ok && ok < n) {
		/* A retry of the whole message may duplicate it for these. */
		for (unsigned i = 0; i < n && i < s->nrcpt; i++) {
			char rcpt[300], reply[300];
			log_warn("sess=%s event=partial_delivery id=%s.%u rcpt=%s delivered=%s reply=%s",
			         s->id, s->id, s->ntx,
			         log_quote(rcpt, sizeof rcpt, s->rcpts[i], strlen(s->rcpts[i])),
			         replies[i].code / 100 == 2 ? "yes" : "no",
			         log_quote(reply, sizeof reply, replies[i].text, replies[i].len));
		}
	}
	smtp_data_finish(s, &out, ok);
}

void smtp_data_answered(struct smtp *s, const struct smtp_reply *r)
{
	struct smtp_reply odd;
	if (r->code == 354 && (s->state != SMTP_STATE_MAIL || s->nrcpt == 0)) {
		/* DATA went out pipelined and the backend took it although mxfront
		 * holds no accepted recipient (its acceptance was lost on the way):
		 * that connection's transaction is not ours, drop it. */
		s->ops->backend_abort(s->ctx);
		if (s->state == SMTP_STATE_MAIL) {
			s->backend_lost = true;
			smtp_error(s, "554 5.5.1 No valid recipients");
		} else {
			smtp_send(s, "451 4.4.2 Backend protocol error, try again later");
		}
		return;
	}
	if (r->code == 354) {
		s->state = SMTP_STATE_DATA;
		s->prev_crlf = true;
		s->size = 0;
		s->bad.code = 0;
		smtp_send(s, "354 End data with <CR><LF>.<CR><LF>");
		/* Sent with the first line: header and message then leave for
		 * the backend together (a small one with its final dot too). */
		s->received_due = true;
		return;
	}
	if (r->code / 100 == 2 || r->code / 100 == 3) {
		smtp_reply_set(&odd, 451, "4.4.2 Backend protocol error, try again later");
		r = &odd;
	}
	smtp_send_reply(s, r);
}
