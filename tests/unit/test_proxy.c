/* Unit tests for proxy, the PROXY protocol header parser: one table of
 * headers (v1 text, v2 binary built by the cases) with what must come out:
 * need more, an error (by its text), or the header's length and client.
 * Every DONE case is also fed one byte at a time: each shorter prefix must
 * say "more", never an error or a wrong answer. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "proxy.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

struct proxy_case {
	const char *name;
	const char *input; /* bytes; see len */
	size_t len;        /* 0: strlen(input) */
	unsigned accept;
	enum proxy_status want;
	size_t want_len;      /* DONE */
	const char *want_src; /* DONE: "ip port", or "local" */
	const char *want_error; /* ERROR: a substring of the reason */
};

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"
/* v2, PROXY, TCP over IPv4 192.0.2.1:56324 -> 198.51.100.2:25 */
#define V2_TCP4 V2SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19"
/* v2, PROXY, TCP over IPv6 2001:db8::7:1234 -> 2001:db8::1:25 */
#define V2_TCP6                                                                              \
	V2SIG "\x21\x21\x00\x24"                                                             \
	      "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07"             \
	      "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"             \
	      "\x04\xd2\x00\x19"

static const struct proxy_case proxy_cases[] = {
	/* v1 */
	{ "v1 tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n", 0, PROXY_ANY,
	  PROXY_DONE, 44, "192.0.2.1 56324", NULL },
	{ "v1 tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 1234 25\r\n", 0, PROXY_V1, PROXY_DONE, 44,
	  "2001:db8::7 1234", NULL },
	{ "v1 unknown", "PROXY UNKNOWN\r\n", 0, PROXY_ANY, PROXY_DONE, 15, "local", NULL },
	{ "v1 unknown with addresses", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 0, PROXY_ANY,
	  PROXY_DONE, 35, "local", NULL },
	{ "v1 port 0 and 65535", "PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", 0, PROXY_ANY,
	  PROXY_DONE, 38, "10.0.0.1 0", NULL },
	{ "v1 longest (107)",
	  "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	  "65535 65535\r\n",
	  0, PROXY_ANY, PROXY_DONE, 104, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535", NULL },
	{ "v1 partial", "PROXY TCP4 192.0.2.1 198.51", 0, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	{ "v1 partial signature", "PRO", 0, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	{ "v1 CR without LF yet", "PROXY UNKNOWN\r", 0, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	{ "v1 not accepted", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n", 0, PROXY_V2, PROXY_ERROR,
	  0, NULL, "v2 only" },
	{ "v1 bad protocol", "PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "protocol" },
	{ "v1 family mismatch", "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "address" },
	{ "v1 double space", "PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "fields" },
	{ "v1 missing port", "PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n", 0, PROXY_ANY, PROXY_ERROR,
	  0, NULL, "fields" },
	{ "v1 extra field", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "fields" },
	{ "v1 trailing space", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "fields" },
	{ "v1 port over 65535", "PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "port" },
	{ "v1 port leading zero", "PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "port" },
	{ "v1 port sign", "PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n", 0, PROXY_ANY, PROXY_ERROR,
	  0, NULL, "port" },
	{ "v1 bad address", "PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n", 0, PROXY_ANY,
	  PROXY_ERROR, 0, NULL, "address" },
	{ "v1 bare LF", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", 0, PROXY_ANY, PROXY_ERROR, 0,
	  NULL, "LF without CR" },
	{ "v1 CR then junk", "PROXY UNKNOWN\rX", 0, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "CR without LF" },
	{ "v1 lower case", "proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n", 0, PROXY_ANY, PROXY_ERROR,
	  0, NULL, "not a PROXY" },
	/* not a header at all */
	{ "smtp instead", "EHLO client.example\r\n", 0, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "not a PROXY" },
	{ "tls instead", "\x16\x03\x01\x02\x00", 5, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "not a PROXY" },
	{ "empty", "", 0, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	/* v2 */
	{ "v2 tcp4", V2_TCP4 "EHLO", 32, PROXY_ANY, PROXY_DONE, 28, "192.0.2.1 56324", NULL },
	{ "v2 tcp6", V2_TCP6, 52, PROXY_V2, PROXY_DONE, 52, "2001:db8::7 1234", NULL },
	{ "v2 tcp4 with a TLV", V2SIG "\x21\x11\x00\x11\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04"
	                        "\x00\x19\x02\x00\x02xy",
	  33, PROXY_ANY, PROXY_DONE, 33, "192.0.2.1 56324", NULL },
	{ "v2 local", V2SIG "\x20\x00\x00\x00", 16, PROXY_ANY, PROXY_DONE, 16, "local", NULL },
	{ "v2 local with a block", V2SIG "\x20\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x09"
	                           "\x0a\x0b\x0c",
	  28, PROXY_ANY, PROXY_DONE, 28, "local", NULL },
	{ "v2 unspec", V2SIG "\x21\x00\x00\x00", 16, PROXY_ANY, PROXY_DONE, 16, "local", NULL },
	{ "v2 partial signature", V2SIG, 7, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	{ "v2 partial block", V2_TCP4, 20, PROXY_ANY, PROXY_MORE, 0, NULL, NULL },
	{ "v2 not accepted", V2_TCP4, 28, PROXY_V1, PROXY_ERROR, 0, NULL, "v1 only" },
	{ "v2 version 1", V2SIG "\x11\x11\x00\x0c", 16, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "another version" },
	{ "v2 command 2", V2SIG "\x22\x11\x00\x0c", 16, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "unknown command" },
	{ "v2 family 4", V2SIG "\x21\x41\x00\x0c", 16, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "unknown family" },
	{ "v2 udp", V2SIG "\x21\x12\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19", 28,
	  PROXY_ANY, PROXY_ERROR, 0, NULL, "other than TCP" },
	{ "v2 tcp4 block too short", V2SIG "\x21\x11\x00\x08\xc0\x00\x02\x01\xc6\x33\x64\x02", 24,
	  PROXY_ANY, PROXY_ERROR, 0, NULL, "too short for IPv4" },
	{ "v2 tcp6 block too short", V2SIG "\x21\x21\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdb"
	                             "\xc4\x00\x19",
	  28, PROXY_ANY, PROXY_ERROR, 0, NULL, "too short for IPv6" },
	{ "v2 length 1025", V2SIG "\x21\x11\x04\x01", 16, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "longer than" },
	{ "v2 length 65535", V2SIG "\x21\x11\xff\xff", 16, PROXY_ANY, PROXY_ERROR, 0, NULL,
	  "longer than" },
	{ "v2 unix is local", V2SIG "\x21\x31\x00\x00", 16, PROXY_ANY, PROXY_DONE, 16, "local",
	  NULL },
	{ "v2 broken signature", "\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00", 16, PROXY_ANY, PROXY_ERROR,
	  0, NULL, "not a PROXY" },
};

/* "ip port" of SS into OUT. */
static void proxy_format(const struct sockaddr_storage *ss, char *out, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = -1;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
		port = ntohs(s->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
		port = ntohs(s->sin6_port);
	}
	snprintf(out, size, "%s %d", ip, port);
}

static void test_proxy_table(void)
{
	for (size_t i = 0; i < N_ELEMS(proxy_cases); i++) {
		const struct proxy_case *c = &proxy_cases[i];
		check_case(c->name);
		size_t len = c->len ? c->len : strlen(c->input);
		struct proxy_result r;
		enum proxy_status st = proxy_parse((const unsigned char *)c->input, len, c->accept, &r);
		if (!CHECK(st == c->want, "status %d, want %d (error %s)", st, c->want,
		           r.error ? r.error : "-"))
			continue;
		if (st == PROXY_ERROR) {
			CHECK(r.error && strstr(r.error, c->want_error), "error \"%s\", want \"%s\"",
			      r.error ? r.error : "(null)", c->want_error);
			continue;
		}
		if (st != PROXY_DONE)
			continue;
		CHECK_INT_EQ(r.len, c->want_len);
		char src[80] = "local";
		if (!r.local)
			proxy_format(&r.src, src, sizeof src);
		CHECK_STR_EQ(src, c->want_src);
		/* Every prefix of a complete header asks for more. */
		for (size_t k = 0; k < r.len; k++) {
			struct proxy_result p;
			enum proxy_status pst = proxy_parse((const unsigned char *)c->input, k, c->accept,
			                                    &p);
			if (!CHECK_SILENT(pst == PROXY_MORE, "prefix of %zu bytes: status %d (%s)", k, pst,
			                  p.error ? p.error : "-"))
				break;
		}
	}
}

/* "PROXY UNKNOWN xxx...": TOTAL bytes with the CRLF if CRLF, else TOTAL
 * bytes of the line alone. */
static size_t proxy_long_v1(char *out, size_t total, bool crlf)
{
	memset(out, 'x', total);
	memcpy(out, "PROXY UNKNOWN ", 14);
	if (crlf)
		memcpy(out + total - 2, "\r\n", 2);
	return total;
}

static void test_proxy_v1_length_limit(void)
{
	char buf[200];
	struct proxy_result r;
	check_case("v1 of exactly 107 bytes");
	size_t n = proxy_long_v1(buf, 107, true);
	enum proxy_status st = proxy_parse((unsigned char *)buf, n, PROXY_ANY, &r);
	CHECK(st == PROXY_DONE && r.len == 107, "%s", r.error ? r.error : "");
	check_case("v1 of 108 bytes");
	n = proxy_long_v1(buf, 108, true);
	CHECK(proxy_parse((unsigned char *)buf, n, PROXY_ANY, &r) == PROXY_ERROR &&
	              strstr(r.error, "longer than 107"),
	      "");
	check_case("v1 of 107 bytes and no CRLF yet");
	n = proxy_long_v1(buf, 107, false);
	CHECK(proxy_parse((unsigned char *)buf, n, PROXY_ANY, &r) == PROXY_ERROR &&
	              strstr(r.error, "longer than 107"),
	      "");
	check_case("v1 of 106 bytes and no CRLF yet");
	n = proxy_long_v1(buf, 106, false);
	CHECK(proxy_parse((unsigned char *)buf, n, PROXY_ANY, &r) == PROXY_MORE, "");
	check_case("v1 of 106 bytes and a CR: the LF may come");
	buf[105] = '\r';
	CHECK(proxy_parse((unsigned char *)buf, 106, PROXY_ANY, &r) == PROXY_MORE, "");
}

static void test_proxy_health_flag(void)
{
	check_case("v2 LOCAL is a health check, v1 UNKNOWN is not");
	struct proxy_result r;
	CHECK(proxy_parse((const unsigned char *)V2SIG "\x20\x00\x00\x00", 16, PROXY_ANY, &r) ==
	              PROXY_DONE && r.health && r.local && r.version == 2,
	      "");
	CHECK(proxy_parse((const unsigned char *)"PROXY UNKNOWN\r\n", 15, PROXY_ANY, &r) ==
	              PROXY_DONE && !r.health && r.local && r.version == 1,
	      "");
	CHECK(proxy_parse((const unsigned char *)V2_TCP4, 28, PROXY_ANY, &r) == PROXY_DONE &&
	              !r.health && !r.local,
	      "");
	char dst[80];
	proxy_format(&r.dst, dst, sizeof dst);
	CHECK_STR_EQ(dst, "198.51.100.2 25");
}

int main(void)
{
	test_proxy_table();
	test_proxy_v1_length_limit();
	test_proxy_health_flag();
	return check_summary();
}
