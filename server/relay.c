/* relay: one session's transactions at the backend. Owns the connection it
 * has borrowed (until it gives it back to the pool), the commands awaiting
 * answers, the transaction's MAIL and accepted RCPT lines (to say them again
 * on another connection), the message bytes held before DATA and its timer.
 * Reports every outcome through relay_cbs; never replies to the SMTP client
 * and never holds more than RELAY_HIGH_WATER plus one chunk of message. */
#include "relay.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "growbuf.h"
#include "log.h"
#include "metrics.h"

#define RELAY_CHUNK (16 * 1024)
#define RELAY_LOW_WATER (32 * 1024)
#define RELAY_FIFO 64

enum relay_phase {
	RELAY_NONE,     /* no connection */
	RELAY_WAITING,  /* asked the pool for one */
	RELAY_SETUP,    /* XCLIENT, LHLO or the replay of the transaction under way */
	RELAY_OPEN,     /* commands flow */
	RELAY_DATA_CMD, /* the backend's DATA sent, its 354 awaited */
	RELAY_STREAM,   /* message bytes flowing */
	RELAY_EOD,      /* final dot sent, per-recipient replies awaited */
};

static const char *const relay_phase_names[] = {
	"idle", "waiting", "setup", "command", "data", "data", "end_of_data",
};

/* What a client command awaits, in order. DATA and RSET are answered here. */
enum relay_kind { RELAY_K_MAIL, RELAY_K_RCPT, RELAY_K_DATA, RELAY_K_RSET };

enum relay_setup { RELAY_SETUP_XCLIENT, RELAY_SETUP_LHLO, RELAY_SETUP_REPLAY, RELAY_SETUP_DONE };

struct relay {
	uv_loop_t *loop;
	struct backend_pool *pool;
	const struct config *cfg;
	const struct relay_cbs *cbs;
	void *ctx;
	const char *id;
	const char *client_ip;
	int client_port;
	char helo[256];

	struct backend_waiter waiter;
	struct backend_conn *conn; /* borrowed from the pool */
	enum relay_phase phase;
	uv_timer_t timer;          /* the hold, and stalls while streaming */
	bool freeing;
	bool in_command;           /* inside relay_command: relay_flush() writes */
	bool reading;              /* inside one backend read: settle at its end */
	uint64_t last_active;      /* the client's last command or message bytes */
	uint64_t stall_mark;

	/* client commands awaiting answers, oldest first */
	unsigned char fifo[RELAY_FIFO];
	unsigned fhead, flen;
	/* their MAIL/RCPT lines: answered up to pend_off, written up to sent_off */
	struct growbuf pend;
	size_t pend_off, sent_off;
	unsigned inflight; /* written, unanswered */

	/* the transaction as the backend has it */
	unsigned ntx;      /* MAILs accepted: the transaction id's number, as smtp counts */
	bool tx_logged;    /* its accepted recipients have had their event=rcpt line */
	uint64_t cmd_ns;   /* when the oldest unanswered MAIL/RCPT was written */
	uint64_t eod_ns;   /* when the final dot was written */
	bool tx_open;      /* MAIL accepted */
	bool parked;       /* open, but its connection went back: say it again first */
	struct growbuf tx; /* the MAIL line, then each accepted RCPT line */
	unsigned nacc;
	enum relay_setup setup;
	size_t replay_off;
	unsigned replay_left;
	char xclient[320]; /* the facts being said with XCLIENT */

	/* the message */
	bool holding;      /* DATA answered here: bytes are held until DATA goes out */
	bool data_due;     /* the backend's DATA goes out once a connection is open */
	bool eod_due;      /* the final dot follows the held bytes */
	bool data_failed;  /* the connection broke during the message */
	struct smtp_reply refusal; /* code != 0: the backend refused DATA */
	struct backend_wbuf **held;
	unsigned nheld, heldcap;
	size_t held_bytes;
	struct backend_wbuf *wcur; /* streaming: bytes gathered, not yet written */
	bool above_high;
	struct smtp_reply *replies; /* per-recipient replies after the dot, owned */
	unsigned nexpect, ngot;
};

static const struct backend_conn_cbs relay_conn_cbs;
static void relay_settle(struct relay *r);

static void relay_lost(struct smtp_reply *out, const char *text)
{
	smtp_reply_set(out, 451, text);
	out->lost = true;
}

size_t relay_pending(const struct relay *r)
{
	return r->held_bytes + (r->wcur ? *backend_wbuf_len(r->wcur) : 0) +
	       (r->conn ? r->conn->out.pending : 0);
}

static void relay_check_drained(struct relay *r)
{
	if (r->above_high && !r->freeing && relay_pending(r) < RELAY_LOW_WATER) {
		r->above_high = false;
		r->cbs->drained(r->ctx);
	}
}

/* ---- the message buffers ---- */

static void relay_drop_message(struct relay *r)
{
	for (unsigned i = 0; i < r->nheld; i++)
		free(r->held[i]);
	r->nheld = 0;
	r->held_bytes = 0;
	free(r->wcur);
	r->wcur = NULL;
	r->holding = r->data_due = r->eod_due = false;
}

