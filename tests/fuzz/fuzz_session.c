/* fuzz_session: the SMTP state machine (smtp.c) driven as session.c drives
 * it, with a fake backend answering from the input. This is the target for
 * the DATA end-of-message scanner: SMTP smuggling, bare CR/LF, dot-stuffing.
 *
 * Input: byte 0 = options (bits 0-3 a configuration, see fuzz_configs; bit 4
 * STARTTLS offered; bit 5 an IPv6 client), then the client's bytes up to a
 * line "@@@" (the first "\n@@@\n"), then control bytes that decide each
 * read's size and events and each backend answer. Control bytes run out as zeros: whole reads, no
 * events, and every backend answer the successful one. The invariants
 * checked are listed in tests/fuzz/README. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"
#include "smtp.h"
#include "smtp_parse.h"

#define FUZZ_IN_MAX (16 * 1024) /* session.c's SESSION_IN_MAX */
#define FUZZ_MARK "\n@@@\n"
#define FUZZ_NCONFIGS 16
#define FUZZ_TLS_INFO "TLS1.3 AES-128-GCM sni=mx.fuzz.example"

/* Loaded once, immutable: the only state shared between runs. */
static struct config *fuzz_configs[FUZZ_NCONFIGS];

enum fuzz_pending { FUZZ_PEND_NONE, FUZZ_PEND_HELLO, FUZZ_PEND_COMMAND, FUZZ_PEND_DATA_END,
	            FUZZ_PEND_TLS };
enum fuzz_cmd { FUZZ_CMD_MAIL, FUZZ_CMD_RCPT, FUZZ_CMD_DATA, FUZZ_CMD_RSET };

struct fuzz_buf {
	char *p;
	size_t len, cap;
};

struct fuzz {
	const struct config *cfg;
	struct smtp *s;
	const uint8_t *ctl, *ctl_end; /* backend control bytes */
	/* backend calls awaiting an answer, oldest first (commands may be
	 * pipelined: MAIL, RCPT and a last DATA) */
	enum fuzz_pending pend[64];
	enum fuzz_cmd pcmd[64];
	unsigned npend;
	unsigned lost_left; /* answers still due from a connection that broke */
	bool closed;
	bool starttls_drop; /* the session drops the client's buffered bytes */

	/* the backend's view of its transaction */
	bool tx;             /* MAIL accepted, not finished */
	unsigned rcpts;      /* RCPTs accepted in it */
	bool data;           /* DATA got 354: message bytes may flow */
	bool received_next;  /* the next message bytes are the Received header */

	/* the client's view */
	bool prev_crlf;      /* the previous message line ended with CRLF */
	bool feeding;        /* inside smtp_line() */
	bool end_line;       /* ... with the line that is CRLF.CRLF */
	bool in_data_call;   /* smtp was in DATA when the current call began */
	bool answering_data; /* inside smtp_backend_reply() to DATA */
	bool answering_end;  /* inside smtp_backend_data_done() */
	bool end_all_ok;     /* ... with one 2xx per recipient */
	unsigned replies;    /* replies sent so far */
	int last_code;

	/* the message, as the client sent it and as the backend got it */
	struct fuzz_buf client_msg, backend_msg;
	bool client_clean; /* every client line of it was a plain CRLF line */
};

static void fuzz_append(struct fuzz_buf *b, const char *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *grown = realloc(b->p, cap);
		FUZZ_CHECK(grown, "out of memory");
		b->p = grown;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static uint8_t fuzz_ctl(struct fuzz *f)
{
	return f->ctl < f->ctl_end ? *f->ctl++ : 0;
}

static bool fuzz_starts(const char *s, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);
	return len >= n && memcmp(s, prefix, n) == 0;
}

/* RFC 3463: "c.s.d" with the reply's class, then a space or the end. */
static bool fuzz_has_enhanced(const char *t, size_t len, int code)
{
	size_t i = 0;
	if (len < 5 || t[0] != '0' + code / 100 || t[1] != '.')
		return false;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t n = 0;
		while (i < len && t[i] >= '0' && t[i] <= '9' && n < 3)
			i++, n++;
		if (n == 0)
			return false;
		if (part == 0 && (i >= len || t[i++] != '.'))
			return false;
	}
	return i == len || t[i] == ' ';
}

