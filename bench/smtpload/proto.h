/* proto: the SMTP client of one connection: fed reply lines, it decides the
 * next commands (EHLO, STARTTLS, MAIL/RCPT/DATA pipelined per RFC 2920, the
 * message, RSET, QUIT) and records outcomes. Never touches a socket: it queues
 * text with conn_puts/conn_put_body and closes with conn_close. */
#ifndef SMTPLOAD_PROTO_H
#define SMTPLOAD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;

enum proto_exp {
	PROTO_EXP_GREETING,
	PROTO_EXP_EHLO,
	PROTO_EXP_STARTTLS,
	PROTO_EXP_MAIL,
	PROTO_EXP_RCPT,
	PROTO_EXP_DATA,
	PROTO_EXP_DOT,
	PROTO_EXP_RSET,
	PROTO_EXP_QUIT,
};

/* One reply awaited, in the order the commands went out. */
struct proto_wait {
	uint8_t kind;    /* enum proto_exp */
	uint64_t t0;     /* PROTO_EXP_DOT: when that transaction's MAIL was queued */
};

/* Embedded in struct conn; the ring is allocated once per slot. */
struct proto {
	struct proto_wait *q;
	unsigned qcap, qhead, qlen;
	/* per connection */
	bool pipelining, starttls_offered, size_offered;
	bool tls_done, established, idle, quit_sent, next_started;
	unsigned msgs;
	size_t sni_slot;
	const char *sni;
	uint64_t t_starttls;
	/* the transaction whose MAIL..DATA replies are awaited */
	uint64_t txn_t0;
	unsigned rcpt_sent, rcpt_ok;
	bool txn_failed;
};

/* Allocates the reply ring for RCPTS recipients per message; 0 or -1. */
int proto_init(struct proto *p, unsigned rcpts);
void proto_fini(struct proto *p);
/* Resets per-connection state; SNI (borrowed from opts) and SLOT choose the TLS name. */
void proto_reset(struct proto *p, const char *sni, size_t slot);

/* TCP is up: the greeting is awaited. */
void proto_on_connected(struct conn *c);
/* One reply line without CRLF (borrowed for the call). */
void proto_on_line(struct conn *c, const char *line, size_t len);
/* The STARTTLS handshake finished. */
void proto_on_tls_done(struct conn *c);
/* The peer closed (EOF or close_notify): an error unless QUIT was sent. */
void proto_on_eof(struct conn *c);
/* Asked by the worker at the end of an idle hold: QUIT an idle connection. */
void proto_quit_idle(struct conn *c);
/* Awaiting any reply (as opposed to holding idle). */
bool proto_waiting(const struct conn *c);

#endif
