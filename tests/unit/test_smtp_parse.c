/* Unit tests for smtp_parse: line framing (including SMTP smuggling
 * sequences), verbs, paths with ESMTP parameters, domains, xtext, numbers,
 * reply lines, enhanced status codes and LHLO extensions. Table-driven:
 * each table row is {name, input, want}. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "smtp_parse.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* A byte string that may hold NUL bytes: B("a\0b") keeps all three. */
struct bytes {
	const char *s;
	size_t n;
};
#define B(lit) { (lit), sizeof(lit) - 1 }

/* ---- smtp_frame ---- */

struct frame_case {
	const char *name;
	size_t limit;
	struct bytes chunks[4]; /* arrive one after the other; { NULL } ends */
	const char *want;       /* one entry per smtp_frame result, see frame_run() */
	size_t want_rest;       /* bytes left unconsumed at the end (waiting for more) */
};

static void frame_flags(char *out, size_t size, unsigned flags)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {
		{ SMTP_LINE_BARE_LF, "LF" },
		{ SMTP_LINE_BARE_CR, "CR" },
		{ SMTP_LINE_NUL, "NUL" },
		{ SMTP_LINE_TOO_LONG, "LONG" },
	};
	out[0] = '\0';
	for (size_t i = 0; i < N_ELEMS(names); i++) {
		if (flags & names[i].bit) {
			if (out[0])
				strncat(out, ",", size - strlen(out) - 1);
			strncat(out, names[i].name, size - strlen(out) - 1);
		}
	}
	if (!out[0])
		snprintf(out, size, "ok");
	if (flags & ~(unsigned)(SMTP_LINE_BARE_LF | SMTP_LINE_BARE_CR | SMTP_LINE_NUL | SMTP_LINE_TOO_LONG))
		strncat(out, ",?", size - strlen(out) - 1);
}

/* "[LINE] FLAGS\n" with NUL bytes shown as \0 (the want strings are C strings). */
static int frame_show(char *out, size_t size, const char *line, size_t len, const char *flags)
{
	size_t o = 0;
	out[o++] = '[';
	for (size_t i = 0; i < len && o + 3 < size; i++) {
		if (line[i] == '\0') {
			out[o++] = '\\';
			out[o++] = '0';
		} else {
			out[o++] = line[i];
		}
	}
	int n = snprintf(out + o, size - o, "] %s\n", flags);
	return (int)o + n;
}

/* Feeds the chunks like a session does (appending to a buffer, framing until
 * smtp_frame asks for more) and describes every result: "[LINE] FLAGS\n" for
 * a line, "[(N bytes)] FLAGS\n" for an over-long one (its content is not
 * meaningful) and "(discarded N)\n" for bytes dropped without a line. */
static void frame_run(const struct frame_case *c, char *out, size_t outsize, size_t *rest)
{
	char buf[4096];
	size_t len = 0;
	struct smtp_framer fr = { 0 };
	size_t o = 0;
	out[0] = '\0';
	for (size_t k = 0; k < N_ELEMS(c->chunks) && c->chunks[k].s; k++) {
		memcpy(buf + len, c->chunks[k].s, c->chunks[k].n);
		len += c->chunks[k].n;
		size_t off = 0;
		for (;;) {
			const char *line = (const char *)1;
			size_t linelen = 12345;
			unsigned flags = 999;
			size_t used = smtp_frame(&fr, buf + off, len - off, c->limit, &line, &linelen, &flags);
			if (used == 0) {
				CHECK(line == NULL && linelen == 0 && flags == 0,
				      "need-more must leave no line (line=%p len=%zu flags=%u)", (const void *)line,
				      linelen, flags);
				break;
			}
			CHECK(used <= len - off, "consumed %zu of %zu bytes", used, len - off);
			char fl[64];
			frame_flags(fl, sizeof fl, flags);
			int n;
			if (!line) {
				CHECK(flags == 0, "discarded bytes come with no flags (got %s)", fl);
				n = snprintf(out + o, outsize - o, "(discarded %zu)\n", used);
			} else {
				CHECK(line == buf + off && linelen == used,
				      "the line is the consumed bytes (line at +%td len %zu, consumed %zu)",
				      line - (buf + off), linelen, used);
				if (flags & SMTP_LINE_TOO_LONG)
					n = snprintf(out + o, outsize - o, "[(%zu bytes)] %s\n", linelen, fl);
				else
					n = frame_show(out + o, outsize - o, line, linelen, fl);
			}
			o += (size_t)n;
			off += used;
			if (off == len)
				break;
		}
		memmove(buf, buf + off, len - off);
		len -= off;
	}
	*rest = len;
}