/* ---- the fake session: checks what the machine does ---- */

/* A reply as the client reads it (RFC 5321 4.2, 4.5.3.1.5; RFC 2034). */
static void fuzz_check_reply(struct fuzz *f, const char *buf, size_t len)
{
	char hello1[300], hello2[300];
	snprintf(hello1, sizeof hello1, "250-%s Hello ", f->cfg->hostname);
	snprintf(hello2, sizeof hello2, "250 %s\r\n", f->cfg->hostname);
	bool exempt = fuzz_starts(buf, len, "220 ") || fuzz_starts(buf, len, "354 ") ||
	              fuzz_starts(buf, len, hello1) || fuzz_starts(buf, len, hello2);
	FUZZ_CHECK(len >= 5, "a reply is at least \"NNN\\r\\n\"");
	int first = -1;
	size_t start = 0;
	while (start < len) {
		const char *line = buf + start;
		const char *nl = memchr(line, '\n', len - start);
		FUZZ_CHECK(nl, "a reply ends with CRLF");
		size_t n = (size_t)(nl - line) + 1;
		FUZZ_CHECK(n >= 2 && nl[-1] == '\r', "reply lines end with CRLF");
		size_t body = n - 2;
		FUZZ_CHECK(n <= SMTP_COMMAND_LINE_MAX,
		           "[F2] a reply line is at most 512 octets with its CRLF");
		for (size_t i = 0; i < body; i++) {
			unsigned char c = (unsigned char)line[i];
			FUZZ_CHECK(c >= 32 || c == '\t', "no control byte in a reply line");
		}
		FUZZ_CHECK(body >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' &&
		                   line[1] <= '9' && line[2] >= '0' && line[2] <= '9',
		           "a reply line starts with a 3-digit code");
		int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (first < 0)
			first = code;
		FUZZ_CHECK(code == first, "one code per reply");
		bool last = start + n == len;
		if (last)
			FUZZ_CHECK(body == 3 || line[3] == ' ',
			           "[F3] the last line of a reply has a space after its code");
		else
			FUZZ_CHECK(body > 3 && line[3] == '-', "other lines have '-' after their code");
		if (!exempt && body > 4)
			FUZZ_CHECK(fuzz_has_enhanced(line + 4, body - 4, code),
			           "an enhanced status code on every line (RFC 2034)");
		start += n;
	}
	f->last_code = first;
}

static void fuzz_reply(void *ctx, const char *buf, size_t len)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(!f->closed, "no reply after the connection was closed");
	fuzz_check_reply(f, buf, len);
	f->replies++;
	int code = f->last_code;
	FUZZ_CHECK(code / 100 != 3 || (code == 354 && f->answering_data),
	           "[F1] no 3xx reply but a 354 to DATA");
	if (f->in_data_call && code / 100 == 2) {
		/* The promise: 250 to the final dot only for what the backend took. */
		FUZZ_CHECK(f->answering_end, "a 2xx in DATA only as the verdict on the final dot");
		FUZZ_CHECK(f->end_all_ok, "a 2xx to the final dot only with a 2xx for every recipient");
		if (f->client_clean)
			FUZZ_CHECK(f->backend_msg.len == f->client_msg.len &&
			                   (f->client_msg.len == 0 ||
			                    memcmp(f->backend_msg.p, f->client_msg.p,
			                           f->client_msg.len) == 0),
			           "the backend got the message exactly as the client sent it");
	}
	if (f->answering_end)
		FUZZ_CHECK(code / 100 == 2 || code / 100 == 4 || code / 100 == 5,
		           "[F1] the verdict on the final dot is 2xx, 4xx or 5xx");
}

static bool fuzz_pending_cmd(const struct fuzz *f, enum fuzz_cmd c)
{
	for (unsigned i = 0; i < f->npend; i++)
		if (f->pend[i] == FUZZ_PEND_COMMAND && f->pcmd[i] == c)
			return true;
	return false;
}

