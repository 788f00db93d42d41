/* smtp_parse: pure parsers for SMTP/LMTP lines, commands, paths and replies.
 * No allocation, no I/O, no global state: every result points into the
 * caller's buffer, so each function can be fuzzed on its own. */
#include "smtp_parse.h"

#include <string.h>
#include <strings.h>

size_t smtp_frame(struct smtp_framer *fr, const char *buf, size_t len, size_t limit,
                  const char **line, size_t *linelen, unsigned *flags)
{
	*line = NULL;
	*linelen = 0;
	*flags = 0;
	const char *lf = memchr(buf, '\n', len);
	if (!lf) {
		if (fr->discarding || len >= limit) {
			/* Over-long line: drop what we have, keep dropping to the LF. */
			fr->discarding = true;
			if (len)
				fr->last = buf[len - 1];
			return len;
		}
		return 0;
	}
	size_t n = (size_t)(lf - buf) + 1;
	if (fr->discarding || n > limit) {
		char before = n >= 2 ? buf[n - 2] : fr->last;
		if (n == 1 && !fr->discarding)
			before = 0;
		fr->discarding = false;
		*line = buf;
		*linelen = n;
		*flags = SMTP_LINE_TOO_LONG | (before == '\r' ? 0 : SMTP_LINE_BARE_LF);
		return n;
	}
	unsigned f = 0;
	if (n < 2 || buf[n - 2] != '\r')
		f |= SMTP_LINE_BARE_LF;
	size_t body = (f & SMTP_LINE_BARE_LF) ? n - 1 : n - 2;
	if (memchr(buf, '\r', body))
		f |= SMTP_LINE_BARE_CR;
	if (memchr(buf, '\0', n))
		f |= SMTP_LINE_NUL;
	*line = buf;
	*linelen = n;
	*flags = f;
	return n;
}

static const struct {
	const char *name;
	enum smtp_verb verb;
} smtp_verbs[] = {
	{ "HELO", SMTP_VERB_HELO }, { "EHLO", SMTP_VERB_EHLO }, { "MAIL", SMTP_VERB_MAIL },
	{ "RCPT", SMTP_VERB_RCPT }, { "DATA", SMTP_VERB_DATA }, { "RSET", SMTP_VERB_RSET },
	{ "NOOP", SMTP_VERB_NOOP }, { "QUIT", SMTP_VERB_QUIT }, { "VRFY", SMTP_VERB_VRFY },
	{ "EXPN", SMTP_VERB_EXPN }, { "HELP", SMTP_VERB_HELP }, { "STARTTLS", SMTP_VERB_STARTTLS },
	{ "BDAT", SMTP_VERB_BDAT }, { "AUTH", SMTP_VERB_AUTH },
};

enum smtp_verb smtp_parse_verb(const char *line, size_t len, const char **args, bool *has_space)
{
	size_t n = 0;
	while (n < len && line[n] != ' ')
		n++;
	*has_space = n < len;
	size_t a = n;
	while (a < len && line[a] == ' ')
		a++;
	*args = line + a;
	for (size_t i = 0; i < sizeof smtp_verbs / sizeof smtp_verbs[0]; i++) {
		if (strlen(smtp_verbs[i].name) == n && strncasecmp(line, smtp_verbs[i].name, n) == 0)
			return smtp_verbs[i].verb;
	}
	return SMTP_VERB_UNKNOWN;
}

const char *smtp_verb_name(enum smtp_verb verb)
{
	for (size_t i = 0; i < sizeof smtp_verbs / sizeof smtp_verbs[0]; i++)
		if (smtp_verbs[i].verb == verb)
			return smtp_verbs[i].name;
	return "UNKNOWN";
}

/* Length of the valid UTF-8 sequence at S (1 to 4), or 0 if it is not one. */
static size_t smtp_utf8_len(const unsigned char *s, size_t len)
{
	size_t n;
	unsigned min;
	unsigned cp;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, min = 0x80, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, min = 0x800, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, min = 0x10000, cp = s[0] & 0x07;
	else
		return 0;
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static bool smtp_is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool smtp_is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Dot-string or Quoted-string; returns its length in S, 0 if invalid. */
static size_t smtp_local_part_len(const char *s, size_t len, bool utf8)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	if (len && u[0] == '"') {
		for (i = 1; i < len; i++) {
			if (u[i] == '"')
				return i > 1 ? i + 1 : 0;
			if (u[i] == '\\') {
				if (++i >= len || u[i] < 32 || u[i] > 126)
					return 0;
			} else if (u[i] >= 0x80) {
				size_t k = utf8 ? smtp_utf8_len(u + i, len - i) : 0;
				if (!k)
					return 0;
				i += k - 1;
			} else if (u[i] < 32 || u[i] == 127) {
				return 0;
			}
		}
		return 0;
	}
	bool atom_start = true;
	while (i < len && u[i] != '@') {
		if (u[i] == '.') {
			if (atom_start)
				return 0;
			atom_start = true;
			i++;
			continue;
		}
		if (u[i] >= 0x80) {
			size_t k = utf8 ? smtp_utf8_len(u + i, len - i) : 0;
			if (!k)
				return 0;
			i += k;
		} else if (smtp_is_atext(u[i])) {
			i++;
		} else {
			return 0;
		}
		atom_start = false;
	}
	return atom_start ? 0 : i;
}