static const struct frame_case frame_cases[] = {
	{ "CRLF line", 512, { B("NOOP\r\n") }, "[NOOP\r\n] ok\n", 0 },
	{ "two lines in one buffer", 512, { B("NOOP\r\nQUIT\r\n") }, "[NOOP\r\n] ok\n[QUIT\r\n] ok\n", 0 },
	{ "partial line needs more", 512, { B("NOO") }, "", 3 },
	{ "partial line completed", 512, { B("NOO"), B("P\r"), B("\nQU") }, "[NOOP\r\n] ok\n", 2 },
	{ "empty input", 512, { B("") }, "", 0 },
	{ "empty CRLF line", 512, { B("\r\n") }, "[\r\n] ok\n", 0 },
	{ "bare LF", 512, { B("NOOP\n") }, "[NOOP\n] LF\n", 0 },
	{ "lone LF", 512, { B("\n") }, "[\n] LF\n", 0 },
	{ "bare CR inside", 512, { B("NO\rOP\r\n") }, "[NO\rOP\r\n] CR\n", 0 },
	{ "CR CR LF", 512, { B("NOOP\r\r\n") }, "[NOOP\r\r\n] CR\n", 0 },
	{ "bare CR and bare LF", 512, { B("a\rb\n") }, "[a\rb\n] LF,CR\n", 0 },
	{ "CR only, no LF yet", 512, { B("NOOP\r") }, "", 5 },
	{ "NUL", 512, { B("NO\0OP\r\n") }, "[NO\\0OP\r\n] NUL\n", 0 },
	{ "NUL and bare LF", 512, { B("a\0\n") }, "[a\\0\n] LF,NUL\n", 0 },
	{ "exactly the limit", 8, { B("123456\r\n") }, "[123456\r\n] ok\n", 0 },
	{ "exactly the limit in two reads", 8, { B("123456\r"), B("\n") }, "[123456\r\n] ok\n", 0 },
	{ "one over the limit", 8, { B("1234567\r\nNOOP\r\n") }, "[(9 bytes)] LONG\n[NOOP\r\n] ok\n", 0 },
	{ "too long in one buffer", 8, { B("123456789012\r\nNOOP\r\n") },
	  "[(14 bytes)] LONG\n[NOOP\r\n] ok\n", 0 },
	{ "too long in one buffer with bare LF", 8, { B("123456789012\nNOOP\r\n") },
	  "[(13 bytes)] LF,LONG\n[NOOP\r\n] ok\n", 0 },
	{ "limit bytes without LF start discarding", 8, { B("1234567\r") }, "(discarded 8)\n", 0 },
	{ "too long across calls", 8, { B("1234567890"), B("abc"), B("de\r\nNOOP\r\n") },
	  "(discarded 10)\n(discarded 3)\n[(4 bytes)] LONG\n[NOOP\r\n] ok\n", 0 },
	{ "too long across calls, bare LF", 8, { B("1234567890"), B("ab\nNOOP\r\n") },
	  "(discarded 10)\n[(3 bytes)] LF,LONG\n[NOOP\r\n] ok\n", 0 },
	{ "too long across calls, CR in the earlier call", 8, { B("123456789\r"), B("\nNOOP\r\n") },
	  "(discarded 10)\n[(1 bytes)] LONG\n[NOOP\r\n] ok\n", 0 },
	{ "too long across calls, LF alone after text", 8, { B("1234567890"), B("\n") },
	  "(discarded 10)\n[(1 bytes)] LF,LONG\n", 0 },
	{ "too long across three calls, CR then LF", 8, { B("1234567890"), B("xyz\r"), B("\n") },
	  "(discarded 10)\n(discarded 4)\n[(1 bytes)] LONG\n", 0 },
	{ "short line after a too-long one is normal", 8,
	  { B("123456789012345"), B("\r\nab\r\n") }, "(discarded 15)\n[(2 bytes)] LONG\n[ab\r\n] ok\n", 0 },
	/* SMTP smuggling: only CRLF "." CRLF may end DATA, so each of these
	 * must come out as lines that carry a flag or are not ".\r\n" after a
	 * clean CRLF line. */
	{ "smuggling LF . CRLF", 1000, { B("x\n.\r\n") }, "[x\n] LF\n[.\r\n] ok\n", 0 },
	{ "smuggling LF . CRLF at start", 1000, { B("\n.\r\n") }, "[\n] LF\n[.\r\n] ok\n", 0 },
	{ "smuggling CRLF . LF", 1000, { B("x\r\n.\n") }, "[x\r\n] ok\n[.\n] LF\n", 0 },
	{ "smuggling CR . CRLF", 1000, { B("x\r.\r\n") }, "[x\r.\r\n] CR\n", 0 },
	{ "smuggling CR . CRLF alone", 1000, { B("\r.\r\n") }, "[\r.\r\n] CR\n", 0 },
	{ "smuggling . CR CRLF", 1000, { B("x\r\n.\r\r\n") }, "[x\r\n] ok\n[.\r\r\n] CR\n", 0 },
	{ "smuggling LF . LF", 1000, { B("x\n.\n") }, "[x\n] LF\n[.\n] LF\n", 0 },
	{ "proper end of data", 1000, { B("x\r\n.\r\n") }, "[x\r\n] ok\n[.\r\n] ok\n", 0 },
};