/* Only MAIL and RCPT may have a next command sent behind them (RFC 2920:
 * DATA ends a group); a hello, STARTTLS or final dot waits for all. */
static void fuzz_begin(struct fuzz *f, enum fuzz_pending p, enum fuzz_cmd c)
{
	FUZZ_CHECK(!f->closed, "no backend call after the connection was closed");
	if (f->npend) {
		unsigned last = f->npend - 1;
		FUZZ_CHECK(p == FUZZ_PEND_COMMAND && f->pend[last] == FUZZ_PEND_COMMAND &&
		                   (f->pcmd[last] == FUZZ_CMD_MAIL || f->pcmd[last] == FUZZ_CMD_RCPT),
		           "only commands are pipelined, and nothing after DATA or RSET");
	}
	FUZZ_CHECK(f->npend < 33, "at most 32 backend answers awaited (smtp.c SMTP_PIPE_MAX)");
	f->pend[f->npend] = p;
	f->pcmd[f->npend++] = c;
}

static void fuzz_pop(struct fuzz *f)
{
	memmove(f->pend, f->pend + 1, (f->npend - 1) * sizeof f->pend[0]);
	memmove(f->pcmd, f->pcmd + 1, (f->npend - 1) * sizeof f->pcmd[0]);
	f->npend--;
}

static void fuzz_backend_hello(void *ctx, const char *helo)
{
	struct fuzz *f = ctx;
	fuzz_begin(f, FUZZ_PEND_HELLO, FUZZ_CMD_MAIL);
	size_t n = strlen(helo);
	FUZZ_CHECK(n > 0 && n < 256, "the HELO name is 1..255 bytes");
	for (size_t i = 0; i < n; i++)
		FUZZ_CHECK(helo[i] > ' ' && helo[i] < 0x7f, "the HELO name is printable ASCII");
}

static void fuzz_backend_command(void *ctx, const char *line, size_t len)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(len >= 2 && len <= SMTP_COMMAND_LINE_MAX, "a backend command is 2..512 octets");
	FUZZ_CHECK(line[len - 2] == '\r' && line[len - 1] == '\n' && !memchr(line, '\n', len - 1) &&
	                   !memchr(line, '\r', len - 2) && !memchr(line, '\0', len),
	           "a backend command is one CRLF line without NUL");
	const char *args;
	bool space;
	enum smtp_verb v = smtp_parse_verb(line, len - 2, &args, &space);
	size_t alen = len - 2 - (size_t)(args - line);
	struct smtp_path p;
	bool mail_pending = fuzz_pending_cmd(f, FUZZ_CMD_MAIL);
	switch (v) {
	case SMTP_VERB_MAIL:
		FUZZ_CHECK(!f->tx && !f->npend, "MAIL to the backend only outside a transaction");
		FUZZ_CHECK(smtp_parse_path(args, alen, "FROM:", true, false, true, &p) == SMTP_PATH_OK,
		           "the MAIL command sent to the backend is valid");
		fuzz_begin(f, FUZZ_PEND_COMMAND, FUZZ_CMD_MAIL);
		break;
	case SMTP_VERB_RCPT:
		FUZZ_CHECK(f->tx || mail_pending, "RCPT to the backend only inside a transaction");
		FUZZ_CHECK(smtp_parse_path(args, alen, "TO:", false, true, true, &p) == SMTP_PATH_OK,
		           "the RCPT command sent to the backend is valid");
		fuzz_begin(f, FUZZ_PEND_COMMAND, FUZZ_CMD_RCPT);
		break;
	case SMTP_VERB_DATA:
		FUZZ_CHECK(len == 6, "DATA without arguments");
		FUZZ_CHECK((f->tx || mail_pending) && (f->rcpts > 0 || fuzz_pending_cmd(f, FUZZ_CMD_RCPT)),
		           "DATA to the backend only after an accepted (or awaited) RCPT");
		fuzz_begin(f, FUZZ_PEND_COMMAND, FUZZ_CMD_DATA);
		break;
	case SMTP_VERB_RSET:
		FUZZ_CHECK(len == 6, "RSET without arguments");
		FUZZ_CHECK(!f->npend, "RSET is not pipelined");
		fuzz_begin(f, FUZZ_PEND_COMMAND, FUZZ_CMD_RSET);
		break;
	default:
		FUZZ_CHECK(false, "only MAIL, RCPT, DATA and RSET go to the backend");
	}
}

