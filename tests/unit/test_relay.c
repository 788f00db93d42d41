/* Unit tests for relay: a real libuv loop, the real backend pool, and a
 * scripted LMTP peer on a unix socket served by the same loop and thread (no
 * network, no sleeps: every wait runs the loop until a condition holds, with
 * a guard timer). Each case {name, peer script, steps, want} compares what
 * the relay reported to its client (replies, data_done, failed) and what
 * the peer received (commands verbatim, a message as "[N bytes]").
 * The hold is shortened for the test: relay.c is included here after
 * RELAY_HOLD_MS is redefined (relay.h's include guard keeps it). */
#include "relay.h"
#undef RELAY_HOLD_MS
#define RELAY_HOLD_MS 100
#include "relay.c"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "log.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define GUARD_MS 5000 /* a step that takes longer has failed */

/* ---- the scripted LMTP peer ---- */


/* The test's own byte buffers (the daemon's growbuf is a struct it owns). */
static int tbuf_append(char **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
	if (*len + n > *cap) {
		size_t c = *cap ? *cap * 2 : 1024;
		while (c < *len + n)
			c *= 2;
		char *grown = realloc(*buf, c);
		if (!grown)
			return -1;
		*buf = grown;
		*cap = c;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	return 0;
}

struct peer_script {
	const char *mail;        /* reply to MAIL; NULL: 250 2.1.0 Ok */
	const char *refuse_rcpt; /* a RCPT naming this gets 550 5.1.1 */
	const char *data;        /* reply to DATA; NULL: 354 */
	const char *eod[4];      /* after the dot, one per accepted RCPT; NULL: 250 2.0.0 Ok */
	/* close the connection instead of answering "MAIL", "RCPT", "DATA" or
	 * the final dot ("EOD"); "BODY": at the first message bytes */
	const char *close_at;
	/* withhold the answers until this many MAIL/RCPT lines are in, then
	 * send them in one write: a relay that waited for each answer before
	 * the next command would hang */
	unsigned together;
};

struct peer;

struct peer_conn {
	uv_pipe_t pipe;
	struct peer *peer;
	bool open;
	bool in_data;
	bool in_tx;
	unsigned accepted;
	unsigned together_seen;
	size_t msglen;
	size_t linelen;
	char line[4096];
	char *out;
	size_t outlen, outcap;
};

struct peer {
	uv_pipe_t server;
	bool listening;
	const struct peer_script *s;
	struct peer_conn *conns[8];
	unsigned nconns;
	char record[16384]; /* what it received, see the top of the file */
	size_t reclen;
	char *msg; /* the last message, as received (stuffed, no final dot) */
	size_t msglen, msgcap;
};

static void peer_note(struct peer *p, const char *text, size_t len)
{
	if (p->reclen + len >= sizeof p->record)
		len = sizeof p->record - 1 - p->reclen;
	memcpy(p->record + p->reclen, text, len);
	p->reclen += len;
	p->record[p->reclen] = '\0';
}

static void peer_notef(struct peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void peer_notef(struct peer *p, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	peer_note(p, buf, (size_t)n);
}

static void peer_say(struct peer_conn *pc, const char *reply)
{
	size_t n = strlen(reply);
	if (tbuf_append(&pc->out, &pc->outlen, &pc->outcap, reply, n) < 0 ||
	    tbuf_append(&pc->out, &pc->outlen, &pc->outcap, "\r\n", 2) < 0)
		abort();
}

static void peer_write_cb(uv_write_t *w, int status)
{
	free(w->data);
	free(w);
}

static void peer_flush(struct peer_conn *pc)
{
	if (!pc->outlen || !pc->open)
		return;
	uv_write_t *w = malloc(sizeof *w);
	uv_buf_t b = uv_buf_init(pc->out, (unsigned)pc->outlen);
	w->data = pc->out;
	pc->out = NULL;
	pc->outlen = pc->outcap = 0;
	if (uv_write(w, (uv_stream_t *)&pc->pipe, &b, 1, peer_write_cb) != 0) {
		free(w->data);
		free(w);
	}
}

static void peer_conn_closed_cb(uv_handle_t *h)
{
	struct peer_conn *pc = h->data;
	free(pc->out);
	pc->out = NULL;
}

static void peer_close(struct peer_conn *pc)
{
	if (!pc->open)
		return;
	pc->open = false;
	uv_close((uv_handle_t *)&pc->pipe, peer_conn_closed_cb);
}

static bool peer_closes_at(const struct peer_conn *pc, const char *stage)
{
	return pc->peer->s->close_at && strcmp(pc->peer->s->close_at, stage) == 0;
}

/* One line (with its CRLF) in data mode. */
static void peer_data_line(struct peer_conn *pc, const char *line, size_t len)
{
	struct peer *p = pc->peer;
	if (len == 3 && memcmp(line, ".\r\n", 3) == 0) {
		pc->in_data = false;
		pc->in_tx = false;
		peer_notef(p, "[%zu bytes]\r\n", pc->msglen);
		if (peer_closes_at(pc, "EOD"))
			return peer_close(pc);
		for (unsigned i = 0; i < pc->accepted; i++)
			peer_say(pc, i < N_ELEMS(p->s->eod) && p->s->eod[i] ? p->s->eod[i] : "250 2.0.0 Ok");
		pc->accepted = 0;
		return;
	}
	if (peer_closes_at(pc, "BODY"))
		return peer_close(pc);
	if (tbuf_append(&p->msg, &p->msglen, &p->msgcap, line, len) < 0)
		abort();
	pc->msglen += len;
}

static void peer_command(struct peer_conn *pc, const char *line, size_t len)
{
	struct peer *p = pc->peer;
	const struct peer_script *s = p->s;
	peer_note(p, line, len);
	char verb[5] = "";
	for (size_t i = 0; i < 4 && i < len; i++)
		verb[i] = (char)(line[i] & ~0x20);
	if (strcmp(verb, "LHLO") == 0) {
		peer_say(pc, "250-peer.example");
		peer_say(pc, "250-PIPELINING");
		peer_say(pc, "250 ENHANCEDSTATUSCODES");
	} else if (strcmp(verb, "MAIL") == 0) {
		if (peer_closes_at(pc, "MAIL"))
			return peer_close(pc);
		const char *r = s->mail ? s->mail : "250 2.1.0 Ok";
		pc->in_tx = r[0] == '2';
		pc->accepted = 0;
		pc->together_seen++;
		peer_say(pc, r);
	} else if (strcmp(verb, "RCPT") == 0) {
		if (peer_closes_at(pc, "RCPT"))
			return peer_close(pc);
		pc->together_seen++;
		if (!pc->in_tx) {
			peer_say(pc, "503 5.5.1 MAIL first");
		} else if (s->refuse_rcpt && memmem(line, len, s->refuse_rcpt, strlen(s->refuse_rcpt))) {
			peer_say(pc, "550 5.1.1 No such user");
		} else {
			pc->accepted++;
			peer_say(pc, "250 2.1.5 Ok");
		}
	} else if (strcmp(verb, "DATA") == 0) {
		if (peer_closes_at(pc, "DATA"))
			return peer_close(pc);
		const char *r = !pc->accepted ? "503 5.5.1 No recipients" : s->data ? s->data : "354 Go";
		pc->in_data = r[0] == '3';
		pc->msglen = 0;
		p->msglen = 0;
		peer_say(pc, r);
	} else if (strcmp(verb, "RSET") == 0) {
		pc->in_tx = false;
		pc->accepted = 0;
		peer_say(pc, "250 2.0.0 Ok");
	} else {
		peer_say(pc, "500 5.5.2 Unknown command");
	}
}

static void peer_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char space[65536];
	*buf = uv_buf_init(space, sizeof space);
}

static void peer_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct peer_conn *pc = st->data;
	struct peer *p = pc->peer;
	if (nread < 0) {
		if (pc->in_data)
			peer_notef(p, "[%zu bytes, cut]\r\n", pc->msglen);
		peer_note(p, "EOF\r\n", 5);
		return peer_close(pc);
	}
	for (ssize_t i = 0; i < nread && pc->open; i++) {
		if (pc->linelen < sizeof pc->line)
			pc->line[pc->linelen++] = buf->base[i];
		if (buf->base[i] != '\n')
			continue;
		if (pc->in_data)
			peer_data_line(pc, pc->line, pc->linelen);
		else
			peer_command(pc, pc->line, pc->linelen);
		pc->linelen = 0;
	}
	if (pc->together_seen == 0 || pc->together_seen >= p->s->together)
		peer_flush(pc);
}

