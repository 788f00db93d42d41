/* fuzz_command: the pure command-side parsers of smtp_parse.c (and
 * certstore_normalize), on client bytes. Byte 0 picks the framing limit
 * (512..1000) and byte 1 the read sizes; the rest is framed with smtp_frame as
 * if it arrived in those reads, checked against a reference framer, and each
 * clean line goes through smtp_parse_verb, smtp_parse_path (both prefixes,
 * all eight flag combinations), smtp_valid_domain, smtp_valid_xtext and
 * smtp_parse_u64, each compared with a plain reference or checked for the
 * invariants in tests/fuzz/README. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certstore.h"
#include "fuzz.h"
#include "smtp_parse.h"

#define FUZZ_IN_MAX (16 * 1024) /* session.c's SESSION_IN_MAX */

static bool fuzz_inside(const char *p, size_t plen, const char *buf, size_t len)
{
	return p >= buf && p <= buf + len && plen <= (size_t)(buf + len - p);
}

/* ---- framing ---- */

/* What the framer must deliver, whatever the reads: every LF-ended line of
 * at most LIMIT bytes whole, with its flags; every longer one as one
 * TOO_LONG event. */
struct fuzz_ref_frame {
	const char *p; /* next byte of the whole input */
	const char *end;
};

static void fuzz_ref_next(struct fuzz_ref_frame *rf, size_t limit, size_t *n, unsigned *flags,
                          bool *whole)
{
	const char *lf = memchr(rf->p, '\n', (size_t)(rf->end - rf->p));
	FUZZ_CHECK(lf, "the framer delivered a line the input does not end");
	*n = (size_t)(lf - rf->p) + 1;
	bool cr = *n >= 2 && lf[-1] == '\r';
	if (*n > limit) {
		*flags = SMTP_LINE_TOO_LONG | (cr ? 0 : SMTP_LINE_BARE_LF);
		*whole = false;
	} else {
		size_t body = cr ? *n - 2 : *n - 1;
		*flags = (cr ? 0 : SMTP_LINE_BARE_LF) | (memchr(rf->p, '\r', body) ? SMTP_LINE_BARE_CR : 0) |
		         (memchr(rf->p, '\0', *n) ? SMTP_LINE_NUL : 0);
		*whole = true;
	}
	rf->p = lf + 1;
}

/* ---- commands ---- */

static void fuzz_check_verb(const char *cmd, size_t len)
{
	const char *args = NULL;
	bool space = false;
	enum smtp_verb v = smtp_parse_verb(cmd, len, &args, &space);
	const char *sp = memchr(cmd, ' ', len);
	size_t word = sp ? (size_t)(sp - cmd) : len;
	FUZZ_CHECK(space == (sp != NULL), "has_space iff the line has a space");
	size_t a = word;
	while (a < len && cmd[a] == ' ')
		a++;
	FUZZ_CHECK(args == cmd + a, "args start after the verb and its spaces");
	const char *name = smtp_verb_name(v);
	if (v == SMTP_VERB_UNKNOWN) {
		static const char *const verbs[] = { "HELO", "EHLO", "MAIL", "RCPT", "DATA",
			                             "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
			                             "HELP", "STARTTLS", "BDAT", "AUTH" };
		for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
			FUZZ_CHECK(!(strlen(verbs[i]) == word && strncasecmp(cmd, verbs[i], word) == 0),
			           "a known verb is recognised");
	} else {
		FUZZ_CHECK(strlen(name) == word && strncasecmp(cmd, name, word) == 0,
		           "the verb is the first word");
	}
}

/* RFC 1035/5321 domain (ASCII only), or an address literal, by the book. */
static bool fuzz_ref_domain_ascii(const char *s, size_t len)
{
	if (len && s[0] == '[') {
		if (len < 3 || s[len - 1] != ']')
			return false;
		for (size_t i = 1; i < len - 1; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
				return false;
		}
		return true;
	}
	if (len == 0 || len > 255)
		return false;
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && s[i] != '.') {
			unsigned char c = (unsigned char)s[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			      c == '-'))
				return false;
			continue;
		}
		size_t l = i - start;
		if (l == 0 || l > 63 || s[start] == '-' || s[i - 1] == '-')
			return false;
		start = i + 1;
	}
	return true;
}