/* Message bytes: CRLF lines, no bare CR or LF, no NUL, none longer than
 * 1000 octets, and never a lone "." (the backend would take it as the end:
 * SMTP smuggling). */
static void fuzz_backend_data(void *ctx, const char *buf, size_t len)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(!f->closed, "no message data after the connection was closed");
	FUZZ_CHECK(!f->npend, "no message data while an answer is awaited");
	FUZZ_CHECK(f->data, "message data only after the backend's 354, before its end or abort");
	FUZZ_CHECK(len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n',
	           "message data ends at a CRLF boundary");
	size_t start = 0;
	for (size_t i = 0; i < len; i++) {
		FUZZ_CHECK(buf[i] != '\0', "no NUL in message data");
		if (buf[i] == '\r')
			FUZZ_CHECK(i + 1 < len && buf[i + 1] == '\n', "no bare CR in message data");
		if (buf[i] != '\n')
			continue;
		FUZZ_CHECK(i > 0 && buf[i - 1] == '\r', "no bare LF in message data");
		size_t n = i + 1 - start;
		FUZZ_CHECK(!(n == 3 && buf[start] == '.'),
		           "[F5] no lone \".\" line in message data (SMTP smuggling)");
		FUZZ_CHECK(n <= SMTP_TEXT_LINE_MAX,
		           "[F4] message lines are at most 1000 octets with their CRLF");
		start = i + 1;
	}
	if (f->received_next) {
		f->received_next = false;
		FUZZ_CHECK(fuzz_starts(buf, len, "Received: "), "the message starts with a Received header");
		return;
	}
	fuzz_append(&f->backend_msg, buf, len);
}

static void fuzz_backend_data_end(void *ctx, unsigned nrcpt)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(f->data, "the final dot only after the backend's 354, never after an abort");
	FUZZ_CHECK(f->feeding && f->end_line, "the final dot only for the client's CRLF.CRLF");
	FUZZ_CHECK(nrcpt == f->rcpts, "one verdict awaited per recipient the backend accepted");
	fuzz_begin(f, FUZZ_PEND_DATA_END, FUZZ_CMD_DATA);
	f->data = false;
}

static void fuzz_backend_abort(void *ctx)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(!f->npend, "no abort while an answer is awaited");
	FUZZ_CHECK(f->data, "abort only a message in progress, once");
	/* The relay drops the connection without the final dot. */
	f->data = false;
	f->tx = false;
	f->rcpts = 0;
}

static void fuzz_close(void *ctx, const char *reason)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(!f->closed, "closed once");
	FUZZ_CHECK(reason && reason[0], "a close has a reason");
	f->closed = true;
}

static void fuzz_starttls(void *ctx)
{
	struct fuzz *f = ctx;
	FUZZ_CHECK(f->last_code == 220, "STARTTLS after its 220");
	FUZZ_CHECK(!f->tx, "no STARTTLS inside a backend transaction");
	fuzz_begin(f, FUZZ_PEND_TLS, FUZZ_CMD_MAIL);
	f->starttls_drop = true;
}

static const struct smtp_ops fuzz_ops = {
	.reply = fuzz_reply,
	.backend_hello = fuzz_backend_hello,
	.backend_command = fuzz_backend_command,
	.backend_data = fuzz_backend_data,
	.backend_data_end = fuzz_backend_data_end,
	.backend_abort = fuzz_backend_abort,
	.close = fuzz_close,
	.starttls = fuzz_starttls,
};

/* ---- the fake backend: answers made from control bytes ---- */

/* The connection is gone (relay.c's relay_lost/relay_fail). */
static void fuzz_backend_gone(struct fuzz *f)
{
	f->tx = false;
	f->data = false;
	f->rcpts = 0;
}