static void test_frame(void)
{
	for (size_t i = 0; i < N_ELEMS(frame_cases); i++) {
		const struct frame_case *c = &frame_cases[i];
		check_case(c->name);
		char got[2048];
		size_t rest;
		frame_run(c, got, sizeof got, &rest);
		CHECK_STR_EQ(got, c->want);
		CHECK_INT_EQ(rest, c->want_rest);
	}

	/* The framer is reusable after an over-long line that ended in one call. */
	check_case("framer state cleared");
	struct smtp_framer fr = { 0 };
	const char *line;
	size_t len;
	unsigned flags;
	CHECK_INT_EQ(smtp_frame(&fr, "1234567890", 10, 8, &line, &len, &flags), 10);
	CHECK(line == NULL, "bytes only discarded");
	CHECK(fr.discarding, "discarding after 10 bytes without LF");
	CHECK_INT_EQ(smtp_frame(&fr, "\r\n", 2, 8, &line, &len, &flags), 2);
	CHECK_INT_EQ(flags, SMTP_LINE_TOO_LONG);
	CHECK(!fr.discarding, "discarding ends at the LF");
	CHECK_INT_EQ(smtp_frame(&fr, "ab", 2, 8, &line, &len, &flags), 0);
}

/* ---- smtp_parse_verb ---- */

struct verb_case {
	const char *input;
	enum smtp_verb want;
	const char *want_args;
	bool want_space;
};

static const struct verb_case verb_cases[] = {
	{ "MAIL FROM:<a@b.example>", SMTP_VERB_MAIL, "FROM:<a@b.example>", true },
	{ "mail from:<a@b.example>", SMTP_VERB_MAIL, "from:<a@b.example>", true },
	{ "MaIl FROM:<>", SMTP_VERB_MAIL, "FROM:<>", true },
	{ "MAIL   FROM:<>", SMTP_VERB_MAIL, "FROM:<>", true },
	{ "MAILFROM:<a@b.example>", SMTP_VERB_UNKNOWN, "", false },
	{ "MAIL", SMTP_VERB_MAIL, "", false },
	{ "MAI", SMTP_VERB_UNKNOWN, "", false },
	{ "MAILS x", SMTP_VERB_UNKNOWN, "x", true },
	{ "eHlO client.example", SMTP_VERB_EHLO, "client.example", true },
	{ "HELO client.example", SMTP_VERB_HELO, "client.example", true },
	{ "RCPT TO:<c@d.example>", SMTP_VERB_RCPT, "TO:<c@d.example>", true },
	{ "DATA", SMTP_VERB_DATA, "", false },
	{ "data ", SMTP_VERB_DATA, "", true },
	{ "RSET", SMTP_VERB_RSET, "", false },
	{ "noop", SMTP_VERB_NOOP, "", false },
	{ "NOOP hello", SMTP_VERB_NOOP, "hello", true },
	{ "QUIT", SMTP_VERB_QUIT, "", false },
	{ "VRFY postmaster", SMTP_VERB_VRFY, "postmaster", true },
	{ "EXPN list", SMTP_VERB_EXPN, "list", true },
	{ "HELP", SMTP_VERB_HELP, "", false },
	{ "STARTTLS", SMTP_VERB_STARTTLS, "", false },
	{ "BDAT 100 LAST", SMTP_VERB_BDAT, "100 LAST", true },
	{ "AUTH PLAIN", SMTP_VERB_AUTH, "PLAIN", true },
	{ "XYZZY", SMTP_VERB_UNKNOWN, "", false },
	{ "", SMTP_VERB_UNKNOWN, "", false },
	{ " NOOP", SMTP_VERB_UNKNOWN, "NOOP", true },
	{ "NOOP\tx", SMTP_VERB_UNKNOWN, "", false },
};

