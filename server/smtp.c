/* smtp: the SMTP server state machine and its command table.
 * Fed whole lines by the session and answers by the relay; replies and
 * backend actions leave only through struct smtp_ops. Never does I/O, never
 * keeps a pointer to a line it was fed. */
#include "smtp.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
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

void smtp_error(struct smtp *s, const char *reply)
{
	smtp_send(s, "%s", reply);
	if (++s->errors >= s->cfg->max_errors && s->state != SMTP_STATE_CLOSED) {
		log_info("sess=%s event=error_limit errors=%u", s->id, s->errors);
		smtp_send(s, "421 4.7.0 %s Too many errors, closing connection", s->cfg->hostname);
		s->state = SMTP_STATE_CLOSED;
		s->ops->close(s->ctx, "error_limit");
	}
}

/* ---- awaited answers ---- */

/* Records that an answer of kind WHAT is awaited; call before the op that
 * asks for it, since the answer may come before the op returns. */
void smtp_await(struct smtp *s, enum smtp_wait what, char *rcpt)
{
	assert(s->qlen < SMTP_PIPE_MAX);
	struct smtp_await *a = &s->q[(s->qhead + s->qlen++) % SMTP_PIPE_MAX];
	a->what = what;
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

/* A local reply is about to be given while backend answers are awaited:
 * the line is set aside instead. Returns true when it was. */
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

/* ---- transaction ---- */

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

void smtp_log_tx(struct smtp *s, const struct smtp_reply *r, unsigned delivered)
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

/* ---- EHLO / HELO ---- */

static void smtp_send_hello(struct smtp *s)
{
	if (!s->esmtp) {
		smtp_send(s, "250 %s", s->cfg->hostname);
		return;
	}
	char buf[1024];
	/* The first line stays within 512 octets (RFC 5321 4.5.3.1.5) whatever
	 * the client called itself. */
	int n = snprintf(buf, sizeof buf,
	                 "250-%s Hello %.160s [%s]\r\n"
	                 "250-PIPELINING\r\n"
	                 "250-SIZE %llu\r\n"
	                 "250-8BITMIME\r\n"
	                 "%s%s%s"
	                 "250 ENHANCEDSTATUSCODES\r\n",
	                 s->cfg->hostname, s->helo, s->client_ip,
	                 (unsigned long long)s->cfg->max_message_size,
	                 (s->tls_available && !s->tls) ? "250-STARTTLS\r\n" : "",
	                 (s->caps & SMTP_EXT_SMTPUTF8) ? "250-SMTPUTF8\r\n" : "",
	                 (s->caps & SMTP_EXT_DSN) ? "250-DSN\r\n" : "");
	assert(n > 0 && (size_t)n < sizeof buf);
	s->ops->reply(s->ctx, buf, (size_t)n);
}

/* The session answers from what the backend offers as its pool knows it,
 * without a backend connection (usually before this returns). */
static void smtp_hello_continue(struct smtp *s)
{
	smtp_await(s, SMTP_WAIT_HELLO, NULL);
	s->ops->backend_hello(s->ctx, s->helo);
}

static bool smtp_junk(struct smtp *s);

static void smtp_cmd_hello(struct smtp *s, enum smtp_verb verb, const char *args, size_t len)
{
	size_t n = 0;
	while (n < len && (unsigned char)args[n] > ' ' && (unsigned char)args[n] < 0x7f)
		n++;
	if (n == 0 || n >= sizeof s->helo || (n < len && args[n] != ' ')) {
		smtp_error(s, verb == SMTP_VERB_EHLO ? "501 5.5.4 Syntax: EHLO hostname"
		                                     : "501 5.5.4 Syntax: HELO hostname");
		return;
	}
	/* A client saying hello again and again without mail is idling. */
	if (s->state != SMTP_STATE_GREETED && smtp_junk(s))
		return;
	memcpy(s->helo, args, n);
	s->helo[n] = '\0';
	s->esmtp = verb == SMTP_VERB_EHLO;
	bool had_tx = s->backend_tx;
	smtp_tx_reset(s);
	s->state = SMTP_STATE_READY;
	/* RFC 5321 4.1.4: EHLO inside a transaction resets it, at the backend too. */
	if (had_tx) {
		smtp_await(s, SMTP_WAIT_RSET_HELLO, NULL);
		s->ops->backend_command(s->ctx, "RSET\r\n", 6);
		return;
	}
	smtp_hello_continue(s);
}

void smtp_backend_hello(struct smtp *s, const struct smtp_reply *r, unsigned caps)
{
	if (smtp_awaiting(s) != SMTP_WAIT_HELLO)
		return;
	smtp_await_pop(s);
	if (s->state == SMTP_STATE_CLOSED)
		return;
	/* Nothing known of the backend yet (down since start): EHLO still
	 * succeeds and offers only what needs no backend support. */
	s->caps_known = r->code / 100 == 2;
	s->caps = s->caps_known ? caps : 0;
	smtp_send_hello(s);
}

/* ---- MAIL ---- */

static bool smtp_has_8bit(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* Checks MAIL parameters and appends the ones the backend gets to OUT.
 * Returns NULL or the reply refusing them. */
static const char *smtp_mail_params(struct smtp *s, const struct smtp_path *p, char *out, size_t size,
                                    bool *utf8)
{
	*utf8 = false;
	size_t o = strlen(out);
	for (size_t i = 0; i < p->nparams; i++) {
		const struct smtp_param *pa = &p->params[i];
		bool forward = true;
		if (smtp_param_is(pa, "SIZE")) {
			uint64_t v;
			if (!pa->value || smtp_parse_u64(pa->value, pa->valuelen, &v) < 0)
				return "501 5.5.4 Bad SIZE parameter";
			if (v > s->cfg->max_message_size)
				return "552 5.3.4 Message size exceeds fixed maximum message size";
			forward = s->caps & SMTP_EXT_SIZE;
		} else if (smtp_param_is(pa, "BODY")) {
			if (!pa->value || (!(pa->valuelen == 4 && strncasecmp(pa->value, "7BIT", 4) == 0) &&
			                   !(pa->valuelen == 8 && strncasecmp(pa->value, "8BITMIME", 8) == 0)))
				return "555 5.5.4 Unsupported BODY parameter";
			forward = s->caps & SMTP_EXT_8BITMIME;
		} else if (smtp_param_is(pa, "SMTPUTF8") && (s->caps & SMTP_EXT_SMTPUTF8)) {
			if (pa->value)
				return "501 5.5.4 SMTPUTF8 takes no value";
			*utf8 = true;
		} else if (smtp_param_is(pa, "RET") && (s->caps & SMTP_EXT_DSN)) {
			if (!pa->value || !((pa->valuelen == 4 && strncasecmp(pa->value, "FULL", 4) == 0) ||
			                    (pa->valuelen == 4 && strncasecmp(pa->value, "HDRS", 4) == 0)))
				return "501 5.5.4 Bad RET parameter";
		} else if (smtp_param_is(pa, "ENVID") && (s->caps & SMTP_EXT_DSN)) {
			if (!pa->value || pa->valuelen > 100 || !smtp_valid_xtext(pa->value, pa->valuelen))
				return "501 5.5.4 Bad ENVID parameter";
		} else {
			return "555 5.5.4 Unsupported MAIL parameter";
		}
		if (forward) {
			int n = snprintf(out + o, size - o, " %.*s%s%.*s", (int)pa->keylen, pa->key,
			                 pa->value ? "=" : "", (int)pa->valuelen, pa->value ? pa->value : "");
			if (n < 0 || (size_t)n >= size - o)
				return "500 5.5.2 Line too long";
			o += (size_t)n;
		}
	}
	return NULL;
}

static const char *smtp_path_reply(enum smtp_path_error e, bool mail)
{
	switch (e) {
	case SMTP_PATH_PARAMS:
		return "555 5.5.4 Malformed or too many parameters";
	case SMTP_PATH_ADDRESS:
		return mail ? "553 5.1.7 Bad sender address syntax" : "553 5.1.3 Bad recipient address syntax";
	default:
		return mail ? "501 5.5.4 Syntax: MAIL FROM:<address>" : "501 5.5.4 Syntax: RCPT TO:<address>";
	}
}

static void smtp_cmd_mail(struct smtp *s, const char *args, size_t len)
{
	if (s->state == SMTP_STATE_GREETED) {
		smtp_error(s, "503 5.5.1 Send EHLO or HELO first");
		return;
	}
	if (s->state != SMTP_STATE_READY) {
		smtp_error(s, "503 5.5.1 Nested MAIL command");
		return;
	}
	if (s->cfg->tls_require && !s->tls) {
		smtp_error(s, "530 5.7.0 Must issue a STARTTLS command first");
		return;
	}
	struct smtp_path p;
	bool utf8_ok = s->caps & SMTP_EXT_SMTPUTF8;
	enum smtp_path_error e = smtp_parse_path(args, len, "FROM:", true, false, utf8_ok, &p);
	if (e != SMTP_PATH_OK) {
		smtp_error(s, smtp_path_reply(e, true));
		return;
	}
	char line[SMTP_COMMAND_LINE_MAX + 64];
	snprintf(line, sizeof line, "MAIL FROM:<%.*s>", (int)p.addrlen, p.addr);
	bool utf8;
	const char *refuse = smtp_mail_params(s, &p, line, sizeof line - 2, &utf8);
	if (!refuse && !utf8 && smtp_has_8bit(p.addr, p.addrlen))
		refuse = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter";
	if (refuse) {
		smtp_error(s, refuse);
		return;
	}
	snprintf(s->from, sizeof s->from, "%.*s", (int)p.addrlen, p.addr);
	s->tx_utf8 = utf8;
	s->refused = 0;
	/* RCPTs may follow before the answer; a refusal undoes this. */
	s->state = SMTP_STATE_MAIL;
	strcat(line, "\r\n");
	smtp_await(s, SMTP_WAIT_MAIL, NULL);
	s->ops->backend_command(s->ctx, line, strlen(line));
}

/* ---- RCPT ---- */

static const char *smtp_rcpt_params(struct smtp *s, const struct smtp_path *p, char *out, size_t size)
{
	size_t o = strlen(out);
	for (size_t i = 0; i < p->nparams; i++) {
		const struct smtp_param *pa = &p->params[i];
		if (!(s->caps & SMTP_EXT_DSN) ||
		    !(smtp_param_is(pa, "NOTIFY") || smtp_param_is(pa, "ORCPT")))
			return "555 5.5.4 Unsupported RCPT parameter";
		if (!pa->value)
			return "501 5.5.4 Parameter needs a value";
		if (smtp_param_is(pa, "ORCPT")) {
			const char *semi = memchr(pa->value, ';', pa->valuelen);
			if (!semi || semi == pa->value || pa->valuelen > 500)
				return "501 5.5.4 Bad ORCPT parameter";
		}
		int n = snprintf(out + o, size - o, " %.*s=%.*s", (int)pa->keylen, pa->key,
		                 (int)pa->valuelen, pa->value);
		if (n < 0 || (size_t)n >= size - o)
			return "500 5.5.2 Line too long";
		o += (size_t)n;
	}
	return NULL;
}

/* Checks RCPT and writes the backend's line to LINE and the address to
 * ADDR. Returns NULL, or the local reply; *ERROR tells whether that reply
 * counts as a client error (syntax) or as a refused recipient. */
static const char *smtp_rcpt_check(struct smtp *s, const char *args, size_t len, char *line,
                                   size_t size, char *addr, bool *error)
{
	*error = s->state != SMTP_STATE_MAIL;
	if (*error)
		return "503 5.5.1 Need MAIL command first";
	if (s->nrcpt + s->rcpts_waiting >= s->cfg->max_recipients)
		return "452 4.5.3 Too many recipients";
	if (s->backend_lost)
		return "451 4.4.2 Backend connection lost, try again later";
	*error = true;
	struct smtp_path p;
	enum smtp_path_error e = smtp_parse_path(args, len, "TO:", false, true,
	                                         s->caps & SMTP_EXT_SMTPUTF8, &p);
	if (e != SMTP_PATH_OK)
		return smtp_path_reply(e, false);
	if (!s->tx_utf8 && smtp_has_8bit(p.addr, p.addrlen))
		return "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL";
	snprintf(line, size, "RCPT TO:<%.*s>", (int)p.addrlen, p.addr);
	const char *refuse = smtp_rcpt_params(s, &p, line, size - 2);
	if (refuse)
		return refuse;
	strcat(line, "\r\n");
	snprintf(addr, SMTP_COMMAND_LINE_MAX, "%.*s", (int)p.addrlen, p.addr);
	return NULL;
}

static void smtp_cmd_rcpt(struct smtp *s, const char *args, size_t len)
{
	char line[SMTP_COMMAND_LINE_MAX + 64], addr[SMTP_COMMAND_LINE_MAX];
	bool error;
	const char *refuse = smtp_rcpt_check(s, args, len, line, sizeof line, addr, &error);
	char *copy = refuse ? NULL : strdup(addr);
	if (!refuse && !copy)
		refuse = "452 4.3.1 Out of memory";
	if (refuse && smtp_defer(s))
		return;
	if (refuse && error) {
		smtp_error(s, refuse);
	} else if (refuse) {
		s->refused++;
		smtp_send(s, "%s", refuse);
	} else {
		smtp_await(s, SMTP_WAIT_RCPT, copy);
		s->ops->backend_command(s->ctx, line, strlen(line));
	}
}

/* ---- RSET, QUIT and the simple ones ---- */

/* Commands that move no mail forward (NOOP, VRFY, HELP, unknown, ...):
 * a client that sends too many is wasting the slot. Returns true when it
 * was one too many and the session is ending. */
static bool smtp_junk(struct smtp *s)
{
	if (++s->junk <= s->cfg->max_junk_commands)
		return false;
	log_info("sess=%s event=junk_limit commands=%u", s->id, s->junk);
	smtp_send(s, "421 4.7.0 %s Too many commands without mail, closing connection",
	          s->cfg->hostname);
	s->state = SMTP_STATE_CLOSED;
	s->ops->close(s->ctx, "junk_limit");
	return true;
}


static void smtp_cmd_rset(struct smtp *s, const char *args, size_t len)
{
	if (len) {
		smtp_error(s, "501 5.5.4 Syntax: RSET");
		return;
	}
	bool had_tx = s->backend_tx && !s->backend_lost;
	if (s->state != SMTP_STATE_MAIL && smtp_junk(s))
		return;
	smtp_tx_reset(s);
	if (had_tx) {
		smtp_await(s, SMTP_WAIT_RSET, NULL);
		s->ops->backend_command(s->ctx, "RSET\r\n", 6);
		return;
	}
	smtp_send(s, "250 2.0.0 Ok");
}

static void smtp_cmd_simple(struct smtp *s, enum smtp_verb verb)
{
	if (verb != SMTP_VERB_QUIT && smtp_junk(s))
		return;
	switch (verb) {
	case SMTP_VERB_NOOP:
		smtp_send(s, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_QUIT:
		smtp_send(s, "221 2.0.0 %s Bye", s->cfg->hostname);
		s->state = SMTP_STATE_CLOSED;
		s->ops->close(s->ctx, "quit");
		break;
	case SMTP_VERB_VRFY:
		smtp_send(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_VERB_HELP:
		smtp_send(s, "214 2.0.0 Commands: EHLO HELO %sMAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
		          s->tls_available && !s->tls ? "STARTTLS " : "");
		break;
	default:
		smtp_error(s, "502 5.5.1 Command not implemented");
		break;
	}
}

static void smtp_cmd_starttls(struct smtp *s, size_t len)
{
	if (len) {
		smtp_error(s, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (s->tls) {
		smtp_error(s, "503 5.5.1 TLS already active");
		return;
	}
	if (!s->tls_available) {
		smtp_error(s, "502 5.5.1 Command not implemented");
		return;
	}
	if (s->state == SMTP_STATE_MAIL) {
		smtp_error(s, "503 5.5.1 STARTTLS not allowed in a mail transaction");
		return;
	}
	smtp_send(s, "220 2.0.0 Ready to start TLS");
	smtp_await(s, SMTP_WAIT_TLS, NULL);
	s->ops->starttls(s->ctx);
}

void smtp_tls_started(struct smtp *s, const char *info)
{
	if (smtp_awaiting(s) != SMTP_WAIT_TLS)
		return;
	smtp_await_pop(s);
	s->tls = true;
	snprintf(s->tls_info, sizeof s->tls_info, "%s", info);
	/* RFC 3207 4.2: forget everything learnt before, HELO included. */
	smtp_tx_reset(s);
	s->state = SMTP_STATE_GREETED;
	s->helo[0] = '\0';
	s->esmtp = false;
}

void smtp_set_tls_available(struct smtp *s, bool available)
{
	s->tls_available = available;
}

/* ---- the backend's answers ---- */

static void smtp_mail_answered(struct smtp *s, const struct smtp_reply *r)
{
	if (r->code / 100 == 2 && s->state == SMTP_STATE_MAIL) {
		s->backend_tx = true;
		s->ntx++;
	} else if (s->state == SMTP_STATE_MAIL) {
		/* Refused: RCPTs pipelined behind it get the backend's refusals. */
		s->state = SMTP_STATE_READY;
		s->from[0] = '\0';
		s->tx_utf8 = false;
		s->backend_lost = false;
	}
	smtp_send_reply(s, r);
}

/* Takes over A's address when the recipient was accepted. */
static void smtp_rcpt_answered(struct smtp *s, const struct smtp_reply *r, struct smtp_await *a)
{
	struct smtp_reply odd;
	if (r->code / 100 != 2 || r->lost) {
		s->refused++;
	} else if (s->state != SMTP_STATE_MAIL) {
		/* Accepted without a transaction: the backend lost track. */
		s->refused++;
		smtp_reply_set(&odd, 451, "4.4.2 Backend protocol error, try again later");
		r = &odd;
	} else {
		char **grown = realloc(s->rcpts, (s->nrcpt + 1) * sizeof *grown);
		if (!grown) {
			smtp_send(s, "452 4.3.1 Out of memory");
			return;
		}
		s->rcpts = grown;
		s->rcpts[s->nrcpt++] = a->rcpt;
		a->rcpt = NULL;
	}
	smtp_send_reply(s, r);
}

/* Every awaited answer is in: take the line that was set aside. */
static void smtp_settled(struct smtp *s)
{
	if (s->qlen || !s->deferred)
		return;
	char line[SMTP_COMMAND_LINE_MAX];
	size_t len = s->deferred_len;
	memcpy(line, s->deferred_line, len);
	s->deferred = false;
	smtp_line(s, line, len, s->deferred_flags);
}

void smtp_backend_reply(struct smtp *s, const struct smtp_reply *r)
{
	enum smtp_wait w = smtp_awaiting(s);
	if (w != SMTP_WAIT_MAIL && w != SMTP_WAIT_RCPT && w != SMTP_WAIT_DATA &&
	    w != SMTP_WAIT_RSET && w != SMTP_WAIT_RSET_HELLO)
		return;
	struct smtp_await a = smtp_await_pop(s);
	if (s->state == SMTP_STATE_CLOSED) {
		/* The client had its 421 (timeout, shutdown): nothing follows it. */
		free(a.rcpt);
		return;
	}
	struct smtp_reply odd;
	if (r->code / 100 == 3 && w != SMTP_WAIT_DATA) {
		/* Only DATA may be answered with 3xx; never pass one on. */
		smtp_reply_set(&odd, 451, "4.4.2 Backend protocol error, try again later");
		odd.lost = r->lost;
		r = &odd;
	}
	if (r->lost && s->state == SMTP_STATE_MAIL)
		s->backend_lost = true;
	switch (w) {
	case SMTP_WAIT_MAIL:
		smtp_mail_answered(s, r);
		break;
	case SMTP_WAIT_RCPT:
		smtp_rcpt_answered(s, r, &a);
		break;
	case SMTP_WAIT_DATA:
		smtp_data_answered(s, r);
		break;
	case SMTP_WAIT_RSET:
		smtp_send(s, "250 2.0.0 Ok");
		break;
	default: /* SMTP_WAIT_RSET_HELLO */
		smtp_hello_continue(s);
		break;
	}
	free(a.rcpt);
	smtp_settled(s);
}

void smtp_backend_failed(struct smtp *s)
{
	if (s->state == SMTP_STATE_DATA) {
		s->backend_lost = true; /* nothing to abort: it is gone */
		smtp_data_refuse(s, 451, "4.4.2 Backend connection lost during the message, try again later");
	} else if (s->state == SMTP_STATE_MAIL) {
		s->backend_lost = true;
	}
}

/* ---- dispatch ---- */

static void smtp_command(struct smtp *s, const char *line, size_t len, unsigned flags)
{
	s->commands++;
	/* With backend answers awaited, only a clean RCPT or DATA joins the
	 * pipelined group; anything else waits until they are in (smtp_defer). */
	if (flags && smtp_defer(s))
		return;
	if (flags & SMTP_LINE_TOO_LONG) {
		smtp_error(s, "500 5.5.2 Line too long");
		return;
	}
	/* [smtp] bare_newline = normalize takes a command ended by a bare LF as
	 * if it had CRLF; a CR inside a command is never taken. */
	bool lf_only = (flags & SMTP_LINE_BARE_LF) && s->cfg->bare_newline_normalize;
	if (lf_only)
		flags &= ~(unsigned)SMTP_LINE_BARE_LF;
	if (flags & (SMTP_LINE_BARE_LF | SMTP_LINE_BARE_CR | SMTP_LINE_NUL)) {
		smtp_error(s, flags & SMTP_LINE_NUL ? "500 5.5.2 NUL byte in command"
		                                    : "500 5.5.2 Bare CR or LF in command, use CRLF");
		return;
	}
	len -= lf_only ? 1 : 2; /* the line ending */
	const char *args;
	bool space;
	enum smtp_verb verb = smtp_parse_verb(line, len, &args, &space);
	if (verb != SMTP_VERB_RCPT && verb != SMTP_VERB_DATA && smtp_defer(s))
		return;
	size_t alen = len - (size_t)(args - line);
	while (alen && args[alen - 1] == ' ')
		alen--;
	switch (verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		smtp_cmd_hello(s, verb, args, alen);
		break;
	case SMTP_VERB_MAIL:
		smtp_cmd_mail(s, args, alen);
		break;
	case SMTP_VERB_RCPT:
		smtp_cmd_rcpt(s, args, alen);
		break;
	case SMTP_VERB_DATA:
		smtp_cmd_data(s, args, alen);
		break;
	case SMTP_VERB_RSET:
		smtp_cmd_rset(s, args, alen);
		break;
	case SMTP_VERB_STARTTLS:
		smtp_cmd_starttls(s, alen);
		break;
	case SMTP_VERB_UNKNOWN:
		if (!smtp_junk(s))
			smtp_error(s, "500 5.5.2 Command unrecognized");
		break;
	default:
		smtp_cmd_simple(s, verb);
		break;
	}
}

static void smtp_keep(struct smtp *s, const char *line, size_t len, unsigned flags)
{
	assert(!s->deferred);
	if (len > sizeof s->deferred_line) {
		/* Over the command line limit whatever it was framed with: only
		 * "too long" will be said of it. */
		len = sizeof s->deferred_line;
		flags |= SMTP_LINE_TOO_LONG;
	}
	memcpy(s->deferred_line, line, len);
	s->deferred_len = len;
	s->deferred_flags = flags;
	s->deferred = true;
}

void smtp_line(struct smtp *s, const char *line, size_t len, unsigned flags)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	if (s->state == SMTP_STATE_DATA) {
		smtp_data_line(s, line, len, flags);
		return;
	}
	s->deferring = false;
	smtp_command(s, line, len, flags);
	if (s->deferring) {
		s->deferring = false;
		s->commands--;
		smtp_keep(s, line, len, flags);
	}
}

void smtp_goodbye(struct smtp *s, const char *enhanced, const char *text, const char *reason)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	if (s->state == SMTP_STATE_DATA && !s->backend_lost)
		s->ops->backend_abort(s->ctx);
	smtp_send(s, "421 %s %s %s", enhanced, s->cfg->hostname, text);
	s->state = SMTP_STATE_CLOSED;
	s->ops->close(s->ctx, reason);
}

void smtp_greet(struct smtp *s)
{
	smtp_send(s, "220 %s ESMTP mxfront", s->cfg->hostname);
}

bool smtp_busy(const struct smtp *s)
{
	if (s->deferred)
		return true;
	if (!s->qlen)
		return false;
	enum smtp_wait last = s->q[(s->qhead + s->qlen - 1) % SMTP_PIPE_MAX].what;
	return !smtp_pipelining(s) || s->qlen >= SMTP_PIPE_MAX ||
	       (last != SMTP_WAIT_MAIL && last != SMTP_WAIT_RCPT);
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
