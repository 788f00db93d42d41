/* cidr: lists of IPv4 and IPv6 networks written as configuration text
 * ("192.0.2.0/24, 2001:db8::/32, 198.51.100.7") and whether an address lies
 * in one of them. Pure: no I/O, no globals. */
#ifndef MXFRONT_CIDR_H
#define MXFRONT_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct cidr {
	int family;              /* AF_INET or AF_INET6 */
	unsigned char addr[16];  /* network byte order; 4 bytes used for AF_INET */
	unsigned bits;           /* prefix length */
};

struct cidr_list {
	struct cidr *items; /* owned */
	size_t n;
};

/* Parses TEXT, comma-separated networks (an address alone is a /32 or
 * /128), into OUT (emptied first; an empty TEXT gives an empty list).
 * Returns 0, or -1 with a reason in ERR and OUT empty. An address with bits
 * set beyond its prefix ("192.0.2.1/24") is an error: it is a typo more
 * often than not. */
int cidr_parse_list(const char *text, struct cidr_list *out, char *err, size_t errsize);

void cidr_list_fini(struct cidr_list *l);

/* True when SA (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as
 * IPv4) lies in one of L's networks. */
bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa);

#endif