static void test_verb(void)
{
	for (size_t i = 0; i < N_ELEMS(verb_cases); i++) {
		const struct verb_case *c = &verb_cases[i];
		check_case(c->input);
		const char *args = NULL;
		bool space = !c->want_space;
		size_t len = strlen(c->input);
		enum smtp_verb v = smtp_parse_verb(c->input, len, &args, &space);
		CHECK_INT_EQ(v, c->want);
		CHECK(args >= c->input && args <= c->input + len, "args points into the line");
		if (args >= c->input && args <= c->input + len)
			CHECK_MEM_EQ(args, len - (size_t)(args - c->input), c->want_args);
		CHECK_INT_EQ(space, c->want_space);
	}
	check_case("smtp_verb_name");
	CHECK_STR_EQ(smtp_verb_name(SMTP_VERB_MAIL), "MAIL");
	CHECK_STR_EQ(smtp_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	CHECK_STR_EQ(smtp_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
}

/* ---- smtp_parse_path ---- */

struct path_case {
	const char *name;
	const char *args;
	const char *prefix;
	bool allow_null, allow_bare, utf8;
	enum smtp_path_error want;
	const char *want_addr;   /* when SMTP_PATH_OK */
	const char *want_params; /* "KEY=VALUE KEY ..." when SMTP_PATH_OK */
};

#define OK SMTP_PATH_OK
#define SYNTAX SMTP_PATH_SYNTAX
#define ADDRESS SMTP_PATH_ADDRESS
#define PARAMS SMTP_PATH_PARAMS

static const struct path_case path_cases[] = {
	{ "plain", "FROM:<a@b.example>", "FROM:", true, false, false, OK, "a@b.example", "" },
	{ "lower-case prefix", "from:<a@b.example>", "FROM:", true, false, false, OK, "a@b.example", "" },
	{ "null sender", "FROM:<>", "FROM:", true, false, false, OK, "", "" },
	{ "null refused when not allowed", "TO:<>", "TO:", false, true, false, ADDRESS, NULL, NULL },
	{ "space after colon", "FROM: <a@b.example>", "FROM:", true, false, false, OK, "a@b.example", "" },
	{ "spaces after colon", "FROM:   <a@b.example>", "FROM:", true, false, false, OK, "a@b.example", "" },
	{ "source route stripped", "TO:<@x.example,@y.example:a@b.example>", "TO:", false, true, false, OK,
	  "a@b.example", "" },
	{ "one-hop source route", "TO:<@x.example:a@b.example>", "TO:", false, true, false, OK,
	  "a@b.example", "" },
	{ "source route with bad domain", "TO:<@-x.example:a@b.example>", "TO:", false, true, false,
	  ADDRESS, NULL, NULL },
	{ "source route without colon", "TO:<@x.example>", "TO:", false, true, false, ADDRESS, NULL, NULL },
	{ "quoted local part", "FROM:<\"john doe\"@b.example>", "FROM:", true, false, false, OK,
	  "\"john doe\"@b.example", "" },
	{ "quoted local part with escaped quote", "FROM:<\"a\\\"b\"@b.example>", "FROM:", true, false,
	  false, OK, "\"a\\\"b\"@b.example", "" },
	{ "quoted local part with @", "FROM:<\"a@b\"@b.example>", "FROM:", true, false, false, OK,
	  "\"a@b\"@b.example", "" },
	{ "unterminated quote", "FROM:<\"ab@b.example>", "FROM:", true, false, false, ADDRESS, NULL, NULL },
	{ "missing brackets", "FROM:a@b.example", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "missing closing bracket", "FROM:<a@b.example", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "missing prefix", "<a@b.example>", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "wrong prefix", "TO:<a@b.example>", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "prefix only", "FROM:", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "space before colon", "FROM :<a@b.example>", "FROM:", true, false, false, SYNTAX, NULL, NULL },
	{ "bad domain: empty label", "FROM:<a@b..example>", "FROM:", true, false, false, ADDRESS, NULL, NULL },
	{ "bad domain: leading hyphen", "FROM:<a@-b.example>", "FROM:", true, false, false, ADDRESS, NULL,
	  NULL },
	{ "bad domain: underscore", "FROM:<a@b_c.example>", "FROM:", true, false, false, ADDRESS, NULL,
	  NULL },
	{ "empty domain", "FROM:<a@>", "FROM:", true, false, false, ADDRESS, NULL, NULL },
	{ "empty local part", "FROM:<@b.example>", "FROM:", true, false, false, ADDRESS, NULL, NULL },
	{ "bad local part: leading dot", "FROM:<.a@b.example>", "FROM:", true, false, false, ADDRESS, NULL,
	  NULL },
	{ "bad local part: double dot", "FROM:<a..b@b.example>", "FROM:", true, false, false, ADDRESS,
	  NULL, NULL },
	{ "bad local part: trailing dot", "FROM:<a.@b.example>", "FROM:", true, false, false, ADDRESS,
	  NULL, NULL },
	{ "bad local part: space", "FROM:<a b@b.example>", "FROM:", true, false, false, ADDRESS, NULL,
	  NULL },
	{ "address literal", "TO:<a@[192.0.2.1]>", "TO:", false, false, false, OK, "a@[192.0.2.1]", "" },
	{ "bare postmaster allowed", "TO:<postmaster>", "TO:", false, true, false, OK, "postmaster", "" },
	{ "bare Postmaster allowed", "TO:<Postmaster>", "TO:", false, true, false, OK, "Postmaster", "" },
	{ "bare mailbox refused", "FROM:<postmaster>", "FROM:", true, false, false, ADDRESS, NULL, NULL },
	{ "UTF-8 local part without utf8", "TO:<j\xc3\xb6@b.example>", "TO:", false, true, false, ADDRESS,
	  NULL, NULL },
	{ "UTF-8 local part with utf8", "TO:<j\xc3\xb6@b.example>", "TO:", false, true, true, OK,
	  "j\xc3\xb6@b.example", "" },
	{ "UTF-8 domain without utf8", "TO:<j@b\xc3\xb6.example>", "TO:", false, true, false, ADDRESS,
	  NULL, NULL },
	{ "UTF-8 domain with utf8", "TO:<j@b\xc3\xb6.example>", "TO:", false, true, true, OK,
	  "j@b\xc3\xb6.example", "" },
	{ "invalid UTF-8: bad continuation", "TO:<j\xc3\x28@b.example>", "TO:", false, true, true, ADDRESS,
	  NULL, NULL },
	{ "invalid UTF-8: overlong", "TO:<j\xc0\xaf@b.example>", "TO:", false, true, true, ADDRESS, NULL,
	  NULL },
	{ "invalid UTF-8: surrogate", "TO:<j\xed\xa0\x80@b.example>", "TO:", false, true, true, ADDRESS,
	  NULL, NULL },
	{ "invalid UTF-8: lone continuation", "TO:<j\x80@b.example>", "TO:", false, true, true, ADDRESS,
	  NULL, NULL },
	{ "invalid UTF-8: truncated", "TO:<j@b.exampl\xc3>", "TO:", false, true, true, ADDRESS, NULL, NULL },
	{ "params", "FROM:<a@b.example> SIZE=100 BODY=8BITMIME", "FROM:", true, false, false, OK,
	  "a@b.example", "SIZE=100 BODY=8BITMIME" },
	{ "params with extra spaces", "FROM:<a@b.example>   SIZE=1  BODY=7BIT", "FROM:", true, false,
	  false, OK, "a@b.example", "SIZE=1 BODY=7BIT" },
	{ "trailing space", "FROM:<a@b.example> ", "FROM:", true, false, false, OK, "a@b.example", "" },
	{ "param without value", "FROM:<a@b.example> SMTPUTF8", "FROM:", true, false, false, OK,
	  "a@b.example", "SMTPUTF8" },
	{ "param key with hyphen", "FROM:<a@b.example> X-FOO=1", "FROM:", true, false, false, OK,
	  "a@b.example", "X-FOO=1" },
	{ "params on null path", "FROM:<> SIZE=1", "FROM:", true, false, false, OK, "", "SIZE=1" },
	{ "param =x", "FROM:<a@b.example> =x", "FROM:", true, false, false, PARAMS, NULL, NULL },
	{ "param A=", "FROM:<a@b.example> A=", "FROM:", true, false, false, PARAMS, NULL, NULL },
	{ "param A=b=c", "FROM:<a@b.example> A=b=c", "FROM:", true, false, false, PARAMS, NULL, NULL },
	{ "param key with underscore", "FROM:<a@b.example> A_B=1", "FROM:", true, false, false, PARAMS,
	  NULL, NULL },
	{ "param with control byte", "FROM:<a@b.example> A=\x01", "FROM:", true, false, false, PARAMS,
	  NULL, NULL },
	{ "8-bit param value without utf8", "FROM:<a@b.example> ENVID=\xc3\xa9", "FROM:", true, false,
	  false, PARAMS, NULL, NULL },
	{ "UTF-8 param value with utf8", "FROM:<a@b.example> ENVID=\xc3\xa9", "FROM:", true, false, true,
	  OK, "a@b.example", "ENVID=\xc3\xa9" },
	{ "8 params", "FROM:<a@b.example> A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8", "FROM:", true, false, false,
	  OK, "a@b.example", "A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8" },
	{ "9 params", "FROM:<a@b.example> A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8 I=9", "FROM:", true, false,
	  false, PARAMS, NULL, NULL },
	{ "junk after > without space", "FROM:<a@b.example>SIZE=1", "FROM:", true, false, false, SYNTAX,
	  NULL, NULL },
	{ "double >", "FROM:<a@b.example>>", "FROM:", true, false, false, SYNTAX, NULL, NULL },
};

static void path_params(const struct smtp_path *p, char *out, size_t size)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; i < p->nparams && i < SMTP_MAX_PARAMS; i++) {
		const struct smtp_param *pa = &p->params[i];
		int n = snprintf(out + o, size - o, "%s%.*s", i ? " " : "", (int)pa->keylen, pa->key);
		o += (size_t)n;
		if (pa->value) {
			n = snprintf(out + o, size - o, "=%.*s", (int)pa->valuelen, pa->value);
			o += (size_t)n;
		}
	}
}

