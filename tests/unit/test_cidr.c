/* Unit tests for cidr: network lists parsed from configuration text (what
 * is taken, what is refused and why) and addresses matched against them,
 * IPv4-mapped IPv6 addresses included. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "check.h"
#include "cidr.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

struct parse_case {
	const char *name, *input;
	int want_n;             /* -1: an error */
	const char *want_error; /* a substring */
};

static const struct parse_case parse_cases[] = {
	{ "empty", "", 0, NULL },
	{ "blanks and commas", " , ,", 0, NULL },
	{ "one v4 host", "192.0.2.7", 1, NULL },
	{ "v4 and v6 networks", "10.0.0.0/8, 2001:db8::/32 ,127.0.0.1/32", 3, NULL },
	{ "zero prefix", "0.0.0.0/0, ::/0", 2, NULL },
	{ "host bits set", "192.0.2.1/24", -1, "bits set beyond /24" },
	{ "v6 host bits set", "2001:db8::1/64", -1, "bits set beyond /64" },
	{ "prefix too long", "10.0.0.0/33", -1, "prefix length over 32" },
	{ "v6 prefix too long", "::/129", -1, "prefix length over 128" },
	{ "empty prefix", "10.0.0.0/", -1, "bad prefix" },
	{ "signed prefix", "10.0.0.0/+8", -1, "bad prefix" },
	{ "name", "localhost", -1, "not an IPv4 or IPv6" },
	{ "space inside", "10.0.0.0 /8", -1, "not an IPv4 or IPv6" },
	{ "slash alone", "/8", -1, "not an address" },
};

struct match_case {
	const char *name, *list, *addr;
	bool want;
};

static const struct match_case match_cases[] = {
	{ "v4 in /8", "10.0.0.0/8", "10.255.1.2", true },
	{ "v4 outside /8", "10.0.0.0/8", "11.0.0.1", false },
	{ "v4 /23 boundary in", "192.0.2.0/23", "192.0.3.255", true },
	{ "v4 /23 boundary out", "192.0.2.0/23", "192.0.4.0", false },
	{ "v4 host", "127.0.0.2", "127.0.0.2", true },
	{ "v4 other host", "127.0.0.2", "127.0.0.3", false },
	{ "v4 /0", "0.0.0.0/0", "203.0.113.9", true },
	{ "v6 in /32", "2001:db8::/32", "2001:db8:ffff::1", true },
	{ "v6 outside", "2001:db8::/32", "2001:db9::1", false },
	{ "v6 /127", "2001:db8::/127", "2001:db8::1", true },
	{ "v4-mapped in v4 list", "192.0.2.0/24", "::ffff:192.0.2.9", true },
	{ "v4-mapped outside", "192.0.2.0/24", "::ffff:198.51.100.1", false },
	{ "v4 never in a v6 list", "::/0", "192.0.2.1", false },
	{ "second entry", "10.0.0.0/8, 127.0.0.0/8", "127.0.0.1", true },
	{ "empty list", "", "127.0.0.1", false },
};

static void addr_of(const char *text, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, text, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, text, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
}

int main(void)
{
	for (size_t i = 0; i < N_ELEMS(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		check_case(c->name);
		struct cidr_list l = { 0 };
		char err[200] = "";
		int rc = cidr_parse_list(c->input, &l, err, sizeof err);
		if (c->want_n < 0) {
			CHECK(rc < 0 && l.n == 0 && l.items == NULL, "rc %d n %zu", rc, l.n);
			CHECK(strstr(err, c->want_error), "error \"%s\", want \"%s\"", err, c->want_error);
		} else {
			CHECK(rc == 0, "error \"%s\"", err);
			CHECK_INT_EQ(l.n, c->want_n);
		}
		cidr_list_fini(&l);
	}
	for (size_t i = 0; i < N_ELEMS(match_cases); i++) {
		const struct match_case *c = &match_cases[i];
		check_case(c->name);
		struct cidr_list l = { 0 };
		char err[200] = "";
		if (!CHECK(cidr_parse_list(c->list, &l, err, sizeof err) == 0, "%s", err))
			continue;
		struct sockaddr_storage ss;
		addr_of(c->addr, &ss);
		CHECK(cidr_list_match(&l, (struct sockaddr *)&ss) == c->want, "%s in [%s]", c->addr,
		      c->list);
		cidr_list_fini(&l);
	}
	return check_summary();
}
