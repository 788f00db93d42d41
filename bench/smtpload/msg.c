/* msg: builds the one message all transactions send, dot-stuffed with its
 * final ".\r\n", and formats recipient addresses from a template. Runs at
 * start-up only (except msg_rcpt_format); never does I/O. */
#include "msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MSG_BODY_LINE 76
#define MSG_DOT_EVERY 8

struct msg_buf {
	char *p;
	size_t len, cap;
};

static int msg_buf_put(struct msg_buf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

/* Appends one line of message text (without CRLF) in wire form: RFC 5321
 * 4.5.2, a line starting with "." gets another one. */
static int msg_put_line(struct msg_buf *b, const char *s, size_t n)
{
	if (n > 0 && s[0] == '.' && msg_buf_put(b, ".", 1) < 0)
		return -1;
	if (msg_buf_put(b, s, n) < 0)
		return -1;
	return msg_buf_put(b, "\r\n", 2);
}

/* Body line number I of LEN octets: printable text, some starting with a dot. */
static void msg_body_line(char *out, size_t len, size_t i)
{
	static const char pat[] = "The quick brown fox jumps over the lazy dog 0123456789 ";
	for (size_t k = 0; k < len; k++)
		out[k] = pat[(i + k) % (sizeof pat - 1)];
	if (len > 0 && i % MSG_DOT_EVERY == MSG_DOT_EVERY - 1)
		out[0] = '.';
}

static int msg_put_headers(struct msg_buf *b, const char *from, const char *to, size_t *used)
{
	char h[4 * MSG_ADDR_MAX];
	int n = snprintf(h, sizeof h,
	                 "From: <%s>\r\nTo: <%s>\r\nSubject: smtpload test message\r\n"
	                 "Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
	                 "Message-ID: <smtpload@smtpload.invalid>\r\n\r\n",
	                 from, to);
	if (n < 0 || (size_t)n >= sizeof h)
		return -1;
	*used = (size_t)n;
	return msg_buf_put(b, h, (size_t)n);
}

/* Undoes the stuffing and checks what a server would store: SIZE octets,
 * CRLF-only lines of at most 998 octets, one final dot. */
static int msg_check(const struct msg *m)
{
	const char *p = m->wire, *end = m->wire + m->wire_len;
	size_t size = 0;
	for (;;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl || nl == p || nl[-1] != '\r')
			return -1;
		size_t len = (size_t)(nl - p) - 1;
		if (memchr(p, '\r', len) || len > MSG_LINE_MAX)
			return -1;
		if (len == 1 && p[0] == '.')
			return nl + 1 == end && size == m->size ? 0 : -1;
		if (p[0] == '.') {
			if (len < 2 || p[1] != '.')
				return -1;
			len--;
		}
		size += len + 2;
		p = nl + 1;
	}
}

int msg_build(struct msg *m, size_t size, const char *from, const char *to, char *err,
              size_t errsize)
{
	struct msg_buf b = {0};
	char line[MSG_BODY_LINE];
	size_t left = size, hdr = 0;
	memset(m, 0, sizeof *m);
	if (size == 1) {
		snprintf(err, errsize, "-S 1: a message is 0 or at least 2 octets (CRLF)");
		return -1;
	}
	if (msg_put_headers(&b, from, to, &hdr) < 0)
		goto oom;
	if (hdr > size || size - hdr == 1)
		b.len = 0; /* too small for headers: body lines only */
	else
		left -= hdr;
	for (size_t i = 0; left > 0; i++) {
		size_t len = left - 2 < MSG_BODY_LINE ? left - 2 : MSG_BODY_LINE;
		if (left - (len + 2) == 1)
			len--; /* never leave a single octet: it cannot end in CRLF */
		msg_body_line(line, len, i);
		if (msg_put_line(&b, line, len) < 0)
			goto oom;
		left -= len + 2;
	}
	if (msg_buf_put(&b, ".\r\n", 3) < 0)
		goto oom;
	m->wire = b.p;
	m->wire_len = b.len;
	m->size = size;
	if (msg_check(m) < 0) {
		snprintf(err, errsize, "internal error: the generated message fails its check");
		msg_fini(m);
		return -1;
	}
	return 0;
oom:
	free(b.p);
	snprintf(err, errsize, "out of memory for a %zu-octet message", size);
	return -1;
}

void msg_fini(struct msg *m)
{
	free(m->wire);
	memset(m, 0, sizeof *m);
}

/* Copies S[0..n) into a new string, turning "%%" into "%"; NULL on any other "%". */
static char *msg_rcpt_copy(const char *s, size_t n)
{
	char *out = malloc(n + 1);
	size_t k = 0;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			if (i + 1 >= n || s[i + 1] != '%') {
				free(out);
				return NULL;
			}
			i++;
		}
		out[k++] = s[i];
	}
	out[k] = '\0';
	return out;
}

int msg_rcpt_init(struct msg_rcpt *r, const char *tmpl, unsigned count, char *err,
                  size_t errsize)
{
	memset(r, 0, sizeof *r);
	const char *d = NULL;
	for (const char *p = tmpl; *p; p++) {
		if (p[0] == '%' && p[1] == '%') {
			p++;
		} else if (p[0] == '%' && p[1] == 'd' && !d) {
			d = p;
			p++;
		}
	}
	size_t n = strlen(tmpl);
	r->numbered = d != NULL;
	r->count = count ? count : 1;
	r->prefix = msg_rcpt_copy(tmpl, d ? (size_t)(d - tmpl) : n);
	r->suffix = msg_rcpt_copy(d ? d + 2 : tmpl + n, d ? n - (size_t)(d - tmpl) - 2 : 0);
	if (!r->prefix || !r->suffix || strlen(r->prefix) + strlen(r->suffix) + 20 >= MSG_ADDR_MAX) {
		msg_rcpt_fini(r);
		snprintf(err, errsize, "-t '%s': use at most one %%d, %%%% for a percent sign, "
		         "and fewer than %d octets", tmpl, MSG_ADDR_MAX - 20);
		return -1;
	}
	return 0;
}

void msg_rcpt_fini(struct msg_rcpt *r)
{
	free(r->prefix);
	free(r->suffix);
	memset(r, 0, sizeof *r);
}

size_t msg_rcpt_format(const struct msg_rcpt *r, unsigned long long k, char *buf)
{
	size_t pl = strlen(r->prefix), sl = strlen(r->suffix), n = pl;
	memcpy(buf, r->prefix, pl);
	if (r->numbered) {
		char digits[24];
		size_t nd = 0;
		unsigned long long v = k % r->count;
		do {
			digits[nd++] = (char)('0' + v % 10);
			v /= 10;
		} while (v);
		while (nd)
			buf[n++] = digits[--nd];
	}
	memcpy(buf + n, r->suffix, sl);
	n += sl;
	buf[n] = '\0';
	return n;
}