static void test_path(void)
{
	for (size_t i = 0; i < N_ELEMS(path_cases); i++) {
		const struct path_case *c = &path_cases[i];
		check_case(c->name);
		struct smtp_path p;
		size_t len = strlen(c->args);
		enum smtp_path_error e = smtp_parse_path(c->args, len, c->prefix, c->allow_null,
		                                         c->allow_bare, c->utf8, &p);
		CHECK_INT_EQ(e, c->want);
		if (e != SMTP_PATH_OK || c->want != SMTP_PATH_OK)
			continue;
		CHECK(p.addr >= c->args && p.addr + p.addrlen <= c->args + len,
		      "the address points into the arguments");
		CHECK_MEM_EQ(p.addr, p.addrlen, c->want_addr);
		char params[256];
		path_params(&p, params, sizeof params);
		CHECK_STR_EQ(params, c->want_params);
	}

	/* A parameter without "=value" has a NULL value, not an empty one. */
	check_case("param without value is NULL");
	struct smtp_path p;
	const char *args = "FROM:<a@b.example> SMTPUTF8 SIZE=5";
	CHECK_INT_EQ(smtp_parse_path(args, strlen(args), "FROM:", true, false, true, &p), SMTP_PATH_OK);
	CHECK_INT_EQ(p.nparams, 2);
	CHECK(p.params[0].value == NULL, "SMTPUTF8 has no value");
	CHECK(smtp_param_is(&p.params[0], "smtputf8"), "smtp_param_is is case-insensitive");
	CHECK(smtp_param_is(&p.params[1], "SIZE"), "");
	CHECK(!smtp_param_is(&p.params[1], "SIZ"), "prefix is not a match");
	CHECK(!smtp_param_is(&p.params[1], "SIZES"), "longer name is not a match");

	/* The parser must not read past LEN: the path ends before the buffer does. */
	check_case("length bounds the input");
	const char *longer = "FROM:<a@b.example> SIZE=100";
	CHECK_INT_EQ(smtp_parse_path(longer, 17, "FROM:", true, false, false, &p), SMTP_PATH_SYNTAX);
	CHECK_INT_EQ(smtp_parse_path(longer, 18, "FROM:", true, false, false, &p), SMTP_PATH_OK);
	CHECK_INT_EQ(p.nparams, 0);
	CHECK_INT_EQ(smtp_parse_path(longer, 24, "FROM:", true, false, false, &p), SMTP_PATH_PARAMS);
	CHECK_INT_EQ(smtp_parse_path(longer, 25, "FROM:", true, false, false, &p), SMTP_PATH_OK);
	CHECK_INT_EQ(p.nparams, 1);
	CHECK_MEM_EQ(p.params[0].value, p.params[0].valuelen, "1");
}

