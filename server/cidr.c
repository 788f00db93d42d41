/* cidr: parses network lists and matches addresses against them. Owns the
 * array of a list; never does I/O. */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cidr_list_fini(struct cidr_list *l)
{
	free(l->items);
	l->items = NULL;
	l->n = 0;
}

/* One "ADDR" or "ADDR/BITS" (TOK is trimmed, NUL-terminated). */
static int cidr_parse_one(const char *tok, struct cidr *c, char *err, size_t errsize)
{
	char addr[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(tok, '/');
	size_t alen = slash ? (size_t)(slash - tok) : strlen(tok);
	if (alen == 0 || alen >= sizeof addr) {
		snprintf(err, errsize, "'%s' is not an address or network", tok);
		return -1;
	}
	memcpy(addr, tok, alen);
	addr[alen] = '\0';
	memset(c, 0, sizeof *c);
	unsigned max;
	if (inet_pton(AF_INET, addr, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		snprintf(err, errsize, "'%s' is not an IPv4 or IPv6 address", addr);
		return -1;
	}
	c->bits = max;
	if (slash) {
		const char *p = slash + 1;
		unsigned v = 0;
		if (*p == '\0' || strspn(p, "0123456789") != strlen(p) || strlen(p) > 3) {
			snprintf(err, errsize, "'%s': bad prefix length", tok);
			return -1;
		}
		for (; *p; p++)
			v = v * 10 + (unsigned)(*p - '0');
		if (v > max) {
			snprintf(err, errsize, "'%s': prefix length over %u", tok, max);
			return -1;
		}
		c->bits = v;
	}
	for (unsigned i = c->bits; i < max; i++) {
		if (c->addr[i / 8] & (0x80u >> (i % 8))) {
			snprintf(err, errsize, "'%s': address has bits set beyond /%u", tok, c->bits);
			return -1;
		}
	}
	return 0;
}

int cidr_parse_list(const char *text, struct cidr_list *out, char *err, size_t errsize)
{
	cidr_list_fini(out);
	char *copy = strdup(text), *save = NULL;
	if (!copy) {
		snprintf(err, errsize, "out of memory");
		return -1;
	}
	int rc = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ' || *tok == '\t')
			tok++;
		size_t n = strlen(tok);
		while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
			tok[--n] = '\0';
		if (n == 0)
			continue;
		struct cidr *grown = realloc(out->items, (out->n + 1) * sizeof *grown);
		if (!grown) {
			snprintf(err, errsize, "out of memory");
			rc = -1;
			break;
		}
		out->items = grown;
		if (cidr_parse_one(tok, &out->items[out->n], err, errsize) < 0) {
			rc = -1;
			break;
		}
		out->n++;
	}
	free(copy);
	if (rc < 0)
		cidr_list_fini(out);
	return rc;
}

static bool cidr_match_one(const struct cidr *c, int family, const unsigned char *a)
{
	if (c->family != family)
		return false;
	unsigned full = c->bits / 8, rest = c->bits % 8;
	if (memcmp(c->addr, a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = (unsigned char)(0xffu << (8 - rest));
	return (c->addr[full] & mask) == (a[full] & mask);
}

bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa)
{
	int family;
	const unsigned char *a;
	if (sa->sa_family == AF_INET) {
		family = AF_INET;
		a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		family = IN6_IS_ADDR_V4MAPPED(in6) ? AF_INET : AF_INET6;
		a = family == AF_INET ? &in6->s6_addr[12] : in6->s6_addr;
	} else {
		return false;
	}
	for (size_t i = 0; i < l->n; i++)
		if (cidr_match_one(&l->items[i], family, a))
			return true;
	return false;
}
