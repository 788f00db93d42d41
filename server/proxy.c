/* proxy: parses PROXY protocol v1 and v2 headers from a byte buffer into
 * addresses. Owns nothing; every error is a static string. Strict: a field
 * out of place is an error, never a guess (the header decides who the
 * client is for every limit and log after it). */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const unsigned char proxy_v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
	                                        0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
static const char proxy_v1_sig[6] = "PROXY ";

static enum proxy_status proxy_fail(struct proxy_result *r, const char *why)
{
	r->error = why;
	return PROXY_ERROR;
}

/* A v1 port: 1 to 5 digits, 0..65535, no leading zero but "0" itself. */
static int proxy_v1_port(const char *s, size_t n)
{
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	return v <= 65535 ? (int)v : -1;
}

/* One address of a v1 line into SS with PORT set later. */
static int proxy_v1_addr(int family, const char *s, size_t n, struct sockaddr_storage *ss)
{
	char text[INET6_ADDRSTRLEN];
	if (n == 0 || n >= sizeof text)
		return -1;
	memcpy(text, s, n);
	text[n] = '\0';
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		return inet_pton(AF_INET, text, &sin->sin_addr) == 1 ? 0 : -1;
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	sin6->sin6_family = AF_INET6;
	return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1 ? 0 : -1;
}

static void proxy_set_port(struct sockaddr_storage *ss, int port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((unsigned short)port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((unsigned short)port);
}

/* "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n" (spec section 2.1): single
 * spaces, TCP4/TCP6 with addresses of that family, or UNKNOWN followed by
 * anything up to the CRLF. */
static enum proxy_status proxy_parse_v1(const unsigned char *buf, size_t len,
                                        struct proxy_result *r)
{
	const char *s = (const char *)buf;
	const char *cr = memchr(s, '\r', len < PROXY_V1_MAX ? len : PROXY_V1_MAX);
	if (!cr) {
		if (len >= PROXY_V1_MAX)
			return proxy_fail(r, "v1 header longer than 107 bytes");
		if (memchr(s, '\n', len < PROXY_V1_MAX ? len : PROXY_V1_MAX))
			return proxy_fail(r, "malformed v1 header (LF without CR)");
		return PROXY_MORE;
	}
	size_t line = (size_t)(cr - s);
	if (memchr(s, '\n', line))
		return proxy_fail(r, "malformed v1 header (LF without CR)");
	if (line + 2 > PROXY_V1_MAX)
		return proxy_fail(r, "v1 header longer than 107 bytes");
	if (line + 1 >= len)
		return PROXY_MORE;
	if (cr[1] != '\n')
		return proxy_fail(r, "malformed v1 header (CR without LF)");
	r->len = line + 2;
	const char *p = s + sizeof proxy_v1_sig, *end = cr;
	if (end - p >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (end - p == 7 || p[7] == ' ')) {
		r->local = true;
		return PROXY_DONE;
	}
	/* Exactly five fields, one space apart: protocol, source address,
	 * destination address, source port, destination port. */
	const char *f[5];
	size_t fl[5], nf = 0;
	for (;;) {
		const char *sp = memchr(p, ' ', (size_t)(end - p));
		const char *stop = sp ? sp : end;
		if (nf == 5 || stop == p)
			return proxy_fail(r, "malformed v1 header (fields)");
		f[nf] = p;
		fl[nf++] = (size_t)(stop - p);
		if (!sp)
			break;
		p = sp + 1;
	}
	if (nf != 5)
		return proxy_fail(r, "malformed v1 header (fields)");
	int family;
	if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0)
		family = AF_INET;
	else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0)
		family = AF_INET6;
	else
		return proxy_fail(r, "malformed v1 header (protocol)");
	if (proxy_v1_addr(family, f[1], fl[1], &r->src) < 0 ||
	    proxy_v1_addr(family, f[2], fl[2], &r->dst) < 0)
		return proxy_fail(r, "malformed v1 header (address)");
	int sport = proxy_v1_port(f[3], fl[3]);
	int dport = proxy_v1_port(f[4], fl[4]);
	if (sport < 0 || dport < 0)
		return proxy_fail(r, "malformed v1 header (port)");
	proxy_set_port(&r->src, sport);
	proxy_set_port(&r->dst, dport);
	return PROXY_DONE;
}

