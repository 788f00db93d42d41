/* smtp: the SMTP server state machine (RFC 5321 with PIPELINING, SIZE,
 * 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8, DSN). Pure: it is fed client lines
 * and backend answers, and acts only through struct smtp_ops, so it is tested
 * by transcript without sockets. It never reads a clock other than for the
 * Received header date. */
#ifndef MXFRONT_SMTP_H
#define MXFRONT_SMTP_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "smtp_parse.h"

/* What the state machine asks of its session. Each backend_* call is
 * answered exactly once by the smtp_backend_* function named, possibly
 * before the call returns. */
struct smtp_ops {
	/* One complete reply (lines with CRLF) for the client. */
	void (*reply)(void *ctx, const char *buf, size_t len);
	/* Connect to the backend if need be; answer: smtp_backend_hello(). */
	void (*backend_hello)(void *ctx, const char *helo);
	/* One command line with CRLF (MAIL, RCPT, DATA, RSET); answer: smtp_backend_reply(). */
	void (*backend_command)(void *ctx, const char *line, size_t len);
	/* Message bytes: CRLF lines, dot-stuffed as received. No answer. */
	void (*backend_data)(void *ctx, const char *buf, size_t len);
	/* Send the final dot and collect NRCPT replies; answer: smtp_backend_data_done(). */
	void (*backend_data_end)(void *ctx, unsigned nrcpt);
	/* Abandon the backend transaction without its final dot. No answer. */
	void (*backend_abort)(void *ctx);
	/* Close the client connection once the replies queued so far are sent. */
	void (*close)(void *ctx, const char *reason);
	/* STARTTLS accepted and its 220 queued: send that, drop every byte the
	 * client sent after the command, start the handshake, then call
	 * smtp_tls_started() (or close on failure). */
	void (*starttls)(void *ctx);
};

struct smtp;

/* A new session state machine. CFG, ID and CLIENT_IP are borrowed and must
 * outlive it; the caller owns the result (smtp_free). */
struct smtp *smtp_new(const struct config *cfg, const struct smtp_ops *ops, void *ctx,
                      const char *id, const char *client_ip);
void smtp_free(struct smtp *s);

/* Whether STARTTLS may be offered (a certificate is loaded). */
void smtp_set_tls_available(struct smtp *s, bool available);

/* The TLS handshake after STARTTLS completed: the session starts over
 * (RFC 3207 4.2: the client must EHLO again). INFO, e.g.
 * "TLS1.3 AES-128-GCM sni=mx.example.com", goes into Received headers. */
void smtp_tls_started(struct smtp *s, const char *info);

/* Sends the 220 greeting. */
void smtp_greet(struct smtp *s);

/* Feeds one line as framed by smtp_frame (ending included) with its flags. */
void smtp_line(struct smtp *s, const char *line, size_t len, unsigned flags);

/* True when no line may be fed now: a backend answer must come first.
 * With a backend that offers PIPELINING, RCPT and DATA lines may still be
 * fed while MAIL and RCPT answers are awaited. */
bool smtp_busy(const struct smtp *s);

/* True while any backend answer is awaited (the client is not at fault
 * for the silence). */
bool smtp_waiting(const struct smtp *s);

/* True between transactions with no backend answer awaited: the session
 * may be ended without cutting anything. */
bool smtp_idle(const struct smtp *s);

/* True once the final dot went to the backend and its verdict is awaited:
 * cutting the session now could deliver without telling the client. */
bool smtp_delivering(const struct smtp *s);

/* True while receiving message data (the framing limit is then the text line limit). */
bool smtp_in_data(const struct smtp *s);

/* Ends the session from our side (timeout, shutdown): drops any message in
 * progress at the backend, sends "421 4.x.x HOSTNAME TEXT" and closes.
 * ENHANCED is the enhanced status code ("4.4.2"), REASON goes to the log. */
void smtp_goodbye(struct smtp *s, const char *enhanced, const char *text, const char *reason);

/* Instead of the greeting, for a client that talked before it (RFC 5321
 * 3.1): sends "554 5.5.0 HOSTNAME SMTP synchronization error: talked before
 * the greeting" and closes ("early_talker"). Nothing is taken after it. */
void smtp_early_talker(struct smtp *s);

/* Instead of the greeting, for a connection over a limit: sends "421 4.7.0
 * HOSTNAME WHY" (WHY borrowed, e.g. "Too many connections, try again
 * later") and closes ("refused"). Nothing is taken after it. */
void smtp_refuse(struct smtp *s, const char *why);

/* Answers to the ops above. R is borrowed for the call. CAPS is a set of
 * SMTP_EXT_* bits (0 when the backend could not be reached). */
void smtp_backend_hello(struct smtp *s, const struct smtp_reply *r, unsigned caps);
void smtp_backend_reply(struct smtp *s, const struct smtp_reply *r);
void smtp_backend_data_done(struct smtp *s, const struct smtp_reply *replies, unsigned n);

/* The backend connection broke while no answer was awaited (e.g. during
 * message data): the current message, if any, will be refused with a 4xx. */
void smtp_backend_failed(struct smtp *s);

/* Commands received so far (for the disconnect log line). */
unsigned smtp_commands(const struct smtp *s);

/* Maps the per-recipient LMTP replies R[0..N) to the one SMTP reply OUT
 * (DESIGN.md): all 2xx → 250; none → the first refusal (a 4xx one if any);
 * mixed → 451 4.3.0. Returns how many recipients got the message. */
unsigned smtp_map_lmtp(const struct smtp_reply *r, unsigned n, struct smtp_reply *out);

#endif