/* ---- one log line per recipient ---- */

/* The address of a MAIL/RCPT line ("RCPT TO:<a@b> NOTIFY=..."), quoted for
 * a log value. */
static const char *relay_line_addr(const char *line, size_t len, char *out, size_t size)
{
	const char *lt = memchr(line, '<', len);
	const char *gt = lt ? memchr(lt, '>', len - (size_t)(lt - line)) : NULL;
	if (!lt || !gt)
		return log_quote(out, size, line, len);
	return log_quote(out, size, lt, (size_t)(gt + 1 - lt));
}

/* The backend's id for a delivered message, when its reply names one:
 * Dovecot's "250 2.0.0 <user> ID Saved", Postfix's "... queued as ID". */
static bool relay_queue_id(const struct smtp_reply *rep, char *out, size_t size)
{
	const char *t = rep->text, *end = rep->text + rep->len, *p;
	size_t n;
	if ((p = memmem(t, rep->len, "queued as ", 10)) != NULL) {
		p += 10;
	} else if ((p = memchr(t, '<', rep->len)) != NULL && (p = memchr(p, '>', (size_t)(end - p)))) {
		p++;
		while (p < end && *p == ' ')
			p++;
	} else {
		return false;
	}
	for (n = 0; p + n < end && n + 1 < size; n++) {
		char c = p[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '+' || c == '/' || c == ':' || c == '=' || c == '_' || c == '-' || c == '.'))
			break;
	}
	/* A word such as "Ok" is not an id. */
	if (n < 6)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return true;
}

/* One recipient's outcome: REP the backend's reply (NULL: none came, the
 * transaction ended before). STAGE: rcpt, data or aborted. */
static void relay_log_rcpt(const struct relay *r, const char *line, size_t len, unsigned ntx,
                           const struct smtp_reply *rep, const char *stage)
{
	char addr[300], reply[300], text[SMTP_REPLY_TEXT_MAX + 8], qid[80], id[40] = "-";
	const char *result = !rep ? "not_delivered" : rep->code / 100 == 2 ? "delivered"
	                     : rep->code / 100 == 5 ? "refused" : "deferred";
	if (ntx)
		snprintf(id, sizeof id, "%s.%u", r->id, ntx);
	if (rep && rep->code / 100 == 2 && strcmp(stage, "rcpt") == 0)
		result = "accepted";
	int n = rep ? snprintf(text, sizeof text, "%d %.*s", rep->code, (int)rep->len, rep->text) : 0;
	bool has_qid = rep && rep->code / 100 == 2 && !rep->lost && relay_queue_id(rep, qid, sizeof qid);
	log_info("sess=%s event=rcpt id=%s rcpt=%s result=%s stage=%s reply=%s%s%s", r->id, id,
	         relay_line_addr(line, len, addr, sizeof addr), result, stage,
	         log_quote(reply, sizeof reply, text, n > 0 ? (size_t)n : 0),
	         has_qid ? " queue_id=" : "", has_qid ? log_quote(qid, sizeof qid, qid, strlen(qid)) : "");
}

/* The accepted recipients of the transaction (its RCPT lines in r->tx),
 * each with REPLIES[i] (N of them; N == 0: REPLIES[0] for every one; NULL:
 * none came); once per transaction. */
static void relay_log_accepted(struct relay *r, const struct smtp_reply *replies, unsigned n,
                               const char *stage)
{
	if (r->tx_logged || !r->tx.len)
		return;
	r->tx_logged = true;
	const char *p = r->tx.data, *end = r->tx.data + r->tx.len;
	const char *nl = memchr(p, '\n', (size_t)(end - p)); /* the MAIL line */
	for (unsigned i = 0; nl && nl + 1 < end; i++) {
		p = nl + 1;
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break;
		const struct smtp_reply *rep = !replies ? NULL : n == 0 ? replies : i < n ? &replies[i]
		                                                                                : NULL;
		relay_log_rcpt(r, p, (size_t)(nl + 1 - p), r->ntx, rep, rep ? stage : "aborted");
	}
}

/* The transaction is over at this end (done, refused, reset or lost). */
static void relay_forget_tx(struct relay *r)
{
	relay_log_accepted(r, NULL, 0, "aborted");
	r->tx_logged = false;
	r->tx_open = r->parked = false;
	r->tx.len = 0;
	r->nacc = 0;
	r->refusal.code = 0;
	r->data_failed = false;
	relay_drop_message(r);
}

static void relay_forget_commands(struct relay *r)
{
	r->flen = 0;
	r->pend.len = r->pend_off = r->sent_off = 0;
	r->inflight = 0;
}

/* ---- the connection ---- */

static void relay_give_back(struct relay *r, enum backend_put how)
{
	if (r->phase == RELAY_WAITING)
		backend_pool_cancel(r->pool, &r->waiter);
	if (r->conn) {
		struct backend_conn *c = r->conn;
		r->conn = NULL;
		backend_pool_put(r->pool, c, how);
	}
	r->phase = RELAY_NONE;
	uv_timer_stop(&r->timer);
}

