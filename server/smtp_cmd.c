/* smtp_cmd: the SMTP commands, each run by smtp.c's command table once its
 * rules (arguments, state, TLS, pipelining) let it, and the backend's
 * answers to what they asked, up to DATA's. The rules are the table's, not
 * repeated here; the message itself is smtp_data.c's. Builds on
 * smtp_core.c only; never does I/O, never keeps a pointer to a line. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"
#include "smtp_cmd.h"
#include "smtp_int.h"

/* ---- EHLO / HELO ---- */

static void smtp_cmd_send_hello(struct smtp *s)
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
void smtp_cmd_hello_continue(struct smtp *s)
{
	smtp_await(s, SMTP_WAIT_HELLO, NULL);
	s->ops->backend_hello(s->ctx, s->helo);
}

/* ARGS is a name the table's SMTP_ARGS_HELLO let through: one word. */
static void smtp_cmd_hello(struct smtp *s, bool esmtp, const char *args, size_t len)
{
	size_t n = 0;
	while (n < len && args[n] != ' ')
		n++;
	memcpy(s->helo, args, n);
	s->helo[n] = '\0';
	s->esmtp = esmtp;
	bool had_tx = s->backend_tx;
	smtp_tx_reset(s);
	s->state = SMTP_STATE_READY;
	/* RFC 5321 4.1.4: EHLO inside a transaction resets it, at the backend too. */
	if (had_tx) {
		smtp_await(s, SMTP_WAIT_RSET_HELLO, NULL);
		s->ops->backend_command(s->ctx, "RSET\r\n", 6);
		return;
	}
	smtp_cmd_hello_continue(s);
}

void smtp_cmd_ehlo(struct smtp *s, const char *args, size_t len)
{
	smtp_cmd_hello(s, true, args, len);
}

void smtp_cmd_helo(struct smtp *s, const char *args, size_t len)
{
	smtp_cmd_hello(s, false, args, len);
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
	smtp_cmd_send_hello(s);
}

/* ---- MAIL ---- */

static bool smtp_cmd_has_8bit(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* Checks MAIL parameters and appends the ones the backend gets to OUT.
 * Returns NULL or the reply refusing them. */
static const char *smtp_cmd_mail_params(struct smtp *s, const struct smtp_path *p, char *out,
                                        size_t size, bool *utf8)
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

static const char *smtp_cmd_path_reply(enum smtp_path_error e, bool mail)
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

void smtp_cmd_mail(struct smtp *s, const char *args, size_t len)
{
	struct smtp_path p;
	bool utf8_ok = s->caps & SMTP_EXT_SMTPUTF8;
	enum smtp_path_error e = smtp_parse_path(args, len, "FROM:", true, false, utf8_ok, &p);
	if (e != SMTP_PATH_OK) {
		smtp_error(s, smtp_cmd_path_reply(e, true));
		return;
	}
	char line[SMTP_COMMAND_LINE_MAX + 64];
	snprintf(line, sizeof line, "MAIL FROM:<%.*s>", (int)p.addrlen, p.addr);
	bool utf8;
	const char *refuse = smtp_cmd_mail_params(s, &p, line, sizeof line - 2, &utf8);
	if (!refuse && !utf8 && smtp_cmd_has_8bit(p.addr, p.addrlen))
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

void smtp_cmd_mail_answered(struct smtp *s, const struct smtp_reply *r)
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

/* ---- RCPT ---- */

static const char *smtp_cmd_rcpt_params(struct smtp *s, const struct smtp_path *p, char *out,
                                        size_t size)
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
static const char *smtp_cmd_rcpt_check(struct smtp *s, const char *args, size_t len, char *line,
                                       size_t size, char *addr, bool *error)
{
	*error = false;
	if (s->nrcpt + s->rcpts_waiting >= s->cfg->max_recipients)
		return "452 4.5.3 Too many recipients";
	if (s->backend_lost)
		return "451 4.4.2 Backend connection lost, try again later";
	*error = true;
	struct smtp_path p;
	enum smtp_path_error e = smtp_parse_path(args, len, "TO:", false, true,
	                                         s->caps & SMTP_EXT_SMTPUTF8, &p);
	if (e != SMTP_PATH_OK)
		return smtp_cmd_path_reply(e, false);
	if (!s->tx_utf8 && smtp_cmd_has_8bit(p.addr, p.addrlen))
		return "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL";
	snprintf(line, size, "RCPT TO:<%.*s>", (int)p.addrlen, p.addr);
	const char *refuse = smtp_cmd_rcpt_params(s, &p, line, size - 2);
	if (refuse)
		return refuse;
	strcat(line, "\r\n");
	snprintf(addr, SMTP_COMMAND_LINE_MAX, "%.*s", (int)p.addrlen, p.addr);
	return NULL;
}

void smtp_cmd_rcpt(struct smtp *s, const char *args, size_t len)
{
	char line[SMTP_COMMAND_LINE_MAX + 64], addr[SMTP_COMMAND_LINE_MAX];
	bool error;
	const char *refuse = smtp_cmd_rcpt_check(s, args, len, line, sizeof line, addr, &error);
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

void smtp_cmd_rcpt_answered(struct smtp *s, const struct smtp_reply *r, struct smtp_await *a)
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

/* ---- DATA (the command; the message is smtp_data.c's) ---- */

void smtp_cmd_data(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	bool local = (s->nrcpt == 0 && !s->rcpts_waiting) || s->backend_lost;
	if (local && smtp_defer(s))
		return;
	if (s->nrcpt == 0 && !s->rcpts_waiting) {
		/* RFC 2920 3.1: with pipelining, DATA after refused RCPTs. */
		smtp_error(s, "554 5.5.1 No valid recipients");
		return;
	}
	if (s->backend_lost) {
		smtp_send(s, "451 4.4.2 Backend connection lost, try again later");
		return;
	}
	/* Sent even while RCPT answers are awaited: if none is accepted, the
	 * backend refuses DATA itself. */
	smtp_await(s, SMTP_WAIT_DATA, NULL);
	s->ops->backend_command(s->ctx, "DATA\r\n", 6);
}

/* ---- RSET ---- */

void smtp_cmd_rset(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	bool had_tx = s->backend_tx && !s->backend_lost;
	smtp_tx_reset(s);
	if (had_tx) {
		smtp_await(s, SMTP_WAIT_RSET, NULL);
		s->ops->backend_command(s->ctx, "RSET\r\n", 6);
		return;
	}
	smtp_send(s, "250 2.0.0 Ok");
}

void smtp_cmd_rset_answered(struct smtp *s)
{
	smtp_send(s, "250 2.0.0 Ok");
}

/* ---- STARTTLS ---- */

void smtp_cmd_starttls(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
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

/* ---- the ones that need nothing ---- */

void smtp_cmd_noop(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_send(s, "250 2.0.0 Ok");
}

void smtp_cmd_quit(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_send(s, "221 2.0.0 %s Bye", s->cfg->hostname);
	smtp_close(s, "quit");
}

void smtp_cmd_vrfy(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_send(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

void smtp_cmd_help(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_send(s, "214 2.0.0 Commands: EHLO HELO %sMAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
	          s->tls_available && !s->tls ? "STARTTLS " : "");
}

void smtp_cmd_unimplemented(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_error(s, "502 5.5.1 Command not implemented");
}

void smtp_cmd_unknown(struct smtp *s, const char *args, size_t len)
{
	(void)args, (void)len;
	smtp_error(s, "500 5.5.2 Command unrecognized");
}
