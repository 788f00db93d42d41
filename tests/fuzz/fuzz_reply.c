/* fuzz_reply: the LMTP reply parser, as relay.c drives it. The input is
 * backend bytes, framed by smtp_frame with the relay's limit; every line goes
 * through smtp_parse_reply_line, smtp_enhanced_code_len and smtp_parse_ext,
 * each compared with a plain reference written from the RFCs, then the lines
 * are assembled into replies (smtp_reply_add_line) and a run of them mapped
 * to one SMTP answer (smtp_map_lmtp), as after the final dot. */
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "smtp.h"
#include "smtp_parse.h"

#define FUZZ_RELAY_LINE_MAX 2048 /* relay.c's RELAY_REPLY_LINE_MAX */
#define FUZZ_MAX_REPLIES 16

static bool fuzz_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5321 4.2: Reply-code [ ("-" / SP) textstring ], textstring being
 * HT / SP / printable (and, in practice, 8-bit). */
static bool fuzz_ref_reply_line(const char *l, size_t len)
{
	if (len < 3 || l[0] < '2' || l[0] > '5' || !fuzz_digit(l[1]) || !fuzz_digit(l[2]))
		return false;
	if (len > 3 && l[3] != ' ' && l[3] != '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)l[i];
		if (c < 32 && c != '\t')
			return false;
	}
	return true;
}

/* RFC 3463 2: class "." subject "." detail, subject and detail of 1 to 3
 * digits, class matching the reply, then a space or the end. */
static size_t fuzz_ref_enhanced(const char *t, size_t len, int code)
{
	if (len < 1 || t[0] != '0' + code / 100)
		return 0;
	size_t i = 1;
	for (int part = 0; part < 2; part++) {
		if (i >= len || t[i] != '.')
			return 0;
		i++;
		size_t n = 0;
		while (i < len && fuzz_digit(t[i]) && n < 3)
			i++, n++;
		if (n == 0)
			return 0;
	}
	if (i < len && t[i] != ' ')
		return 0;
	return i;
}

static unsigned fuzz_ref_ext(const char *t, size_t len)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
		{ "PIPELINING", SMTP_EXT_PIPELINING }, { "SIZE", SMTP_EXT_SIZE },
		{ "8BITMIME", SMTP_EXT_8BITMIME }, { "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES },
		{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 }, { "DSN", SMTP_EXT_DSN }, { "XCLIENT", SMTP_EXT_XCLIENT },
	};
	const char *sp = memchr(t, ' ', len);
	size_t word = sp ? (size_t)(sp - t) : len;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strlen(names[i].name) == word && strncasecmp(t, names[i].name, word) == 0)
			return names[i].bit;
	return 0;
}