/* Fills R with CODE and text lines as relay.c assembles them from backend
 * lines (each at most 2044 bytes of HT or bytes >= 32), in style KIND. */
static void fuzz_make_reply(struct fuzz *f, struct smtp_reply *r, int code, unsigned kind)
{
	char line[2048];
	char cls = (char)('0' + code / 100);
	memset(r, 0, sizeof *r);
	r->code = code;
	switch (kind) {
	case 1: /* no enhanced status code */
		smtp_reply_add_line(r, "Ok", 2);
		break;
	case 2: /* two lines */
		snprintf(line, sizeof line, "%c.1.0 first line", cls);
		smtp_reply_add_line(r, line, strlen(line));
		snprintf(line, sizeof line, "%c.1.0 second line", cls);
		smtp_reply_add_line(r, line, strlen(line));
		break;
	case 3: /* "NNN-text" then a bare "NNN": an empty last line */
		snprintf(line, sizeof line, "%c.0.0 text", cls);
		smtp_reply_add_line(r, line, strlen(line));
		smtp_reply_add_line(r, "", 0);
		break;
	case 4: /* as long as fits a 512-octet reply line */
		memset(line, 'x', 500);
		memcpy(line, "2.0.0 ", 6);
		line[0] = cls;
		smtp_reply_add_line(r, line, 500);
		break;
	case 5: { /* any length the relay takes (it keeps the first 511 bytes) */
		size_t n = (size_t)fuzz_ctl(f) * 8;
		memset(line, 'y', n);
		smtp_reply_add_line(r, line, n);
		break;
	}
	case 6: { /* bytes from the input */
		size_t n = fuzz_ctl(f) & 63;
		for (size_t i = 0; i < n; i++) {
			uint8_t c = fuzz_ctl(f);
			line[i] = (char)(c < 32 && c != '\t' ? c + 32 : c);
		}
		smtp_reply_add_line(r, line, n);
		break;
	}
	case 7: { /* many short lines */
		size_t n = 1 + (fuzz_ctl(f) & 127);
		for (size_t i = 0; i < n; i++)
			smtp_reply_add_line(r, "z", 1);
		break;
	}
	case 8: /* an enhanced code of the wrong class */
		smtp_reply_add_line(r, "5.1.1 <x@y> unknown", 19);
		break;
	case 9: /* "NNN" alone */
		break;
	default:
		snprintf(line, sizeof line, "%c.0.0 Ok", cls);
		smtp_reply_add_line(r, line, strlen(line));
		break;
	}
}

/* A code from control byte B (low 4 bits); 0 is the expected success. */
static int fuzz_code(struct fuzz *f, uint8_t b, int success, bool *lost)
{
	static const int codes[16] = { 0, 451, 450, 451, 452, 550, 553, 554,
		                       421, 250, 354, 251, 500, 503, 552, 0 };
	*lost = (b & 15) == 1;
	if ((b & 15) == 0)
		return success;
	if ((b & 15) == 15)
		return 200 + fuzz_ctl(f) % 400;
	return codes[b & 15];
}

static void fuzz_answer_hello(struct fuzz *f)
{
	uint8_t b = fuzz_ctl(f);
	struct smtp_reply r;
	unsigned caps = ~(unsigned)fuzz_ctl(f) & 0x7f; /* default: everything */
	if ((b & 7) == 5) { /* relay.c: backend unavailable */
		smtp_reply_set(&r, 451, "4.4.1 Backend unavailable, try again later");
		r.lost = true;
		caps = 0;
	} else if ((b & 7) == 6) {
		fuzz_make_reply(f, &r, 554, b >> 3);
	} else {
		smtp_reply_set(&r, 250, "2.0.0 Ok");
	}
	fuzz_pop(f);
	smtp_backend_hello(f->s, &r, caps);
}