/* ---- smtp_valid_domain ---- */

struct domain_case {
	const char *input;
	bool utf8;
	bool want;
};

#define L63 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"

static const struct domain_case domain_cases[] = {
	{ "example", false, true },
	{ "b.example", false, true },
	{ "MX1.B.Example", false, true },
	{ "a-b.example", false, true },
	{ "a--b.example", false, true },
	{ "1.2.3.4", false, true },
	{ "-a.example", false, false },
	{ "a-.example", false, false },
	{ "a.-b.example", false, false },
	{ "a.example-", false, false },
	{ "-", false, false },
	{ L63 ".example", false, true },
	{ L63 "x.example", false, false },
	{ "example." L63, false, true },
	{ "example." L63 "x", false, false },
	{ "a.example.", false, false },
	{ ".a.example", false, false },
	{ "a..example", false, false },
	{ ".", false, false },
	{ "", false, false },
	{ "a_b.example", false, false },
	{ "a b.example", false, false },
	{ "a@b.example", false, false },
	{ "[192.0.2.1]", false, true },
	{ "[IPv6:::1]", false, true },
	{ "[IPv6:2001:db8::1]", false, true },
	{ "[]", false, false },
	{ "[192.0.2.1", false, false },
	{ "[a b]", false, false },
	{ "[a]b]", false, false },
	{ "[a\\b]", false, false },
	{ "b\xc3\xb6.example", true, true },
	{ "b\xc3\xb6.example", false, false },
	{ "b\xc3\x28.example", true, false },
	{ "b\xff.example", true, false },
};

static void test_domain(void)
{
	for (size_t i = 0; i < N_ELEMS(domain_cases); i++) {
		const struct domain_case *c = &domain_cases[i];
		check_case(c->input);
		CHECK_INT_EQ(smtp_valid_domain(c->input, strlen(c->input), c->utf8), c->want);
	}

	/* 255 octets is the most (RFC 5321 4.5.3.1.2). */
	check_case("domain of 255 octets");
	char d[300];
	snprintf(d, sizeof d, "%s.%s.%s.%s", L63, L63, L63, L63);
	CHECK_INT_EQ(strlen(d), 255);
	CHECK_INT_EQ(smtp_valid_domain(d, strlen(d), false), true);
	check_case("domain of 257 octets");
	snprintf(d, sizeof d, "a.%s.%s.%s.%s", L63, L63, L63, L63);
	CHECK_INT_EQ(smtp_valid_domain(d, strlen(d), false), false);

	check_case("length bounds the input");
	CHECK_INT_EQ(smtp_valid_domain("b.example-", 9, false), true);
	CHECK_INT_EQ(smtp_valid_domain("b.example.", 9, false), true);
}

/* ---- smtp_valid_xtext ---- */

struct xtext_case {
	const char *input;
	bool want;
};

