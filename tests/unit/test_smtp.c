/* Unit tests for the SMTP state machine, by transcript: client bytes go in
 * through the real framer (as the session does), backend answers are fed
 * back when the machine is busy, and the test compares every reply sent to
 * the client and every backend action with what it wants. No sockets.
 *
 * Every reply is also checked on its own, in every case: CRLF-terminated
 * lines of at most 512 octets, one code, "-" on all lines but the last, and an
 * enhanced status code on each line except in the greeting, the HELO/EHLO
 * replies and the 354 (RFC 2034). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "log.h"
#include "smtp.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

struct bytes {
	const char *s;
	size_t n;
};
#define B(lit) { (lit), sizeof(lit) - 1 }

/* ---- the fake session: records replies and backend actions ---- */

enum fake_pending { PEND_NONE, PEND_HELLO, PEND_COMMAND, PEND_DATA_END, PEND_TLS };

struct fake {
	const char *hostname;
	char replies[65536];
	size_t rlen;
	unsigned nreplies;
	char log[65536];
	size_t llen;
	char received[2048]; /* the last Received header given to the backend */
	unsigned nreceived, nabort, nclose, nhello, nend, nstarttls;
	/* backend calls awaiting an answer, oldest first */
	enum fake_pending pend[64];
	char pend_verb[64][5]; /* PEND_COMMAND: the command's first four letters */
	unsigned npend;
	bool backend_pipelining; /* the last hello answer offered PIPELINING */
	bool drop_input; /* STARTTLS: the session drops what the client sent after it */
};

static void fake_append(char *buf, size_t *len, size_t cap, const char *data, size_t n)
{
	if (!CHECK_SILENT(*len + n < cap, "transcript buffer full (%zu + %zu bytes)", *len, n))
		n = cap - 1 - *len;
	memcpy(buf + *len, data, n);
	*len += n;
	buf[*len] = '\0';
}

static void fake_logf(struct fake *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fake_logf(struct fake *f, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	fake_append(f->log, &f->llen, sizeof f->log, buf, n < 0 ? 0 : (size_t)n);
}

static bool fake_starts(const char *s, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);
	return len >= n && memcmp(s, prefix, n) == 0;
}

/* Checks one reply as the client would read it. Never reads a line past its
 * 512th octet, so that an over-long reply line is reported, not overrun. */
