/* smtp: the SMTP rules, as one command table, and the entry points that
 * apply them: client lines (commands through the table, message lines to
 * smtp_data.c) and backend answers (to the command that asked). The
 * commands are smtp_cmd.c's, the message smtp_data.c's, what all share
 * smtp_core.c's; neither of the first two calls the other. Never does I/O,
 * never keeps a pointer to a line it was fed. */
#include "smtp.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "smtp_cmd.h"
#include "smtp_data.h"
#include "smtp_int.h"

/* ---- the command table ---- */

/* What a command's argument must look like, else the entry's syntax reply. */
enum smtp_args {
	SMTP_ARGS_ANY,   /* the command checks it, if at all */
	SMTP_ARGS_NONE,  /* nothing but spaces */
	SMTP_ARGS_HELLO, /* a name: printable ASCII, under SMTP_HELO_MAX, then maybe more */
};

enum {
	/* Refused (503) once TLS is active (RFC 3207 4.2). */
	SMTP_CMD_NOT_AFTER_TLS = 1 << 0,
	/* Refused (502) unless a certificate is loaded. */
	SMTP_CMD_NEEDS_CERT = 1 << 1,
	/* Refused (530) under [tls] require until TLS is active. */
	SMTP_CMD_NEEDS_TLS = 1 << 2,
	/* Joins a pipelined group (RFC 2920): taken while backend answers are
	 * awaited, if it goes to the backend; any reply of its own waits for
	 * them (smtp_defer). Every other line waits for them whole. */
	SMTP_CMD_PIPELINED = 1 << 3,
	/* What it asks of the backend ends a pipelined group: no line is taken
	 * until every answer is in. (Without it, the group may go on.) */
	SMTP_CMD_ENDS_GROUP = 1 << 4,
};

/* Sets of states, for the junk column. */
#define SMTP_IN(state) (1u << (state))
#define SMTP_JUNK_ALWAYS (SMTP_IN(SMTP_STATE_GREETED) | SMTP_IN(SMTP_STATE_READY) | \
                          SMTP_IN(SMTP_STATE_MAIL))
#define SMTP_JUNK_ONCE_GREETED (SMTP_IN(SMTP_STATE_READY) | SMTP_IN(SMTP_STATE_MAIL))
#define SMTP_JUNK_OUTSIDE_MAIL (SMTP_IN(SMTP_STATE_GREETED) | SMTP_IN(SMTP_STATE_READY))

#define SMTP_NEED_HELO "503 5.5.1 Send EHLO or HELO first"
#define SMTP_NEED_MAIL "503 5.5.1 Need MAIL command first"

/* A command is taken if its rules let it, checked in this order; the first
 * that does not is the reply, counted towards max_errors:
 *   1. ARGS, else SYNTAX;
 *   2. the flags SMTP_CMD_NOT_AFTER_TLS, then SMTP_CMD_NEEDS_CERT;
 *   3. the state: REFUSED[state], if set, is the reply;
 *   4. the flag SMTP_CMD_NEEDS_TLS.
 * Then, in the states of JUNK, it counts towards max_junk_commands (one
 * too many ends the session), and RUN has it. */
struct smtp_cmd {
	void (*run)(struct smtp *s, const char *args, size_t len);
	enum smtp_args args;
	const char *syntax;
	unsigned flags;
	const char *refused[SMTP_COMMAND_STATES];
	unsigned junk;
};