/* How a connection in this state goes back: reused only at a command
 * boundary with nothing unanswered. */
static enum backend_put relay_put_how(const struct relay *r)
{
	if (r->phase != RELAY_OPEN || r->inflight)
		return BACKEND_PUT_CLOSE;
	return r->tx_open ? BACKEND_PUT_RESET : BACKEND_PUT_CLEAN;
}

static void relay_write(struct relay *r, const char *buf, size_t len)
{
	backend_conn_write(r->conn, buf, len);
}

static void relay_arm_reply(struct relay *r)
{
	backend_conn_arm(r->conn, r->cfg->backend_timeout_ms);
}

/* ---- answering the client's commands ---- */

static enum relay_kind relay_fifo_head(const struct relay *r)
{
	return (enum relay_kind)r->fifo[r->fhead];
}

static void relay_fifo_pop(struct relay *r)
{
	r->fhead = (r->fhead + 1) % RELAY_FIFO;
	r->flen--;
}

/* The line of the oldest unanswered MAIL/RCPT, consumed. */
static void relay_pend_take(struct relay *r, const char **line, size_t *len)
{
	const char *p = r->pend.data + r->pend_off;
	const char *nl = memchr(p, '\n', r->pend.len - r->pend_off);
	assert(nl);
	*line = p;
	*len = (size_t)(nl + 1 - p);
	r->pend_off += *len;
}

static void relay_pend_compact(struct relay *r)
{
	if (r->pend_off == r->pend.len && r->sent_off == r->pend.len)
		r->pend.len = r->pend_off = r->sent_off = 0;
}

/* Everything awaited gets TEXT as a made-up 4xx ("lost"); RSET still gets
 * its 250 (the transaction is gone either way). */
static void relay_answer_all(struct relay *r, const char *text)
{
	struct smtp_reply rep, ok;
	relay_lost(&rep, text);
	smtp_reply_set(&ok, 250, "2.0.0 Ok");
	unsigned n = r->flen;
	unsigned char kinds[RELAY_FIFO];
	for (unsigned i = 0; i < n; i++) {
		kinds[i] = r->fifo[(r->fhead + i) % RELAY_FIFO];
		const char *line;
		size_t len;
		if (kinds[i] != RELAY_K_MAIL && kinds[i] != RELAY_K_RCPT)
			continue;
		relay_pend_take(r, &line, &len);
		if (kinds[i] == RELAY_K_RCPT) {
			metrics_inc(METRICS_RCPT_REFUSED);
			relay_log_rcpt(r, line, len, r->tx_open ? r->ntx : 0, &rep, "rcpt");
		}
	}
	relay_forget_commands(r);
	for (unsigned i = 0; i < n && !r->freeing; i++)
		r->cbs->reply(r->ctx, kinds[i] == RELAY_K_RSET ? &ok : &rep);
}

static void relay_need_conn(struct relay *r);
static void relay_send_data_cmd(struct relay *r);

/* DATA, answered here once every earlier answer is in: the message is held
 * until it is complete or big, so that a client that sends it slowly holds
 * no backend connection meanwhile. */
static void relay_answer_data(struct relay *r)
{
	struct smtp_reply rep;
	if (!r->tx_open) {
		smtp_reply_set(&rep, 503, "5.5.1 No transaction: MAIL was refused");
	} else if (!r->nacc) {
		smtp_reply_set(&rep, 554, "5.5.1 No valid recipients");
	} else {
		smtp_reply_set(&rep, 354, "End data with <CR><LF>.<CR><LF>");
		r->holding = true;
		r->refusal.code = 0;
	}
	r->cbs->reply(r->ctx, &rep);
}

static void relay_answer_rset(struct relay *r)
{
	struct smtp_reply ok;
	if (r->conn || r->phase == RELAY_WAITING)
		relay_give_back(r, relay_put_how(r));
	relay_forget_tx(r);
	smtp_reply_set(&ok, 250, "2.0.0 Ok");
	r->cbs->reply(r->ctx, &ok);
}

static void relay_hold_cb(uv_timer_t *t);

/* Answers the commands answered here that are next in line, then decides
 * what the idle connection does: back to the pool when no transaction is
 * open, else held for RELAY_HOLD_MS of client silence. */
static void relay_advance(struct relay *r)
{
	while (r->flen && !r->freeing) {
		enum relay_kind k = relay_fifo_head(r);
		if (k != RELAY_K_DATA && k != RELAY_K_RSET)
			return;
		relay_fifo_pop(r);
		if (k == RELAY_K_DATA)
			relay_answer_data(r);
		else
			relay_answer_rset(r);
	}
	if (r->freeing || r->phase != RELAY_OPEN || r->flen)
		return;
	if (r->data_due) {
		relay_send_data_cmd(r);
	} else if (!r->tx_open) {
		relay_give_back(r, BACKEND_PUT_CLEAN);
	} else {
		uv_timer_start(&r->timer, relay_hold_cb, RELAY_HOLD_MS, 0);
	}
}

