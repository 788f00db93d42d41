/* smtp_int: what smtp.c and smtp_data.c share: the state machine's
 * struct and the helpers both halves use. Not for other modules. */
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

/* replies (smtp.c) */
void smtp_send(struct smtp *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void smtp_send_reply(struct smtp *s, const struct smtp_reply *r);
void smtp_error(struct smtp *s, const char *reply); /* counts towards max_errors */

/* awaited backend answers (smtp.c) */
void smtp_await(struct smtp *s, enum smtp_wait what, char *rcpt);
enum smtp_wait smtp_awaiting(const struct smtp *s);
struct smtp_await smtp_await_pop(struct smtp *s);
bool smtp_defer(struct smtp *s);

/* the transaction (smtp.c) */
void smtp_tx_reset(struct smtp *s);
void smtp_log_tx(struct smtp *s, const struct smtp_reply *r, unsigned delivered);

/* DATA (smtp_data.c); runs once smtp.c's command table lets it */
void smtp_cmd_data(struct smtp *s, const char *args, size_t len);
void smtp_data_line(struct smtp *s, const char *line, size_t len, unsigned flags);
void smtp_data_refuse(struct smtp *s, int code, const char *text);
void smtp_data_answered(struct smtp *s, const struct smtp_reply *r);

#endif