static const struct smtp_cmd smtp_cmds[] = {
	[SMTP_VERB_EHLO] = { .run = smtp_cmd_ehlo, .args = SMTP_ARGS_HELLO,
	                     .syntax = "501 5.5.4 Syntax: EHLO hostname",
	                     .flags = SMTP_CMD_ENDS_GROUP, .junk = SMTP_JUNK_ONCE_GREETED },
	[SMTP_VERB_HELO] = { .run = smtp_cmd_helo, .args = SMTP_ARGS_HELLO,
	                     .syntax = "501 5.5.4 Syntax: HELO hostname",
	                     .flags = SMTP_CMD_ENDS_GROUP, .junk = SMTP_JUNK_ONCE_GREETED },
	[SMTP_VERB_STARTTLS] = { .run = smtp_cmd_starttls, .args = SMTP_ARGS_NONE,
	                         .syntax = "501 5.5.4 Syntax: STARTTLS",
	                         .flags = SMTP_CMD_NOT_AFTER_TLS | SMTP_CMD_NEEDS_CERT |
	                                  SMTP_CMD_ENDS_GROUP,
	                         .refused = { [SMTP_STATE_MAIL] = "503 5.5.1 STARTTLS not allowed "
	                                                          "in a mail transaction" } },
	[SMTP_VERB_MAIL] = { .run = smtp_cmd_mail, .flags = SMTP_CMD_NEEDS_TLS,
	                     .refused = { [SMTP_STATE_GREETED] = SMTP_NEED_HELO,
	                                  [SMTP_STATE_MAIL] = "503 5.5.1 Nested MAIL command" } },
	[SMTP_VERB_RCPT] = { .run = smtp_cmd_rcpt, .flags = SMTP_CMD_PIPELINED,
	                     .refused = { [SMTP_STATE_GREETED] = SMTP_NEED_MAIL,
	                                  [SMTP_STATE_READY] = SMTP_NEED_MAIL } },
	[SMTP_VERB_DATA] = { .run = smtp_cmd_data, .args = SMTP_ARGS_NONE,
	                     .syntax = "501 5.5.4 Syntax: DATA",
	                     .flags = SMTP_CMD_PIPELINED | SMTP_CMD_ENDS_GROUP,
	                     .refused = { [SMTP_STATE_GREETED] = SMTP_NEED_HELO,
	                                  [SMTP_STATE_READY] = SMTP_NEED_MAIL } },
	[SMTP_VERB_RSET] = { .run = smtp_cmd_rset, .args = SMTP_ARGS_NONE,
	                     .syntax = "501 5.5.4 Syntax: RSET",
	                     .flags = SMTP_CMD_ENDS_GROUP, .junk = SMTP_JUNK_OUTSIDE_MAIL },
	[SMTP_VERB_QUIT] = { .run = smtp_cmd_quit },
	[SMTP_VERB_NOOP] = { .run = smtp_cmd_noop, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_VRFY] = { .run = smtp_cmd_vrfy, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_HELP] = { .run = smtp_cmd_help, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_EXPN] = { .run = smtp_cmd_unimplemented, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_BDAT] = { .run = smtp_cmd_unimplemented, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_AUTH] = { .run = smtp_cmd_unimplemented, .junk = SMTP_JUNK_ALWAYS },
	[SMTP_VERB_UNKNOWN] = { .run = smtp_cmd_unknown, .junk = SMTP_JUNK_ALWAYS },
};

static bool smtp_args_fit(enum smtp_args kind, const char *args, size_t len)
{
	if (kind == SMTP_ARGS_NONE)
		return len == 0;
	if (kind == SMTP_ARGS_ANY)
		return true;
	size_t n = 0;
	while (n < len && (unsigned char)args[n] > ' ' && (unsigned char)args[n] < 0x7f)
		n++;
	return n > 0 && n < SMTP_HELO_MAX && (n == len || args[n] == ' ');
}

/* The reply refusing C with ARGS now, or NULL: rules 1 to 4 above. */
static const char *smtp_refusal(const struct smtp *s, const struct smtp_cmd *c, const char *args,
                                size_t len)
{
	if (!smtp_args_fit(c->args, args, len))
		return c->syntax;
	if ((c->flags & SMTP_CMD_NOT_AFTER_TLS) && s->tls)
		return "503 5.5.1 TLS already active";
	if ((c->flags & SMTP_CMD_NEEDS_CERT) && !s->tls_available)
		return "502 5.5.1 Command not implemented";
	if (c->refused[s->state])
		return c->refused[s->state];
	if ((c->flags & SMTP_CMD_NEEDS_TLS) && s->cfg->tls_require && !s->tls)
		return "530 5.7.0 Must issue a STARTTLS command first";
	return NULL;
}