static void peer_accept_cb(uv_stream_t *server, int status)
{
	struct peer *p = server->data;
	if (status < 0 || p->nconns == N_ELEMS(p->conns))
		return;
	struct peer_conn *pc = calloc(1, sizeof *pc);
	pc->peer = p;
	uv_pipe_init(server->loop, &pc->pipe, 0);
	pc->pipe.data = pc;
	if (uv_accept(server, (uv_stream_t *)&pc->pipe) != 0) {
		uv_close((uv_handle_t *)&pc->pipe, NULL);
		return;
	}
	pc->open = true;
	p->conns[p->nconns++] = pc;
	peer_notef(p, "#%u\r\n", p->nconns);
	peer_say(pc, "220 peer.example LMTP");
	peer_flush(pc);
	uv_read_start((uv_stream_t *)&pc->pipe, peer_alloc_cb, peer_read_cb);
}

/* ---- the client side: what the relay reports ---- */

struct client {
	char log[8192];
	size_t len;
	unsigned events;
	bool log_batches;
};

static void client_note(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void client_note(struct client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->log + c->len, sizeof c->log - c->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		c->len += (size_t)n < sizeof c->log - c->len ? (size_t)n : sizeof c->log - c->len - 1;
}

/* "CODE first line[ (lost)]" */
static void client_note_reply(struct client *c, const char *prefix, const struct smtp_reply *r)
{
	const char *nl = memchr(r->text, '\n', r->len);
	int n = (int)(nl ? (size_t)(nl - r->text) : r->len);
	client_note(c, "%s%d %.*s%s\n", prefix, r->code, n, r->text, r->lost ? " (lost)" : "");
}

static void client_hello_cb(void *ctx, const struct smtp_reply *r, unsigned caps)
{
	struct client *c = ctx;
	c->events++;
	client_note_reply(c, "hello ", r);
}

static void client_reply_cb(void *ctx, const struct smtp_reply *r)
{
	struct client *c = ctx;
	c->events++;
	client_note_reply(c, "", r);
}

static void client_data_done_cb(void *ctx, const struct smtp_reply *replies, unsigned n)
{
	struct client *c = ctx;
	c->events++;
	client_note(c, "done:\n");
	for (unsigned i = 0; i < n; i++)
		client_note_reply(c, "  ", &replies[i]);
}

static void client_failed_cb(void *ctx)
{
	struct client *c = ctx;
	c->events++;
	client_note(c, "failed\n");
}

static void client_drained_cb(void *ctx)
{
}

/* The relay has taken a backend read's replies (or a timer's, the pool's):
 * where the session would go on and write its replies. */
static void client_settled_cb(void *ctx)
{
	struct client *c = ctx;
	if (c->log_batches)
		client_note(c, "settled\n");
}

static const struct relay_cbs client_cbs = {
	.hello = client_hello_cb,
	.reply = client_reply_cb,
	.data_done = client_data_done_cb,
	.failed = client_failed_cb,
	.drained = client_drained_cb,
	.settled = client_settled_cb,
};

/* ---- cases ---- */

enum op {
	STOP,       /* the end of the steps */
	HELLO,      /* relay_hello("client.example") */
	CMD,        /* each line of ARG through relay_command, then relay_flush */
	BODY,       /* ARG through relay_data, then relay_flush */
	BIG,        /* N bytes of message in 4 KB writes, the way a session sends them */
	END,        /* relay_data_end(N) */
	ABORT,      /* relay_abort */
	PEER_CLOSE, /* the peer closes its newest connection */
	WAIT,       /* nothing: only the waits below */
};

struct step {
	enum op op;
	const char *arg;
	unsigned n;
	unsigned events;   /* then run until the client has had this many more events */
	const char *until; /* and until the peer's record ends with this */
	const char *still; /* then, after the loop settled, it must still end with this */
};

struct relay_case {
	const char *name;
	struct peer_script script;
	bool no_peer; /* nothing listens: the backend is down */
	bool log_batches;
	struct step steps[12];
	const char *want_client;
	const char *want_peer;
};

#define LHLO "#1\r\nLHLO mx.test.example\r\n"
#define MAIL_S "MAIL FROM:<s@c.example>\r\n"
#define RCPT_A "RCPT TO:<a@d.example>\r\n"
#define RCPT_B "RCPT TO:<b@d.example>\r\n"
#define RCPT_BAD "RCPT TO:<bad@d.example>\r\n"
#define MSG "Subject: x\r\n\r\nhello\r\n" /* 21 bytes */
#define OK_MAIL "250 2.1.0 Ok\n"
#define OK_RCPT "250 2.1.5 Ok\n"
#define GO_ON "354 End data with <CR><LF>.<CR><LF>\n"
#define LOST "451 4.4.2 Backend connection lost, try again later (lost)\n"

static const struct relay_case relay_cases[] = {
	{ "MAIL and RCPT pass through, DATA is answered here, the message goes with DATA at its end",
	  {}, false, false, {
		{ HELLO, NULL, 0, 1, NULL, LHLO },
		{ CMD, MAIL_S, 0, 1, MAIL_S, NULL },
		{ CMD, RCPT_A, 0, 1, RCPT_A, NULL },
		{ CMD, "DATA\r\n", 0, 1, NULL, RCPT_A },
		{ BODY, MSG, 0, 0, NULL, RCPT_A },
		{ END, NULL, 1, 1, "[21 bytes]\r\n", NULL } },
	  "hello 250 2.0.0 Ok\n" OK_MAIL OK_RCPT GO_ON "done:\n  250 2.0.0 Ok\n",
	  LHLO MAIL_S RCPT_A "DATA\r\n[21 bytes]\r\n" },

	{ "a pipelined group goes out without waiting for answers; the session goes on once",
	  { .together = 3 }, false, true, {
		{ CMD, MAIL_S RCPT_A RCPT_B "DATA\r\n", 0, 4, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ END, NULL, 2, 1, "[21 bytes]\r\n", NULL } },
	  /* one read each: the group's answers, the backend's 354 (nothing for
	   * the client), the replies after the dot */
	  OK_MAIL OK_RCPT OK_RCPT GO_ON "settled\nsettled\ndone:\n  250 2.0.0 Ok\n  250 2.0.0 Ok\n"
	  "settled\n",
	  LHLO MAIL_S RCPT_A RCPT_B "DATA\r\n[21 bytes]\r\n" },

	{ "DATA after a refused MAIL is answered 503 here, nothing more goes to the backend",
	  { .mail = "451 4.3.2 Not now" }, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, RCPT_A, RCPT_A } },
	  "451 4.3.2 Not now\n503 5.5.1 MAIL first\n503 5.5.1 No transaction: MAIL was refused\n",
	  LHLO MAIL_S RCPT_A },

	{ "DATA with every RCPT refused is answered 554 here; RSET resets the backend",
	  { .refuse_rcpt = "bad@" }, false, false, {
		{ CMD, MAIL_S RCPT_BAD "DATA\r\n", 0, 3, RCPT_BAD, RCPT_BAD },
		{ CMD, "RSET\r\n", 0, 1, "RSET\r\n", NULL } },
	  OK_MAIL "550 5.1.1 No such user\n554 5.5.1 No valid recipients\n250 2.0.0 Ok\n",
	  LHLO MAIL_S RCPT_BAD "RSET\r\n" },

	{ "RSET is answered here in its turn; the pool says RSET to the backend",
	  {}, false, false, {
		{ CMD, "RSET\r\n", 0, 1, NULL, LHLO },
		{ CMD, MAIL_S RCPT_A "RSET\r\n", 0, 3, "RSET\r\n", NULL },
		{ CMD, MAIL_S, 0, 1, "RSET\r\n" MAIL_S, NULL } },
	  "250 2.0.0 Ok\n" OK_MAIL OK_RCPT "250 2.0.0 Ok\n" OK_MAIL,
	  LHLO MAIL_S RCPT_A "RSET\r\n" MAIL_S },

	{ "one reply per accepted recipient after the dot",
	  { .refuse_rcpt = "bad@", .eod = { "250 2.0.0 <a> delivered", "452 4.2.2 Mailbox full" } },
	  false, false, {
		{ CMD, MAIL_S RCPT_A RCPT_BAD RCPT_B "DATA\r\n", 0, 5, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, RCPT_B },
		{ END, NULL, 2, 1, "[21 bytes]\r\n", NULL } },
	  OK_MAIL OK_RCPT "550 5.1.1 No such user\n" OK_RCPT GO_ON
	  "done:\n  250 2.0.0 <a> delivered\n  452 4.2.2 Mailbox full\n",
	  LHLO MAIL_S RCPT_A RCPT_BAD RCPT_B "DATA\r\n[21 bytes]\r\n" },

	{ "the backend's DATA refusal is the message's answer",
	  { .data = "452 4.3.1 Insufficient system storage" }, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ END, NULL, 1, 1, "RSET\r\n", NULL } },
	  OK_MAIL OK_RCPT GO_ON "done:\n  452 4.3.1 Insufficient system storage\n",
	  LHLO MAIL_S RCPT_A "DATA\r\nRSET\r\n" },

	{ "a message over RELAY_HOLD_MAX is streamed before its end, byte for byte",
	  {}, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BIG, NULL, 200000, 0, "DATA\r\n", NULL },
		{ END, NULL, 1, 1, "[200000 bytes]\r\n", NULL } },
	  OK_MAIL OK_RCPT GO_ON "done:\n  250 2.0.0 Ok\n",
	  LHLO MAIL_S RCPT_A "DATA\r\n[200000 bytes]\r\n" },

	{ "a client silent for RELAY_HOLD_MS gives the connection back (RSET); its next "
	  "command says MAIL and the accepted RCPTs again first",
	  { .refuse_rcpt = "bad@" }, false, false, {
		{ CMD, MAIL_S RCPT_A RCPT_BAD, 0, 3, NULL, NULL },
		{ WAIT, NULL, 0, 0, "RSET\r\n", NULL },
		{ CMD, RCPT_B, 0, 1, NULL, NULL },
		{ CMD, "DATA\r\n", 0, 1, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, RCPT_B },
		{ END, NULL, 2, 1, "[21 bytes]\r\n", NULL } },
	  OK_MAIL OK_RCPT "550 5.1.1 No such user\n" OK_RCPT GO_ON
	  "done:\n  250 2.0.0 Ok\n  250 2.0.0 Ok\n",
	  LHLO MAIL_S RCPT_A RCPT_BAD "RSET\r\n" MAIL_S RCPT_A RCPT_B "DATA\r\n[21 bytes]\r\n" },

	{ "a message not complete RELAY_HOLD_MS after DATA gives the connection back; at its "
	  "end MAIL, RCPT, DATA and the held bytes go out",
	  {}, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, "Subject: slow\r\n", 0, 0, NULL, NULL },
		{ WAIT, NULL, 0, 0, "RSET\r\n", NULL },
		{ BODY, "\r\nat last\r\n", 0, 0, NULL, "RSET\r\n" },
		{ END, NULL, 1, 1, "[26 bytes]\r\n", NULL } },
	  OK_MAIL OK_RCPT GO_ON "done:\n  250 2.0.0 Ok\n",
	  LHLO MAIL_S RCPT_A "RSET\r\n" MAIL_S RCPT_A "DATA\r\n[26 bytes]\r\n" },

	{ "connection lost awaiting MAIL's answer: 451 4.4.2",
	  { .close_at = "MAIL" }, false, false, {
		{ CMD, MAIL_S, 0, 1, NULL, NULL } },
	  LOST,
	  LHLO MAIL_S },

	{ "connection lost awaiting RCPT's answer: 451 4.4.2",
	  { .close_at = "RCPT" }, false, false, {
		{ CMD, MAIL_S, 0, 1, NULL, NULL },
		{ CMD, RCPT_A, 0, 1, NULL, NULL } },
	  OK_MAIL LOST,
	  LHLO MAIL_S RCPT_A },

	{ "connection lost while the message is held: failed at once, 451 at its end",
	  {}, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ PEER_CLOSE, NULL, 0, 1, NULL, NULL },
		{ END, NULL, 1, 1, NULL, RCPT_A } },
	  OK_MAIL OK_RCPT GO_ON "failed\ndone:\n" "  " LOST,
	  LHLO MAIL_S RCPT_A },

	{ "connection lost at the backend's DATA: 451 4.4.2, no message",
	  { .close_at = "DATA" }, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ END, NULL, 1, 1, NULL, "DATA\r\n" } },
	  OK_MAIL OK_RCPT GO_ON "done:\n" "  " LOST,
	  LHLO MAIL_S RCPT_A "DATA\r\n" },

	{ "connection lost while streaming: failed at once, 451 at the end",
	  { .close_at = "BODY" }, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BIG, NULL, 200000, 1, NULL, NULL },
		{ END, NULL, 1, 1, NULL, "DATA\r\n" } },
	  OK_MAIL OK_RCPT GO_ON "failed\ndone:\n" "  " LOST,
	  LHLO MAIL_S RCPT_A "DATA\r\n" },

	{ "connection lost after the final dot: 451 4.4.2, \"after the message\"",
	  { .close_at = "EOD" }, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ END, NULL, 1, 1, NULL, "[21 bytes]\r\n" } },
	  OK_MAIL OK_RCPT GO_ON
	  "done:\n  451 4.4.2 Backend connection lost after the message, try again later (lost)\n",
	  LHLO MAIL_S RCPT_A "DATA\r\n[21 bytes]\r\n" },

	{ "abort while streaming closes the connection without the final dot",
	  {}, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BIG, NULL, 100000, 0, "DATA\r\n", NULL },
		{ ABORT, NULL, 0, 0, "EOF\r\n", NULL } },
	  OK_MAIL OK_RCPT GO_ON,
	  LHLO MAIL_S RCPT_A "DATA\r\n[100000 bytes, cut]\r\nEOF\r\n" },

	{ "abort while the message is held: RSET, nothing of it was sent",
	  {}, false, false, {
		{ CMD, MAIL_S RCPT_A "DATA\r\n", 0, 3, NULL, NULL },
		{ BODY, MSG, 0, 0, NULL, NULL },
		{ ABORT, NULL, 0, 0, "RSET\r\n", NULL } },
	  OK_MAIL OK_RCPT GO_ON,
	  LHLO MAIL_S RCPT_A "RSET\r\n" },

	{ "backend down: EHLO learns nothing, MAIL gets 451 4.4.1",
	  {}, true, false, {
		{ HELLO, NULL, 0, 1, NULL, NULL },
		{ CMD, MAIL_S, 0, 1, NULL, NULL } },
	  "hello 451 4.4.1 Backend capabilities not known yet (lost)\n"
	  "451 4.4.1 Backend unavailable, try again later (lost)\n",
	  "" },
};