static void fuzz_answer_command(struct fuzz *f)
{
	enum fuzz_cmd cmd = f->pcmd[0];
	uint8_t b = fuzz_ctl(f);
	bool lost;
	int code = fuzz_code(f, b, cmd == FUZZ_CMD_DATA ? 354 : 250, &lost);
	/* relay.c answers everything sent on a connection that broke. */
	if (f->lost_left) {
		f->lost_left--;
		lost = true;
	} else if (lost) {
		f->lost_left = f->npend - 1;
	}
	/* A real backend refuses what follows a refused MAIL or DATA with no
	 * recipient (pipelined commands reach it regardless). */
	if (!lost && ((cmd == FUZZ_CMD_RCPT && !f->tx) ||
	              (cmd == FUZZ_CMD_DATA && (!f->tx || !f->rcpts))))
		code = 503;
	struct smtp_reply r;
	if (lost) {
		smtp_reply_set(&r, 451, "4.4.2 Backend connection lost, try again later");
		r.lost = true;
	} else {
		fuzz_make_reply(f, &r, code, b >> 4);
	}
	/* What the backend now thinks. */
	if (lost) {
		fuzz_backend_gone(f);
	} else if (cmd == FUZZ_CMD_MAIL) {
		f->tx = code / 100 == 2;
		f->rcpts = 0;
	} else if (cmd == FUZZ_CMD_RCPT) {
		f->rcpts += code / 100 == 2;
	} else if (cmd == FUZZ_CMD_DATA && code == 354) {
		f->data = true;
		f->received_next = true;
		f->prev_crlf = true;
		f->client_msg.len = 0;
		f->backend_msg.len = 0;
		f->client_clean = true;
	} else if (cmd == FUZZ_CMD_RSET) {
		f->tx = false;
		f->rcpts = 0;
	}
	fuzz_pop(f);
	f->answering_data = cmd == FUZZ_CMD_DATA;
	smtp_backend_reply(f->s, &r);
	f->answering_data = false;
	if (f->data)
		FUZZ_CHECK(smtp_in_data(f->s) || f->closed, "the backend's 354 starts the message");
}

static void fuzz_answer_data_end(struct fuzz *f)
{
	unsigned nrcpt = f->rcpts;
	uint8_t b = fuzz_ctl(f);
	unsigned n = nrcpt;
	if (b == 0xff && n > 0) /* not what relay.c does, but smtp.c must cope */
		n--;
	else if (b == 0xfe)
		n++;
	struct smtp_reply *r = calloc(n ? n : 1, sizeof *r);
	FUZZ_CHECK(r, "out of memory");
	bool all_ok = n == nrcpt && n > 0;
	for (unsigned i = 0; i < n; i++) {
		uint8_t c = fuzz_ctl(f);
		bool lost;
		int code = fuzz_code(f, c, 250, &lost);
		if (lost) {
			smtp_reply_set(&r[i], 451, "4.4.2 Backend connection lost after the message, try "
			                           "again later");
			r[i].lost = true;
		} else {
			fuzz_make_reply(f, &r[i], code, c >> 4);
		}
		all_ok = all_ok && r[i].code / 100 == 2;
	}
	f->tx = false;
	f->rcpts = 0;
	fuzz_pop(f);
	unsigned before = f->replies;
	f->answering_end = true;
	f->end_all_ok = all_ok;
	f->in_data_call = smtp_in_data(f->s);
	FUZZ_CHECK(f->in_data_call, "still in DATA while the verdict is awaited");
	smtp_backend_data_done(f->s, r, n);
	f->answering_end = false;
	f->in_data_call = false;
	FUZZ_CHECK(f->replies == before + 1, "one reply to the final dot");
	FUZZ_CHECK(!smtp_in_data(f->s), "the verdict ends the message");
	free(r);
}

static void fuzz_answer(struct fuzz *f)
{
	switch (f->npend ? f->pend[0] : FUZZ_PEND_NONE) {
	case FUZZ_PEND_HELLO:
		fuzz_answer_hello(f);
		break;
	case FUZZ_PEND_COMMAND:
		fuzz_answer_command(f);
		break;
	case FUZZ_PEND_DATA_END:
		fuzz_answer_data_end(f);
		break;
	case FUZZ_PEND_TLS:
		fuzz_pop(f);
		if (fuzz_ctl(f) & 1) {
			f->closed = true; /* handshake failed: session_close() */
		} else {
			smtp_tls_started(f->s, FUZZ_TLS_INFO);
			FUZZ_CHECK(!smtp_busy(f->s) && smtp_idle(f->s), "idle after the handshake");
		}
		break;
	default:
		FUZZ_CHECK(false, "smtp_busy() with no backend call awaiting an answer");
	}
}