static const struct xtext_case xtext_cases[] = {
	{ "abc", true },
	{ "", true },
	{ "a+2Bb", true },
	{ "+2B", true },
	{ "a+41+42", true },
	{ "!~", true },
	{ "+2b", false },
	{ "+2", false },
	{ "+", false },
	{ "a+", false },
	{ "+GG", false },
	{ "a=b", false },
	{ "a b", false },
	{ "a\x7f", false },
	{ "a\x80", false },
	{ "a\tb", false },
};

static void test_xtext(void)
{
	for (size_t i = 0; i < N_ELEMS(xtext_cases); i++) {
		const struct xtext_case *c = &xtext_cases[i];
		check_case(c->input);
		CHECK_INT_EQ(smtp_valid_xtext(c->input, strlen(c->input)), c->want);
	}
}

/* ---- smtp_parse_u64 ---- */

struct u64_case {
	const char *input;
	int want;
	uint64_t want_value;
};

static const struct u64_case u64_cases[] = {
	{ "0", 0, 0 },
	{ "100", 0, 100 },
	{ "0010", 0, 10 },
	{ "9999999999999999999", 0, 9999999999999999999ull },
	{ "99999999999999999999", -1, 0 },  /* 20 digits: overflows */
	{ "18446744073709551616", -1, 0 }, /* UINT64_MAX + 1 */
	{ "123456789012345678901234", -1, 0 },
	{ "", -1, 0 },
	{ "-1", -1, 0 },
	{ "+1", -1, 0 },
	{ " 1", -1, 0 },
	{ "1 ", -1, 0 },
	{ "1a", -1, 0 },
	{ "0x10", -1, 0 },
};

static void test_u64(void)
{
	for (size_t i = 0; i < N_ELEMS(u64_cases); i++) {
		const struct u64_case *c = &u64_cases[i];
		check_case(c->input);
		uint64_t v = 424242;
		int rc = smtp_parse_u64(c->input, strlen(c->input), &v);
		CHECK_INT_EQ(rc, c->want);
		if (rc == 0 && c->want == 0)
			CHECK(v == c->want_value, "value %llu, want %llu", (unsigned long long)v,
			      (unsigned long long)c->want_value);
		else if (rc != 0)
			CHECK(v == 424242, "output untouched on error");
	}
	check_case("length bounds the input");
	uint64_t v;
	CHECK_INT_EQ(smtp_parse_u64("12x", 2, &v), 0);
	CHECK_INT_EQ(v, 12);
}

/* ---- smtp_parse_reply_line ---- */

struct reply_line_case {
	const char *input;
	int want;
	int want_code;
	bool want_last;
	const char *want_text;
};

static const struct reply_line_case reply_line_cases[] = {
	{ "250-x", 0, 250, false, "x" },
	{ "250 x", 0, 250, true, "x" },
	{ "250", 0, 250, true, "" },
	{ "250-", 0, 250, false, "" },
	{ "250 ", 0, 250, true, "" },
	{ "550 5.1.1 <x@y> User doesn't exist", 0, 550, true, "5.1.1 <x@y> User doesn't exist" },
	{ "421-4.4.2 a  b", 0, 421, false, "4.4.2 a  b" },
	{ "250 a\tb", 0, 250, true, "a\tb" },
	{ "354 go", 0, 354, true, "go" },
	{ "2500", -1, 0, false, NULL },
	{ "2500 x", -1, 0, false, NULL },
	{ "abc", -1, 0, false, NULL },
	{ "25", -1, 0, false, NULL },
	{ "", -1, 0, false, NULL },
	{ "199 x", -1, 0, false, NULL },
	{ "600 x", -1, 0, false, NULL },
	{ "2a0 x", -1, 0, false, NULL },
	{ "250_x", -1, 0, false, NULL },
	{ " 250 x", -1, 0, false, NULL },
	{ "250 a\x01" "b", -1, 0, false, NULL },
	{ "250 a\rb", -1, 0, false, NULL },
	{ "250 a\nb", -1, 0, false, NULL },
	{ "250 a\x1b[1m", -1, 0, false, NULL },
};

static void test_reply_line(void)
{
	for (size_t i = 0; i < N_ELEMS(reply_line_cases); i++) {
		const struct reply_line_case *c = &reply_line_cases[i];
		check_case(c->input);
		int code = -7;
		bool last = !c->want_last;
		const char *text = NULL;
		size_t textlen = 999;
		size_t len = strlen(c->input);
		int rc = smtp_parse_reply_line(c->input, len, &code, &last, &text, &textlen);
		CHECK_INT_EQ(rc, c->want);
		if (rc != 0 || c->want != 0)
			continue;
		CHECK_INT_EQ(code, c->want_code);
		CHECK_INT_EQ(last, c->want_last);
		CHECK(text >= c->input && text + textlen <= c->input + len, "text points into the line");
		CHECK_MEM_EQ(text, textlen, c->want_text);
	}
}

/* ---- smtp_enhanced_code_len ---- */

struct enhanced_case {
	const char *text;
	int code;
	size_t want;
};

