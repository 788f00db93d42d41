/* smtp_int: the lower room of the SMTP state machine (smtp_core.c): its
 * struct, replies and the error limit, the awaited backend answers and the
 * deferral of a line, the transaction's reset. smtp.c, smtp_cmd.c and
 * smtp_data.c all build on it; it calls none of them. Not for other modules. */
#ifndef MXFRONT_SMTP_INT_H
#define MXFRONT_SMTP_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "smtp.h"
#include "smtp_parse.h"

enum smtp_state {
	SMTP_STATE_GREETED, /* no HELO/EHLO yet */
	SMTP_STATE_READY,   /* HELO done, no transaction */
	SMTP_STATE_MAIL,    /* MAIL accepted: RCPTs and DATA */
	SMTP_STATE_DATA,    /* receiving message data */
	SMTP_STATE_CLOSED,  /* QUIT, 421 or timeout: ignore the rest */
};

/* The states in which commands are taken (DATA takes message lines). */
#define SMTP_COMMAND_STATES (SMTP_STATE_MAIL + 1)

enum smtp_wait {
	SMTP_WAIT_NONE,
	SMTP_WAIT_RSET_HELLO, /* backend RSET before answering EHLO/HELO */
	SMTP_WAIT_HELLO,
	SMTP_WAIT_MAIL,
	SMTP_WAIT_RCPT,
	SMTP_WAIT_DATA,
	SMTP_WAIT_DATA_END,
	SMTP_WAIT_RSET,
	SMTP_WAIT_TLS, /* STARTTLS accepted, handshake in progress */
};

/* Backend answers awaited, oldest first. With a backend that offers
 * PIPELINING, commands that keep a pipelined group open (smtp.c's table)
 * go out without waiting for the previous answer (RFC 2920); once one that
 * ends the group is out, nothing more is taken until every answer is in.
 * SMTP_PIPE_MAX bounds what a client can have outstanding. */
#define SMTP_PIPE_MAX 32

struct smtp_await {
	enum smtp_wait what;
	bool ends_group; /* asked for by a command that ends a pipelined group */
	char *rcpt;      /* SMTP_WAIT_RCPT: the address, owned */
};

/* The longest EHLO/HELO name kept, with its NUL. */
#define SMTP_HELO_MAX 256

struct smtp {
	const struct config *cfg;
	const struct smtp_ops *ops;
	void *ctx;
	const char *id;
	const char *client_ip;

	enum smtp_state state;
	struct smtp_await q[SMTP_PIPE_MAX];
	unsigned qhead, qlen;
	unsigned rcpts_waiting; /* RCPTs in q */
	/* The command being taken keeps a pipelined group open: what it asks
	 * of the backend lets the next line in before the answer. */
	bool group_open;
	/* A line that must wait for the answers in q before it is taken (a
	 * command that is not pipelined, or one whose local reply would
	 * overtake them): kept here, so that replies leave in order. */
	bool deferring;
	bool deferred;
	unsigned deferred_flags;
	size_t deferred_len;
	char deferred_line[SMTP_COMMAND_LINE_MAX];
	char helo[SMTP_HELO_MAX];
	bool esmtp;
	bool caps_known; /* the backend answered a hello: caps are real */
	unsigned caps;
	unsigned errors;
	unsigned junk;
	unsigned commands;
	unsigned ntx;
	bool tls_available;
	bool tls;           /* TLS is active */
	char tls_info[160]; /* for Received: "TLS1.3 AES-128-GCM sni=..." */

	/* the transaction */
	char from[SMTP_COMMAND_LINE_MAX];
	bool backend_tx;   /* the backend accepted MAIL and has not finished */
	bool backend_lost; /* the backend connection broke during this transaction */
	bool tx_utf8;      /* MAIL had SMTPUTF8 (RFC 6531): UTF-8 recipients allowed */
	char **rcpts;      /* accepted recipients, owned */
	unsigned nrcpt;
	unsigned refused;

	/* message data */
	uint64_t size;
	bool received_due;       /* the Received header goes out with the first line */
	bool prev_crlf;          /* the previous data line ended with CRLF */
	struct smtp_reply bad;   /* code != 0: the message will be refused with this */
};

/* ---- replies ---- */

/* One reply line, formatted; CRLF is added. */
void smtp_send(struct smtp *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* R as the client gets it: an enhanced code added where a line has none. */
void smtp_send_reply(struct smtp *s, const struct smtp_reply *r);
/* REPLY, counted towards max_errors: the last one allowed is followed by
 * a 421 and the close. */
void smtp_error(struct smtp *s, const char *reply);
/* Ends the session after the replies queued so far; nothing is taken after. */
void smtp_close(struct smtp *s, const char *reason);

/* ---- awaited answers ---- */

/* Records that an answer of kind WHAT is awaited (RCPT: the address, which
 * the queue then owns); call before the op that asks for it, since the
 * answer may come before the op returns. */
void smtp_await(struct smtp *s, enum smtp_wait what, char *rcpt);
/* The kind of the oldest answer awaited, or SMTP_WAIT_NONE. */
enum smtp_wait smtp_awaiting(const struct smtp *s);
/* Takes the oldest awaited answer off the queue; the caller owns its rcpt. */
struct smtp_await smtp_await_pop(struct smtp *s);
/* A local reply is about to be given while backend answers are awaited:
 * the line is set aside instead, to be taken again once they are in.
 * Returns true when it was: the caller then says and changes nothing. */
bool smtp_defer(struct smtp *s);

/* ---- the transaction ---- */

/* Forgets the transaction (recipients, sender, message state); MAIL and
 * DATA go back to READY. The backend is not told. */
void smtp_tx_reset(struct smtp *s);

#endif