/* ---- running a case ---- */

struct tcase {
	uv_loop_t loop;
	uv_timer_t guard;
	bool timed_out;
	struct peer peer;
	struct client client;
	struct backend_pool *pool;
	struct relay *relay;
	char *sent; /* BIG: the message bytes given to the relay */
	size_t sentlen, sentcap;
};

static struct config *test_cfg;
static char sock_path[108];

static void guard_cb(uv_timer_t *t)
{
	struct tcase *tc = t->data;
	tc->timed_out = true;
}

static bool peer_ends_with(const struct peer *p, const char *s)
{
	size_t n = strlen(s);
	return p->reclen >= n && memcmp(p->record + p->reclen - n, s, n) == 0;
}

/* Runs the loop until COND(TC, ARG) holds; false after GUARD_MS. */
static bool run_until(struct tcase *tc, bool (*cond)(struct tcase *, const void *), const void *arg)
{
	tc->timed_out = false;
	uv_timer_start(&tc->guard, guard_cb, GUARD_MS, 0);
	while (!cond(tc, arg) && !tc->timed_out)
		uv_run(&tc->loop, UV_RUN_ONCE);
	uv_timer_stop(&tc->guard);
	return !tc->timed_out;
}

/* Lets what is in flight arrive: replies to what was just written. */
static void settle(struct tcase *tc)
{
	for (int i = 0; i < 20; i++)
		uv_run(&tc->loop, UV_RUN_NOWAIT);
}