static const struct enhanced_case enhanced_cases[] = {
	{ "2.0.0 Ok", 250, 5 },
	{ "2.0.0", 250, 5 },
	{ "5.1.1 <x@y> User doesn't exist", 550, 5 },
	{ "4.7.0 x", 421, 5 },
	{ "2.1.5 Ok", 251, 5 },
	{ "2.000.000 x", 250, 9 },
	{ "5.10.100 x", 554, 8 },
	{ "5.1.1 x", 250, 0 },
	{ "4.7.0 x", 550, 0 },
	{ "2.0.0 x", 450, 0 },
	{ "2.1234.0 x", 250, 0 },
	{ "2.0.1234 x", 250, 0 },
	{ "2..0 x", 250, 0 },
	{ "2.0. x", 250, 0 },
	{ "2.0.0x", 250, 0 },
	{ "2.0.0.0 x", 250, 0 },
	{ "2.0", 250, 0 },
	{ "2.0.", 250, 0 },
	{ "Ok", 250, 0 },
	{ "", 250, 0 },
	{ "x.0.0 Ok", 250, 0 },
	{ "2,0,0 Ok", 250, 0 },
	{ "20.0.0 Ok", 250, 0 },
	{ " 2.0.0 Ok", 250, 0 },
};

static void test_enhanced(void)
{
	for (size_t i = 0; i < N_ELEMS(enhanced_cases); i++) {
		const struct enhanced_case *c = &enhanced_cases[i];
		check_case(c->text);
		CHECK_INT_EQ(smtp_enhanced_code_len(c->text, strlen(c->text), c->code), c->want);
	}
	check_case("length bounds the input");
	CHECK_INT_EQ(smtp_enhanced_code_len("2.0.0x", 5, 250), 5);
	CHECK_INT_EQ(smtp_enhanced_code_len("2.0.0 Ok", 4, 250), 0);
}

/* ---- smtp_parse_ext ---- */

struct ext_case {
	const char *text;
	unsigned want;
};

static const struct ext_case ext_cases[] = {
	{ "SIZE 100", SMTP_EXT_SIZE },
	{ "SIZE", SMTP_EXT_SIZE },
	{ "size 100", SMTP_EXT_SIZE },
	{ "XCLIENT ADDR", SMTP_EXT_XCLIENT },
	{ "XCLIENT ADDR NAME PORT HELO", SMTP_EXT_XCLIENT },
	{ "PIPELINING", SMTP_EXT_PIPELINING },
	{ "8BITMIME", SMTP_EXT_8BITMIME },
	{ "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES },
	{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 },
	{ "DSN", SMTP_EXT_DSN },
	{ "SIZES", 0 },
	{ "SIZ", 0 },
	{ "STARTTLS", 0 },
	{ "CHUNKING", 0 },
	{ "X-SIZE", 0 },
	{ " SIZE", 0 },
	{ "", 0 },
};

static void test_ext(void)
{
	for (size_t i = 0; i < N_ELEMS(ext_cases); i++) {
		const struct ext_case *c = &ext_cases[i];
		check_case(c->text);
		CHECK_INT_EQ(smtp_parse_ext(c->text, strlen(c->text)), c->want);
	}
}

/* ---- struct smtp_reply ---- */

static void test_reply_struct(void)
{
	struct smtp_reply r;
	check_case("smtp_reply_set");
	smtp_reply_set(&r, 250, "2.0.0 Ok");
	CHECK_INT_EQ(r.code, 250);
	CHECK(!r.lost, "");
	CHECK_MEM_EQ(r.text, r.len, "2.0.0 Ok");

	check_case("smtp_reply_add_line");
	smtp_reply_add_line(&r, "second", 6);
	smtp_reply_add_line(&r, "third line", 5);
	CHECK_MEM_EQ(r.text, r.len, "2.0.0 Ok\nsecond\nthird");
	CHECK(r.text[r.len] == '\0', "NUL-terminated");

	check_case("smtp_reply_set resets lost");
	r.lost = true;
	smtp_reply_set(&r, 421, "x");
	CHECK(!r.lost, "");
	CHECK_MEM_EQ(r.text, r.len, "x");

	check_case("smtp_reply_add_line cuts when full");
	char big[700];
	memset(big, 'a', sizeof big);
	smtp_reply_set(&r, 550, "first");
	smtp_reply_add_line(&r, big, sizeof big);
	CHECK_INT_EQ(r.len, SMTP_REPLY_TEXT_MAX - 1);
	CHECK(r.text[r.len] == '\0', "NUL-terminated");
	CHECK(memcmp(r.text, "first\naaa", 9) == 0, "");
	size_t before = r.len;
	smtp_reply_add_line(&r, "more", 4);
	CHECK_INT_EQ(r.len, before);
	CHECK(r.text[r.len] == '\0', "NUL-terminated");
}

int main(void)
{
	test_frame();
	test_verb();
	test_path();
	test_domain();
	test_xtext();
	test_u64();
	test_reply_line();
	test_enhanced();
	test_ext();
	test_reply_struct();
	return check_summary();
}