static void fake_check_reply(struct fake *f, const char *buf, size_t len)
{
	CHECK_SILENT(len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n', "a reply ends with CRLF");
	char exempt_ehlo[300], exempt_helo[300];
	snprintf(exempt_ehlo, sizeof exempt_ehlo, "250-%s Hello ", f->hostname);
	snprintf(exempt_helo, sizeof exempt_helo, "250 %s\r\n", f->hostname);
	bool exempt = fake_starts(buf, len, "220 ") || fake_starts(buf, len, "354 ") ||
	              fake_starts(buf, len, exempt_ehlo) || fake_starts(buf, len, exempt_helo);
	int first = -1;
	size_t start = 0;
	while (start < len) {
		size_t i = start;
		while (i < len && i - start < 512 && buf[i] != '\n')
			i++;
		if (!CHECK_SILENT(i < len && buf[i] == '\n', "reply line longer than 512 octets or without LF"))
			return;
		size_t end = i + 1;
		bool last = end == len;
		if (!CHECK_SILENT(i > start && buf[i - 1] == '\r', "reply line ends with bare LF"))
			return;
		size_t n = i - 1 - start;
		const char *line = buf + start;
		CHECK_SILENT(!memchr(line, '\r', n), "CR inside a reply line");
		int code;
		bool lastmark;
		const char *text;
		size_t textlen;
		if (!CHECK_SILENT(smtp_parse_reply_line(line, n, &code, &lastmark, &text, &textlen) == 0,
		           "not a reply line: %.*s", (int)n, line))
			return;
		if (first < 0)
			first = code;
		CHECK_SILENT(code == first, "one code per reply (%d then %d)", first, code);
		CHECK_SILENT(lastmark == last, "%s line has '%c' after its code: %.*s", last ? "the last" : "a middle",
		      n > 3 ? line[3] : ' ', (int)n, line);
		if (!exempt)
			CHECK_SILENT(smtp_enhanced_code_len(text, textlen, code) > 0,
			      "reply line without an enhanced status code: %.*s", (int)n, line);
		start = end;
	}
}

static void fake_reply(void *ctx, const char *buf, size_t len)
{
	struct fake *f = ctx;
	f->nreplies++;
	unsigned failed = check_failed;
	fake_check_reply(f, buf, len);
	if (check_failed == failed)
		check_passed++; /* one check per reply, however many lines */
	fake_append(f->replies, &f->rlen, sizeof f->replies, buf, len);
}

/* Only commands may be pipelined (RFC 2920), and only to a backend that
 * offered PIPELINING; a hello, STARTTLS or the final dot wait for all. */
static void fake_begin(struct fake *f, const char *what, enum fake_pending p)
{
	bool pipelined = p == PEND_COMMAND && f->backend_pipelining && f->npend &&
	                 f->pend[f->npend - 1] == PEND_COMMAND;
	CHECK_SILENT(f->npend == 0 || pipelined, "%s while another backend call awaits its answer",
	             what);
	if (f->npend < N_ELEMS(f->pend))
		f->pend[f->npend++] = p;
}

static void fake_begin_command(struct fake *f, const char *line, size_t len)
{
	fake_begin(f, "backend_command", PEND_COMMAND);
	if (f->npend <= N_ELEMS(f->pend))
		snprintf(f->pend_verb[f->npend - 1], sizeof f->pend_verb[0], "%.*s",
		         (int)(len < 4 ? len : 4), line);
}

static enum fake_pending fake_pop(struct fake *f)
{
	if (!f->npend)
		return PEND_NONE;
	enum fake_pending p = f->pend[0];
	memmove(f->pend, f->pend + 1, --f->npend * sizeof f->pend[0]);
	memmove(f->pend_verb, f->pend_verb + 1, f->npend * sizeof f->pend_verb[0]);
	return p;
}

static void fake_backend_hello(void *ctx, const char *helo)
{
	struct fake *f = ctx;
	fake_begin(f, "backend_hello", PEND_HELLO);
	f->nhello++;
	fake_logf(f, "hello:%s\n", helo);
}

static void fake_backend_command(void *ctx, const char *line, size_t len)
{
	struct fake *f = ctx;
	fake_begin_command(f, line, len);
	CHECK_SILENT(len >= 2 && line[len - 2] == '\r' && line[len - 1] == '\n' &&
	          !memchr(line, '\n', len - 1) && !memchr(line, '\r', len - 2),
	      "a backend command is one CRLF line");
	fake_logf(f, "cmd:%.*s", (int)len, line);
}

static void fake_backend_data(void *ctx, const char *buf, size_t len)
{
	struct fake *f = ctx;
	CHECK_SILENT(f->npend == 0, "data while a backend answer is awaited");
	CHECK_SILENT(len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n', "data is CRLF lines");
	if (fake_starts(buf, len, "Received: ")) {
		f->nreceived++;
		snprintf(f->received, sizeof f->received, "%.*s", (int)len, buf);
		fake_logf(f, "data:[Received]\n");
		return;
	}
	fake_append(f->log, &f->llen, sizeof f->log, "data:", 5);
	fake_append(f->log, &f->llen, sizeof f->log, buf, len);
}

static void fake_backend_data_end(void *ctx, unsigned nrcpt)
{
	struct fake *f = ctx;
	fake_begin(f, "backend_data_end", PEND_DATA_END);
	f->nend++;
	fake_logf(f, "end:%u\n", nrcpt);
}

static void fake_backend_abort(void *ctx)
{
	struct fake *f = ctx;
	f->nabort++;
	fake_logf(f, "abort\n");
}

static void fake_close(void *ctx, const char *reason)
{
	struct fake *f = ctx;
	f->nclose++;
	fake_logf(f, "close:%s\n", reason);
}

static void fake_starttls(void *ctx)
{
	struct fake *f = ctx;
	fake_begin(f, "starttls", PEND_TLS);
	f->nstarttls++;
	f->drop_input = true;
	fake_logf(f, "starttls\n");
}

static const struct smtp_ops fake_ops = {
	.reply = fake_reply,
	.backend_hello = fake_backend_hello,
	.backend_command = fake_backend_command,
	.backend_data = fake_backend_data,
	.backend_data_end = fake_backend_data_end,
	.backend_abort = fake_backend_abort,
	.close = fake_close,
	.starttls = fake_starttls,
};

/* ---- configuration ---- */

#define HOST "mx.test.example"
#define L63_A "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"
#define DEFAULT_CONF "hostname = " HOST "\nmax_message_size = 10k\n"
#define CONF(extra) DEFAULT_CONF extra

/* Loads "[server]\n" SERVER_KEYS from a temporary file; NULL on failure. */
static struct config *load_conf(const char *server_keys)
{
	char path[] = "/tmp/mxfront-test-smtp-XXXXXX";
	int fd = mkstemp(path);
	if (!CHECK(fd >= 0, "mkstemp"))
		return NULL;
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "[server]\n%s", server_keys ? server_keys : DEFAULT_CONF);
	fclose(fp);
	struct config *cfg = NULL;
	char err[512] = "";
	int rc = config_load(path, &cfg, err, sizeof err);
	unlink(path);
	CHECK(rc == 0, "config_load: %s", err);
	return rc == 0 ? cfg : NULL;
}

/* ---- the transcript driver ---- */

struct t {
	struct config *cfg;
	struct smtp *s;
	struct fake f;
	struct smtp_framer fr;
	char in[1 << 16]; /* client bytes not yet framed */
	size_t inlen;
	const char *const *script; /* backend answers given whenever one is awaited */
	size_t iscript;
	size_t rmark, lmark; /* for t_replies() / t_log() */
};

/* Parses "250-a\n250 b" (a leading '!' marks it lost) into R; for a hello
 * answer, *CAPS gets the extensions named by the lines after the first. */
static void t_parse_reply(const char *answer, struct smtp_reply *r, unsigned *caps)
{
	memset(r, 0, sizeof *r);
	if (answer[0] == '!') {
		r->lost = true;
		answer++;
	}
	*caps = 0;
	bool first = true;
	for (const char *p = answer; *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		int code;
		bool last;
		const char *text;
		size_t textlen;
		if (!CHECK(smtp_parse_reply_line(p, n, &code, &last, &text, &textlen) == 0,
		           "bad scripted answer %s", answer))
			return;
		if (first)
			r->code = code;
		else
			*caps |= smtp_parse_ext(text, textlen);
		smtp_reply_add_line(r, text, textlen);
		first = false;
		p = nl ? nl + 1 : p + n;
	}
	if (r->code / 100 != 2)
		*caps = 0;
}

static void t_pump(struct t *t);

/* Answers the backend call awaited now with ANSWER (for backend_data_end:
 * one reply per recipient, separated by '|'; for starttls: the TLS info
 * given to smtp_tls_started). */
static void t_answer_now(struct t *t, const char *answer)
{
	enum fake_pending p = fake_pop(&t->f);
	struct smtp_reply r;
	unsigned caps;
	switch (p) {
	case PEND_HELLO:
		t_parse_reply(answer, &r, &caps);
		t->f.backend_pipelining = caps & SMTP_EXT_PIPELINING;
		smtp_backend_hello(t->s, &r, caps);
		break;
	case PEND_COMMAND:
		t_parse_reply(answer, &r, &caps);
		smtp_backend_reply(t->s, &r);
		break;
	case PEND_TLS:
		smtp_tls_started(t->s, answer);
		break;
	case PEND_DATA_END: {
		struct smtp_reply rs[16];
		unsigned n = 0;
		char buf[2048];
		snprintf(buf, sizeof buf, "%s", answer);
		char *save = NULL;
		for (char *tok = strtok_r(buf, "|", &save); tok && n < N_ELEMS(rs);
		     tok = strtok_r(NULL, "|", &save))
			t_parse_reply(tok, &rs[n++], &caps);
		smtp_backend_data_done(t->s, rs, n);
		break;
	}
	default:
		CHECK(false, "answer \"%s\" given with no backend call awaiting one", answer);
	}
}

/* Frames and feeds client bytes while the machine is not busy, giving
 * scripted answers when it is, or when it awaits answers and the client has
 * no whole line left (a backend slower than the client: pipelined groups
 * reach it whole); stops like the session does once closed. */
static void t_pump(struct t *t)
{
	for (;;) {
		if (t->f.nclose)
			break;
		bool scripted = t->script && t->script[t->iscript];
		if (smtp_busy(t->s)) {
			if (scripted) {
				t_answer_now(t, t->script[t->iscript++]);
				continue;
			}
			break;
		}
		size_t limit = smtp_in_data(t->s) ? SMTP_TEXT_LINE_MAX : SMTP_COMMAND_LINE_MAX;
		const char *line = NULL;
		size_t len = 0;
		unsigned flags = 0;
		struct smtp_framer before = t->fr;
		size_t used = t->inlen ? smtp_frame(&t->fr, t->in, t->inlen, limit, &line, &len, &flags)
		                       : 0;
		if (used == 0) {
			t->fr = before;
			if (scripted && t->f.npend) {
				t_answer_now(t, t->script[t->iscript++]);
				continue;
			}
			break;
		}
		if (line) {
			/* An exact-size copy, scribbled over afterwards: the machine
			 * must neither read past the line nor keep a pointer to it. */
			char *copy = malloc(len);
			memcpy(copy, line, len);
			smtp_line(t->s, copy, len, flags);
			memset(copy, '#', len);
			free(copy);
		}
		memmove(t->in, t->in + used, t->inlen - used);
		t->inlen -= used;
		if (t->f.drop_input) {
			t->f.drop_input = false;
			t->inlen = 0;
			memset(&t->fr, 0, sizeof t->fr);
		}
	}
}

static void t_send(struct t *t, const char *s);

/* How a case begins; every field may be left out. */
struct t_setup {
	const char *conf;          /* [server] keys; NULL: DEFAULT_CONF */
	const char *client_ip;     /* NULL: 192.0.2.7 */
	bool tls;                  /* a certificate is loaded: STARTTLS is offered */
	bool ungreeted;            /* no 220: the session refuses or meets an early talker */
	const char *const *script; /* backend answers, kept for later sends too */
	const char *input;         /* the first client bytes */
};

/* The one fixture: names the case, starts a greeted machine as SETUP says
 * and feeds its input. A configuration that does not load ends the run:
 * every case after it would fail the same way. */
static struct t *t_start(const char *name, struct t_setup setup)
{
	check_case(name);
	struct t *t = calloc(1, sizeof *t);
	t->cfg = load_conf(setup.conf);
	if (!t->cfg) {
		check_summary();
		exit(1);
	}
	t->f.hostname = t->cfg->hostname;
	t->s = smtp_new(t->cfg, &fake_ops, &t->f, "s1", setup.client_ip ? setup.client_ip : "192.0.2.7");
	if (!setup.ungreeted)
		smtp_greet(t->s);
	smtp_set_tls_available(t->s, setup.tls);
	t->script = setup.script;
	if (setup.input)
		t_send(t, setup.input);
	return t;
}

static void t_free(struct t *t)
{
	if (!t)
		return;
	smtp_free(t->s);
	config_unref(t->cfg);
	free(t);
}

static void t_sendn(struct t *t, const char *bytes, size_t n)
{
	fake_append(t->in, &t->inlen, sizeof t->in, bytes, n);
	t_pump(t);
}

static void t_send(struct t *t, const char *s)
{
	t_sendn(t, s, strlen(s));
}

static void t_answer(struct t *t, const char *answer)
{
	t_answer_now(t, answer);
	t_pump(t);
}

/* Gives every awaited backend call its usual success, whatever the script
 * says, until none is awaited or a TLS handshake is (it stays in progress). */
static void t_settle(struct t *t)
{
	while (t->f.npend && t->f.pend[0] != PEND_TLS && !t->f.nclose) {
		const char *verb = t->f.pend_verb[0], *ok = "250 2.0.0 Ok";
		if (t->f.pend[0] == PEND_HELLO)
			ok = "250-backend.example\n250-PIPELINING\n250-SMTPUTF8\n250 DSN";
		else if (t->f.pend[0] == PEND_COMMAND && strcmp(verb, "DATA") == 0)
			ok = "354 Go ahead";
		else if (t->f.pend[0] == PEND_COMMAND && strcmp(verb, "MAIL") == 0)
			ok = "250 2.1.0 Ok";
		else if (t->f.pend[0] == PEND_COMMAND && strcmp(verb, "RCPT") == 0)
			ok = "250 2.1.5 Ok";
		t_answer(t, ok);
	}
}

/* Replies (or backend actions) since the previous call. */
static const char *t_replies(struct t *t)
{
	const char *p = t->f.replies + t->rmark;
	t->rmark = t->f.rlen;
	return p;
}

static const char *t_log(struct t *t)
{
	const char *p = t->f.log + t->lmark;
	t->lmark = t->f.llen;
	return p;
}

/* ---- transcripts ---- */

#define GREET "220 " HOST " ESMTP mxfront\r\n"
#define EHLO_C "EHLO client.example\r\n"
#define EHLO_HEAD                                                                                  \
	"250-" HOST " Hello client.example [192.0.2.7]\r\n250-PIPELINING\r\n250-SIZE 10240\r\n"    \
	"250-8BITMIME\r\n"
#define EHLO_MIN EHLO_HEAD "250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_ALL EHLO_HEAD "250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
#define LHLO_ALL                                                                                   \
	"250-backend.example\n250-PIPELINING\n250-ENHANCEDSTATUSCODES\n250-SIZE 0\n250-8BITMIME\n" \
	"250-SMTPUTF8\n250-DSN\n250 XCLIENT ADDR NAME HELO"
#define LHLO_MIN "250-backend.example\n250 PIPELINING"
#define HELLO "hello:client.example\n"
#define MAIL_AB "MAIL FROM:<a@b.example>\r\n"
#define RCPT_CD "RCPT TO:<c@d.example>\r\n"
#define RCPT_EF "RCPT TO:<e@f.example>\r\n"
#define OK_MAIL "250 2.1.0 Ok"
#define OK_RCPT "250 2.1.5 Ok"
/* caps known, but no PIPELINING: one command at a time */
#define LHLO_NOPIPE "250-backend.example\n250 ENHANCEDSTATUSCODES"
#define LOST "!451 4.4.2 Backend connection lost, try again later"
#define R_LOST "451 4.4.2 Backend connection lost, try again later\r\n"
#define GO "354 Go ahead"
#define R_MAIL "250 2.1.0 Ok\r\n"
#define R_RCPT "250 2.1.5 Ok\r\n"
#define R_354 "354 End data with <CR><LF>.<CR><LF>\r\n"
#define R_OK250 "250 2.0.0 Ok\r\n"
#define R_DELIVERED "250 2.0.0 Ok: delivered\r\n"
#define R_BARE "554 5.6.0 Message has a bare CR or LF (RFC 5321 2.3.8)\r\n"
#define L_MAIL "cmd:MAIL FROM:<a@b.example>\r\n"
#define L_RCPT_CD "cmd:RCPT TO:<c@d.example>\r\n"
#define L_RCPT_EF "cmd:RCPT TO:<e@f.example>\r\n"
#define L_DATA "cmd:DATA\r\ndata:[Received]\n"
#define A(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* The prefix of a transaction up to the 354, with one or two recipients. */
#define TX1_IN EHLO_C MAIL_AB RCPT_CD "DATA\r\n"
#define TX1_ANS LHLO_ALL, OK_MAIL, OK_RCPT, GO
#define TX1_OUT GREET EHLO_ALL R_MAIL R_RCPT R_354
#define TX1_LOG HELLO L_MAIL L_RCPT_CD L_DATA
#define TX2_IN EHLO_C MAIL_AB RCPT_CD RCPT_EF "DATA\r\n"
#define TX2_ANS LHLO_ALL, OK_MAIL, OK_RCPT, OK_RCPT, GO
#define TX2_OUT GREET EHLO_ALL R_MAIL R_RCPT R_RCPT R_354
#define TX2_LOG HELLO L_MAIL L_RCPT_CD L_RCPT_EF L_DATA

struct tcase {
	const char *name;
	const char *conf; /* [server] keys; NULL: DEFAULT_CONF */
	struct bytes input;
	const char *const *answers; /* NULL-terminated, or NULL */
	const char *want_replies;   /* everything the client got, greeting included */
	const char *want_log;       /* every backend action */
};

static const struct tcase tcases[] = {
	/* ---- EHLO / HELO ---- */
	{ "ehlo lists what the backend supports", NULL, B(EHLO_C), A(LHLO_ALL), GREET EHLO_ALL, HELLO },
	{ "ehlo: no SMTPUTF8 or DSN without the backend's", NULL, B(EHLO_C), A(LHLO_MIN), GREET EHLO_MIN,
	  HELLO },
	{ "ehlo: DSN only", NULL, B(EHLO_C), A("250-b.example\n250 DSN"),
	  GREET EHLO_HEAD "250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n", HELLO },
	{ "ehlo: SMTPUTF8 only", NULL, B(EHLO_C), A("250-b.example\n250 SMTPUTF8"),
	  GREET EHLO_HEAD "250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n", HELLO },
	{ "ehlo: backend unavailable still gets 250", NULL, B(EHLO_C),
	  A("421 4.4.1 Backend unavailable, try again later"), GREET EHLO_MIN, HELLO },
	{ "ehlo: backend refuses LHLO, its caps are ignored", NULL, B(EHLO_C),
	  A("500-5.5.2 what\n500-SMTPUTF8\n500 DSN"), GREET EHLO_MIN, HELLO },
	{ "helo", NULL, B("HELO client.example\r\n"), A(LHLO_ALL), GREET "250 " HOST "\r\n", HELLO },
	{ "ehlo without a name", NULL, B("EHLO\r\n"), NULL, GREET "501 5.5.4 Syntax: EHLO hostname\r\n",
	  "" },
	{ "ehlo with only spaces", NULL, B("EHLO   \r\n"), NULL,
	  GREET "501 5.5.4 Syntax: EHLO hostname\r\n", "" },
	{ "helo without a name", NULL, B("HELO\r\n"), NULL, GREET "501 5.5.4 Syntax: HELO hostname\r\n",
	  "" },
	{ "ehlo with an 8-bit name", NULL, B("EHLO cli\xc3\xa9nt.example\r\n"), NULL,
	  GREET "501 5.5.4 Syntax: EHLO hostname\r\n", "" },
	{ "ehlo asks every time (the pool's cache answers)", NULL, B(EHLO_C EHLO_C),
	  A(LHLO_ALL, LHLO_ALL), GREET EHLO_ALL EHLO_ALL, HELLO HELLO },
	{ "ehlo again after the backend was down asks again", NULL, B(EHLO_C EHLO_C),
	  A("421 4.4.1 down", LHLO_ALL), GREET EHLO_MIN EHLO_ALL, HELLO HELLO },

	/* ---- sequence errors ---- */
	{ "mail before ehlo", NULL, B(MAIL_AB), NULL, GREET "503 5.5.1 Send EHLO or HELO first\r\n", "" },
	{ "rcpt before mail", NULL, B(EHLO_C RCPT_CD), A(LHLO_ALL),
	  GREET EHLO_ALL "503 5.5.1 Need MAIL command first\r\n", HELLO },
	{ "data before mail", NULL, B(EHLO_C "DATA\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "503 5.5.1 Need MAIL command first\r\n", HELLO },
	{ "data before ehlo", NULL, B("DATA\r\n"), NULL, GREET "503 5.5.1 Send EHLO or HELO first\r\n",
	  "" },
	{ "nested mail", NULL, B(EHLO_C MAIL_AB MAIL_AB), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL "503 5.5.1 Nested MAIL command\r\n", HELLO L_MAIL },

	/* ---- MAIL ---- */
	{ "mail: canonical, with the parameters the backend supports", NULL,
	  B(EHLO_C "mail from: <a@b.example> SIZE=100 BODY=8BITMIME\r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL, HELLO "cmd:MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\n" },
	{ "mail: SIZE and BODY dropped without the caps", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\n"), A(LHLO_MIN, OK_MAIL),
	  GREET EHLO_MIN R_MAIL, HELLO L_MAIL },
	{ "mail: SIZE kept, BODY dropped", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\n"),
	  A("250-b.example\n250 SIZE 1000", OK_MAIL), GREET EHLO_MIN R_MAIL,
	  HELLO "cmd:MAIL FROM:<a@b.example> SIZE=100\r\n" },
	{ "mail: BODY kept, SIZE dropped", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\n"),
	  A("250-b.example\n250 8BITMIME", OK_MAIL), GREET EHLO_MIN R_MAIL,
	  HELLO "cmd:MAIL FROM:<a@b.example> BODY=8BITMIME\r\n" },
	{ "mail: BODY=7BIT", NULL, B(EHLO_C "MAIL FROM:<a@b.example> BODY=7bit\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL, HELLO "cmd:MAIL FROM:<a@b.example> BODY=7bit\r\n" },
	{ "mail: source route stripped", NULL, B(EHLO_C "MAIL FROM:<@x.example,@y.example:a@b.example>\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL, HELLO L_MAIL },
	{ "mail: null sender", NULL, B(EHLO_C "MAIL FROM:<>\r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL, HELLO "cmd:MAIL FROM:<>\r\n" },
	{ "mail: trailing spaces", NULL, B(EHLO_C "MAIL FROM:<a@b.example>   \r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL, HELLO L_MAIL },
	{ "mail: SIZE at the maximum", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SIZE=10240\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL,
	  HELLO "cmd:MAIL FROM:<a@b.example> SIZE=10240\r\n" },
	{ "mail: SIZE over the maximum", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SIZE=10241\r\n"),
	  A(LHLO_ALL), GREET EHLO_ALL "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
	  HELLO },
	{ "mail: SIZE over the maximum, backend without SIZE", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> SIZE=99999999\r\n"), A(LHLO_MIN),
	  GREET EHLO_MIN "552 5.3.4 Message size exceeds fixed maximum message size\r\n", HELLO },
	{ "mail: SIZE without a value", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SIZE\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Bad SIZE parameter\r\n", HELLO },
	{ "mail: SIZE not a number", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SIZE=1k\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Bad SIZE parameter\r\n", HELLO },
	{ "mail: SIZE of 20 digits", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SIZE=99999999999999999999\r\n"),
	  A(LHLO_ALL), GREET EHLO_ALL "501 5.5.4 Bad SIZE parameter\r\n", HELLO },
	{ "mail: unknown parameter", NULL, B(EHLO_C "MAIL FROM:<a@b.example> FOO=1\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "555 5.5.4 Unsupported MAIL parameter\r\n", HELLO },
	{ "mail: BODY=BINARYMIME", NULL, B(EHLO_C "MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"),
	  A(LHLO_ALL), GREET EHLO_ALL "555 5.5.4 Unsupported BODY parameter\r\n", HELLO },
	{ "mail: SMTPUTF8 without the cap", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SMTPUTF8\r\n"),
	  A(LHLO_MIN), GREET EHLO_MIN "555 5.5.4 Unsupported MAIL parameter\r\n", HELLO },
	{ "mail: SMTPUTF8 with the cap", NULL, B(EHLO_C "MAIL FROM:<j\xc3\xb6@b.example> SMTPUTF8\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL,
	  HELLO "cmd:MAIL FROM:<j\xc3\xb6@b.example> SMTPUTF8\r\n" },
	{ "mail: SMTPUTF8 with a value", NULL, B(EHLO_C "MAIL FROM:<a@b.example> SMTPUTF8=1\r\n"),
	  A(LHLO_ALL), GREET EHLO_ALL "501 5.5.4 SMTPUTF8 takes no value\r\n", HELLO },
	{ "mail: UTF-8 sender without the SMTPUTF8 parameter", NULL,
	  B(EHLO_C "MAIL FROM:<j\xc3\xb6@b.example>\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter\r\n", HELLO },
	{ "mail: UTF-8 sender without the cap", NULL, B(EHLO_C "MAIL FROM:<j\xc3\xb6@b.example>\r\n"),
	  A(LHLO_MIN), GREET EHLO_MIN "553 5.1.7 Bad sender address syntax\r\n", HELLO },
	{ "mail: DSN parameters with the cap", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1\r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL, HELLO "cmd:MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1\r\n" },
	{ "mail: DSN parameter without the cap", NULL, B(EHLO_C "MAIL FROM:<a@b.example> RET=HDRS\r\n"),
	  A(LHLO_MIN), GREET EHLO_MIN "555 5.5.4 Unsupported MAIL parameter\r\n", HELLO },
	{ "mail: bad RET", NULL, B(EHLO_C "MAIL FROM:<a@b.example> RET=ALL\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Bad RET parameter\r\n", HELLO },
	{ "mail: bad ENVID", NULL, B(EHLO_C "MAIL FROM:<a@b.example> ENVID=a+zz\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Bad ENVID parameter\r\n", HELLO },
	{ "mail: no brackets", NULL, B(EHLO_C "MAIL FROM:a@b.example\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", HELLO },
	{ "mail: TO instead of FROM", NULL, B(EHLO_C "MAIL TO:<a@b.example>\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", HELLO },
	{ "mail: bad address", NULL, B(EHLO_C "MAIL FROM:<a@b..example>\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "553 5.1.7 Bad sender address syntax\r\n", HELLO },
	{ "mail: bare mailbox", NULL, B(EHLO_C "MAIL FROM:<postmaster>\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "553 5.1.7 Bad sender address syntax\r\n", HELLO },
	{ "mail: too many parameters", NULL,
	  B(EHLO_C "MAIL FROM:<a@b.example> A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8 I=9\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "555 5.5.4 Malformed or too many parameters\r\n", HELLO },
	{ "mail: malformed parameter", NULL, B(EHLO_C "MAIL FROM:<a@b.example> =x\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "555 5.5.4 Malformed or too many parameters\r\n", HELLO },
	{ "mail refused by the backend, pipelined RCPT refused by it too", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD), A(LHLO_ALL, "451 4.3.0 Try again later", "503 5.5.1 MAIL needed first"),
	  GREET EHLO_ALL "451 4.3.0 Try again later\r\n503 5.5.1 MAIL needed first\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "mail refused by a backend without PIPELINING", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_NOPIPE, "451 4.3.0 Try again later"),
	  GREET EHLO_MIN "451 4.3.0 Try again later\r\n503 5.5.1 Need MAIL command first\r\n",
	  HELLO L_MAIL },
	{ "mail refused, then a pipelined RCPT accepted: the backend lost track", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD "DATA\r\n"),
	  A(LHLO_ALL, "451 4.3.0 Try again later", OK_RCPT, "503 5.5.1 MAIL first"),
	  GREET EHLO_ALL "451 4.3.0 Try again later\r\n451 4.4.2 Backend protocol error, try again later\r\n"
	                 "503 5.5.1 MAIL first\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:DATA\r\n" },
	{ "mail refused by the backend, then accepted", NULL, B(EHLO_C MAIL_AB MAIL_AB RCPT_CD),
	  A(LHLO_ALL, "451 4.3.0 Try again later", OK_MAIL, OK_RCPT),
	  GREET EHLO_ALL "451 4.3.0 Try again later\r\n" R_MAIL R_RCPT, HELLO L_MAIL L_MAIL L_RCPT_CD },
	{ "mail with the backend down at hello goes to the backend", NULL, B(EHLO_C MAIL_AB),
	  A("421 4.4.1 down", "451 4.4.1 Backend unavailable, try again later"),
	  GREET EHLO_MIN "451 4.4.1 Backend unavailable, try again later\r\n", HELLO L_MAIL },

	/* ---- RCPT ---- */
	{ "rcpt: the backend's reply passed through", NULL, B(EHLO_C MAIL_AB "RCPT TO:<x@y.example>\r\n"),
	  A(LHLO_ALL, OK_MAIL, "550 5.1.1 <x@y.example> User doesn't exist"),
	  GREET EHLO_ALL R_MAIL "550 5.1.1 <x@y.example> User doesn't exist\r\n",
	  HELLO L_MAIL "cmd:RCPT TO:<x@y.example>\r\n" },
	{ "rcpt: enhanced code added to a 5xx", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "550 User unknown"), GREET EHLO_ALL R_MAIL "550 5.0.0 User unknown\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: enhanced code added to a 2xx", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "250 Ok"), GREET EHLO_ALL R_MAIL "250 2.0.0 Ok\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: enhanced code added to a 4xx", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "452 Too many"), GREET EHLO_ALL R_MAIL "452 4.0.0 Too many\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: enhanced code of the wrong class", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "550 4.1.1 x"), GREET EHLO_ALL R_MAIL "550 5.0.0 4.1.1 x\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: multi-line backend reply", NULL, B(EHLO_C MAIL_AB RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "550-5.1.1 first\n550 second"),
	  GREET EHLO_ALL R_MAIL "550-5.1.1 first\r\n550 5.0.0 second\r\n", HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: bare postmaster", NULL, B(EHLO_C MAIL_AB "RCPT TO:<Postmaster>\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT), GREET EHLO_ALL R_MAIL R_RCPT,
	  HELLO L_MAIL "cmd:RCPT TO:<Postmaster>\r\n" },
	{ "rcpt: source route stripped", NULL, B(EHLO_C MAIL_AB "RCPT TO:<@x.example:c@d.example>\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT), GREET EHLO_ALL R_MAIL R_RCPT, HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: null path", NULL, B(EHLO_C MAIL_AB "RCPT TO:<>\r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL "553 5.1.3 Bad recipient address syntax\r\n", HELLO L_MAIL },
	{ "rcpt: no brackets", NULL, B(EHLO_C MAIL_AB "RCPT TO:c@d.example\r\n"), A(LHLO_ALL, OK_MAIL),
	  GREET EHLO_ALL R_MAIL "501 5.5.4 Syntax: RCPT TO:<address>\r\n", HELLO L_MAIL },
	{ "rcpt: DSN parameters", NULL,
	  B(EHLO_C MAIL_AB "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT), GREET EHLO_ALL R_MAIL R_RCPT,
	  HELLO L_MAIL "cmd:RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example\r\n" },
	{ "rcpt: DSN parameter without the cap", NULL, B(EHLO_C MAIL_AB "RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
	  A(LHLO_MIN, OK_MAIL), GREET EHLO_MIN R_MAIL "555 5.5.4 Unsupported RCPT parameter\r\n",
	  HELLO L_MAIL },
	{ "rcpt: unknown parameter", NULL, B(EHLO_C MAIL_AB "RCPT TO:<c@d.example> FOO=1\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL "555 5.5.4 Unsupported RCPT parameter\r\n",
	  HELLO L_MAIL },
	{ "rcpt: bad ORCPT", NULL, B(EHLO_C MAIL_AB "RCPT TO:<c@d.example> ORCPT=rfc822\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL "501 5.5.4 Bad ORCPT parameter\r\n", HELLO L_MAIL },
	{ "rcpt: NOTIFY without a value", NULL, B(EHLO_C MAIL_AB "RCPT TO:<c@d.example> NOTIFY\r\n"),
	  A(LHLO_ALL, OK_MAIL), GREET EHLO_ALL R_MAIL "501 5.5.4 Parameter needs a value\r\n",
	  HELLO L_MAIL },
	{ "rcpt: max_recipients", CONF("max_recipients = 2\n"),
	  B(EHLO_C MAIL_AB RCPT_CD RCPT_EF "RCPT TO:<g@h.example>\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, OK_RCPT),
	  GREET EHLO_ALL R_MAIL R_RCPT R_RCPT "452 4.5.3 Too many recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD L_RCPT_EF },
	{ "rcpt: refused ones do not count against max_recipients", CONF("max_recipients = 1\n"),
	  B(EHLO_C MAIL_AB RCPT_CD RCPT_EF), A(LHLO_ALL, OK_MAIL, "550 5.1.1 no", OK_RCPT),
	  GREET EHLO_ALL R_MAIL "550 5.1.1 no\r\n" R_RCPT, HELLO L_MAIL L_RCPT_CD L_RCPT_EF },
	{ "rcpt: the backend connection was lost under a pipelined group", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD RCPT_EF "DATA\r\n"), A(LHLO_ALL, OK_MAIL, LOST, LOST, LOST),
	  GREET EHLO_ALL R_MAIL R_LOST R_LOST R_LOST,
	  HELLO L_MAIL L_RCPT_CD L_RCPT_EF "cmd:DATA\r\n" },
	{ "rcpt: the connection to a backend without PIPELINING was lost", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD RCPT_EF "DATA\r\n"), A(LHLO_NOPIPE, OK_MAIL, LOST),
	  GREET EHLO_MIN R_MAIL R_LOST R_LOST "554 5.5.1 No valid recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "rcpt: lost after one recipient was accepted", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD RCPT_EF "DATA\r\nRSET\r\n" MAIL_AB),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, LOST, LOST, OK_MAIL),
	  GREET EHLO_ALL R_MAIL R_RCPT R_LOST R_LOST R_OK250 R_MAIL,
	  HELLO L_MAIL L_RCPT_CD L_RCPT_EF "cmd:DATA\r\n" L_MAIL },
	{ "rcpt: a local refusal waits for the answers before it", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD "RCPT TO:<bad\r\n" RCPT_EF "NOOP\r\nDATA\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, OK_RCPT, GO),
	  GREET EHLO_ALL R_MAIL R_RCPT "501 5.5.4 Syntax: RCPT TO:<address>\r\n" R_RCPT R_OK250 R_354,
	  HELLO L_MAIL L_RCPT_CD L_RCPT_EF "cmd:DATA\r\n" },

	/* ---- DATA ---- */
	{ "data: no accepted recipient, DATA pipelined", NULL, B(EHLO_C MAIL_AB RCPT_CD "DATA\r\n"),
	  A(LHLO_ALL, OK_MAIL, "550 5.1.1 no", "503 5.5.1 No valid recipients"),
	  GREET EHLO_ALL R_MAIL "550 5.1.1 no\r\n503 5.5.1 No valid recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:DATA\r\n" },
	{ "data: 354 for a transaction with no accepted recipient", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD "DATA\r\n"), A(LHLO_ALL, OK_MAIL, "550 5.1.1 no", GO),
	  GREET EHLO_ALL R_MAIL "550 5.1.1 no\r\n554 5.5.1 No valid recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:DATA\r\nabort\n" },
	{ "data: no accepted recipient, backend without PIPELINING", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD "DATA\r\n"), A(LHLO_NOPIPE, OK_MAIL, "550 5.1.1 no"),
	  GREET EHLO_MIN R_MAIL "550 5.1.1 no\r\n554 5.5.1 No valid recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "data: with an argument", NULL, B(EHLO_C MAIL_AB RCPT_CD "DATA x\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT), GREET EHLO_ALL R_MAIL R_RCPT "501 5.5.4 Syntax: DATA\r\n",
	  HELLO L_MAIL L_RCPT_CD },
	{ "data: refused by the backend", NULL, B(EHLO_C MAIL_AB RCPT_CD "DATA\r\nRSET\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, "554 5.3.0 No thanks", "250 2.0.0 Ok"),
	  GREET EHLO_ALL R_MAIL R_RCPT "554 5.3.0 No thanks\r\n" R_OK250,
	  HELLO L_MAIL L_RCPT_CD "cmd:DATA\r\ncmd:RSET\r\n" },
	{ "data: backend answers DATA with 250", NULL, B(EHLO_C MAIL_AB RCPT_CD "DATA\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, "250 2.0.0 what"),
	  GREET EHLO_ALL R_MAIL R_RCPT "451 4.4.2 Backend protocol error, try again later\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:DATA\r\n" },
	{ "transaction with one recipient, dot-stuffing kept", NULL,
	  B(TX1_IN "Subject: x\r\n\r\n..x\r\n.\tb\r\nbody\r\n.\r\n"), A(TX1_ANS, "250 2.0.0 <id> Saved"),
	  TX1_OUT R_DELIVERED,
	  TX1_LOG "data:Subject: x\r\ndata:\r\ndata:..x\r\ndata:.\tb\r\ndata:body\r\nend:1\n" },
	{ "transaction: empty message", NULL, B(TX1_IN ".\r\n"), A(TX1_ANS, "250 2.0.0 Saved"),
	  TX1_OUT R_DELIVERED, TX1_LOG "end:1\n" },
	{ "transaction: two recipients delivered", NULL, B(TX2_IN "x\r\n.\r\n"),
	  A(TX2_ANS, "250 2.0.0 ok|250 2.0.0 ok"), TX2_OUT R_DELIVERED, TX2_LOG "data:x\r\nend:2\n" },
	{ "transaction: mixed replies", NULL, B(TX2_IN "x\r\n.\r\n"),
	  A(TX2_ANS, "250 2.0.0 ok|550 5.2.2 Mailbox full"),
	  TX2_OUT "451 4.3.0 Delivered to some recipients only, try again later\r\n",
	  TX2_LOG "data:x\r\nend:2\n" },
	{ "transaction: all refused", NULL, B(TX2_IN "x\r\n.\r\n"),
	  A(TX2_ANS, "550 5.2.2 Mailbox full|550 5.1.1 No such user"), TX2_OUT "550 5.2.2 Mailbox full\r\n",
	  TX2_LOG "data:x\r\nend:2\n" },
	{ "transaction: a temporary refusal wins", NULL, B(TX2_IN "x\r\n.\r\n"),
	  A(TX2_ANS, "550 5.2.2 Mailbox full|452 4.2.2 Over quota"), TX2_OUT "452 4.2.2 Over quota\r\n",
	  TX2_LOG "data:x\r\nend:2\n" },
	{ "transaction: LMTP reply without an enhanced code", NULL, B(TX1_IN "x\r\n.\r\n"),
	  A(TX1_ANS, "552 Mailbox full"), TX1_OUT "552 5.0.0 Mailbox full\r\n",
	  TX1_LOG "data:x\r\nend:1\n" },
	{ "transaction, then another one", NULL, B(TX1_IN "x\r\n.\r\n" MAIL_AB RCPT_CD "DATA\r\ny\r\n.\r\n"),
	  A(TX1_ANS, "250 2.0.0 ok", OK_MAIL, OK_RCPT, GO, "250 2.0.0 ok"),
	  TX1_OUT R_DELIVERED R_MAIL R_RCPT R_354 R_DELIVERED,
	  TX1_LOG "data:x\r\nend:1\n" L_MAIL L_RCPT_CD L_DATA "data:y\r\nend:1\n" },
	{ "data: bare LF line", NULL, B(TX1_IN "a\r\nb\n.\n.\r\nc\r\n.\r\nNOOP\r\n"), A(TX1_ANS),
	  TX1_OUT R_BARE R_OK250, TX1_LOG "data:a\r\nabort\n" },
	{ "data: bare CR line", NULL, B(TX1_IN "a\rb\r\nc\r\n.\r\nNOOP\r\n"), A(TX1_ANS),
	  TX1_OUT R_BARE R_OK250, TX1_LOG "abort\n" },
	{ "data: bare CR line, then the end", NULL, B(TX1_IN "a\rb\r\n.\r\nNOOP\r\n"), A(TX1_ANS),
	  TX1_OUT R_BARE R_OK250, TX1_LOG "abort\n" },
	{ "smuggling: LF . CRLF", NULL,
	  B(TX1_IN "x\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<c@d.example>\r\n.\r\nNOOP\r\n"),
	  A(TX1_ANS), TX1_OUT R_BARE R_OK250, TX1_LOG "abort\n" },
	{ "smuggling: CRLF . LF", NULL,
	  B(TX1_IN "x\r\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<c@d.example>\r\n.\r\nNOOP\r\n"),
	  A(TX1_ANS), TX1_OUT R_BARE R_OK250, TX1_LOG "data:x\r\nabort\n" },
	{ "smuggling: CR . CRLF", NULL,
	  B(TX1_IN "x\r.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<c@d.example>\r\n.\r\nNOOP\r\n"),
	  A(TX1_ANS), TX1_OUT R_BARE R_OK250, TX1_LOG "abort\n" },
	{ "smuggling: . CR CRLF", NULL,
	  B(TX1_IN "x\r\n.\r\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<c@d.example>\r\n.\r\nNOOP\r\n"),
	  A(TX1_ANS), TX1_OUT R_BARE R_OK250, TX1_LOG "data:x\r\nabort\n" },
	{ "smuggling: LF . LF", NULL,
	  B(TX1_IN "x\n.\nMAIL FROM:<evil@x.example>\r\n.\r\nNOOP\r\n"), A(TX1_ANS), TX1_OUT R_BARE R_OK250,
	  TX1_LOG "abort\n" },

	/* ---- RSET ---- */
	{ "rset with a backend transaction", NULL, B(EHLO_C MAIL_AB "RSET\r\n"),
	  A(LHLO_ALL, OK_MAIL, "250 2.0.0 Ok"), GREET EHLO_ALL R_MAIL R_OK250, HELLO L_MAIL "cmd:RSET\r\n" },
	{ "rset without a transaction", NULL, B(EHLO_C "RSET\r\n"), A(LHLO_ALL), GREET EHLO_ALL R_OK250, HELLO },
	{ "rset before ehlo", NULL, B("RSET\r\n"), NULL, GREET R_OK250, "" },
	{ "rset after the backend refused MAIL", NULL, B(EHLO_C MAIL_AB "RSET\r\n"),
	  A(LHLO_ALL, "550 5.7.1 no"), GREET EHLO_ALL "550 5.7.1 no\r\n" R_OK250, HELLO L_MAIL },
	{ "rset with an argument", NULL, B(EHLO_C "RSET x\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "501 5.5.4 Syntax: RSET\r\n", HELLO },
	{ "rset, then a new transaction", NULL, B(EHLO_C MAIL_AB RCPT_CD "RSET\r\n" MAIL_AB "DATA\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, "250 2.0.0 Ok", OK_MAIL),
	  GREET EHLO_ALL R_MAIL R_RCPT R_OK250 R_MAIL "554 5.5.1 No valid recipients\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:RSET\r\n" L_MAIL },
	{ "ehlo in a transaction resets the backend first", NULL, B(EHLO_C MAIL_AB EHLO_C RCPT_CD),
	  A(LHLO_ALL, OK_MAIL, "250 2.0.0 Ok", LHLO_ALL),
	  GREET EHLO_ALL R_MAIL EHLO_ALL "503 5.5.1 Need MAIL command first\r\n",
	  HELLO L_MAIL "cmd:RSET\r\n" HELLO },
	{ "helo in a transaction resets the backend first", NULL,
	  B(EHLO_C MAIL_AB "HELO client.example\r\n"),
	  A(LHLO_ALL, OK_MAIL, "250 2.0.0 Ok", LHLO_ALL),
	  GREET EHLO_ALL R_MAIL "250 " HOST "\r\n", HELLO L_MAIL "cmd:RSET\r\n" HELLO },

	/* ---- the simple commands ---- */
	{ "quit", NULL, B("QUIT\r\nNOOP\r\n"), NULL, GREET "221 2.0.0 " HOST " Bye\r\n", "close:quit\n" },
	{ "quit after ehlo", NULL, B(EHLO_C "QUIT\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "221 2.0.0 " HOST " Bye\r\n", HELLO "close:quit\n" },
	{ "vrfy", NULL, B("VRFY postmaster\r\n"), NULL,
	  GREET "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", "" },
	{ "help", NULL, B("HELP\r\n"), NULL,
	  GREET "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n", "" },
	{ "noop", NULL, B("NOOP\r\nnoop with text\r\n"), NULL, GREET R_OK250 R_OK250, "" },
	{ "expn", NULL, B("EXPN list\r\n"), NULL, GREET "502 5.5.1 Command not implemented\r\n", "" },
	{ "bdat", NULL, B("BDAT 10 LAST\r\n"), NULL, GREET "502 5.5.1 Command not implemented\r\n", "" },
	{ "auth", NULL, B("AUTH PLAIN\r\n"), NULL, GREET "502 5.5.1 Command not implemented\r\n", "" },
	{ "starttls without a certificate", NULL, B(EHLO_C "STARTTLS\r\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "502 5.5.1 Command not implemented\r\n", HELLO },
	{ "unknown command", NULL, B("XYZZY\r\n"), NULL, GREET "500 5.5.2 Command unrecognized\r\n", "" },
	{ "MAILFROM is unknown", NULL, B("MAILFROM:<a@b.example>\r\n"), NULL,
	  GREET "500 5.5.2 Command unrecognized\r\n", "" },
	{ "empty line", NULL, B("\r\n"), NULL, GREET "500 5.5.2 Command unrecognized\r\n", "" },
	{ "bare LF command", NULL, B("NOOP\nNOOP\r\n"), NULL,
	  GREET "500 5.5.2 Bare CR or LF in command, use CRLF\r\n" R_OK250, "" },
	{ "bare CR command", NULL, B("NO\rOP\r\n"), NULL,
	  GREET "500 5.5.2 Bare CR or LF in command, use CRLF\r\n", "" },
	{ "NUL in a command", NULL, B("NO\0OP\r\n"), NULL, GREET "500 5.5.2 NUL byte in command\r\n", "" },
	{ "bare LF MAIL is not executed", NULL, B(EHLO_C "MAIL FROM:<a@b.example>\n"), A(LHLO_ALL),
	  GREET EHLO_ALL "500 5.5.2 Bare CR or LF in command, use CRLF\r\n", HELLO },
	{ "max_errors", CONF("max_errors = 3\n"), B("XX\r\nXX\r\nXX\r\nNOOP\r\n"), NULL,
	  GREET "500 5.5.2 Command unrecognized\r\n500 5.5.2 Command unrecognized\r\n"
	        "500 5.5.2 Command unrecognized\r\n421 4.7.0 " HOST
	        " Too many errors, closing connection\r\n",
	  "close:error_limit\n" },
	{ "max_errors counts every kind of error", CONF("max_errors = 3\n"),
	  B(MAIL_AB "NOOP\nEHLO\r\nNOOP\r\n"), NULL,
	  GREET "503 5.5.1 Send EHLO or HELO first\r\n500 5.5.2 Bare CR or LF in command, use CRLF\r\n"
	        "501 5.5.4 Syntax: EHLO hostname\r\n421 4.7.0 " HOST
	        " Too many errors, closing connection\r\n",
	  "close:error_limit\n" },
	{ "good commands do not count as errors", CONF("max_errors = 2\n"),
	  B("XX\r\nNOOP\r\nNOOP\r\nRSET\r\nXX\r\n"), NULL,
	  GREET "500 5.5.2 Command unrecognized\r\n" R_OK250 R_OK250 R_OK250 "500 5.5.2 Command unrecognized\r\n"
	        "421 4.7.0 " HOST " Too many errors, closing connection\r\n",
	  "close:error_limit\n" },

	/* ---- pipelining: a whole transaction in one write ---- */
	{ "pipelined transaction", NULL,
	  B(EHLO_C MAIL_AB RCPT_CD "RCPT TO:<x@y.example>\r\n" RCPT_EF "DATA\r\nm\r\n.\r\nQUIT\r\n"),
	  A(LHLO_ALL, OK_MAIL, OK_RCPT, "550 5.1.1 no", OK_RCPT, GO, "250 2.0.0 ok|250 2.0.0 ok"),
	  GREET EHLO_ALL R_MAIL R_RCPT "550 5.1.1 no\r\n" R_RCPT R_354 R_DELIVERED "221 2.0.0 " HOST
	                                                                        " Bye\r\n",
	  HELLO L_MAIL L_RCPT_CD "cmd:RCPT TO:<x@y.example>\r\n" L_RCPT_EF L_DATA
	        "data:m\r\nend:2\nclose:quit\n" },
};

static void test_transcripts(void)
{
	for (size_t i = 0; i < N_ELEMS(tcases); i++) {
		const struct tcase *c = &tcases[i];
		struct t *t = t_start(c->name, (struct t_setup){ .conf = c->conf, .script = c->answers });
		t_sendn(t, c->input.s, c->input.n);
		CHECK_STR_EQ(t->f.replies, c->want_replies);
		CHECK_STR_EQ(t->f.log, c->want_log);
		const char *left = c->answers ? c->answers[t->iscript] : NULL;
		CHECK(!left, "scripted answers left over, from \"%s\"", left);
		CHECK(!smtp_busy(t->s), "still waiting for the backend at the end");
		if (!t->f.nclose)
			CHECK_INT_EQ(t->inlen, 0);
		t_free(t);
	}
}

/* ---- step by step ---- */

static void test_busy_during_hello(void)
{
	struct t *t = t_start("busy until the backend answers the hello", (struct t_setup){ 0 });
	CHECK_STR_EQ(t_replies(t), GREET);
	CHECK(!smtp_busy(t->s), "not busy after the greeting");
	t_send(t, EHLO_C MAIL_AB);
	CHECK(smtp_busy(t->s), "busy while the hello is at the backend");
	CHECK_STR_EQ(t_replies(t), "");
	CHECK_STR_EQ(t_log(t), HELLO);
	CHECK(t->inlen == strlen(MAIL_AB), "the pipelined MAIL waits (%zu bytes left)", t->inlen);
	t_answer(t, LHLO_ALL);
	CHECK_STR_EQ(t_replies(t), EHLO_ALL);
	CHECK_STR_EQ(t_log(t), L_MAIL);
	CHECK(!smtp_busy(t->s), "a pipelined group may go on while MAIL is at the backend");
	CHECK(smtp_waiting(t->s), "waiting for the backend's answer to MAIL");
	t_answer(t, OK_MAIL);
	CHECK_STR_EQ(t_replies(t), R_MAIL);
	CHECK(!smtp_busy(t->s), "");
	CHECK_INT_EQ(smtp_commands(t->s), 2);
	t_free(t);

	/* A failed hello gives caps 0 whatever the caller passes. */
	t = t_start("hello failure ignores caps", (struct t_setup){ .input = EHLO_C });
	fake_pop(&t->f);
	struct smtp_reply r;
	smtp_reply_set(&r, 421, "4.4.1 Backend unavailable");
	smtp_backend_hello(t->s, &r, SMTP_EXT_SMTPUTF8 | SMTP_EXT_DSN | SMTP_EXT_SIZE);
	CHECK_STR_EQ(t->f.replies, GREET EHLO_MIN);
	CHECK(!smtp_busy(t->s), "");
	/* An answer nobody waits for is ignored. */
	smtp_backend_hello(t->s, &r, 0);
	smtp_backend_reply(t->s, &r);
	smtp_backend_data_done(t->s, &r, 1);
	CHECK_STR_EQ(t->f.replies, GREET EHLO_MIN);
	t_free(t);
}

static void test_pipelining_steps(void)
{
	struct t *t = t_start("pipelining: a group goes to the backend whole, replies in order",
	                      (struct t_setup){ .input = EHLO_C });
	t_answer(t, LHLO_ALL);
	t_replies(t);
	t_log(t);
	t_send(t, MAIL_AB RCPT_CD "RCPT TO:<x@y.example>\r\n" RCPT_EF "DATA\r\n");
	CHECK_STR_EQ(t_log(t), L_MAIL L_RCPT_CD "cmd:RCPT TO:<x@y.example>\r\n" L_RCPT_EF "cmd:DATA\r\n");
	CHECK_STR_EQ(t_replies(t), "");
	CHECK(smtp_busy(t->s), "DATA ends the group: busy until its answer");
	t_answer(t, OK_MAIL);
	CHECK_STR_EQ(t_replies(t), R_MAIL);
	t_answer(t, OK_RCPT);
	CHECK_STR_EQ(t_replies(t), R_RCPT);
	t_answer(t, "550 5.1.1 <x@y.example> User doesn't exist");
	CHECK_STR_EQ(t_replies(t), "550 5.1.1 <x@y.example> User doesn't exist\r\n");
	t_answer(t, "450 4.2.0 Try later");
	CHECK_STR_EQ(t_replies(t), "450 4.2.0 Try later\r\n");
	CHECK_STR_EQ(t_log(t), "");
	CHECK(!smtp_in_data(t->s), "not in DATA before the 354");
	t_answer(t, GO);
	CHECK(smtp_in_data(t->s), "in DATA after the 354");
	CHECK_STR_EQ(t_replies(t), R_354);
	CHECK_STR_EQ(t_log(t), ""); /* the Received header goes with the first line */
	/* The end of the message and the next commands in one write. */
	t_send(t, "Subject: s\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nQUIT\r\n");
	CHECK_STR_EQ(t_log(t), "data:[Received]\ndata:Subject: s\r\ndata:\r\ndata:body\r\nend:1\n");
	CHECK_STR_EQ(t_replies(t), "");
	CHECK(smtp_busy(t->s), "busy until the backend's replies after the dot");
	t_answer(t, "250 2.0.0 Saved");
	CHECK_STR_EQ(t_replies(t), R_DELIVERED);
	CHECK(!smtp_in_data(t->s), "");
	CHECK_STR_EQ(t_log(t), "cmd:MAIL FROM:<>\r\n");
	t_answer(t, OK_MAIL);
	CHECK_STR_EQ(t_replies(t), R_MAIL "221 2.0.0 " HOST " Bye\r\n");
	CHECK_STR_EQ(t_log(t), "close:quit\n");
	t_free(t);
}

static void test_no_pipelining_backend(void)
{
	struct t *t = t_start("backend without PIPELINING: one command at a time",
	                      (struct t_setup){ .input = EHLO_C });
	t_answer(t, LHLO_NOPIPE);
	CHECK_STR_EQ(t_replies(t), GREET EHLO_MIN);
	t_log(t);
	t_send(t, MAIL_AB RCPT_CD RCPT_EF "DATA\r\n");
	CHECK_STR_EQ(t_log(t), L_MAIL);
	CHECK(smtp_busy(t->s), "busy while MAIL is at the backend");
	t_answer(t, OK_MAIL);
	CHECK_STR_EQ(t_log(t), L_RCPT_CD);
	t_answer(t, OK_RCPT);
	CHECK_STR_EQ(t_log(t), L_RCPT_EF);
	t_answer(t, "550 5.1.1 no");
	CHECK_STR_EQ(t_log(t), "cmd:DATA\r\n");
	t_answer(t, GO);
	CHECK_STR_EQ(t_replies(t), R_MAIL R_RCPT "550 5.1.1 no\r\n" R_354);
	t_free(t);

	t = t_start("pipelining: no more than SMTP_PIPE_MAX answers awaited",
	            (struct t_setup){ .conf = "max_recipients = 100\n", .input = EHLO_C });
	t_answer(t, LHLO_ALL);
	t_log(t);
	char group[64 * 40] = MAIL_AB;
	for (int i = 0; i < 60; i++)
		snprintf(group + strlen(group), sizeof group - strlen(group), "RCPT TO:<u%d@d.example>\r\n", i);
	t_send(t, group);
	CHECK(smtp_busy(t->s), "busy with the queue full");
	unsigned sent = 0;
	for (const char *p = t_log(t); (p = strstr(p, "cmd:")); p++)
		sent++;
	CHECK_INT_EQ(sent, 32);
	t_free(t);
}

static void test_rset_waits(void)
{
	struct t *t = t_start("RSET waits for the backend",
	                      (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL),
	                                        .input = EHLO_C MAIL_AB });
	t->script = NULL;
	t_replies(t);
	t_log(t);
	t_send(t, "RSET\r\nNOOP\r\n");
	CHECK(smtp_busy(t->s), "busy while RSET is at the backend");
	CHECK_STR_EQ(t_log(t), "cmd:RSET\r\n");
	CHECK_STR_EQ(t_replies(t), "");
	t_answer(t, "250 2.0.0 Ok");
	CHECK_STR_EQ(t_replies(t), R_OK250 R_OK250);
	t_free(t);

	t = t_start("EHLO in a transaction: no reply before the backend's RSET",
	            (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL), .input = EHLO_C MAIL_AB });
	t->script = NULL;
	t_replies(t);
	t_log(t);
	t_send(t, "EHLO other.example\r\n");
	CHECK(smtp_busy(t->s), "busy while RSET is at the backend");
	CHECK_STR_EQ(t_log(t), "cmd:RSET\r\n");
	CHECK_STR_EQ(t_replies(t), "");
	t->script = A(LHLO_ALL);
	t->iscript = 0;
	t_answer(t, "250 2.0.0 Ok");
	CHECK_STR_EQ(t_replies(t), "250-" HOST " Hello other.example [192.0.2.7]\r\n250-PIPELINING\r\n"
	                           "250-SIZE 10240\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n"
	                           "250 ENHANCEDSTATUSCODES\r\n");
	CHECK_STR_EQ(t_log(t), "hello:other.example\n");
	t_free(t);
}

/* The Received header: "from HELO ([IP])", "by HOST (mxfront) with ESMTP id
 * ID.N", "for <RCPT>" with a single recipient only, then the date. */
static void check_received(const char *got, const char *want_before_date)
{
	size_t n = strlen(want_before_date);
	if (!CHECK(strncmp(got, want_before_date, n) == 0, "Received header prefix")) {
		CHECK_STR_EQ(got, want_before_date);
		return;
	}
	const char *date = got + n;
	struct tm tm = { 0 };
	const char *end = strptime(date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	if (!CHECK(end != NULL, "date not in RFC 5322 form: %s", date))
		return;
	CHECK_STR_EQ(end, "\r\n");
	char again[64];
	strftime(again, sizeof again, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	CHECK_MEM_EQ(date, (size_t)(end - date), again);
	time_t when = timegm(&tm), now = time(NULL);
	CHECK(when <= now && now - when < 120, "date is now, in UTC (%lld s off)",
	      (long long)(now - when));
}

static void test_received(void)
{
	struct t *t = t_start("Received header, one recipient",
	                      (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN });
	CHECK_INT_EQ(t->f.nreceived, 0); /* it goes with the first line */
	t_send(t, "x\r\n");
	CHECK_INT_EQ(t->f.nreceived, 1);
	check_received(t->f.received, "Received: from client.example ([192.0.2.7])\r\n"
	                              "\tby " HOST " (mxfront) with ESMTP id s1.1\r\n"
	                              "\tfor <c@d.example>; ");
	/* The second transaction of the session has the next id. */
	t->script = A("250 2.0.0 ok", OK_MAIL, OK_RCPT, GO);
	t->iscript = 0;
	t_send(t, ".\r\n" MAIL_AB "RCPT TO:<Postmaster>\r\nDATA\r\nx\r\n");
	CHECK_INT_EQ(t->f.nreceived, 2);
	check_received(t->f.received, "Received: from client.example ([192.0.2.7])\r\n"
	                              "\tby " HOST " (mxfront) with ESMTP id s1.2\r\n"
	                              "\tfor <Postmaster>; ");
	t_free(t);

	t = t_start("Received header, two recipients: no for",
	            (struct t_setup){ .script = A(TX2_ANS), .input = TX2_IN "x\r\n" });
	check_received(t->f.received, "Received: from client.example ([192.0.2.7])\r\n"
	                              "\tby " HOST " (mxfront) with ESMTP id s1.1;\r\n\t");
	t_free(t);

	t = t_start("Received header, IPv6 client and HELO",
	            (struct t_setup){ .client_ip = "2001:db8::25",
	                              .script = A(LHLO_ALL, OK_MAIL, OK_RCPT, GO),
	                              .input = "HELO old.example\r\n" MAIL_AB RCPT_CD
	                                       "DATA\r\nx\r\n" });
	check_received(t->f.received, "Received: from old.example ([IPv6:2001:db8::25])\r\n"
	                              "\tby " HOST " (mxfront) with SMTP id s1.1\r\n"
	                              "\tfor <c@d.example>; ");
	t_free(t);

	t = t_start("Received header comes first, once",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "x\r\n.\r\n" });
	CHECK_STR_EQ(t->f.log, TX1_LOG "data:x\r\nend:1\n");
	t_free(t);

	t = t_start("Received header with an empty message",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN ".\r\n" });
	CHECK_STR_EQ(t->f.log, TX1_LOG "end:1\n");
	t_free(t);
}

/* LOG past the Received header, which leaves with the first message line. */
static const char *skip_received(const char *log)
{
	const char *h = "data:[Received]\n";
	return strncmp(log, h, strlen(h)) == 0 ? log + strlen(h) : log;
}

static void test_data_limits(void)
{
	char line[1100];

	struct t *t = t_start("data line of exactly 1000 octets",
	                      (struct t_setup){ .script = A(TX1_ANS, "250 2.0.0 ok"),
	                                        .input = TX1_IN });
	t_log(t);
	memset(line, 'x', 998);
	memcpy(line + 998, "\r\n", 3);
	t_send(t, line);
	t_send(t, ".\r\n");
	CHECK_STR_EQ(t->f.replies, TX1_OUT R_DELIVERED);
	const char *lg = skip_received(t_log(t));
	CHECK(strncmp(lg, "data:", 5) == 0 && strlen(lg) == 5 + 1000 + strlen("end:1\n") &&
	          strcmp(lg + 1005, "end:1\n") == 0,
	      "the 1000-octet line goes to the backend, then the end");
	t_free(t);

	t = t_start("data line of 1001 octets",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "before\r\n" });
	t_log(t);
	memset(line, 'x', 999);
	memcpy(line + 999, "\r\n", 3);
	t_send(t, line);
	t_send(t, "after\r\n.\r\nNOOP\r\n");
	CHECK_STR_EQ(t->f.replies, TX1_OUT "554 5.6.0 Message has a line longer than 1000 octets\r\n" R_OK250);
	CHECK_STR_EQ(t_log(t), "abort\n");
	CHECK_INT_EQ(t->f.nend, 0);
	t_free(t);

	t = t_start("data line too long, sent in pieces",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN });
	t_log(t);
	memset(line, 'y', 700);
	line[700] = '\0';
	t_send(t, line);
	t_send(t, line);
	t_send(t, line);
	t_send(t, "\r\n.\r\n");
	CHECK_STR_EQ(t->f.replies, TX1_OUT "554 5.6.0 Message has a line longer than 1000 octets\r\n");
	CHECK_STR_EQ(skip_received(t_log(t)), "abort\n");
	t_free(t);

	t = t_start("message over max_message_size while streaming",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN }); /* 10k = 10240 */
	t_log(t);
	memset(line, 'z', 1022);
	memcpy(line + 1022, "\r\n", 3);
	line[998] = '\r';
	line[999] = '\n';
	line[1000] = '\0';
	for (int i = 0; i < 11; i++) /* 10 lines of 1000 octets fit, the 11th does not */
		t_send(t, line);
	CHECK(!strstr(t->f.replies + strlen(TX1_OUT), "552"), "no reply before the end of data");
	t_send(t, "more\r\n.\r\n");
	CHECK_STR_EQ(t->f.replies,
	             TX1_OUT "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
	lg = skip_received(t_log(t));
	size_t lines = 0;
	for (const char *p = lg; (p = strstr(p, "data:")); p++)
		lines++;
	CHECK_INT_EQ(lines, 10);
	CHECK(strlen(lg) >= 6 && strcmp(lg + strlen(lg) - 6, "abort\n") == 0,
	      "aborted after the 10th line");
	CHECK_INT_EQ(t->f.nabort, 1);
	CHECK_INT_EQ(t->f.nend, 0);
	t_free(t);
}

static void test_backend_failures(void)
{
	struct t *t = t_start("backend lost during DATA",
	                      (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "a\r\n" });
	t_log(t);
	smtp_backend_failed(t->s);
	t_send(t, "b\r\n.\r\nNOOP\r\n");
	CHECK_STR_EQ(t->f.replies, TX1_OUT
	             "451 4.4.2 Backend connection lost during the message, try again later\r\n" R_OK250);
	CHECK_STR_EQ(t_log(t), "");
	CHECK_INT_EQ(t->f.nend, 0);
	CHECK_INT_EQ(t->f.nabort, 0);
	t_free(t);

	t = t_start("backend lost after MAIL",
	            (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL, OK_RCPT),
	                              .input = EHLO_C MAIL_AB RCPT_CD });
	t_replies(t);
	t_log(t);
	smtp_backend_failed(t->s);
	t_send(t, RCPT_EF "DATA\r\nRSET\r\n");
	CHECK_STR_EQ(t_replies(t), "451 4.4.2 Backend connection lost, try again later\r\n"
	                           "451 4.4.2 Backend connection lost, try again later\r\n" R_OK250);
	CHECK_STR_EQ(t_log(t), "");
	t_free(t);

	t = t_start("backend lost with no transaction changes nothing",
	            (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL), .input = EHLO_C });
	smtp_backend_failed(t->s);
	t_send(t, MAIL_AB);
	CHECK_STR_EQ(t->f.replies, GREET EHLO_ALL R_MAIL);
	t_free(t);

	t = t_start("the bad-data abort happens once",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "a\n" });
	smtp_backend_failed(t->s);
	t_send(t, "b\rc\r\n");
	char big[1200];
	memset(big, 'q', 1100);
	memcpy(big + 1100, "\r\n", 3);
	t_send(t, big);
	t_send(t, ".\r\n");
	CHECK_INT_EQ(t->f.nabort, 1);
	CHECK_STR_EQ(t->f.replies, TX1_OUT R_BARE);
	t_free(t);
}

static void test_goodbye(void)
{
	struct t *t = t_start("goodbye during DATA aborts the backend transaction",
	                      (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "a\r\n" });
	t_replies(t);
	t_log(t);
	smtp_goodbye(t->s, "4.4.2", "Timeout, closing connection", "timeout");
	CHECK_STR_EQ(t_replies(t), "421 4.4.2 " HOST " Timeout, closing connection\r\n");
	CHECK_STR_EQ(t_log(t), "abort\nclose:timeout\n");
	/* Nothing more comes out once closed. */
	smtp_goodbye(t->s, "4.3.2", "Shutting down", "shutdown");
	smtp_line(t->s, "NOOP\r\n", 6, 0);
	CHECK_STR_EQ(t_replies(t), "");
	CHECK_STR_EQ(t_log(t), "");
	t_free(t);

	t = t_start("goodbye after bad data does not abort twice",
	            (struct t_setup){ .script = A(TX1_ANS), .input = TX1_IN "a\n" });
	t_log(t);
	smtp_goodbye(t->s, "4.4.2", "Timeout", "timeout");
	CHECK_STR_EQ(t_log(t), "close:timeout\n");
	t_free(t);

	t = t_start("goodbye between commands",
	            (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL), .input = EHLO_C MAIL_AB });
	t_replies(t);
	t_log(t);
	smtp_goodbye(t->s, "4.3.2", "Shutting down", "shutdown");
	CHECK_STR_EQ(t_replies(t), "421 4.3.2 " HOST " Shutting down\r\n");
	CHECK_STR_EQ(t_log(t), "close:shutdown\n");
	t_free(t);

	t = t_start("goodbye while pipelined answers are awaited: nothing after the 421",
	            (struct t_setup){ .script = A(LHLO_ALL), .input = EHLO_C MAIL_AB RCPT_CD });
	t->script = NULL;
	CHECK(smtp_waiting(t->s), "MAIL and RCPT at the backend");
	t_replies(t);
	smtp_goodbye(t->s, "4.3.2", "Shutting down", "shutdown");
	CHECK_STR_EQ(t_replies(t), "421 4.3.2 " HOST " Shutting down\r\n");
	t_answer_now(t, OK_MAIL);
	t_answer_now(t, OK_RCPT);
	CHECK_STR_EQ(t_replies(t), "");
	CHECK(!smtp_waiting(t->s), "every answer taken");
	t_free(t);
}

/* The session's other first words: instead of the greeting. */
static void test_instead_of_greeting(void)
{
	struct t *t = t_start("early talker", (struct t_setup){ .ungreeted = true });
	smtp_early_talker(t->s);
	CHECK_STR_EQ(t_replies(t), "554 5.5.0 " HOST " SMTP synchronization error: talked before the "
	                           "greeting\r\n");
	CHECK_STR_EQ(t_log(t), "close:early_talker\n");
	/* Nothing after it: no line, no goodbye, no second close. */
	smtp_line(t->s, "EHLO client.example\r\n", 21, 0);
	smtp_goodbye(t->s, "4.3.2", "Shutting down", "shutdown");
	smtp_early_talker(t->s);
	smtp_refuse(t->s, "Too many connections, try again later");
	CHECK_STR_EQ(t_replies(t), "");
	CHECK_STR_EQ(t_log(t), "");
	CHECK(smtp_idle(t->s) == false && smtp_busy(t->s) == false, "closed: neither idle nor busy");
	t_free(t);

	t = t_start("refused at accept", (struct t_setup){ .ungreeted = true });
	smtp_refuse(t->s, "Too many connections, try again later");
	CHECK_STR_EQ(t_replies(t), "421 4.7.0 " HOST " Too many connections, try again later\r\n");
	CHECK_STR_EQ(t_log(t), "close:refused\n");
	smtp_line(t->s, "EHLO client.example\r\n", 21, 0);
	smtp_goodbye(t->s, "4.3.2", "Shutting down", "shutdown");
	smtp_refuse(t->s, "Too many connections from your address, try again later");
	CHECK_STR_EQ(t_replies(t), "");
	CHECK_STR_EQ(t_log(t), "");
	t_free(t);

	t = t_start("refused: the reason as given", (struct t_setup){ .ungreeted = true });
	smtp_refuse(t->s, "Too many connections from your address, try again later");
	CHECK_STR_EQ(t_replies(t), "421 4.7.0 " HOST
	                           " Too many connections from your address, try again later\r\n");
	t_free(t);
}

/* ---- STARTTLS ---- */

#define EHLO_TLS                                                                                   \
	EHLO_HEAD "250-STARTTLS\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
#define TLS_INFO "TLS1.3 AES-128-GCM sni=mx.test.example"

static void test_starttls(void)
{
	struct t *t = t_start("STARTTLS offered with a certificate",
	                      (struct t_setup){ .tls = true,
	                                        .script = A(LHLO_ALL, OK_MAIL),
	                                        .input = EHLO_C "HELP\r\nSTARTTLS x\r\n" MAIL_AB
	                                                 "STARTTLS\r\nRSET\r\n" });
	CHECK_STR_EQ(t_replies(t),
	             GREET EHLO_TLS
	             "214 2.0.0 Commands: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"
	             "501 5.5.4 Syntax: STARTTLS\r\n" R_MAIL
	             "503 5.5.1 STARTTLS not allowed in a mail transaction\r\n");
	CHECK_INT_EQ(t->f.nstarttls, 0);
	t_free(t);

	t = t_start("STARTTLS: the session starts over",
	            (struct t_setup){ .tls = true, .script = A(LHLO_ALL), .input = EHLO_C });
	t->script = NULL;
	t_replies(t);
	t_log(t);
	/* Commands pipelined after STARTTLS are plaintext injection (RFC 3207
	 * 5, CVE-2011-0411): they never reach the state machine. */
	t_send(t, "STARTTLS\r\n" MAIL_AB RCPT_CD);
	CHECK_STR_EQ(t_replies(t), "220 2.0.0 Ready to start TLS\r\n");
	CHECK_STR_EQ(t_log(t), "starttls\n");
	CHECK(smtp_busy(t->s), "busy during the handshake");
	t_answer(t, TLS_INFO);
	CHECK(!smtp_busy(t->s), "");
	CHECK_INT_EQ(t->inlen, 0);
	/* RFC 3207 4.2: what was learnt before is forgotten, EHLO first. */
	t_send(t, MAIL_AB);
	CHECK_STR_EQ(t_replies(t), "503 5.5.1 Send EHLO or HELO first\r\n");
	t->script = A(LHLO_ALL, OK_MAIL, OK_RCPT, GO);
	t->iscript = 0;
	t_send(t, EHLO_C "STARTTLS\r\nHELP\r\n" MAIL_AB RCPT_CD "DATA\r\nx\r\n");
	CHECK_STR_EQ(t_replies(t),
	             EHLO_ALL "503 5.5.1 TLS already active\r\n"
	             "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n" R_MAIL
	             R_RCPT R_354);
	CHECK_STR_EQ(t_log(t), HELLO L_MAIL L_RCPT_CD L_DATA "data:x\r\n");
	CHECK_INT_EQ(t->f.nhello, 2);
	check_received(t->f.received, "Received: from client.example ([192.0.2.7])\r\n"
	                              "\tby " HOST " (mxfront) with ESMTPS (" TLS_INFO ") id s1.1\r\n"
	                              "\tfor <c@d.example>; ");
	t_free(t);

	t = t_start("STARTTLS before EHLO",
	            (struct t_setup){ .tls = true, .input = "STARTTLS\r\n" });
	CHECK_STR_EQ(t_replies(t), GREET "220 2.0.0 Ready to start TLS\r\n");
	CHECK_INT_EQ(t->f.nstarttls, 1);
	/* A handshake result nobody waits for is ignored. */
	t_answer(t, TLS_INFO);
	smtp_tls_started(t->s, "other");
	t->script = A(LHLO_ALL);
	t_send(t, EHLO_C);
	CHECK_STR_EQ(t_replies(t), EHLO_ALL);
	t_free(t);

	t = t_start("tls require: MAIL needs STARTTLS first",
	            (struct t_setup){ .conf = CONF("[tls]\nrequire = yes\n"),
	                              .tls = true,
	                              .script = A(LHLO_ALL),
	                              .input = EHLO_C MAIL_AB "STARTTLS\r\n" });
	CHECK_STR_EQ(t_replies(t), GREET EHLO_TLS "530 5.7.0 Must issue a STARTTLS command first\r\n"
	                           "220 2.0.0 Ready to start TLS\r\n");
	t_answer(t, TLS_INFO);
	t->script = A(LHLO_ALL, OK_MAIL);
	t->iscript = 0;
	t_send(t, EHLO_C MAIL_AB);
	CHECK_STR_EQ(t_replies(t), EHLO_ALL R_MAIL);
	t_free(t);
}

/* ---- the rules: every verb in every state ---- */

#define R_NEED_HELO "503 5.5.1 Send EHLO or HELO first\r\n"
#define R_NEED_MAIL "503 5.5.1 Need MAIL command first\r\n"
#define R_502 "502 5.5.1 Command not implemented\r\n"
#define R_HELP_TLS "214 2.0.0 Commands: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"
#define R_ERROR_LIMIT "421 4.7.0 " HOST " Too many errors, closing connection\r\n"
#define R_JUNK_LIMIT "421 4.7.0 " HOST " Too many commands without mail, closing connection\r\n"

/* The states a command can meet: greeted, after EHLO, in a transaction
 * (MAIL accepted), each with a certificate loaded. */
enum { IN_GREETED, IN_READY, IN_MAIL, N_STATES };

static const struct t_setup verb_states[N_STATES] = {
	[IN_GREETED] = { .tls = true },
	[IN_READY] = { .tls = true, .script = A(LHLO_ALL), .input = EHLO_C },
	[IN_MAIL] = { .tls = true, .script = A(LHLO_ALL, OK_MAIL), .input = EHLO_C MAIL_AB },
};

struct verb_case {
	const char *line; /* without its CRLF */
	/* Taken at once behind a pipelined MAIL and RCPT whose answers are
	 * awaited (it goes to the backend); otherwise it waits for them. */
	bool joins;
	struct {
		const char *reply;
		/* "e": counts towards max_errors; "j": towards max_junk_commands
		 * (before anything is said) */
		const char *counts;
	} in[N_STATES];
};

static const struct verb_case verb_cases[] = {
	{ "EHLO client.example", false, { { EHLO_TLS, "" }, { EHLO_TLS, "j" }, { EHLO_TLS, "j" } } },
	{ "HELO client.example", false,
	  { { "250 " HOST "\r\n", "" }, { "250 " HOST "\r\n", "j" }, { "250 " HOST "\r\n", "j" } } },
	{ "EHLO", false,
	  { { "501 5.5.4 Syntax: EHLO hostname\r\n", "e" }, { "501 5.5.4 Syntax: EHLO hostname\r\n", "e" },
	    { "501 5.5.4 Syntax: EHLO hostname\r\n", "e" } } },
	{ "MAIL FROM:<a@b.example>", false,
	  { { R_NEED_HELO, "e" }, { R_MAIL, "" }, { "503 5.5.1 Nested MAIL command\r\n", "e" } } },
	{ "RCPT TO:<c@d.example>", true, { { R_NEED_MAIL, "e" }, { R_NEED_MAIL, "e" }, { R_RCPT, "" } } },
	{ "RCPT TO:<>", false,
	  { { R_NEED_MAIL, "e" }, { R_NEED_MAIL, "e" },
	    { "553 5.1.3 Bad recipient address syntax\r\n", "e" } } },
	{ "DATA", true,
	  { { R_NEED_HELO, "e" }, { R_NEED_MAIL, "e" }, { "554 5.5.1 No valid recipients\r\n", "e" } } },
	{ "DATA x", false,
	  { { "501 5.5.4 Syntax: DATA\r\n", "e" }, { "501 5.5.4 Syntax: DATA\r\n", "e" },
	    { "501 5.5.4 Syntax: DATA\r\n", "e" } } },
	{ "RSET", false, { { R_OK250, "j" }, { R_OK250, "j" }, { R_OK250, "" } } },
	{ "RSET x", false,
	  { { "501 5.5.4 Syntax: RSET\r\n", "e" }, { "501 5.5.4 Syntax: RSET\r\n", "e" },
	    { "501 5.5.4 Syntax: RSET\r\n", "e" } } },
	{ "NOOP", false, { { R_OK250, "j" }, { R_OK250, "j" }, { R_OK250, "j" } } },
	{ "QUIT", false,
	  { { "221 2.0.0 " HOST " Bye\r\n", "" }, { "221 2.0.0 " HOST " Bye\r\n", "" },
	    { "221 2.0.0 " HOST " Bye\r\n", "" } } },
	{ "VRFY postmaster", false,
	  { { "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", "j" },
	    { "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", "j" },
	    { "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", "j" } } },
	{ "HELP", false, { { R_HELP_TLS, "j" }, { R_HELP_TLS, "j" }, { R_HELP_TLS, "j" } } },
	{ "STARTTLS", false,
	  { { "220 2.0.0 Ready to start TLS\r\n", "" }, { "220 2.0.0 Ready to start TLS\r\n", "" },
	    { "503 5.5.1 STARTTLS not allowed in a mail transaction\r\n", "e" } } },
	{ "STARTTLS x", false,
	  { { "501 5.5.4 Syntax: STARTTLS\r\n", "e" }, { "501 5.5.4 Syntax: STARTTLS\r\n", "e" },
	    { "501 5.5.4 Syntax: STARTTLS\r\n", "e" } } },
	{ "EXPN list", false, { { R_502, "je" }, { R_502, "je" }, { R_502, "je" } } },
	{ "BDAT 10 LAST", false, { { R_502, "je" }, { R_502, "je" }, { R_502, "je" } } },
	{ "AUTH PLAIN", false, { { R_502, "je" }, { R_502, "je" }, { R_502, "je" } } },
	{ "XYZZY", false,
	  { { "500 5.5.2 Command unrecognized\r\n", "je" }, { "500 5.5.2 Command unrecognized\r\n", "je" },
	    { "500 5.5.2 Command unrecognized\r\n", "je" } } },
};

/* What LINE gets in state STATE, with CONF and EXTRA client bytes before it. */
static const char *verb_reply(const char *name, int state, const char *conf, const char *extra,
                              const char *line, struct t **tp)
{
	struct t_setup setup = verb_states[state];
	setup.conf = conf;
	struct t *t = *tp = t_start(name, setup);
	if (extra)
		t_send(t, extra);
	t->script = NULL;
	t_replies(t);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "%s\r\n", line);
	t_send(t, cmd);
	t_settle(t);
	return t_replies(t);
}

static void test_verbs_in_states(void)
{
	static const char *const names[N_STATES] = { "greeted", "after EHLO", "in a transaction" };
	char name[N_ELEMS(verb_cases)][N_STATES][3][96];
	for (size_t i = 0; i < N_ELEMS(verb_cases); i++) {
		const struct verb_case *c = &verb_cases[i];
		for (int st = 0; st < N_STATES; st++) {
			const char *want = c->in[st].reply;
			bool error = strchr(c->in[st].counts, 'e'), junk = strchr(c->in[st].counts, 'j');
			char buf[1024];
			struct t *t;
			snprintf(name[i][st][0], sizeof name[0][0][0], "%s, %s", c->line, names[st]);
			CHECK_STR_EQ(verb_reply(name[i][st][0], st, NULL, NULL, c->line, &t), want);
			t_free(t);

			snprintf(name[i][st][1], sizeof name[0][0][0], "%s, %s, max_errors = 1", c->line,
			         names[st]);
			snprintf(buf, sizeof buf, "%s%s", want, error ? R_ERROR_LIMIT : "");
			CHECK_STR_EQ(verb_reply(name[i][st][1], st, CONF("max_errors = 1\n"), NULL, c->line, &t),
			             buf);
			t_free(t);

			/* The NOOP before it is the one junk command allowed. */
			snprintf(name[i][st][2], sizeof name[0][0][0], "%s, %s, max_junk_commands = 1",
			         c->line, names[st]);
			const char *got = verb_reply(name[i][st][2], st, CONF("max_junk_commands = 1\n"),
			                             "NOOP\r\n", c->line, &t);
			CHECK_STR_EQ(got, junk ? R_JUNK_LIMIT : want);
			t_free(t);
		}
	}
}

/* The rules that hang on TLS, and which of two refusals comes first. */
static const struct {
	const char *name;
	struct t_setup setup;
	const char *more; /* client bytes after the setup's (a STARTTLS drops what follows it) */
	const char *line;
	const char *want;
} tls_rule_cases[] = {
	{ "STARTTLS under TLS", { .tls = true, .script = A(TLS_INFO), .input = "STARTTLS\r\n" }, NULL,
	  "STARTTLS", "503 5.5.1 TLS already active\r\n" },
	{ "STARTTLS under TLS, after EHLO",
	  { .tls = true, .script = A(TLS_INFO, LHLO_ALL), .input = "STARTTLS\r\n" }, EHLO_C, "STARTTLS",
	  "503 5.5.1 TLS already active\r\n" },
	{ "STARTTLS with an argument under TLS: syntax first",
	  { .tls = true, .script = A(TLS_INFO), .input = "STARTTLS\r\n" }, NULL, "STARTTLS x",
	  "501 5.5.4 Syntax: STARTTLS\r\n" },
	{ "STARTTLS without a certificate", { 0 }, NULL, "STARTTLS", R_502 },
	{ "STARTTLS without a certificate, after EHLO", { .script = A(LHLO_ALL), .input = EHLO_C }, NULL,
	  "STARTTLS", R_502 },
	{ "STARTTLS without a certificate, in a transaction: 502 before 503",
	  { .script = A(LHLO_ALL, OK_MAIL), .input = EHLO_C MAIL_AB }, NULL, "STARTTLS", R_502 },
	{ "HELP without a certificate", { 0 }, NULL, "HELP",
	  "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n" },
	{ "HELP under TLS", { .tls = true, .script = A(TLS_INFO), .input = "STARTTLS\r\n" }, NULL, "HELP",
	  "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n" },
	{ "tls require: MAIL before EHLO: 503 before 530",
	  { .conf = CONF("[tls]\nrequire = yes\n"), .tls = true }, NULL, "MAIL FROM:<a@b.example>",
	  R_NEED_HELO },
	{ "tls require: MAIL after EHLO",
	  { .conf = CONF("[tls]\nrequire = yes\n"), .tls = true, .script = A(LHLO_ALL), .input = EHLO_C },
	  NULL, "MAIL FROM:<a@b.example>", "530 5.7.0 Must issue a STARTTLS command first\r\n" },
	{ "tls require: MAIL under TLS",
	  { .conf = CONF("[tls]\nrequire = yes\n"), .tls = true, .script = A(TLS_INFO, LHLO_ALL),
	    .input = "STARTTLS\r\n" },
	  EHLO_C, "MAIL FROM:<a@b.example>", R_MAIL },
};

static void test_tls_rules(void)
{
	for (size_t i = 0; i < N_ELEMS(tls_rule_cases); i++) {
		struct t *t = t_start(tls_rule_cases[i].name, tls_rule_cases[i].setup);
		if (tls_rule_cases[i].more)
			t_send(t, tls_rule_cases[i].more);
		CHECK(!t->script || !t->script[t->iscript], "the setup's answers are all taken");
		t->script = NULL;
		t_replies(t);
		char cmd[128];
		snprintf(cmd, sizeof cmd, "%s\r\n", tls_rule_cases[i].line);
		t_send(t, cmd);
		t_settle(t);
		CHECK_STR_EQ(t_replies(t), tls_rule_cases[i].want);
		t_free(t);
	}
}

/* With MAIL and RCPT pipelined and their answers awaited, a clean RCPT or
 * DATA goes to the backend at once; anything else, a line with a bad
 * ending included, waits until the answers are in. */
static void test_verbs_pipelined(void)
{
	static const struct {
		const char *name;
		struct bytes line;
		bool joins;
	} bad_endings[] = {
		{ "RCPT ended by a bare LF", B("RCPT TO:<e@f.example>\n"), false },
		{ "RCPT with a NUL", B("RCPT TO:<e@f\0.example>\r\n"), false },
		{ "DATA ended by a bare LF", B("DATA\n"), false },
		{ "RCPT with CRLF", B("RCPT TO:<e@f.example>\r\n"), true },
	};
	char name[N_ELEMS(verb_cases) + N_ELEMS(bad_endings)][96];
	for (size_t i = 0; i < N_ELEMS(verb_cases) + N_ELEMS(bad_endings); i++) {
		char line[128];
		struct bytes in;
		bool joins;
		if (i < N_ELEMS(verb_cases)) {
			snprintf(line, sizeof line, "%s\r\n", verb_cases[i].line);
			in = (struct bytes){ line, strlen(line) };
			joins = verb_cases[i].joins;
			snprintf(name[i], sizeof name[i], "%s behind a pipelined MAIL and RCPT",
			         verb_cases[i].line);
		} else {
			in = bad_endings[i - N_ELEMS(verb_cases)].line;
			joins = bad_endings[i - N_ELEMS(verb_cases)].joins;
			snprintf(name[i], sizeof name[i], "%s, behind a pipelined MAIL and RCPT",
			         bad_endings[i - N_ELEMS(verb_cases)].name);
		}
		struct t *t = t_start(name[i], (struct t_setup){ .tls = true, .script = A(LHLO_ALL),
		                                                 .input = EHLO_C });
		t->script = NULL;
		t_replies(t);
		t_log(t);
		t_send(t, MAIL_AB RCPT_CD);
		t_sendn(t, in.s, in.n);
		const char *log = t_log(t);
		size_t group = strlen(L_MAIL L_RCPT_CD);
		CHECK_MEM_EQ(log, strlen(log) < group ? strlen(log) : group, L_MAIL L_RCPT_CD);
		CHECK(joins == (strlen(log) > group), "%s goes to the backend: %s",
		      joins ? "it" : "nothing more", log);
		CHECK_STR_EQ(t_replies(t), "");
		CHECK(joins || smtp_busy(t->s), "held until the answers are in");
		t_settle(t);
		CHECK(!smtp_busy(t->s) || t->f.npend, "taken once they are");
		t_free(t);
	}
}

/* smtp_data_received formats into char hdr[1024] and sends nothing when the
 * header does not fit, so a long EHLO name, a long recipient and a long TLS
 * comment (its sni= is the client's) make the message go to the backend
 * without any Received header: no trace of the client, no loop detection
 * (RFC 5321 4.4: a server MUST insert one). */
static void test_received_always(void)
{
	struct t *t = t_start("Received header with long names is still sent",
	                      (struct t_setup){ .tls = true });
	char helo[256], rcpt[600], info[200], cmd[1200];
	memset(helo, 'h', 255);
	helo[255] = '\0';
	char local[500];
	memset(local, 'q', 486);
	local[486] = '\0';
	snprintf(rcpt, sizeof rcpt, "\"%s\"@d.example", local); /* 498 octets: RCPT is 510 */
	snprintf(info, sizeof info, "TLS1.3 AES-128-GCM sni=%.136s", L63_A L63_A L63_A);
	t_send(t, "STARTTLS\r\n");
	t_answer(t, info);
	t->script = A(LHLO_ALL, OK_MAIL, OK_RCPT, GO);
	snprintf(cmd, sizeof cmd, "EHLO %s\r\n" MAIL_AB "RCPT TO:<%s>\r\nDATA\r\nx\r\n", helo, rcpt);
	t_send(t, cmd);
	CHECK(smtp_in_data(t->s), "in DATA; replies: %s", t->f.replies);
	CHECK_INT_EQ(t->f.nreceived, 1);
	t_free(t);
}

static void test_long_command(void)
{
	struct t *t = t_start("over-long command", (struct t_setup){ 0 });
	char line[700];
	memcpy(line, "NOOP ", 5);
	memset(line + 5, 'a', 600);
	memcpy(line + 605, "\r\nNOOP\r\n", 9);
	t_send(t, line);
	CHECK_STR_EQ(t->f.replies, GREET "500 5.5.2 Line too long\r\n" R_OK250);
	t_free(t);

	t = t_start("command of exactly 512 octets", (struct t_setup){ 0 });
	memcpy(line, "NOOP ", 5);
	memset(line + 5, 'a', 505);
	memcpy(line + 510, "\r\n", 3);
	CHECK_INT_EQ(strlen(line), 512);
	t_send(t, line);
	CHECK_STR_EQ(t->f.replies, GREET R_OK250);
	t_free(t);

	t = t_start("over-long MAIL in pieces is not executed",
	            (struct t_setup){ .script = A(LHLO_ALL), .input = EHLO_C "MAIL FROM:<" });
	memset(line, 'a', 400);
	line[400] = '\0';
	t_send(t, line);
	t_send(t, line);
	t_send(t, "@b.example>\r\n");
	CHECK_STR_EQ(t->f.replies, GREET EHLO_ALL "500 5.5.2 Line too long\r\n");
	CHECK_STR_EQ(t->f.log, HELLO);
	t_free(t);
}

/* ---- daemon bugs found while writing these tests (failing on purpose) ---- */

/* RFC 6531 3.4: UTF-8 addresses are allowed in a transaction only after
 * MAIL ... SMTPUTF8. smtp_cmd_mail refuses a UTF-8 sender without it
 * (553 5.6.7) but smtp_cmd_rcpt forwards a UTF-8 recipient to the backend. */
static void test_rcpt_utf8_needs_smtputf8(void)
{
	struct t *t = t_start("rcpt: UTF-8 recipient without MAIL ... SMTPUTF8",
	                      (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL, OK_RCPT),
	                                        .input = EHLO_C MAIL_AB });
	t_replies(t);
	t_log(t);
	t_send(t, "RCPT TO:<j\xc3\xb6@d.example>\r\n");
	const char *r = t_replies(t);
	CHECK(strncmp(r, "553 5.6.7 ", 10) == 0, "want 553 5.6.7, got %s", r);
	CHECK_STR_EQ(t_log(t), "");
	t_free(t);

	t = t_start("rcpt: UTF-8 recipient after MAIL ... SMTPUTF8",
	            (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL, OK_RCPT),
	                              .input = EHLO_C "MAIL FROM:<a@b.example> SMTPUTF8\r\n"
	                                              "RCPT TO:<j\xc3\xb6@d.example>\r\n" });
	CHECK_STR_EQ(t->f.replies, GREET EHLO_ALL R_MAIL R_RCPT);
	t_free(t);
}

/* smtp_send_reply formats into a 1024-byte buffer and stops at the first
 * line that does not fit, so a long multi-line reply reaches the client
 * without its last line ("550-..." and nothing after): the client waits
 * forever. The reply check in fake_reply reports it. */
static void test_long_multiline_reply(void)
{
	struct t *t = t_start("many-line backend reply keeps its last line",
	                      (struct t_setup){ .script = A(LHLO_ALL, OK_MAIL),
	                                        .input = EHLO_C MAIL_AB });
	t_replies(t);
	t_send(t, RCPT_CD);
	char answer[1200];
	size_t o = 0;
	for (int i = 0; i < 99; i++)
		o += (size_t)snprintf(answer + o, sizeof answer - o, "550-x\n");
	snprintf(answer + o, sizeof answer - o, "550 end");
	t_answer(t, answer);
	const char *r = t_replies(t);
	size_t n = strlen(r);
	const char *lastline = n >= 2 ? r + n - 2 : r;
	while (lastline > r && lastline[-1] != '\n')
		lastline--;
	CHECK(strncmp(lastline, "550 ", 4) == 0, "the reply ends with a final \"550 \" line, got %s",
	      lastline);
	CHECK(!smtp_busy(t->s), "");
	t_free(t);
}

/* The longest hostname a config line allows (189 octets) and a 255-octet
 * EHLO name: the reply is complete, and its first line stays within 512
 * octets because the echoed EHLO name is cut at 160. Run in a child process:
 * under ASan an over-read would abort it. */
static void ehlo_long_names_child(void)
{
	char conf[400], host[200], helo[300], cmd[320];
	/* 63 + 1 + 63 + 1 + 61 = 189 */
	snprintf(host, sizeof host, "%.63s.%.63s.%.61s", L63_A, L63_A, L63_A);
	snprintf(conf, sizeof conf, "hostname=%s\nmax_message_size = 10k\n", host);
	struct t *t = t_start("EHLO reply with a long hostname and EHLO name",
	                      (struct t_setup){ .conf = conf,
	                                        .client_ip = "2001:db8:1111:2222:3333:4444:5555:6666" });
	memset(helo, 'h', 255);
	helo[255] = '\0';
	snprintf(cmd, sizeof cmd, "EHLO %s\r\n", helo);
	t_replies(t);
	t_send(t, cmd);
	t_answer(t, LHLO_ALL);
	char want[1024];
	snprintf(want, sizeof want,
	         "250-%s Hello %.160s [2001:db8:1111:2222:3333:4444:5555:6666]\r\n250-PIPELINING\r\n"
	         "250-SIZE 10240\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n"
	         "250 ENHANCEDSTATUSCODES\r\n",
	         host, helo);
	CHECK_STR_EQ(t_replies(t), want);
	t_free(t);
}

static void run_isolated(const char *name, void (*fn)(void))
{
	check_case(name);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (!CHECK(pid >= 0, "fork"))
		return;
	if (pid == 0) {
		check_failed = 0;
		fn();
		fflush(stderr);
		_exit(check_failed ? 1 : 0);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "failed in its child process (%s %d)", WIFEXITED(status) ? "exit" : "signal",
	      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* ---- smtp_map_lmtp ---- */

struct map_case {
	const char *name;
	const char *replies; /* "250 2.0.0 ok|550 5.1.1 no" */
	const char *want;    /* "CODE TEXT" */
	unsigned want_ok;
};

static const struct map_case map_cases[] = {
	{ "one delivered", "250 2.0.0 ok", "250 2.0.0 Ok: delivered", 1 },
	{ "all delivered", "250 2.0.0 a|250 2.0.0 b|251 2.1.5 c", "250 2.0.0 Ok: delivered", 3 },
	{ "one refused", "550 5.1.1 no", "550 5.1.1 no", 0 },
	{ "all refused: the first", "550 5.2.2 full|551 5.1.6 moved", "550 5.2.2 full", 0 },
	{ "all refused: a 4xx wins", "550 5.2.2 full|452 4.2.2 over quota", "452 4.2.2 over quota", 0 },
	{ "all refused: the first 4xx", "452 4.2.2 over|550 5.1.1 no|451 4.3.0 x", "452 4.2.2 over", 0 },
	{ "all temporary: the first", "450 4.2.1 a|451 4.3.0 b", "450 4.2.1 a", 0 },
	{ "a 4xx after two 5xx", "550 5.1.1 a|554 5.7.1 b|450 4.2.1 c", "450 4.2.1 c", 0 },
	{ "mixed", "250 2.0.0 ok|550 5.1.1 no",
	  "451 4.3.0 Delivered to some recipients only, try again later", 1 },
	{ "mixed, refusal first", "452 4.2.2 over|250 2.0.0 ok|250 2.0.0 ok",
	  "451 4.3.0 Delivered to some recipients only, try again later", 2 },
	{ "multi-line refusal kept", "550-5.1.1 a\n550 5.1.1 b", "550 5.1.1 a\n5.1.1 b", 0 },
};

static void test_map_lmtp(void)
{
	for (size_t i = 0; i < N_ELEMS(map_cases); i++) {
		const struct map_case *c = &map_cases[i];
		check_case(c->name);
		struct smtp_reply rs[8], out;
		unsigned n = 0, caps;
		char buf[512];
		snprintf(buf, sizeof buf, "%s", c->replies);
		char *save = NULL;
		for (char *tok = strtok_r(buf, "|", &save); tok; tok = strtok_r(NULL, "|", &save))
			t_parse_reply(tok, &rs[n++], &caps);
		memset(&out, 0x55, sizeof out);
		unsigned ok = smtp_map_lmtp(rs, n, &out);
		CHECK_INT_EQ(ok, c->want_ok);
		char got[SMTP_REPLY_TEXT_MAX + 8];
		snprintf(got, sizeof got, "%d %.*s", out.code, (int)out.len, out.text);
		CHECK_STR_EQ(got, c->want);
		CHECK(out.len < sizeof out.text && out.text[out.len] == '\0', "NUL-terminated");
	}

	/* Promise 1: never 250 for what the backend did not take. */
	check_case("no replies at all is not a 250");
	struct smtp_reply out;
	unsigned ok = smtp_map_lmtp(NULL, 0, &out);
	CHECK_INT_EQ(ok, 0);
	CHECK(out.code / 100 == 4, "want a 4xx, got %d", out.code);

	check_case("a lost reply stays lost");
	struct smtp_reply lost;
	smtp_reply_set(&lost, 451, "4.4.2 Backend connection lost after the message, try again later");
	lost.lost = true;
	smtp_map_lmtp(&lost, 1, &out);
	CHECK_INT_EQ(out.code, 451);
	CHECK(out.lost, "");
}

/* Found by fuzz_session: backend answers that are not verdicts, reply lines
 * at the edges, and normalisation pushing a line past 1000 octets. */
static void test_fuzz_findings(void)
{
	struct t *t = t_start("354 to MAIL is never passed on",
	                      (struct t_setup){ .script = A(LHLO_ALL, "354 go ahead"),
	                                        .input = EHLO_C MAIL_AB });
	CHECK_STR_EQ(t->f.replies,
	             GREET EHLO_ALL "451 4.4.2 Backend protocol error, try again later\r\n");
	t_free(t);

	t = t_start("3xx after the final dot is a 451",
	            (struct t_setup){ .script = A(TX1_ANS, "354 more?"),
	                              .input = TX1_IN "a\r\n.\r\n" });
	CHECK_STR_EQ(t->f.replies, TX1_OUT "451 4.4.2 Backend protocol error, try again later\r\n");
	t_free(t);

	t = t_start("an empty last reply line still ends the reply",
	            (struct t_setup){ .script = A(LHLO_ALL, "250-2.1.0 first\n250 "),
	                              .input = EHLO_C MAIL_AB });
	CHECK_STR_EQ(t->f.replies, GREET EHLO_ALL "250-2.1.0 first\r\n250 2.0.0 \r\n");
	t_free(t);

	t = t_start("a backend reply line is cut to 512 octets", (struct t_setup){ 0 });
	char longrep[600];
	memset(longrep, 'x', sizeof longrep - 1);
	memcpy(longrep, "550 5.1.1 ", 10);
	longrep[sizeof longrep - 1] = '\0';
	t->script = A(LHLO_ALL, longrep);
	t_send(t, EHLO_C MAIL_AB);
	const char *r = t->f.replies + strlen(GREET EHLO_ALL);
	CHECK(strncmp(r, "550 5.1.1 xxx", 13) == 0, "%.20s", r);
	CHECK(strlen(r) <= 512 && strlen(r) >= 400, "reply of %zu octets", strlen(r));
	t_free(t);

	t = t_start("SIZE counts the message without its stuffing dots (RFC 1870)",
	            (struct t_setup){ .script = A(TX1_ANS, "250 2.0.0 ok"),
	                              .input = TX1_IN }); /* max_message_size = 10k */
	char stuffed[514];
	memset(stuffed, 'q', sizeof stuffed);
	stuffed[0] = stuffed[1] = '.'; /* "..qqq": 512 octets of message, 513 on the wire */
	memcpy(stuffed + 511, "\r\n", 3);
	for (int i = 0; i < 20; i++)
		t_send(t, stuffed); /* exactly 10,240 octets of message (Received excluded) */
	t_send(t, ".\r\n");
	CHECK(strstr(t->f.replies, "250 2.0.0 Ok: delivered") != NULL, "%s",
	      t->f.replies + strlen(TX1_OUT));
	t_free(t);

	t = t_start("normalize: a line that grows past 1000 octets is refused",
	            (struct t_setup){ .conf = DEFAULT_CONF "[smtp]\nbare_newline = normalize\n",
	                              .script = A(TX1_ANS) });
	char line[1001];
	memset(line, 'y', 999);
	line[999] = '\n'; /* 999 octets and a bare LF: 1001 once it is CRLF */
	line[1000] = '\0';
	t_send(t, TX1_IN);
	t_send(t, line);
	t_send(t, "z\r\n.\r\n"); /* a dot right after the bare LF would not end DATA */
	CHECK(strstr(t->f.replies, "554 5.6.0 Message has a line longer than 1000 octets") != NULL,
	      "%s", t->f.replies);
	CHECK_INT_EQ(t->f.nend, 0);
	CHECK_INT_EQ(t->f.nabort, 1);
	t_free(t);
}

int main(void)
{
	log_set_level(LOG_LEVEL_ERROR);
	test_transcripts();
	test_busy_during_hello();
	test_pipelining_steps();
	test_no_pipelining_backend();
	test_rset_waits();
	test_received();
	test_data_limits();
	test_backend_failures();
	test_goodbye();
	test_instead_of_greeting();
	test_starttls();
	test_verbs_in_states();
	test_verbs_pipelined();
	test_tls_rules();
	test_long_command();
	test_map_lmtp();
	test_rcpt_utf8_needs_smtputf8();
	test_long_multiline_reply();
	test_received_always();
	test_fuzz_findings();
	run_isolated("EHLO reply with a long hostname and EHLO name", ehlo_long_names_child);
	return check_summary();
}
