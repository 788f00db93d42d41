/* Unit tests for iplimit: SipHash-2-4 against the reference vectors, then
 * scripts of acquire/release steps {name, steps, want} (per-address limit,
 * the one-minute rate window, IPv4 / IPv6 / v4-mapped), the table growing
 * and shrinking, and addresses that all land in one chain: chosen against
 * this table's own key (they behave), and chosen to collide under the old
 * unkeyed FNV-1a (they spread). Includes iplimit.c to reach its hash. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "iplimit.c"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- SipHash-2-4 ---- */

/* Key 00 01 .. 0f, message 00 01 .. len-1; want is the output as the
 * reference implementation writes it (little-endian). len 15 is the
 * example of the paper's appendix A (a129ca6149be45e5). */
static const struct {
	const char *name;
	size_t len;
	uint8_t want[8];
} siphash_cases[] = {
	{ "empty", 0, { 0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72 } },
	{ "1 byte", 1, { 0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74 } },
	{ "7 bytes", 7, { 0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab } },
	{ "8 bytes", 8, { 0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93 } },
	{ "15 bytes (the paper's)", 15, { 0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1 } },
	{ "16 bytes (an address)", 16, { 0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f } },
	{ "63 bytes", 63, { 0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95 } },
};

static void test_siphash(void)
{
	uint8_t kb[16], m[64];
	for (unsigned i = 0; i < sizeof kb; i++)
		kb[i] = (uint8_t)i;
	for (unsigned i = 0; i < sizeof m; i++)
		m[i] = (uint8_t)i;
	uint64_t key[2] = { iplimit_le64(kb), iplimit_le64(kb + 8) };
	for (size_t i = 0; i < N_ELEMS(siphash_cases); i++) {
		check_case(siphash_cases[i].name);
		uint64_t want = iplimit_le64(siphash_cases[i].want);
		uint64_t got = iplimit_siphash(key, m, siphash_cases[i].len);
		CHECK(got == want, "got %016llx, want %016llx", (unsigned long long)got,
		      (unsigned long long)want);
	}
	check_case("two tables get two keys");
	struct iplimit *a = iplimit_new(), *b = iplimit_new();
	CHECK(a->key[0] != b->key[0] || a->key[1] != b->key[1], "");
	iplimit_free(a);
	iplimit_free(b);
}

/* ---- scripts ---- */

static struct sockaddr_storage addr_of(const char *text)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(40000);
	} else if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(40001);
	} else {
		fprintf(stderr, "bad address in a test: %s\n", text);
		abort();
	}
	return ss;
}

enum { OK = IPLIMIT_OK, MANY = IPLIMIT_TOO_MANY, FAST = IPLIMIT_TOO_FAST, REL = -1 };

struct step {
	int op;           /* REL: release; otherwise acquire, wanting that verdict */
	const char *addr; /* NULL ends the script */
	uint64_t now;
	unsigned size; /* iplimit_size() after the step */
};

struct script_case {
	const char *name;
	unsigned max_concurrent, max_per_minute;
	struct step steps[16];
};