/* ---- failures ---- */

/* The transaction cannot go on at the backend: REASON is logged, TEXT (an
 * enhanced code and words) answers everything awaited, the message in
 * progress is refused. The connection is closed if there is one. */
static void relay_fail_with(struct relay *r, const char *reason, const char *text)
{
	if (reason)
		log_warn("sess=%s event=backend_error backend=%s stage=%s reason=\"%s\"", r->id,
		         r->cfg->backend.text, relay_phase_names[r->phase], reason);
	bool eod = r->phase == RELAY_EOD || r->eod_due;
	bool dot_sent = r->phase == RELAY_EOD;
	bool in_message = r->holding || r->phase == RELAY_STREAM || r->phase == RELAY_DATA_CMD;
	/* A transaction open with nothing awaited: the client hears of it at
	 * its next step (smtp refuses what follows with a 4xx). */
	bool silent_tx = (r->tx_open || r->parked) && r->flen == 0;
	if (eod && r->nexpect) {
		/* Replies that came before the loss stand. */
		for (unsigned i = r->ngot; i < r->nexpect; i++)
			relay_lost(&r->replies[i], dot_sent ? "4.4.2 Backend connection lost after the "
			                                      "message, try again later" : text);
		relay_log_accepted(r, r->replies, r->nexpect, "data");
	}
	relay_give_back(r, BACKEND_PUT_CLOSE);
	relay_forget_tx(r);
	relay_answer_all(r, text);
	if (r->freeing)
		return;
	if (eod) {
		for (unsigned i = r->ngot; i < r->nexpect; i++)
			relay_lost(&r->replies[i], dot_sent ? "4.4.2 Backend connection lost after the "
			                                      "message, try again later" : text);
		r->cbs->data_done(r->ctx, r->replies, r->nexpect);
	} else if (in_message || silent_tx) {
		r->data_failed = in_message;
		r->cbs->failed(r->ctx);
	}
	relay_check_drained(r);
}

static void relay_fail(struct relay *r, const char *reason)
{
	bool before = r->phase == RELAY_WAITING || r->phase == RELAY_SETUP;
	relay_fail_with(r, reason, before ? "4.4.1 Backend unavailable, try again later"
	                                  : "4.4.2 Backend connection lost, try again later");
}

/* ---- getting a connection ready ---- */

/* "ADDR=... PORT=... HELO=..." for what this connection's XCLIENT takes. */
static void relay_xclient_facts(const struct relay *r, unsigned attrs, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	out[0] = '\0';
	if (attrs & BACKEND_XA_ADDR)
		o += (size_t)snprintf(out + o, size - o, " ADDR=%s%s",
		                      strchr(r->client_ip, ':') ? "IPV6:" : "", r->client_ip);
	if ((attrs & BACKEND_XA_PORT) && o < size)
		o += (size_t)snprintf(out + o, size - o, " PORT=%d", r->client_port);
	if ((attrs & BACKEND_XA_HELO) && o + 6 < size) {
		o += (size_t)snprintf(out + o, size - o, " HELO=");
		/* xtext (RFC 3461 4) */
		for (const char *p = r->helo; *p && o + 4 < size; p++) {
			unsigned char c = (unsigned char)*p;
			if (c < 33 || c > 126 || c == '+' || c == '=') {
				out[o++] = '+';
				out[o++] = hex[c >> 4];
				out[o++] = hex[c & 15];
			} else {
				out[o++] = (char)c;
			}
		}
		out[o] = '\0';
	}
}

/* Writes the lines of the transaction again: all at once to a backend that
 * pipelines, else the next one. */
static void relay_replay_next(struct relay *r)
{
	const char *p = r->tx.data + r->replay_off;
	size_t left = r->tx.len - r->replay_off;
	size_t n = left;
	if (!(r->conn->caps & SMTP_EXT_PIPELINING)) {
		const char *nl = memchr(p, '\n', left);
		n = (size_t)(nl + 1 - p);
	}
	r->replay_off += n;
	relay_write(r, p, n);
	relay_arm_reply(r);
}

static void relay_flush_commands(struct relay *r);

/* The next step of getting a borrowed connection ready for this session. */
static void relay_setup_next(struct relay *r, enum relay_setup from)
{
	struct backend_conn *c = r->conn;
	if (from <= RELAY_SETUP_XCLIENT && r->cfg->xclient && (c->caps & SMTP_EXT_XCLIENT) &&
	    c->xattrs) {
		relay_xclient_facts(r, c->xattrs, r->xclient, sizeof r->xclient);
		if (strcmp(c->xclient, r->xclient) != 0) {
			char line[400];
			int n = snprintf(line, sizeof line, "XCLIENT%s\r\n", r->xclient);
			r->setup = RELAY_SETUP_XCLIENT;
			relay_write(r, line, (size_t)n);
			relay_arm_reply(r);
			return;
		}
	}
	if (from <= RELAY_SETUP_REPLAY && r->parked && r->tx.len) {
		r->setup = RELAY_SETUP_REPLAY;
		r->replay_off = 0;
		r->replay_left = 1 + r->nacc;
		relay_replay_next(r);
		return;
	}
	r->parked = false;
	r->phase = RELAY_OPEN;
	backend_conn_disarm(c);
	/* Got at once, inside relay_command: the rest of the client's group
	 * joins this command in relay_flush()'s one write. */
	if (!r->in_command)
		relay_flush_commands(r);
	relay_advance(r);
}