static bool fuzz_ascii(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

static void fuzz_check_domain(const char *s, size_t len)
{
	bool plain = smtp_valid_domain(s, len, false);
	bool utf8 = smtp_valid_domain(s, len, true);
	FUZZ_CHECK(!plain || utf8, "a valid ASCII domain is valid with UTF-8 allowed");
	if (fuzz_ascii(s, len)) {
		FUZZ_CHECK(plain == utf8, "UTF-8 makes no difference to ASCII");
		FUZZ_CHECK(plain == fuzz_ref_domain_ascii(s, len),
		           "smtp_valid_domain agrees with the reference");
	} else if (utf8 && s[0] != '[') {
		FUZZ_CHECK(len <= 255 && s[0] != '.' && s[len - 1] != '.' && !memmem(s, len, "..", 2),
		           "a UTF-8 domain still has non-empty labels");
	}
}

static bool fuzz_ref_xtext(const char *v, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '+') {
			if (len - i < 3 || !memchr(hex, v[i + 1], 16) || !memchr(hex, v[i + 2], 16) ||
			    !v[i + 1] || !v[i + 2])
				return false;
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

static void fuzz_check_value(const char *v, size_t len)
{
	FUZZ_CHECK(smtp_valid_xtext(v, len) == fuzz_ref_xtext(v, len),
	           "smtp_valid_xtext agrees with the reference");
	uint64_t got = 0, want = 0;
	bool digits = len > 0 && len <= 19;
	for (size_t i = 0; digits && i < len; i++) {
		digits = v[i] >= '0' && v[i] <= '9';
		want = want * 10 + (uint64_t)(v[i] - '0');
	}
	int rc = smtp_parse_u64(v, len, &got);
	FUZZ_CHECK((rc == 0) == digits, "smtp_parse_u64 takes 1..19 digits only");
	if (rc == 0)
		FUZZ_CHECK(got == want, "smtp_parse_u64 value");
}

/* The mailbox as parsed: no '<', '>' or space outside a quoted local part,
 * no control byte, 8-bit only when UTF-8 is allowed. */
static void fuzz_check_addr(const char *a, size_t n, bool bare, bool utf8)
{
	bool quoted = false, literal = false, at = false;
	size_t at_pos = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		FUZZ_CHECK(c >= 32 && c != 127, "no control byte in an address");
		FUZZ_CHECK(c != '>', "no '>' in an address");
		FUZZ_CHECK(utf8 || c < 0x80, "8-bit address only with UTF-8 allowed");
		if (quoted) {
			if (c == '\\') {
				FUZZ_CHECK(i + 1 < n && (unsigned char)a[i + 1] >= 32 &&
				                   (unsigned char)a[i + 1] < 127,
				           "a quoted pair escapes a printable byte");
				i++;
			} else if (c == '"') {
				quoted = false;
			}
			continue;
		}
		if (c == '"' && i == 0) {
			quoted = true;
			continue;
		}
		if (at && c == '[' && i == at_pos + 1)
			literal = true;
		if (literal) {
			/* RFC 5321 4.1.3: dcontent is %d33-90 / %d94-126, '<' and '"' too. */
			FUZZ_CHECK(c > ' ' && c < 127 && (c != '[' || i == at_pos + 1) && c != '\\' &&
			                   (c != ']' || i == n - 1),
			           "an address literal is dcontent in brackets");
			continue;
		}
		FUZZ_CHECK(c != '<' && c != ' ' && c != '"' && c != '\\',
		           "no '<', space, quote or backslash outside quotes");
		if (c == '@' && !at) {
			at = true;
			at_pos = i;
		}
	}
	FUZZ_CHECK(!quoted, "quotes closed");
	if (at) {
		FUZZ_CHECK(at_pos > 0, "a local part before the '@'");
		FUZZ_CHECK(smtp_valid_domain(a + at_pos + 1, n - at_pos - 1, utf8),
		           "the domain after the '@' is valid");
	} else if (n > 0) {
		FUZZ_CHECK(bare, "a mailbox without a domain only when allowed");
	}
}

static void fuzz_check_path(const char *args, size_t len)
{
	static const char *const prefixes[] = { "FROM:", "TO:" };
	for (size_t pi = 0; pi < 2; pi++) {
		struct smtp_path res[8];
		enum smtp_path_error err[8];
		for (unsigned f = 0; f < 8; f++) {
			bool allow_null = f & 1, allow_bare = f & 2, utf8 = f & 4;
			struct smtp_path *p = &res[f];
			err[f] = smtp_parse_path(args, len, prefixes[pi], allow_null, allow_bare, utf8, p);
			FUZZ_CHECK(err[f] == SMTP_PATH_OK || err[f] == SMTP_PATH_SYNTAX ||
			                   err[f] == SMTP_PATH_ADDRESS || err[f] == SMTP_PATH_PARAMS,
			           "a known path error");
			if (err[f] != SMTP_PATH_OK)
				continue;
			size_t plen = strlen(prefixes[pi]);
			FUZZ_CHECK(len >= plen && strncasecmp(args, prefixes[pi], plen) == 0,
			           "an accepted path starts with its prefix");
			FUZZ_CHECK(fuzz_inside(p->addr, p->addrlen, args, len), "addr inside the args");
			FUZZ_CHECK(p->addr > args + plen && p->addr + p->addrlen < args + len &&
			                   p->addr[p->addrlen] == '>',
			           "addr ends right before the '>'");
			FUZZ_CHECK(p->addrlen > 0 || (allow_null && p->addr[-1] == '<'),
			           "an empty path only as \"<>\" when allowed");
			fuzz_check_addr(p->addr, p->addrlen, allow_bare, utf8);
			FUZZ_CHECK(p->nparams <= SMTP_MAX_PARAMS, "at most SMTP_MAX_PARAMS parameters");
			const char *after = p->addr + p->addrlen + 1;
			for (size_t i = 0; i < p->nparams; i++) {
				const struct smtp_param *pa = &p->params[i];
				FUZZ_CHECK(pa->key >= after && fuzz_inside(pa->key, pa->keylen, args, len),
				           "parameter key inside the args, after the path");
				FUZZ_CHECK(pa->keylen > 0 && pa->key[-1] == ' ', "a key follows a space");
				for (size_t k = 0; k < pa->keylen; k++) {
					char c = pa->key[k];
					FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
					                   (c >= '0' && c <= '9') || (c == '-' && k > 0),
					           "a key is esmtp-keyword");
				}
				if (!pa->value) {
					FUZZ_CHECK(pa->valuelen == 0, "no value, no length");
					FUZZ_CHECK(pa->key + pa->keylen == args + len ||
					                   pa->key[pa->keylen] == ' ',
					           "a key without value ends at a space");
					continue;
				}
				FUZZ_CHECK(pa->value == pa->key + pa->keylen + 1 &&
				                   pa->key[pa->keylen] == '=',
				           "the value follows \"key=\"");
				FUZZ_CHECK(fuzz_inside(pa->value, pa->valuelen, args, len) && pa->valuelen > 0,
				           "a non-empty value inside the args");
				FUZZ_CHECK(!memchr(pa->value, ' ', pa->valuelen) &&
				                   !memchr(pa->value, '=', pa->valuelen),
				           "no space or '=' in a value");
				FUZZ_CHECK(pa->value + pa->valuelen == args + len ||
				                   pa->value[pa->valuelen] == ' ',
				           "a value ends at a space or the end");
				if (i + 1 < p->nparams)
					FUZZ_CHECK(p->params[i + 1].key > pa->value + pa->valuelen,
					           "parameters in order, not overlapping");
				fuzz_check_value(pa->value, pa->valuelen);
			}
		}
		/* Allowing more never refuses what was accepted, nor changes it. */
		for (unsigned f = 0; f < 8; f++) {
			if (err[f] != SMTP_PATH_OK)
				continue;
			for (unsigned g = 0; g < 8; g++) {
				if ((f & g) != f)
					continue;
				FUZZ_CHECK(err[g] == SMTP_PATH_OK, "allowing more keeps a path accepted");
				FUZZ_CHECK(res[g].addr == res[f].addr && res[g].addrlen == res[f].addrlen &&
				                   res[g].nparams == res[f].nparams,
				           "allowing more does not change an accepted path");
			}
		}
		if (fuzz_ascii(args, len))
			for (unsigned f = 0; f < 4; f++)
				FUZZ_CHECK(err[f] == err[f | 4], "UTF-8 makes no difference to ASCII");
	}
}