/* The binary header (spec section 2.2): 12-byte signature, version and
 * command, family and protocol, length, then the address block and TLVs
 * (which are skipped). */
static enum proxy_status proxy_parse_v2(const unsigned char *buf, size_t len,
                                        struct proxy_result *r)
{
	if (len < 16)
		return PROXY_MORE;
	unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
	unsigned fam = buf[13] >> 4, proto = buf[13] & 0x0f;
	size_t hlen = (size_t)buf[14] << 8 | buf[15];
	if (ver != 2)
		return proxy_fail(r, "v2 header with another version");
	if (cmd > 1)
		return proxy_fail(r, "v2 header with an unknown command");
	if (fam > 3 || proto > 2)
		return proxy_fail(r, "v2 header with an unknown family or protocol");
	if (hlen > PROXY_V2_MAX_LEN)
		return proxy_fail(r, "v2 header longer than 1040 bytes");
	if (len < 16 + hlen)
		return PROXY_MORE;
	r->len = 16 + hlen;
	if (cmd == 0) {
		/* LOCAL: the proxy's own connection (health checks); the
		 * block, whatever it holds, is skipped. */
		r->local = r->health = true;
		return PROXY_DONE;
	}
	const unsigned char *b = buf + 16;
	if (fam == 0 || fam == 3) {
		/* UNSPEC, or AF_UNIX: no IP client to speak of. */
		r->local = true;
		return PROXY_DONE;
	}
	if (proto != 1)
		return proxy_fail(r, "v2 header for a protocol other than TCP");
	memset(&r->src, 0, sizeof r->src);
	memset(&r->dst, 0, sizeof r->dst);
	if (fam == 1) {
		if (hlen < 12)
			return proxy_fail(r, "v2 header too short for IPv4 addresses");
		struct sockaddr_in *s4 = (struct sockaddr_in *)&r->src;
		struct sockaddr_in *d4 = (struct sockaddr_in *)&r->dst;
		s4->sin_family = d4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, b, 4);
		memcpy(&d4->sin_addr, b + 4, 4);
		memcpy(&s4->sin_port, b + 8, 2);
		memcpy(&d4->sin_port, b + 10, 2);
	} else {
		if (hlen < 36)
			return proxy_fail(r, "v2 header too short for IPv6 addresses");
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->src;
		struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&r->dst;
		s6->sin6_family = d6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, b, 16);
		memcpy(&d6->sin6_addr, b + 16, 16);
		memcpy(&s6->sin6_port, b + 32, 2);
		memcpy(&d6->sin6_port, b + 34, 2);
	}
	return PROXY_DONE;
}

enum proxy_status proxy_parse(const unsigned char *buf, size_t len, unsigned accept,
                              struct proxy_result *r)
{
	memset(r, 0, sizeof *r);
	if (len == 0)
		return PROXY_MORE;
	/* Which version this can still be: compare what arrived so far. */
	size_t n1 = len < sizeof proxy_v1_sig ? len : sizeof proxy_v1_sig;
	size_t n2 = len < sizeof proxy_v2_sig ? len : sizeof proxy_v2_sig;
	bool v1 = memcmp(buf, proxy_v1_sig, n1) == 0;
	bool v2 = memcmp(buf, proxy_v2_sig, n2) == 0;
	if (!v1 && !v2)
		return proxy_fail(r, "not a PROXY protocol header");
	r->version = v1 ? 1 : 2;
	if (v1 && !(accept & PROXY_V1))
		return proxy_fail(r, "v1 header on a listener for v2 only");
	if (v2 && !(accept & PROXY_V2))
		return proxy_fail(r, "v2 header on a listener for v1 only");
	if (v1)
		return len < sizeof proxy_v1_sig ? PROXY_MORE : proxy_parse_v1(buf, len, r);
	return len < sizeof proxy_v2_sig ? PROXY_MORE : proxy_parse_v2(buf, len, r);
}