static bool smtp_valid_address_literal(const char *s, size_t len)
{
	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return false;
	for (size_t i = 1; i < len - 1; i++) {
		unsigned char c = (unsigned char)s[i];
		/* dcontent = %d33-90 / %d94-126; the literal's own syntax is
		 * IPv4, "IPv6:..." or "tag:..." and the backend need not care. */
		if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
			return false;
	}
	return true;
}

bool smtp_valid_domain(const char *s, size_t len, bool utf8)
{
	if (len && s[0] == '[')
		return smtp_valid_address_literal(s, len);
	if (len == 0 || len > 255)
		return false;
	const unsigned char *u = (const unsigned char *)s;
	size_t label = 0;
	for (size_t i = 0; i < len;) {
		if (u[i] == '.') {
			if (label == 0 || u[i - 1] == '-')
				return false;
			label = 0;
			i++;
			continue;
		}
		if (u[i] >= 0x80) {
			size_t k = utf8 ? smtp_utf8_len(u + i, len - i) : 0;
			if (!k)
				return false;
			i += k;
			label += k;
		} else if (smtp_is_alnum(u[i]) || (u[i] == '-' && label > 0)) {
			i++;
			label++;
		} else {
			return false;
		}
		if (label > 63)
			return false;
	}
	/* A trailing dot is not allowed in SMTP (RFC 5321 Domain). */
	return label > 0 && u[len - 1] != '-';
}

/* Skips an RFC 5321 source route "@a,@b:" (which must be accepted and
 * ignored, RFC 5321 4.1.1.3 and C.); returns bytes skipped or -1. */
static long smtp_skip_route(const char *s, size_t len)
{
	if (len == 0 || s[0] != '@')
		return 0;
	const char *colon = memchr(s, ':', len);
	if (!colon)
		return -1;
	size_t n = (size_t)(colon - s);
	size_t i = 0;
	while (i < n) {
		if (s[i] != '@')
			return -1;
		const char *comma = memchr(s + i, ',', n - i);
		size_t end = comma ? (size_t)(comma - s) : n;
		if (!smtp_valid_domain(s + i + 1, end - i - 1, false))
			return -1;
		i = end + 1;
	}
	return (long)n + 1;
}

static enum smtp_path_error smtp_parse_params(const char *s, size_t len, bool utf8,
                                              struct smtp_path *out)
{
	size_t i = 0;
	out->nparams = 0;
	while (i < len) {
		if (s[i] == ' ') {
			i++;
			continue;
		}
		if (out->nparams == SMTP_MAX_PARAMS)
			return SMTP_PATH_PARAMS;
		struct smtp_param *p = &out->params[out->nparams++];
		p->key = s + i;
		if (!smtp_is_alnum((unsigned char)s[i]))
			return SMTP_PATH_PARAMS;
		while (i < len && (smtp_is_alnum((unsigned char)s[i]) || s[i] == '-'))
			i++;
		p->keylen = (size_t)(s + i - p->key);
		p->value = NULL;
		p->valuelen = 0;
		if (i < len && s[i] == '=') {
			p->value = s + ++i;
			while (i < len && s[i] != ' ') {
				unsigned char c = (unsigned char)s[i];
				if (c >= 0x80 && utf8) {
					size_t k = smtp_utf8_len((const unsigned char *)s + i, len - i);
					if (!k)
						return SMTP_PATH_PARAMS;
					i += k;
					continue;
				}
				if (c < 33 || c > 126 || c == '=')
					return SMTP_PATH_PARAMS;
				i++;
			}
			p->valuelen = (size_t)(s + i - p->value);
			if (p->valuelen == 0)
				return SMTP_PATH_PARAMS;
		} else if (i < len && s[i] != ' ') {
			return SMTP_PATH_PARAMS;
		}
	}
	return SMTP_PATH_OK;
}

