/* iplimit: a chained hash table from client address (IPv4 as v4-mapped
 * IPv6) to its live connection count and its connections in the current
 * one-minute window. The bucket is a keyed hash (SipHash-2-4, a random key
 * per table), so a client cannot pick addresses that share a chain. An entry
 * lives while it has connections or a recent window; stale ones are dropped
 * as chains are walked and by a sweep of a few buckets per acquire, and the
 * table shrinks again after a flood of addresses has gone. */
#include "iplimit.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define IPLIMIT_WINDOW_MS 60000u
#define IPLIMIT_MIN_BUCKETS 256u
#define IPLIMIT_SWEEP 2u /* buckets swept per acquire */

struct iplimit_entry {
	struct iplimit_entry *next;
	uint8_t addr[16];
	unsigned live;
	unsigned in_window;
	uint64_t window_start;
};

struct iplimit {
	struct iplimit_entry **buckets;
	unsigned nbuckets; /* a power of two, at least IPLIMIT_MIN_BUCKETS */
	unsigned size;
	unsigned sweep; /* next bucket the sweep looks at */
	uint64_t key[2];
};

static uint64_t iplimit_rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

static uint64_t iplimit_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static void iplimit_sipround(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = iplimit_rotl(v[1], 13);
	v[1] ^= v[0];
	v[0] = iplimit_rotl(v[0], 32);
	v[2] += v[3];
	v[3] = iplimit_rotl(v[3], 16);
	v[3] ^= v[2];
	v[0] += v[3];
	v[3] = iplimit_rotl(v[3], 21);
	v[3] ^= v[0];
	v[2] += v[1];
	v[1] = iplimit_rotl(v[1], 17);
	v[1] ^= v[2];
	v[2] = iplimit_rotl(v[2], 32);
}

/* SipHash-2-4 of LEN bytes at M under KEY (k0, k1: the 16 key bytes read
 * little-endian), as in Aumasson and Bernstein's paper. */
static uint64_t iplimit_siphash(const uint64_t key[2], const uint8_t *m, size_t len)
{
	uint64_t v[4] = {key[0] ^ 0x736f6d6570736575ull, key[1] ^ 0x646f72616e646f6dull,
	                 key[0] ^ 0x6c7967656e657261ull, key[1] ^ 0x7465646279746573ull};
	size_t whole = len - len % 8;
	for (size_t i = 0; i < whole; i += 8) {
		uint64_t w = iplimit_le64(m + i);
		v[3] ^= w;
		iplimit_sipround(v);
		iplimit_sipround(v);
		v[0] ^= w;
	}
	uint64_t last = (uint64_t)(len & 0xff) << 56;
	for (size_t i = 0; i < len % 8; i++)
		last |= (uint64_t)m[whole + i] << (8 * i);
	v[3] ^= last;
	iplimit_sipround(v);
	iplimit_sipround(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	for (int i = 0; i < 4; i++)
		iplimit_sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static void iplimit_new_key(uint64_t key[2])
{
	uint8_t k[16];
	size_t got = 0;
	while (got < sizeof k) {
		ssize_t n = getrandom(k + got, sizeof k - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	key[0] = iplimit_le64(k);
	key[1] = iplimit_le64(k + 8);
	if (got < sizeof k) {
		/* XXX no getrandom (a kernel older than 3.17): a guessable key is
		 * still better than none, and the table stays correct. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		key[0] ^= (uint64_t)ts.tv_nsec << 32 ^ (uint64_t)ts.tv_sec;
		key[1] ^= (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)key;
	}
}

struct iplimit *iplimit_new(void)
{
	struct iplimit *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->nbuckets = IPLIMIT_MIN_BUCKETS;
	t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
	if (!t->buckets) {
		free(t);
		return NULL;
	}
	iplimit_new_key(t->key);
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

static unsigned iplimit_hash(const struct iplimit *t, const uint8_t k[16], unsigned nbuckets)
{
	return (unsigned)iplimit_siphash(t->key, k, 16) & (nbuckets - 1);
}

static bool iplimit_stale(const struct iplimit_entry *e, uint64_t now)
{
	return e->live == 0 && now - e->window_start >= IPLIMIT_WINDOW_MS;
}

/* Finds the entry for K, dropping stale entries met on the way. */
static struct iplimit_entry **iplimit_find(struct iplimit *t, const uint8_t k[16], uint64_t now)
{
	struct iplimit_entry **pp = &t->buckets[iplimit_hash(t, k, t->nbuckets)];
	while (*pp) {
		struct iplimit_entry *e = *pp;
		if (memcmp(e->addr, k, 16) == 0)
			return pp;
		if (iplimit_stale(e, now)) {
			*pp = e->next;
			free(e);
			t->size--;
			continue;
		}
		pp = &e->next;
	}
	return pp;
}

/* Rehashes into N buckets; on failure keeps the current ones (longer or
 * emptier chains, still correct). */
static void iplimit_resize(struct iplimit *t, unsigned n)
{
	struct iplimit_entry **b = calloc(n, sizeof *b);
	if (!b)
		return;
	for (unsigned i = 0; i < t->nbuckets; i++) {
		struct iplimit_entry *e = t->buckets[i];
		while (e) {
			struct iplimit_entry *next = e->next;
			unsigned h = iplimit_hash(t, e->addr, n);
			e->next = b[h];
			b[h] = e;
			e = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
	t->sweep = 0;
}

/* Drops the stale entries of the next few buckets, so that addresses seen
 * once in a flood do not stay for good, and halves the table once it is
 * mostly empty. */
static void iplimit_sweep(struct iplimit *t, uint64_t now)
{
	for (unsigned i = 0; i < IPLIMIT_SWEEP; i++) {
		struct iplimit_entry **pp = &t->buckets[t->sweep];
		while (*pp) {
			struct iplimit_entry *e = *pp;
			if (iplimit_stale(e, now)) {
				*pp = e->next;
				free(e);
				t->size--;
			} else {
				pp = &e->next;
			}
		}
		t->sweep = (t->sweep + 1) & (t->nbuckets - 1);
	}
	if (t->nbuckets > IPLIMIT_MIN_BUCKETS && t->size < t->nbuckets / 4)
		iplimit_resize(t, t->nbuckets / 2);
}

enum iplimit_verdict iplimit_acquire(struct iplimit *t, const struct sockaddr *sa, uint64_t now_ms,
                                     unsigned max_concurrent, unsigned max_per_minute)
{
	uint8_t k[16];
	iplimit_key(sa, k);
	iplimit_sweep(t, now_ms);
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
			iplimit_resize(t, t->nbuckets * 2);
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
	struct iplimit_entry *e = t->buckets[iplimit_hash(t, k, t->nbuckets)];
	while (e && memcmp(e->addr, k, 16) != 0)
		e = e->next;
	if (e && e->live)
		e->live--;
}

unsigned iplimit_size(const struct iplimit *t)
{
	return t->size;
}