static const struct script_case script_cases[] = {
	{ "no limits", 0, 0, {
		{ OK, "192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 0, 1 },
		{ OK, "192.0.2.2", 0, 2 } } },
	{ "concurrent limit counts each address apart", 2, 0, {
		{ OK, "192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 1, 1 }, { MANY, "192.0.2.1", 2, 1 },
		{ OK, "192.0.2.2", 3, 2 }, { REL, "192.0.2.1", 4, 2 }, { OK, "192.0.2.1", 5, 2 },
		{ MANY, "192.0.2.1", 6, 2 } } },
	{ "a refusal takes no slot", 1, 0, {
		{ OK, "192.0.2.1", 0, 1 }, { MANY, "192.0.2.1", 0, 1 }, { MANY, "192.0.2.1", 0, 1 },
		{ REL, "192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 0, 1 } } },
	{ "release of an unknown address or one too many is harmless", 1, 0, {
		{ REL, "192.0.2.9", 0, 0 }, { OK, "192.0.2.1", 0, 1 }, { REL, "192.0.2.1", 0, 1 },
		{ REL, "192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 0, 1 }, { MANY, "192.0.2.1", 0, 1 } } },
	{ "rate: the 4th in a minute is refused, the window restarts at 60 s", 0, 3, {
		{ OK, "192.0.2.1", 0, 1 }, { REL, "192.0.2.1", 0, 1 },
		{ OK, "192.0.2.1", 1000, 1 }, { REL, "192.0.2.1", 1000, 1 },
		{ OK, "192.0.2.1", 2000, 1 }, { REL, "192.0.2.1", 2000, 1 },
		{ FAST, "192.0.2.1", 59999, 1 }, { OK, "192.0.2.2", 59999, 2 },
		{ OK, "192.0.2.1", 60000, 2 }, { OK, "192.0.2.1", 60001, 2 },
		{ OK, "192.0.2.1", 60002, 2 }, { FAST, "192.0.2.1", 60003, 2 } } },
	{ "rate: refusals do not count against the window", 0, 1, {
		{ OK, "192.0.2.1", 0, 1 }, { FAST, "192.0.2.1", 10, 1 }, { FAST, "192.0.2.1", 20, 1 },
		{ OK, "192.0.2.1", 60000, 1 } } },
	{ "concurrency is checked before the rate", 1, 1, {
		{ OK, "192.0.2.1", 0, 1 }, { MANY, "192.0.2.1", 1, 1 }, { REL, "192.0.2.1", 2, 1 },
		{ FAST, "192.0.2.1", 3, 1 } } },
	{ "IPv4 and its v4-mapped IPv6 form are one address", 1, 0, {
		{ OK, "192.0.2.1", 0, 1 }, { MANY, "::ffff:192.0.2.1", 0, 1 },
		{ REL, "::ffff:192.0.2.1", 0, 1 }, { OK, "192.0.2.1", 0, 1 } } },
	{ "IPv4-compatible and other IPv6 forms are not the IPv4 address", 1, 0, {
		{ OK, "192.0.2.1", 0, 1 }, { OK, "::192.0.2.1", 0, 2 }, { OK, "::ffff:0:192.0.2.1", 0, 3 },
		{ OK, "64:ff9b::192.0.2.1", 0, 4 } } },
	{ "IPv6 addresses differing in one byte are apart", 1, 0, {
		{ OK, "2001:db8::1", 0, 1 }, { OK, "2001:db8::1:0:0:1", 0, 2 },
		{ OK, "2001:db8:0:0:0:0:0:101", 0, 3 }, { MANY, "2001:db8::1", 0, 3 },
		{ OK, "3001:db8::1", 0, 4 } } },
	{ "an entry a minute old starts a new window", 1, 1, {
		{ OK, "192.0.2.1", 0, 1 }, { REL, "192.0.2.1", 0, 1 }, { FAST, "192.0.2.1", 59999, 1 },
		{ OK, "192.0.2.1", 60000, 1 }, { MANY, "192.0.2.1", 200000, 1 } } },
};

static void run_script(const struct script_case *c)
{
	check_case(c->name);
	struct iplimit *t = iplimit_new();
	for (const struct step *s = c->steps; s->addr; s++) {
		struct sockaddr_storage sa = addr_of(s->addr);
		if (s->op == REL) {
			iplimit_release(t, (struct sockaddr *)&sa);
		} else {
			int got = (int)iplimit_acquire(t, (struct sockaddr *)&sa, s->now,
			                               c->max_concurrent, c->max_per_minute);
			CHECK(got == s->op, "step %d (%s at %llu): verdict %d, want %d",
			      (int)(s - c->steps), s->addr, (unsigned long long)s->now, got, s->op);
		}
		CHECK(iplimit_size(t) == s->size, "step %d (%s): size %u, want %u",
		      (int)(s - c->steps), s->addr, iplimit_size(t), s->size);
	}
	iplimit_free(t);
}

/* ---- the table itself ---- */

static struct sockaddr_in6 v6_numbered(uint32_t n)
{
	struct sockaddr_in6 sa;
	memset(&sa, 0, sizeof sa);
	sa.sin6_family = AF_INET6;
	sa.sin6_addr.s6_addr[0] = 0x20;
	sa.sin6_addr.s6_addr[1] = 0x01;
	sa.sin6_addr.s6_addr[2] = 0x0d;
	sa.sin6_addr.s6_addr[3] = 0xb8;
	for (int i = 0; i < 4; i++)
		sa.sin6_addr.s6_addr[12 + i] = (uint8_t)(n >> (24 - 8 * i));
	return sa;
}

static unsigned longest_chain(const struct iplimit *t)
{
	unsigned longest = 0;
	for (unsigned i = 0; i < t->nbuckets; i++) {
		unsigned n = 0;
		for (const struct iplimit_entry *e = t->buckets[i]; e; e = e->next)
			n++;
		if (n > longest)
			longest = n;
	}
	return longest;
}

static unsigned sum_live(const struct iplimit *t)
{
	unsigned live = 0;
	for (unsigned i = 0; i < t->nbuckets; i++)
		for (const struct iplimit_entry *e = t->buckets[i]; e; e = e->next)
			live += e->live;
	return live;
}

static void test_grow_and_shrink(void)
{
	check_case("grows past one entry per bucket, shrinks once the flood is stale");
	enum { N = 5000 };
	struct iplimit *t = iplimit_new();
	CHECK_INT_EQ(t->nbuckets, IPLIMIT_MIN_BUCKETS);
	unsigned refused = 0;
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in6 sa = v6_numbered(i);
		refused += iplimit_acquire(t, (struct sockaddr *)&sa, 0, 1, 0) != IPLIMIT_OK;
		CHECK_SILENT(t->size <= t->nbuckets, "after %u: size %u, buckets %u", i, t->size,
		             t->nbuckets);
	}
	CHECK_INT_EQ(refused, 0);
	CHECK_INT_EQ(iplimit_size(t), N);
	CHECK_INT_EQ(t->nbuckets, 8192);
	CHECK(longest_chain(t) <= 12, "longest chain %u for %u addresses", longest_chain(t), N);
	/* each one again: all still counted, each at its limit */
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in6 sa = v6_numbered(i);
		refused += iplimit_acquire(t, (struct sockaddr *)&sa, 1, 1, 0) == IPLIMIT_TOO_MANY;
	}
	CHECK_INT_EQ(refused, N);
	/* live entries are never dropped, however old */
	struct sockaddr_in6 other = v6_numbered(N);
	for (unsigned i = 0; i < 2 * 8192; i++)
		iplimit_acquire(t, (struct sockaddr *)&other, 120000 + i, 0, 0);
	CHECK_INT_EQ(iplimit_size(t), N + 1);
	CHECK_INT_EQ(sum_live(t), N + 2 * 8192);
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in6 sa = v6_numbered(i);
		iplimit_release(t, (struct sockaddr *)&sa);
	}
	CHECK_INT_EQ(sum_live(t), 2 * 8192);
	/* released and a minute old: the sweep drops them, the table halves as
	 * it empties, down to its first size */
	unsigned steps = 0;
	while (t->size > 1 && steps < 100000) {
		iplimit_acquire(t, (struct sockaddr *)&other, 200000, 0, 0);
		steps++;
	}
	CHECK_INT_EQ(iplimit_size(t), 1);
	CHECK(steps <= 8192, "emptied after %u acquires", steps);
	while (t->nbuckets > IPLIMIT_MIN_BUCKETS && steps < 100000) {
		iplimit_acquire(t, (struct sockaddr *)&other, 200000, 0, 0);
		steps++;
	}
	CHECK_INT_EQ(t->nbuckets, IPLIMIT_MIN_BUCKETS);
	/* and the one left is still counted */
	for (unsigned i = 0; i < 2 * 8192 + steps; i++)
		iplimit_release(t, (struct sockaddr *)&other);
	CHECK_INT_EQ(sum_live(t), 0);
	iplimit_free(t);
}

/* Addresses the table's own key sends to bucket 0 of every size up to 4096:
 * what an attacker would need the key for. They must still be counted
 * right, each apart, in their one long chain. */
static void test_one_long_chain(void)
{
	check_case("addresses sharing one chain are each counted apart");
	enum { N = 150 };
	struct iplimit *t = iplimit_new();
	struct sockaddr_in6 *same = calloc(N + 1, sizeof *same);
	unsigned found = 0;
	for (uint32_t i = 0; found < N + 1; i++) {
		struct sockaddr_in6 sa = v6_numbered(i);
		uint8_t k[16];
		iplimit_key((struct sockaddr *)&sa, k);
		if (iplimit_hash(t, k, 4096) == 0)
			same[found++] = sa;
	}
	unsigned wrong = 0;
	for (unsigned i = 0; i < N; i++)
		wrong += iplimit_acquire(t, (struct sockaddr *)&same[i], 0, 2, 0) != IPLIMIT_OK;
	CHECK_INT_EQ(wrong, 0);
	CHECK_INT_EQ(longest_chain(t), N);
	/* a second connection each: admitted; a third: refused */
	for (unsigned i = 0; i < N; i++)
		wrong += iplimit_acquire(t, (struct sockaddr *)&same[i], 1, 2, 0) != IPLIMIT_OK;
	for (unsigned i = 0; i < N; i++)
		wrong += iplimit_acquire(t, (struct sockaddr *)&same[i], 2, 2, 0) != IPLIMIT_TOO_MANY;
	CHECK_INT_EQ(wrong, 0);
	/* every other one leaves; those get their slots back, no other does */
	for (unsigned i = 0; i < N; i += 2) {
		iplimit_release(t, (struct sockaddr *)&same[i]);
		iplimit_release(t, (struct sockaddr *)&same[i]);
	}
	CHECK_INT_EQ(sum_live(t), N);
	for (unsigned i = 0; i < N; i++) {
		enum iplimit_verdict want = i % 2 ? IPLIMIT_TOO_MANY : IPLIMIT_OK;
		wrong += iplimit_acquire(t, (struct sockaddr *)&same[i], 3, 2, 0) != want;
	}
	CHECK_INT_EQ(wrong, 0);
	/* a minute on, the released half is stale: a new address of the same
	 * chain walks all of it, dropping them; the others stay */
	for (unsigned i = 0; i < N; i += 2)
		iplimit_release(t, (struct sockaddr *)&same[i]);
	CHECK(iplimit_acquire(t, (struct sockaddr *)&same[N], 70000, 2, 0) == IPLIMIT_OK, "");
	CHECK_INT_EQ(iplimit_size(t), N / 2 + 1);
	CHECK_INT_EQ(longest_chain(t), N / 2 + 1);
	CHECK_INT_EQ(sum_live(t), N + 1);
	free(same);
	iplimit_free(t);
}

/* The hash iplimit used before: unkeyed, so anyone could compute it. */
static unsigned fnv1a_bucket(const uint8_t k[16], unsigned nbuckets)
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < 16; i++)
		h = (h ^ k[i]) * 16777619u;
	return h & (nbuckets - 1);
}

static void test_chosen_collisions_spread(void)
{
	check_case("addresses chosen to collide under an unkeyed hash spread out");
	enum { N = 1000 };
	struct iplimit *t = iplimit_new();
	unsigned found = 0;
	for (uint32_t i = 0; found < N; i++) {
		struct sockaddr_in6 sa = v6_numbered(i);
		uint8_t k[16];
		iplimit_key((struct sockaddr *)&sa, k);
		if (fnv1a_bucket(k, 1024) != 0)
			continue;
		found++;
		iplimit_acquire(t, (struct sockaddr *)&sa, 0, 1, 0);
	}
	CHECK_INT_EQ(iplimit_size(t), N);
	/* all in one chain before; 1000 in 1024 buckets: a handful at most */
	CHECK_INT_EQ(t->nbuckets, 1024);
	CHECK(longest_chain(t) <= 12, "longest chain %u", longest_chain(t));
	iplimit_free(t);
}

int main(void)
{
	test_siphash();
	for (size_t i = 0; i < N_ELEMS(script_cases); i++)
		run_script(&script_cases[i]);
	test_grow_and_shrink();
	test_one_long_chain();
	test_chosen_collisions_spread();
	return check_summary();
}