/* LINE[0..LEN) is a command without its ending. */
static void fuzz_check_command(const char *line, size_t len)
{
	/* As smtp.c: trailing spaces dropped from the args. */
	fuzz_check_verb(line, len);
	const char *args;
	bool space;
	smtp_parse_verb(line, len, &args, &space);
	size_t alen = len - (size_t)(args - line);
	while (alen && args[alen - 1] == ' ')
		alen--;
	/* Exact-size copies: a parser reading past its LEN is an ASan error. */
	char *a = malloc(alen ? alen : 1);
	memcpy(a, args, alen);
	fuzz_check_path(a, alen);
	fuzz_check_domain(a, alen);
	const char *sp = memchr(a, ' ', alen);
	size_t word = sp ? (size_t)(sp - a) : alen;
	fuzz_check_domain(a, word); /* as a HELO name */
	const char *at = memrchr(a, '@', alen);
	if (at)
		fuzz_check_domain(at + 1, word > (size_t)(at + 1 - a) ? word - (size_t)(at + 1 - a) : 0);
	fuzz_check_value(a, word);
	free(a);
}

/* ---- certstore_normalize ---- */

static void fuzz_check_normalize(const char *name, size_t len)
{
	size_t outsize = len + 1;
	char *out = malloc(outsize);
	int n = certstore_normalize(name, len, out, outsize);
	if (n >= 0) {
		size_t l = (size_t)n;
		FUZZ_CHECK(l == len || (l == len - 1 && name[len - 1] == '.'),
		           "normalised length: the name less one trailing dot");
		FUZZ_CHECK(l > 0 && l <= 253 && out[l] == '\0', "1..253 bytes, NUL-terminated");
		size_t label = 0;
		for (size_t i = 0; i < l; i++) {
			char c = out[i];
			FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
			                   c == '_' || c == '.',
			           "normalised: lower-case letters, digits, '-', '_', '.'");
			FUZZ_CHECK(c == name[i] || c == name[i] - 'A' + 'a', "normalised: lower case of the name");
			if (c == '.') {
				FUZZ_CHECK(label > 0 && out[i - 1] != '-', "no empty label, none ending in '-'");
				label = 0;
			} else {
				FUZZ_CHECK(label > 0 || c != '-', "no label starting with '-'");
				FUZZ_CHECK(++label <= 63, "labels of at most 63 bytes");
			}
		}
		FUZZ_CHECK(label > 0 && out[l - 1] != '-', "the last label is not empty");
		/* Idempotent, and not fooled by a too small buffer. */
		char again[256];
		FUZZ_CHECK(certstore_normalize(out, l, again, sizeof again) == n &&
		                   memcmp(again, out, l + 1) == 0,
		           "normalising twice changes nothing");
		FUZZ_CHECK(certstore_normalize(name, len, again, l) == -1,
		           "a buffer without room for the NUL is refused");
	}
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t limit = SMTP_COMMAND_LINE_MAX +
	               (size_t)data[0] * (SMTP_TEXT_LINE_MAX - SMTP_COMMAND_LINE_MAX) / 255;
	uint32_t rnd = 0x9e3779b9u ^ data[1];
	const char *in = (const char *)data + 2;
	size_t inlen = size - 2;

	fuzz_check_normalize(in, inlen);

	/* Reads arrive in pseudo-random sizes (from byte 1) into a buffer like
	 * the session's; the framer sees only what has arrived. */
	char *buf = malloc(FUZZ_IN_MAX);
	size_t have = 0, fed = 0;
	struct smtp_framer fr;
	memset(&fr, 0, sizeof fr);
	struct fuzz_ref_frame rf = { in, in + inlen };
	bool discarding = false; /* the reference's view */
	for (;;) {
		const char *line;
		size_t linelen;
		unsigned flags;
		size_t n = smtp_frame(&fr, buf, have, limit, &line, &linelen, &flags);
		FUZZ_CHECK(n <= have, "consumed no more than given");
		if (n == 0) {
			FUZZ_CHECK(have == 0 || (!memchr(buf, '\n', have) && have < limit && !discarding),
			           "waits for more only with a partial line shorter than the limit");
			if (fed == inlen)
				break;
			/* xorshift32: chunk sizes 1..256, or all at once when byte 1 is 0 */
			rnd ^= rnd << 13, rnd ^= rnd >> 17, rnd ^= rnd << 5;
			size_t chunk = data[1] ? 1 + (rnd & 255) : inlen;
			if (chunk > inlen - fed)
				chunk = inlen - fed;
			if (chunk > FUZZ_IN_MAX - have)
				chunk = FUZZ_IN_MAX - have;
			FUZZ_CHECK(chunk > 0, "the input buffer never stays full");
			memcpy(buf + have, in + fed, chunk);
			have += chunk;
			fed += chunk;
			continue;
		}
		if (!line) {
			FUZZ_CHECK(!memchr(buf, '\n', n), "only bytes without an LF are dropped");
			FUZZ_CHECK(n == have, "dropping takes all there is");
			discarding = true;
		} else {
			FUZZ_CHECK(line == buf && linelen == n, "a line is what was consumed");
			FUZZ_CHECK(line[linelen - 1] == '\n' && !memchr(line, '\n', linelen - 1),
			           "a line ends at its first LF");
			size_t rn;
			unsigned rflags;
			bool whole;
			fuzz_ref_next(&rf, limit, &rn, &rflags, &whole);
			FUZZ_CHECK(flags == rflags, "line flags agree with the reference");
			if (whole) {
				FUZZ_CHECK(!discarding && linelen == rn &&
				                   memcmp(line, rf.p - rn, rn) == 0,
				           "a line within the limit arrives whole");
			} else {
				FUZZ_CHECK(linelen <= rn && memcmp(line, rf.p - linelen, linelen) == 0,
				           "an over-long line's tail is the line's tail");
			}
			discarding = false;
			/* What smtp.c parses: clean lines, and with bare_newline =
			 * normalize those ended by a bare LF. */
			if ((flags & ~(unsigned)SMTP_LINE_BARE_LF) == 0) {
				size_t len = linelen - ((flags & SMTP_LINE_BARE_LF) ? 1 : 2);
				FUZZ_CHECK((flags & SMTP_LINE_BARE_LF) || line[len] == '\r',
				           "a clean line ends in CRLF");
				char *copy = malloc(len ? len : 1);
				memcpy(copy, line, len);
				fuzz_check_command(copy, len);
				free(copy);
			}
		}
		memmove(buf, buf + n, have - n);
		have -= n;
	}
	FUZZ_CHECK(!memchr(rf.p, '\n', (size_t)(rf.end - rf.p)), "every line was delivered");
	free(buf);
	return 0;
}