static void relay_setup_reply(struct relay *r, const struct smtp_reply *rep)
{
	switch (r->setup) {
	case RELAY_SETUP_XCLIENT:
		/* This session's facts are on the connection from now on (or the
		 * backend refused them: not asked again for this session). */
		snprintf(r->conn->xclient, sizeof r->conn->xclient, "%s", r->xclient);
		if (rep->code / 100 != 2) {
			log_warn("sess=%s event=xclient_refused code=%d", r->id, rep->code);
			return relay_setup_next(r, RELAY_SETUP_REPLAY);
		}
		/* XCLIENT starts the session over with a new greeting; LHLO again
		 * with the client's own name so the backend records it (Dovecot,
		 * Postfix). */
		char line[300];
		int n = snprintf(line, sizeof line, "LHLO %s\r\n", r->helo[0] ? r->helo : r->cfg->hostname);
		r->setup = RELAY_SETUP_LHLO;
		backend_conn_expect_lhlo(r->conn);
		relay_write(r, line, (size_t)n);
		relay_arm_reply(r);
		return;
	case RELAY_SETUP_LHLO:
		if (rep->code != 250)
			return relay_fail(r, "LHLO after XCLIENT refused");
		return relay_setup_next(r, RELAY_SETUP_REPLAY);
	case RELAY_SETUP_REPLAY:
		if (rep->code / 100 != 2) {
			/* What the client was told no longer holds: the transaction is
			 * lost (a 4xx for it), never half of it delivered. */
			char why[80];
			snprintf(why, sizeof why, "transaction refused when resumed (%d)", rep->code);
			return relay_fail(r, why);
		}
		if (--r->replay_left == 0)
			return relay_setup_next(r, RELAY_SETUP_DONE);
		if (!(r->conn->caps & SMTP_EXT_PIPELINING))
			relay_replay_next(r);
		else
			relay_arm_reply(r);
		return;
	case RELAY_SETUP_DONE:
		return relay_fail(r, "reply without a command");
	}
}

static void relay_ready_cb(struct backend_waiter *w, struct backend_conn *c,
                           enum backend_get_result result)
{
	struct relay *r = (struct relay *)((char *)w - offsetof(struct relay, waiter));
	if (result == BACKEND_GOT) {
		r->conn = c;
		r->phase = RELAY_SETUP;
		backend_conn_set_owner(c, &relay_conn_cbs, r);
		relay_setup_next(r, RELAY_SETUP_XCLIENT);
		if (!r->in_command)
			relay_settle(r);
		return;
	}
	r->phase = RELAY_NONE;
	if (result == BACKEND_BUSY) {
		metrics_inc(METRICS_LIMIT_BACKEND_QUEUE);
		log_warn("sess=%s event=limit kind=backend_queue client=%s wait_ms=%u", r->id,
		         r->client_ip, r->cfg->backend_queue_timeout_ms);
		relay_fail_with(r, NULL, "4.3.2 Backend busy, try again later");
	} else {
		relay_fail_with(r, NULL, "4.4.1 Backend unavailable, try again later");
	}
	if (!r->in_command)
		relay_settle(r);
}

static void relay_need_conn(struct relay *r)
{
	if (r->phase != RELAY_NONE)
		return;
	r->phase = RELAY_WAITING;
	backend_pool_get(r->pool, &r->waiter);
}

/* ---- commands ---- */

/* Writes the MAIL/RCPT lines not written yet. */
static void relay_flush_commands(struct relay *r)
{
	if (r->phase != RELAY_OPEN || r->sent_off == r->pend.len)
		return;
	const char *p = r->pend.data + r->sent_off;
	size_t n = r->pend.len - r->sent_off;
	if (!r->inflight)
		r->cmd_ns = uv_hrtime();
	for (size_t i = 0; i < n; i++)
		r->inflight += p[i] == '\n';
	r->sent_off = r->pend.len;
	relay_write(r, p, n);
	if (r->conn)
		relay_arm_reply(r);
}

