/* iplimit: a chained hash table from client address (IPv4 as v4-mapped
 * IPv6) to its live connection count and its connections in the current
 * one-minute window. An entry lives while it has connections or a recent
 * window; stale ones are dropped as the table is walked. */
#include "iplimit.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define IPLIMIT_WINDOW_MS 60000u

struct iplimit_entry {
	struct iplimit_entry *next;
	uint8_t addr[16];
	unsigned live;
	unsigned in_window;
	uint64_t window_start;
};

struct iplimit {
	struct iplimit_entry **buckets;
	unsigned nbuckets; /* a power of two */
	unsigned size;
};

struct iplimit *iplimit_new(void)
{
	struct iplimit *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->nbuckets = 256;
	t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
	if (!t->buckets) {
		free(t);
		return NULL;
	}
	return t;
}

void iplimit_free(struct iplimit *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->nbuckets; i++) {
		struct iplimit_entry *e = t->buckets[i];
		while (e) {
			struct iplimit_entry *next = e->next;
			free(e);
			e = next;
		}
	}
	free(t->buckets);
	free(t);
}

static void iplimit_key(const struct sockaddr *sa, uint8_t out[16])
{
	memset(out, 0, 16);
	if (sa->sa_family == AF_INET) {
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	}
}

static unsigned iplimit_hash(const uint8_t k[16], unsigned nbuckets)
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < 16; i++)
		h = (h ^ k[i]) * 16777619u;
	return h & (nbuckets - 1);
}

/* Finds the entry for K, dropping stale entries met on the way. */
static struct iplimit_entry **iplimit_find(struct iplimit *t, const uint8_t k[16], uint64_t now)
{
	struct iplimit_entry **pp = &t->buckets[iplimit_hash(k, t->nbuckets)];
	while (*pp) {
		struct iplimit_entry *e = *pp;
		if (memcmp(e->addr, k, 16) == 0)
			return pp;
		if (e->live == 0 && now - e->window_start >= IPLIMIT_WINDOW_MS) {
			*pp = e->next;
			free(e);
			t->size--;
			continue;
		}
		pp = &e->next;
	}
	return pp;
}

static void iplimit_grow(struct iplimit *t)
{
	unsigned n = t->nbuckets * 2;
	struct iplimit_entry **b = calloc(n, sizeof *b);
	if (!b)
		return; /* longer chains, still correct */
	for (unsigned i = 0; i < t->nbuckets; i++) {
		struct iplimit_entry *e = t->buckets[i];
		while (e) {
			struct iplimit_entry *next = e->next;
			unsigned h = iplimit_hash(e->addr, n);
			e->next = b[h];
			b[h] = e;
			e = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

enum iplimit_verdict iplimit_acquire(struct iplimit *t, const struct sockaddr *sa, uint64_t now_ms,
                                     unsigned max_concurrent, unsigned max_per_minute)
{
	uint8_t k[16];
	iplimit_key(sa, k);
	struct iplimit_entry **pp = iplimit_find(t, k, now_ms);
	struct iplimit_entry *e = *pp;
	if (!e) {
		e = calloc(1, sizeof *e);
		if (!e)
			return IPLIMIT_TOO_MANY; /* out of memory: refuse, never crash */
		memcpy(e->addr, k, 16);
		e->window_start = now_ms;
		*pp = e;
		if (++t->size > t->nbuckets)
			iplimit_grow(t);
	}
	if (now_ms - e->window_start >= IPLIMIT_WINDOW_MS) {
		e->window_start = now_ms;
		e->in_window = 0;
	}
	if (max_concurrent && e->live >= max_concurrent)
		return IPLIMIT_TOO_MANY;
	if (max_per_minute && e->in_window >= max_per_minute)
		return IPLIMIT_TOO_FAST;
	e->live++;
	e->in_window++;
	return IPLIMIT_OK;
}

void iplimit_release(struct iplimit *t, const struct sockaddr *sa)
{
	uint8_t k[16];
	iplimit_key(sa, k);
	struct iplimit_entry *e = t->buckets[iplimit_hash(k, t->nbuckets)];
	while (e && memcmp(e->addr, k, 16) != 0)
		e = e->next;
	if (e && e->live)
		e->live--;
}

unsigned iplimit_size(const struct iplimit *t)
{
	return t->size;
}