enum smtp_path_error smtp_parse_path(const char *args, size_t len, const char *prefix,
                                     bool allow_null, bool allow_bare, bool utf8,
                                     struct smtp_path *out)
{
	size_t plen = strlen(prefix);
	memset(out, 0, sizeof *out);
	if (len < plen || strncasecmp(args, prefix, plen) != 0)
		return SMTP_PATH_SYNTAX;
	size_t i = plen;
	while (i < len && args[i] == ' ') /* tolerated: "MAIL FROM: <a@b>" */
		i++;
	if (i >= len || args[i] != '<')
		return SMTP_PATH_SYNTAX;
	i++;
	const char *gt = memchr(args + i, '>', len - i);
	/* A '>' inside a quoted local part would end the search too early;
	 * such addresses are refused as syntax errors, which is safe. */
	if (!gt)
		return SMTP_PATH_SYNTAX;
	const char *p = args + i;
	size_t n = (size_t)(gt - p);
	size_t rest = (size_t)(gt + 1 - args);
	if (rest < len && args[rest] != ' ')
		return SMTP_PATH_SYNTAX;
	if (n == 0) {
		if (!allow_null)
			return SMTP_PATH_ADDRESS;
		out->addr = p;
		out->addrlen = 0;
	} else {
		long route = smtp_skip_route(p, n);
		if (route < 0)
			return SMTP_PATH_ADDRESS;
		p += route;
		n -= (size_t)route;
		size_t lp = smtp_local_part_len(p, n, utf8);
		if (lp == 0)
			return SMTP_PATH_ADDRESS;
		if (lp == n) {
			if (!allow_bare)
				return SMTP_PATH_ADDRESS;
		} else if (p[lp] != '@' || !smtp_valid_domain(p + lp + 1, n - lp - 1, utf8)) {
			return SMTP_PATH_ADDRESS;
		}
		out->addr = p;
		out->addrlen = n;
	}
	return smtp_parse_params(args + rest, len - rest, utf8, out);
}

bool smtp_param_is(const struct smtp_param *p, const char *name)
{
	return strlen(name) == p->keylen && strncasecmp(p->key, name, p->keylen) == 0;
}

bool smtp_valid_xtext(const char *value, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)value[i];
		if (c == '+') {
			if (i + 2 >= len)
				return false;
			for (int k = 1; k <= 2; k++) {
				char h = value[i + (size_t)k];
				if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F')))
					return false;
			}
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

int smtp_parse_u64(const char *s, size_t len, uint64_t *out)
{
	if (len == 0 || len > 19)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

int smtp_parse_reply_line(const char *line, size_t len, int *code, bool *last, const char **text,
                          size_t *textlen)
{
	if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
	    line[2] < '0' || line[2] > '9')
		return -1;
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return -1;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)line[i] < 32 && line[i] != '\t')
			return -1;
	*code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	*last = len == 3 || line[3] == ' ';
	*text = len > 4 ? line + 4 : line + len;
	*textlen = len > 4 ? len - 4 : 0;
	return 0;
}

size_t smtp_enhanced_code_len(const char *text, size_t len, int code)
{
	/* class "." subject(1-3 digits) "." detail(1-3 digits) */
	if (len < 5 || text[0] != '0' + code / 100 || text[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < len && text[i] >= '0' && text[i] <= '9' && i - start < 3)
			i++;
		if (i == start)
			return 0;
		if (part == 0) {
			if (i >= len || text[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < len && text[i] != ' ')
		return 0;
	return i;
}

void smtp_reply_set(struct smtp_reply *r, int code, const char *text)
{
	r->code = code;
	r->lost = false;
	r->len = 0;
	r->text[0] = '\0';
	smtp_reply_add_line(r, text, strlen(text));
}

void smtp_reply_add_line(struct smtp_reply *r, const char *text, size_t len)
{
	size_t room = sizeof r->text - 1 - r->len;
	if (r->len) {
		if (room < 2)
			return;
		r->text[r->len++] = '\n';
		room--;
	}
	if (len > room)
		len = room;
	memcpy(r->text + r->len, text, len);
	r->len += len;
	r->text[r->len] = '\0';
}

unsigned smtp_parse_ext(const char *text, size_t len)
{
	static const struct {
		const char *name;
		unsigned bit;
	} exts[] = {
		{ "PIPELINING", SMTP_EXT_PIPELINING }, { "SIZE", SMTP_EXT_SIZE },
		{ "8BITMIME", SMTP_EXT_8BITMIME }, { "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES },
		{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 }, { "DSN", SMTP_EXT_DSN }, { "XCLIENT", SMTP_EXT_XCLIENT },
	};
	size_t n = 0;
	while (n < len && text[n] != ' ')
		n++;
	for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
		if (strlen(exts[i].name) == n && strncasecmp(text, exts[i].name, n) == 0)
			return exts[i].bit;
	return 0;
}