static bool events_reached(struct tcase *tc, const void *arg)
{
	return tc->client.events >= *(const unsigned *)arg;
}

static bool peer_reached(struct tcase *tc, const void *arg)
{
	return peer_ends_with(&tc->peer, arg);
}

static bool caps_known(struct tcase *tc, const void *arg)
{
	bool known;
	backend_pool_caps(tc->pool, &known);
	return known;
}

static bool drained_below(struct tcase *tc, const void *arg)
{
	return relay_pending(tc->relay) <= *(const size_t *)arg;
}

/* A session's way of sending a big message: 4 KB at a time, waiting while
 * more than RELAY_HIGH_WATER is pending. */
static void send_big(struct tcase *tc, size_t n)
{
	tc->sentlen = 0;
	for (unsigned i = 0; tc->sentlen < n; i++) {
		char line[100];
		int len = snprintf(line, sizeof line, "line %06u %s\r\n", i,
		                   "................................................................");
		if (tc->sentlen + (size_t)len > n) {
			len = (int)(n - tc->sentlen);
			memset(line, 'z', (size_t)len);
			if (len >= 2)
				memcpy(line + len - 2, "\r\n", 2);
		}
		if (tbuf_append(&tc->sent, &tc->sentlen, &tc->sentcap, line, (size_t)len) < 0)
			abort();
	}
	size_t low = RELAY_LOW_WATER, zero = 0;
	for (size_t off = 0; off < n; off += 4096) {
		size_t len = n - off < 4096 ? n - off : 4096;
		relay_data(tc->relay, tc->sent + off, len);
		relay_flush(tc->relay);
		if (relay_pending(tc->relay) > RELAY_HIGH_WATER &&
		    !CHECK(run_until(tc, drained_below, &low), "stuck above the high-water mark"))
			return;
	}
	CHECK(run_until(tc, drained_below, &zero), "the message never left");
}