/* ---- the session: framing, reads, events ---- */

static void fuzz_line(struct fuzz *f, const char *line, size_t len, unsigned flags)
{
	bool in_data = smtp_in_data(f->s);
	bool end = in_data && f->prev_crlf && flags == 0 && len == 3 && memcmp(line, ".\r\n", 3) == 0;
	if (in_data && !end) {
		fuzz_append(&f->client_msg, line, len);
		if (flags)
			f->client_clean = false;
	}
	/* An exact-size copy, scribbled over afterwards: the machine must
	 * neither read past the line nor keep a pointer to it. */
	char *copy = malloc(len);
	FUZZ_CHECK(copy, "out of memory");
	memcpy(copy, line, len);
	f->feeding = true;
	f->end_line = end;
	f->in_data_call = in_data;
	smtp_line(f->s, copy, len, flags);
	f->feeding = false;
	f->end_line = false;
	f->in_data_call = false;
	memset(copy, '#', len);
	free(copy);
	if (in_data) {
		f->prev_crlf = !(flags & SMTP_LINE_BARE_LF);
		if (end)
			FUZZ_CHECK(smtp_busy(f->s) || !smtp_in_data(f->s),
			           "CRLF.CRLF ends the message");
		else if (!f->closed)
			FUZZ_CHECK(smtp_in_data(f->s) && !smtp_busy(f->s),
			           "only CRLF.CRLF ends the message (SMTP smuggling)");
	}
}