/* Commands that move no mail forward (the table's junk column): a client
 * that sends too many is wasting the slot. Returns true when it was one
 * too many and the session is ending. */
static bool smtp_junk(struct smtp *s)
{
	if (++s->junk <= s->cfg->max_junk_commands)
		return false;
	log_info("sess=%s event=junk_limit commands=%u", s->id, s->junk);
	smtp_send(s, "421 4.7.0 %s Too many commands without mail, closing connection",
	          s->cfg->hostname);
	smtp_close(s, "junk_limit");
	return true;
}

/* ---- client lines ---- */

/* The line ending's faults, which no command survives; LEN loses the ending.
 * Returns false when the line was answered. */
static bool smtp_line_ending(struct smtp *s, size_t *len, unsigned flags)
{
	if (flags & SMTP_LINE_TOO_LONG) {
		smtp_error(s, "500 5.5.2 Line too long");
		return false;
	}
	/* [smtp] bare_newline = normalize takes a command ended by a bare LF as
	 * if it had CRLF; a CR inside a command is never taken. */
	bool lf_only = (flags & SMTP_LINE_BARE_LF) && s->cfg->bare_newline_normalize;
	if (lf_only)
		flags &= ~(unsigned)SMTP_LINE_BARE_LF;
	if (flags & (SMTP_LINE_BARE_LF | SMTP_LINE_BARE_CR | SMTP_LINE_NUL)) {
		smtp_error(s, flags & SMTP_LINE_NUL ? "500 5.5.2 NUL byte in command"
		                                    : "500 5.5.2 Bare CR or LF in command, use CRLF");
		return false;
	}
	*len -= lf_only ? 1 : 2;
	return true;
}

static void smtp_command(struct smtp *s, const char *line, size_t len, unsigned flags)
{
	s->commands++;
	/* With backend answers awaited, only a clean command of the table's
	 * SMTP_CMD_PIPELINED joins the group; anything else waits for them. */
	if (flags && smtp_defer(s))
		return;
	if (!smtp_line_ending(s, &len, flags))
		return;
	const char *args;
	bool space;
	enum smtp_verb verb = smtp_parse_verb(line, len, &args, &space);
	assert((size_t)verb < sizeof smtp_cmds / sizeof smtp_cmds[0] && smtp_cmds[verb].run);
	const struct smtp_cmd *c = &smtp_cmds[verb];
	if (!(c->flags & SMTP_CMD_PIPELINED) && smtp_defer(s))
		return;
	size_t alen = len - (size_t)(args - line);
	while (alen && args[alen - 1] == ' ')
		alen--;
	assert(s->state < SMTP_COMMAND_STATES);
	const char *refusal = smtp_refusal(s, c, args, alen);
	if (refusal) {
		if (!smtp_defer(s))
			smtp_error(s, refusal);
		return;
	}
	if ((c->junk & SMTP_IN(s->state)) && smtp_junk(s))
		return;
	/* An answer may come in, and a set-aside line be taken, before RUN returns. */
	bool outer = s->group_open;
	s->group_open = !(c->flags & SMTP_CMD_ENDS_GROUP);
	c->run(s, args, alen);
	s->group_open = outer;
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

/* ---- the backend's answers ---- */

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
		smtp_cmd_mail_answered(s, r);
		break;
	case SMTP_WAIT_RCPT:
		smtp_cmd_rcpt_answered(s, r, &a);
		break;
	case SMTP_WAIT_DATA:
		smtp_data_answered(s, r);
		break;
	case SMTP_WAIT_RSET:
		smtp_cmd_rset_answered(s);
		break;
	default: /* SMTP_WAIT_RSET_HELLO */
		smtp_cmd_hello_continue(s);
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