static void run_step(struct tcase *tc, const struct step *s, unsigned idx)
{
	struct relay *r = tc->relay;
	unsigned want_events = tc->client.events + s->events;
	switch (s->op) {
	case HELLO:
		relay_hello(r, "client.example");
		break;
	case CMD:
		for (const char *p = s->arg; *p;) {
			const char *nl = strchr(p, '\n');
			relay_command(r, p, (size_t)(nl + 1 - p));
			p = nl + 1;
		}
		relay_flush(r);
		break;
	case BODY:
		relay_data(r, s->arg, strlen(s->arg));
		relay_flush(r);
		break;
	case BIG:
		send_big(tc, s->n);
		break;
	case END:
		relay_data_end(r, s->n);
		break;
	case ABORT:
		relay_abort(r);
		break;
	case PEER_CLOSE:
		peer_close(tc->peer.conns[tc->peer.nconns - 1]);
		break;
	case WAIT:
	case STOP:
		break;
	}
	if (!CHECK(run_until(tc, events_reached, &want_events), "step %u: %u client events, want %u",
	           idx, tc->client.events, want_events))
		return;
	if (s->until && !CHECK(run_until(tc, peer_reached, s->until),
	                       "step %u: the peer's record does not end with %s", idx, s->until))
		return;
	settle(tc);
	if (s->still)
		CHECK(peer_ends_with(&tc->peer, s->still), "step %u: the peer's record no longer ends "
		      "with %s", idx, s->still);
}