static void relay_command_reply(struct relay *r, const struct smtp_reply *rep)
{
	if (!r->inflight || !r->flen)
		return relay_fail(r, "reply without a command");
	if (rep->code / 100 == 3)
		return relay_fail(r, "unexpected intermediate reply");
	enum relay_kind k = relay_fifo_head(r);
	relay_fifo_pop(r);
	const char *line;
	size_t len;
	relay_pend_take(r, &line, &len);
	r->inflight--;
	metrics_latency(METRICS_STAGE_COMMAND, uv_hrtime() - r->cmd_ns);
	if (rep->code / 100 == 2 && k == RELAY_K_MAIL) {
		r->tx.len = 0;
		r->nacc = 0;
		r->tx_logged = false;
		r->tx_open = growbuf_append(&r->tx, line, len) == 0;
		r->ntx++;
	} else if (rep->code / 100 == 2 && k == RELAY_K_RCPT && r->tx_open &&
	           growbuf_append(&r->tx, line, len) == 0) {
		r->nacc++;
		metrics_inc(METRICS_RCPT_ACCEPTED);
	} else if (k == RELAY_K_RCPT) {
		/* Accepted ones get their line when the transaction ends. */
		metrics_inc(METRICS_RCPT_REFUSED);
		relay_log_rcpt(r, line, len, r->tx_open ? r->ntx : 0, rep, "rcpt");
	}
	relay_pend_compact(r);
	if (r->inflight)
		relay_arm_reply(r);
	else
		backend_conn_disarm(r->conn);
	r->cbs->reply(r->ctx, rep);
	if (!r->freeing)
		relay_advance(r);
}

void relay_command(struct relay *r, const char *line, size_t len)
{
	r->last_active = uv_now(r->loop);
	enum relay_kind k = RELAY_K_RCPT;
	if (len >= 4 && strncasecmp(line, "MAIL", 4) == 0)
		k = RELAY_K_MAIL;
	else if (len >= 4 && strncasecmp(line, "DATA", 4) == 0)
		k = RELAY_K_DATA;
	else if (len >= 4 && strncasecmp(line, "RSET", 4) == 0)
		k = RELAY_K_RSET;
	assert(r->flen < RELAY_FIFO);
	if ((k == RELAY_K_MAIL || k == RELAY_K_RCPT) &&
	    growbuf_append(&r->pend, line, len) < 0) {
		struct smtp_reply rep;
		relay_lost(&rep, "4.3.0 Out of memory, try again later");
		r->cbs->reply(r->ctx, &rep);
		return;
	}
	if (k == RELAY_K_MAIL)
		relay_forget_tx(r);
	r->fifo[(r->fhead + r->flen++) % RELAY_FIFO] = (unsigned char)k;
	if (k == RELAY_K_DATA || k == RELAY_K_RSET) {
		relay_advance(r);
		return;
	}
	uv_timer_stop(&r->timer);
	/* Written at relay_flush() with the rest of this round's commands: a
	 * pipelined group leaves in one write. */
	r->in_command = true;
	relay_need_conn(r);
	r->in_command = false;
}

/* ---- the message ---- */

static void relay_stream_cb(uv_timer_t *t);

static void relay_send_data_cmd(struct relay *r)
{
	r->data_due = true;
	if (r->phase == RELAY_NONE) {
		relay_need_conn(r);
		return;
	}
	if (r->phase != RELAY_OPEN || r->flen)
		return; /* once the connection is ready (relay_advance) */
	uv_timer_stop(&r->timer);
	r->data_due = false;
	r->phase = RELAY_DATA_CMD;
	relay_write(r, "DATA\r\n", 6);
	relay_arm_reply(r);
}

/* The backend refused DATA: the message is refused with its reply. */
static void relay_data_refused(struct relay *r, const struct smtp_reply *rep)
{
	bool eod = r->eod_due;
	r->refusal = *rep;
	r->phase = RELAY_OPEN;
	backend_conn_disarm(r->conn);
	relay_drop_message(r);
	relay_give_back(r, BACKEND_PUT_RESET);
	r->tx_open = false;
	relay_log_accepted(r, rep, 0, "data");
	if (eod) {
		for (unsigned i = 0; i < r->nexpect; i++)
			r->replies[i] = r->refusal;
		r->cbs->data_done(r->ctx, r->replies, r->nexpect);
	}
	relay_check_drained(r);
}

static void relay_data_cmd_reply(struct relay *r, const struct smtp_reply *rep)
{
	if (rep->code == 354) {
		bool eod = r->eod_due;
		r->phase = RELAY_STREAM;
		r->holding = false;
		r->eod_due = false;
		backend_conn_disarm(r->conn);
		/* The chunks become the connection's one by one; a write that
		 * fails midway leaves the rest here to free. */
		struct backend_wbuf **held = r->held;
		unsigned nheld = r->nheld;
		r->held = NULL;
		r->nheld = r->heldcap = 0;
		r->held_bytes = 0;
		for (unsigned i = 0; i < nheld; i++) {
			if (r->conn)
				backend_conn_write_owned(r->conn, held[i]);
			else
				free(held[i]);
		}
		free(held);
		if (!r->conn)
			return;
		if (eod) {
			r->phase = RELAY_EOD;
			r->eod_ns = uv_hrtime();
			relay_write(r, ".\r\n", 3);
			relay_arm_reply(r);
		} else {
			r->stall_mark = r->conn->out.written;
			uv_timer_start(&r->timer, relay_stream_cb, r->cfg->backend_timeout_ms, 0);
		}
		relay_check_drained(r);
		return;
	}
	if (rep->code / 100 == 4 || rep->code / 100 == 5)
		return relay_data_refused(r, rep);
	relay_fail(r, rep->code / 100 == 2 ? "DATA answered 2xx, not 354"
	                                   : "unexpected intermediate reply");
}