static void fuzz_check_line(const char *line, size_t len, struct smtp_reply *cur,
                            struct smtp_reply *done, unsigned *ndone)
{
	int code = -1;
	bool last = false;
	const char *text = NULL;
	size_t textlen = 0;
	int rc = smtp_parse_reply_line(line, len, &code, &last, &text, &textlen);
	bool want = fuzz_ref_reply_line(line, len);
	FUZZ_CHECK((rc == 0) == want, "smtp_parse_reply_line agrees with the reference");
	if (rc < 0)
		return;
	FUZZ_CHECK(code == (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'),
	           "reply code is the three digits");
	FUZZ_CHECK(code >= 200 && code <= 599, "reply code in 200..599");
	FUZZ_CHECK(last == (len == 3 || line[3] == ' '), "last line iff code then space or nothing");
	FUZZ_CHECK(text >= line && text <= line + len && text + textlen == line + len,
	           "reply text inside the line, up to its end");
	FUZZ_CHECK(textlen == (len > 4 ? len - 4 : 0), "reply text after \"NNN-\"");

	/* Every class, not only the reply's own: mismatches must give 0. */
	for (int c = 100; c <= 600; c += 100) {
		int k = c == 600 ? code : c;
		size_t e = smtp_enhanced_code_len(text, textlen, k);
		FUZZ_CHECK(e == fuzz_ref_enhanced(text, textlen, k),
		           "smtp_enhanced_code_len agrees with the reference");
		FUZZ_CHECK(e <= textlen && (e == 0 || e >= 5), "enhanced code length in range");
	}

	unsigned ext = smtp_parse_ext(text, textlen);
	FUZZ_CHECK(ext == fuzz_ref_ext(text, textlen), "smtp_parse_ext agrees with the reference");
	FUZZ_CHECK((ext & (ext - 1)) == 0, "at most one extension per line");

	/* Assembled as relay.c does: one code per reply, lines joined by '\n'. */
	if (cur->code == 0) {
		cur->code = code;
		cur->len = 0;
		cur->text[0] = '\0';
	} else if (cur->code != code) {
		cur->code = 0; /* the relay drops such a backend */
		return;
	}
	size_t before = cur->len;
	smtp_reply_add_line(cur, text, textlen);
	FUZZ_CHECK(cur->len < sizeof cur->text && cur->text[cur->len] == '\0',
	           "assembled reply text NUL-terminated within its buffer");
	FUZZ_CHECK(cur->len >= before, "assembled reply never shrinks");
	if (before == 0 && textlen < sizeof cur->text)
		FUZZ_CHECK(cur->len == textlen && memcmp(cur->text, text, textlen) == 0,
		           "the first line is kept whole when it fits");
	if (!last)
		return;
	if (*ndone < FUZZ_MAX_REPLIES)
		done[(*ndone)++] = *cur;
	cur->code = 0;
}

static void fuzz_check_map(const struct smtp_reply *r, unsigned n)
{
	struct smtp_reply out;
	memset(&out, 0, sizeof out);
	unsigned ok = smtp_map_lmtp(r, n, &out);
	unsigned want_ok = 0, n4 = 0;
	for (unsigned i = 0; i < n; i++) {
		want_ok += r[i].code / 100 == 2;
		n4 += r[i].code / 100 == 4;
	}
	FUZZ_CHECK(ok == want_ok, "smtp_map_lmtp counts the 2xx replies");
	FUZZ_CHECK(out.len < sizeof out.text && out.text[out.len] == '\0', "mapped text terminated");
	if (n > 0 && ok == n) {
		FUZZ_CHECK(out.code == 250, "all delivered: 250");
	} else {
		/* Never a success for what was not delivered to everyone. */
		FUZZ_CHECK(out.code / 100 != 2, "not all delivered: no 2xx");
		FUZZ_CHECK(out.code / 100 == 4 || out.code / 100 == 5,
		           "[F1] not all delivered: 4xx or 5xx, a backend's 3xx never passed on");
		if (ok == 0 && n > 0)
			FUZZ_CHECK(n4 == 0 || out.code / 100 == 4, "a 4xx refusal wins over 5xx ones");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_framer fr;
	memset(&fr, 0, sizeof fr);
	struct smtp_reply cur, done[FUZZ_MAX_REPLIES];
	memset(done, 0, sizeof done); /* gcc cannot see that only done[0..ndone) is read */
	memset(&cur, 0, sizeof cur);
	unsigned ndone = 0;
	const char *buf = (const char *)data;
	size_t off = 0;
	while (off < size) {
		const char *line;
		size_t len;
		unsigned flags;
		size_t n = smtp_frame(&fr, buf + off, size - off, FUZZ_RELAY_LINE_MAX, &line, &len,
		                      &flags);
		if (n == 0)
			break;
		FUZZ_CHECK(n <= size - off, "framer consumed no more than it had");
		off += n;
		if (!line)
			continue;
		/* relay.c takes only clean CRLF lines; the parser must also cope
		 * with whatever else, so strip whatever ending there is. */
		size_t body = len - 1;
		if (body && line[body - 1] == '\r')
			body--;
		fuzz_check_line(line, body, &cur, done, &ndone);
	}
	fuzz_check_map(done, ndone);
	/* And every prefix count, as a partial set of per-recipient replies. */
	for (unsigned i = 0; i < ndone; i++)
		fuzz_check_map(done, i);
	return 0;
}