static void run_case(const struct relay_case *c)
{
	check_case(c->name);
	struct tcase *tc = calloc(1, sizeof *tc);
	uv_loop_init(&tc->loop);
	uv_timer_init(&tc->loop, &tc->guard);
	tc->guard.data = tc;
	tc->peer.s = &c->script;
	tc->client.log_batches = c->log_batches;
	unlink(sock_path);
	if (!c->no_peer) {
		uv_pipe_init(&tc->loop, &tc->peer.server, 0);
		tc->peer.server.data = &tc->peer;
		int rc = uv_pipe_bind(&tc->peer.server, sock_path);
		if (rc == 0)
			rc = uv_listen((uv_stream_t *)&tc->peer.server, 8, peer_accept_cb);
		CHECK(rc == 0, "listen on %s: %s", sock_path, rc ? uv_strerror(rc) : "");
		tc->peer.listening = true;
	}
	tc->pool = backend_pool_new(&tc->loop, test_cfg, 1);
	tc->relay = relay_new(&tc->loop, tc->pool, test_cfg, &client_cbs, &tc->client, "test",
	                      "192.0.2.7", 40000);
	bool ready = c->no_peer || CHECK(run_until(tc, caps_known, NULL), "the pool never got "
	                                 "the peer's LHLO reply");
	for (unsigned i = 0; ready && i < N_ELEMS(c->steps) && c->steps[i].op != STOP; i++) {
		unsigned failed = check_failed;
		run_step(tc, &c->steps[i], i);
		if (check_failed != failed)
			break;
	}
	CHECK_MEM_EQ(tc->client.log, tc->client.len, c->want_client);
	CHECK_MEM_EQ(tc->peer.record, tc->peer.reclen, c->want_peer);
	if (tc->sentlen && !c->script.close_at)
		CHECK(tc->peer.msglen == tc->sentlen && memcmp(tc->peer.msg, tc->sent, tc->sentlen) == 0,
		      "the message at the peer differs from the one sent (%zu, %zu bytes)",
		      tc->peer.msglen, tc->sentlen);

	relay_free(tc->relay);
	backend_pool_free(tc->pool);
	for (unsigned i = 0; i < tc->peer.nconns; i++)
		peer_close(tc->peer.conns[i]);
	if (tc->peer.listening)
		uv_close((uv_handle_t *)&tc->peer.server, NULL);
	uv_close((uv_handle_t *)&tc->guard, NULL);
	uv_run(&tc->loop, UV_RUN_DEFAULT);
	CHECK(uv_loop_close(&tc->loop) == 0, "handles left open on the loop");
	for (unsigned i = 0; i < tc->peer.nconns; i++)
		free(tc->peer.conns[i]);
	free(tc->peer.msg);
	free(tc->sent);
	free(tc);
}

static struct config *load_config(const char *dir)
{
	char path[256], err[512];
	snprintf(path, sizeof path, "%s/mxfront.conf", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return NULL;
	fprintf(f, "[server]\nhostname = mx.test.example\n"
	           "[backend]\naddress = unix:%s\nmax_connections = 4\ntimeout = 5s\n"
	           "connect_timeout = 2s\n[tls]\ncerts_dir =\n", sock_path);
	fclose(f);
	struct config *cfg = NULL;
	if (config_load(path, &cfg, err, sizeof err) < 0)
		fprintf(stderr, "config: %s\n", err);
	unlink(path);
	return cfg;
}

int main(void)
{
	log_set_level(LOG_LEVEL_ERROR);
	char dir[] = "/tmp/mxfront-test-relay-XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(sock_path, sizeof sock_path, "%s/lmtp.sock", dir);
	test_cfg = load_config(dir);
	if (!CHECK(test_cfg != NULL, "no configuration"))
		return check_summary();
	for (size_t i = 0; i < N_ELEMS(relay_cases); i++)
		run_case(&relay_cases[i]);
	config_unref(test_cfg);
	unlink(sock_path);
	rmdir(dir);
	return check_summary();
}