/* Appends to what is held (before DATA) or gathered (streaming). */
static int relay_gather(struct relay *r, const char *buf, size_t len)
{
	while (len) {
		struct backend_wbuf *w = r->holding ? (r->nheld ? r->held[r->nheld - 1] : NULL) : r->wcur;
		if (!w || *backend_wbuf_len(w) == RELAY_CHUNK) {
			if (!r->holding && w) {
				r->wcur = NULL;
				backend_conn_write_owned(r->conn, w);
				if (!r->conn)
					return -1;
			}
			w = backend_wbuf_new(RELAY_CHUNK);
			if (!w)
				return -1;
			if (r->holding) {
				if (r->nheld == r->heldcap) {
					unsigned cap = r->heldcap ? r->heldcap * 2 : 8;
					struct backend_wbuf **grown = realloc(r->held, cap * sizeof *grown);
					if (!grown) {
						free(w);
						return -1;
					}
					r->held = grown;
					r->heldcap = cap;
				}
				r->held[r->nheld++] = w;
			} else {
				r->wcur = w;
			}
		}
		size_t *wl = backend_wbuf_len(w);
		size_t n = RELAY_CHUNK - *wl;
		if (n > len)
			n = len;
		memcpy(backend_wbuf_data(w) + *wl, buf, n);
		*wl += n;
		if (r->holding)
			r->held_bytes += n;
		buf += n;
		len -= n;
	}
	return 0;
}

void relay_data(struct relay *r, const char *buf, size_t len)
{
	if (r->data_failed || r->refusal.code || (!r->holding && r->phase != RELAY_STREAM))
		return;
	/* Not activity: a message not complete within RELAY_HOLD_MS of its DATA
	 * gives the connection back however fast its lines trickle in. */
	if (relay_gather(r, buf, len) < 0) {
		relay_fail(r, "out of memory");
		return;
	}
	if (r->holding && !r->data_due && r->held_bytes >= RELAY_HOLD_MAX)
		relay_send_data_cmd(r);
	if (relay_pending(r) > RELAY_HIGH_WATER)
		r->above_high = true;
}

void relay_data_end(struct relay *r, unsigned nrcpt)
{
	free(r->replies);
	r->replies = calloc(nrcpt ? nrcpt : 1, sizeof *r->replies);
	r->nexpect = nrcpt;
	r->ngot = 0;
	if (!r->replies) {
		relay_fail(r, "out of memory");
		return;
	}
	if (r->refusal.code || r->data_failed || (!r->holding && r->phase != RELAY_STREAM)) {
		for (unsigned i = 0; i < nrcpt; i++) {
			if (r->refusal.code)
				r->replies[i] = r->refusal;
			else
				relay_lost(&r->replies[i], "4.4.2 Backend connection lost, try again later");
		}
		if (nrcpt)
			relay_log_accepted(r, r->replies, nrcpt, "data");
		relay_forget_tx(r);
		r->cbs->data_done(r->ctx, r->replies, nrcpt);
		return;
	}
	if (r->holding) {
		r->eod_due = true;
		relay_send_data_cmd(r);
		return;
	}
	if (relay_gather(r, ".\r\n", 3) < 0) {
		relay_fail(r, "out of memory");
		return;
	}
	r->phase = RELAY_EOD;
	r->eod_ns = uv_hrtime();
	relay_flush(r);
	uv_timer_stop(&r->timer);
	if (r->conn)
		relay_arm_reply(r);
}

static void relay_eod_reply(struct relay *r, const struct smtp_reply *rep)
{
	if (rep->code / 100 == 3)
		return relay_fail(r, "intermediate reply after the final dot");
	r->replies[r->ngot++] = *rep;
	if (r->ngot < r->nexpect) {
		relay_arm_reply(r);
		return;
	}
	/* The transaction is done at the backend: the connection is clean. */
	metrics_latency(METRICS_STAGE_END_OF_DATA, uv_hrtime() - r->eod_ns);
	relay_log_accepted(r, r->replies, r->nexpect, "data");
	r->phase = RELAY_OPEN;
	relay_forget_tx(r);
	relay_give_back(r, BACKEND_PUT_CLEAN);
	r->cbs->data_done(r->ctx, r->replies, r->nexpect);
}

void relay_flush(struct relay *r)
{
	relay_flush_commands(r);
	if (r->wcur && r->conn && (r->phase == RELAY_STREAM || r->phase == RELAY_EOD)) {
		struct backend_wbuf *w = r->wcur;
		r->wcur = NULL;
		backend_conn_write_owned(r->conn, w);
	}
}