/* Read-time events from control byte B, as session.c may cause them. */
static void fuzz_event(struct fuzz *f, uint8_t b)
{
	switch (b & 3) {
	case 1: /* relay.c: the connection broke */
		fuzz_backend_gone(f);
		if (!f->npend) {
			smtp_backend_failed(f->s);
			break;
		}
		/* every pipelined command still awaited is answered "lost", at once */
		f->lost_left = f->npend;
		while (f->npend && !f->closed && f->lost_left)
			fuzz_answer(f);
		break;
	case 2: /* session.c: timeout */
		smtp_goodbye(f->s, "4.4.2", "Timeout, closing connection", "timeout");
		FUZZ_CHECK(f->closed, "goodbye closes");
		break;
	case 3: /* session.c: graceful shutdown between transactions */
		if (smtp_idle(f->s)) {
			smtp_goodbye(f->s, "4.3.2", "Service shutting down, try again later", "shutdown");
			FUZZ_CHECK(f->closed, "goodbye closes");
		}
		break;
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_set_level((enum log_level)(LOG_LEVEL_ERROR + 1));
	/* The longest hostname a config line holds (config.c: 198 characters). */
	char longhost[181];
	memset(longhost, 'h', sizeof longhost - 1);
	for (size_t i = 60; i < sizeof longhost - 1; i += 61)
		longhost[i] = '.';
	longhost[sizeof longhost - 1] = '\0';
	for (unsigned i = 0; i < FUZZ_NCONFIGS; i++) {
		char path[] = "/tmp/mxfront-fuzz-XXXXXX";
		int fd = mkstemp(path);
		FILE *fp = fd >= 0 ? fdopen(fd, "w") : NULL;
		if (!fp) {
			perror("fuzz_session: mkstemp");
			abort();
		}
		bool small = i & 2;
		fprintf(fp,
		        "[server]\nhostname = %s\nmax_message_size = %s\nmax_recipients = %s\n"
		        "max_errors = %s\nmax_junk_commands = %s\n"
		        "[smtp]\nbare_newline = %s\n[tls]\nrequire = %s\n",
		        (i & 8) ? longhost : "mx.fuzz.example", small ? "1k" : "20k", small ? "2" : "100",
		        small ? "3" : "20", small ? "3" : "100", (i & 1) ? "normalize" : "reject",
		        (i & 4) ? "yes" : "no");
		fclose(fp);
		char err[512];
		int rc = config_load(path, &fuzz_configs[i], err, sizeof err);
		unlink(path);
		if (rc < 0) {
			fprintf(stderr, "fuzz_session: config_load: %s\n", err);
			abort();
		}
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (!fuzz_configs[0])
		LLVMFuzzerInitialize(NULL, NULL);
	uint8_t opt = data[0];
	const char *client = (const char *)data + 1;
	size_t clen = size - 1;
	struct fuzz f;
	memset(&f, 0, sizeof f);
	const char *mark = memmem(client, clen, FUZZ_MARK, sizeof FUZZ_MARK - 1);
	f.ctl = f.ctl_end = data + size;
	if (mark) {
		f.ctl = (const uint8_t *)mark + sizeof FUZZ_MARK - 1;
		clen = (size_t)(mark - client) + 1; /* the LF before the mark is the client's */
	}
	f.cfg = fuzz_configs[opt & 15];
	f.s = smtp_new(f.cfg, &fuzz_ops, &f, "fz", (opt & 0x20) ? "2001:db8::7" : "192.0.2.7");
	FUZZ_CHECK(f.s, "out of memory");
	smtp_set_tls_available(f.s, opt & 0x10);
	smtp_greet(f.s);

	char *in = malloc(FUZZ_IN_MAX);
	FUZZ_CHECK(in, "out of memory");
	size_t have = 0, fed = 0;
	struct smtp_framer fr;
	memset(&fr, 0, sizeof fr);
	unsigned commands = 0;
	while (!f.closed) {
		bool end_awaited = f.npend && f.pend[0] == FUZZ_PEND_DATA_END;
		if (smtp_busy(f.s) || f.lost_left) {
			FUZZ_CHECK(smtp_delivering(f.s) == end_awaited,
			           "delivering exactly while the verdict on the final dot is awaited");
			fuzz_answer(&f);
			continue;
		}
		FUZZ_CHECK(!f.npend || (f.pend[f.npend - 1] == FUZZ_PEND_COMMAND &&
		                        (f.pcmd[f.npend - 1] == FUZZ_CMD_MAIL ||
		                         f.pcmd[f.npend - 1] == FUZZ_CMD_RCPT)),
		           "only an open pipelined group (MAIL, RCPT) leaves smtp free for more lines");
		FUZZ_CHECK(smtp_waiting(f.s) == (f.npend > 0), "waiting exactly while answers are awaited");
		FUZZ_CHECK(!smtp_delivering(f.s), "delivering only while the verdict is awaited");
		FUZZ_CHECK(smtp_commands(f.s) >= commands, "the command count never goes back");
		commands = smtp_commands(f.s);
		size_t limit = smtp_in_data(f.s) ? SMTP_TEXT_LINE_MAX : SMTP_COMMAND_LINE_MAX;
		const char *line;
		size_t len;
		unsigned flags;
		size_t n = smtp_frame(&fr, in, have, limit, &line, &len, &flags);
		if (n > 0) {
			if (line)
				fuzz_line(&f, line, len, flags);
			memmove(in, in + n, have - n);
			have -= n;
			if (f.starttls_drop) {
				f.starttls_drop = false;
				have = 0;
			}
			continue;
		}
		if (f.npend) {
			/* The client has no whole line left: the backend answers. */
			fuzz_answer(&f);
			continue;
		}
		if (fed == clen)
			break; /* the client is done */
		/* A read: up to 32 bytes, up to 2 KiB, or (0) all there is. */
		uint8_t b = fuzz_ctl(&f);
		fuzz_event(&f, b);
		size_t chunk = b ? (size_t)(1 + ((b >> 2) & 31)) * ((b & 0x80) ? 64 : 1) : clen;
		if (chunk > clen - fed)
			chunk = clen - fed;
		if (chunk > FUZZ_IN_MAX - have)
			chunk = FUZZ_IN_MAX - have;
		memcpy(in + have, client + fed, chunk);
		have += chunk;
		fed += chunk;
	}
	free(in);
	smtp_free(f.s);
	free(f.client_msg.p);
	free(f.backend_msg.p);
	return 0;
}