void relay_abort(struct relay *r)
{
	if (r->conn)
		log_info("sess=%s event=backend_abort stage=%s", r->id, relay_phase_names[r->phase]);
	/* Message bytes may have gone out: only a connection that never saw the
	 * backend's DATA is reused. */
	relay_give_back(r, relay_put_how(r));
	relay_forget_tx(r);
	relay_forget_commands(r);
	relay_check_drained(r);
}

/* ---- timers and connection events ---- */

static void relay_hold_cb(uv_timer_t *t)
{
	struct relay *r = t->data;
	if (r->phase != RELAY_OPEN || r->flen || !r->tx_open || !r->conn)
		return;
	uint64_t quiet = uv_now(r->loop) - r->last_active;
	if (quiet < RELAY_HOLD_MS) {
		uv_timer_start(&r->timer, relay_hold_cb, RELAY_HOLD_MS - quiet, 0);
		return;
	}
	/* The client is slow: others may need the connection more. */
	log_debug("sess=%s event=backend_release reason=client_silent", r->id);
	relay_give_back(r, BACKEND_PUT_RESET);
	r->parked = true;
}

/* Streaming: the backend must keep taking what is queued for it. */
static void relay_stream_cb(uv_timer_t *t)
{
	struct relay *r = t->data;
	if (r->phase != RELAY_STREAM || !r->conn)
		return;
	if (r->conn->out.pending && r->conn->out.written == r->stall_mark) {
		relay_fail(r, "timeout");
		relay_settle(r);
		return;
	}
	r->stall_mark = r->conn->out.written;
	uv_timer_start(&r->timer, relay_stream_cb, r->cfg->backend_timeout_ms, 0);
}

/* The end of an event from outside the session's calls: commands the
 * session gave in reaction leave in one write, and the session goes on. */
static void relay_settle(struct relay *r)
{
	if (r->reading || r->freeing)
		return;
	relay_flush_commands(r);
	r->cbs->settled(r->ctx);
}

static void relay_conn_reply(void *owner, struct backend_conn *c, const struct smtp_reply *rep)
{
	struct relay *r = owner;
	switch (r->phase) {
	case RELAY_SETUP:
		relay_setup_reply(r, rep);
		break;
	case RELAY_OPEN:
		relay_command_reply(r, rep);
		break;
	case RELAY_DATA_CMD:
		relay_data_cmd_reply(r, rep);
		break;
	case RELAY_EOD:
		relay_eod_reply(r, rep);
		break;
	default:
		relay_fail(r, "reply without a command");
		break;
	}
	relay_settle(r);
}

static void relay_conn_error(void *owner, struct backend_conn *c, const char *reason)
{
	relay_fail(owner, reason);
	relay_settle(owner);
}

static void relay_conn_drained(void *owner, struct backend_conn *c)
{
	relay_check_drained(owner);
}

/* Every reply of one read is taken before the session goes on. */
static void relay_conn_batch(void *owner, struct backend_conn *c, bool begin)
{
	struct relay *r = owner;
	r->reading = begin;
	if (!begin)
		relay_settle(r);
}

static const struct backend_conn_cbs relay_conn_cbs = {
	.reply = relay_conn_reply,
	.error = relay_conn_error,
	.drained = relay_conn_drained,
	.batch = relay_conn_batch,
};

/* ---- lifecycle ---- */

const char *relay_helo(const struct relay *r)
{
	return r->helo;
}

void relay_hello(struct relay *r, const char *helo)
{
	snprintf(r->helo, sizeof r->helo, "%s", helo);
	bool known;
	unsigned caps = backend_pool_caps(r->pool, &known);
	struct smtp_reply rep;
	if (known)
		smtp_reply_set(&rep, 250, "2.0.0 Ok");
	else
		relay_lost(&rep, "4.4.1 Backend capabilities not known yet");
	r->cbs->hello(r->ctx, &rep, known ? caps : 0);
}

struct relay *relay_new(uv_loop_t *loop, struct backend_pool *pool, const struct config *cfg,
                        const struct relay_cbs *cbs, void *ctx, const char *id,
                        const char *client_ip, int client_port)
{
	struct relay *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->loop = loop;
	r->pool = pool;
	r->cfg = cfg;
	r->cbs = cbs;
	r->ctx = ctx;
	r->id = id;
	r->client_ip = client_ip;
	r->client_port = client_port;
	r->waiter.ready = relay_ready_cb;
	uv_timer_init(loop, &r->timer);
	r->timer.data = r;
	return r;
}

static void relay_timer_close_cb(uv_handle_t *h)
{
	struct relay *r = h->data;
	free(r->replies);
	growbuf_free(&r->pend);
	growbuf_free(&r->tx);
	free(r->held);
	free(r);
}

void relay_free(struct relay *r)
{
	if (!r)
		return;
	r->freeing = true;
	relay_log_accepted(r, NULL, 0, "aborted");
	relay_give_back(r, relay_put_how(r));
	relay_drop_message(r);
	uv_close((uv_handle_t *)&r->timer, relay_timer_close_cb);
}
