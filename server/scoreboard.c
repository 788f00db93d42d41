/* scoreboard: owns the per-worker tables of sessions by sending
 * organisation and TLS/SNI outcome. A table is written by one thread only
 * (its worker) with relaxed atomics and read by any; it never allocates
 * after it is made. Knows nothing of sessions: it is told a HELO name and
 * an outcome. */
#include "scoreboard.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "growbuf.h"
#include "publicsuffix.h"

const char *const scoreboard_tls_names[SCOREBOARD_NTLS] = {
	"sni_served", "sni_unknown", "no_sni", "plaintext",
};
const char *const scoreboard_version_names[SCOREBOARD_NVERSIONS] = {
	"TLS1.2", "TLS1.3", "other", "none",
};

struct scoreboard_entry {
	atomic_uint ready; /* set (release) once org is written */
	uint32_t hash;
	char org[SCOREBOARD_ORG_MAX];
	_Atomic uint64_t n[SCOREBOARD_NTLS][SCOREBOARD_NVERSIONS];
};

/* Open addressing over SCOREBOARD_CAPACITY slots, filled to at most 3/4;
 * past that, new organisations go to OTHER. */
struct scoreboard {
	unsigned used;
	struct scoreboard_entry other;
	struct scoreboard_entry slots[SCOREBOARD_CAPACITY];
};

static uint32_t scoreboard_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static void scoreboard_bump(_Atomic uint64_t *p)
{
	atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
	                      memory_order_relaxed);
}

struct scoreboard *scoreboard_new(void)
{
	struct scoreboard *sb = calloc(1, sizeof *sb);
	if (sb) {
		snprintf(sb->other.org, sizeof sb->other.org, "other");
		atomic_store(&sb->other.ready, 1);
	}
	return sb;
}

void scoreboard_free(struct scoreboard *sb)
{
	free(sb);
}

void scoreboard_org(const char *helo, char *out, size_t size)
{
	char name[256];
	size_t n = 0;
	bool digits_only = true;

	for (; helo[n] && n < sizeof name - 1; n++) {
		char c = helo[n];
		name[n] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
		if ((c < '0' || c > '9') && c != '.')
			digits_only = false;
	}
	name[n] = '\0';
	while (n && name[n - 1] == '.')
		name[--n] = '\0';
	if (name[0] == '[' || (n && digits_only)) {
		snprintf(out, size, "[address]");
		return;
	}
	/* Only host names: anything else would be a label no one can read. */
	if (n == 0 || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789.-_") != n ||
	    !strchr(name, '.')) {
		snprintf(out, size, "[none]");
		return;
	}
	const psl_ctx_t *psl = publicsuffix_list();
	const char *reg = psl ? psl_registrable_domain(psl, name) : NULL;
	if (!reg || strlen(reg) >= size) {
		snprintf(out, size, "[none]");
		return;
	}
	snprintf(out, size, "%s", reg);
}

void scoreboard_count(struct scoreboard *sb, const char *helo, enum scoreboard_tls tls,
                      enum scoreboard_version v)
{
	char org[SCOREBOARD_ORG_MAX];
	scoreboard_org(helo, org, sizeof org);
	uint32_t h = scoreboard_hash(org);
	struct scoreboard_entry *e = NULL;
	for (uint32_t i = 0; i < SCOREBOARD_CAPACITY; i++) {
		struct scoreboard_entry *s = &sb->slots[(h + i) % SCOREBOARD_CAPACITY];
		/* Only this thread writes: its own loads need no ordering. */
		if (!atomic_load_explicit(&s->ready, memory_order_relaxed)) {
			if (sb->used >= SCOREBOARD_CAPACITY / 4 * 3)
				break;
			memcpy(s->org, org, sizeof org);
			s->hash = h;
			sb->used++;
			atomic_store_explicit(&s->ready, 1, memory_order_release);
			e = s;
			break;
		}
		if (s->hash == h && strcmp(s->org, org) == 0) {
			e = s;
			break;
		}
	}
	scoreboard_bump(&(e ? e : &sb->other)->n[tls][v]);
}

/* ---- reading ---- */

static int scoreboard_cmp(const void *a, const void *b)
{
	const struct scoreboard_row *x = a, *y = b;
	if (x->total != y->total)
		return x->total < y->total ? 1 : -1;
	return strcmp(x->org, y->org);
}

/* Adds E's counts to the row of its organisation in ROWS (a table of CAP
 * slots, open addressing on the same hash). */
static void scoreboard_add(struct scoreboard_row *rows, bool *used, size_t cap,
                           const struct scoreboard_entry *e, uint32_t h)
{
	size_t i = h % cap;
	while (used[i] && strcmp(rows[i].org, e->org) != 0)
		i = (i + 1) % cap;
	if (!used[i]) {
		used[i] = true;
		memcpy(rows[i].org, e->org, sizeof rows[i].org);
	}
	for (int t = 0; t < SCOREBOARD_NTLS; t++)
		for (int v = 0; v < SCOREBOARD_NVERSIONS; v++) {
			uint64_t n = atomic_load_explicit(&e->n[t][v], memory_order_relaxed);
			rows[i].n[t][v] += n;
			rows[i].total += n;
		}
}

int scoreboard_merge(struct scoreboard *const *sbs, unsigned nsb, unsigned top,
                     struct scoreboard_row **out, size_t *nout)
{
	/* Every worker's organisations, and "other", fit at half load. */
	size_t cap = 2 * ((size_t)nsb * SCOREBOARD_CAPACITY + 1);
	struct scoreboard_row *rows = calloc(cap, sizeof *rows);
	bool *used = calloc(cap, sizeof *used);
	if (!rows || !used) {
		free(rows);
		free(used);
		return -1;
	}
	for (unsigned w = 0; w < nsb; w++) {
		for (size_t i = 0; i < SCOREBOARD_CAPACITY; i++) {
			const struct scoreboard_entry *e = &sbs[w]->slots[i];
			if (atomic_load_explicit(&e->ready, memory_order_acquire))
				scoreboard_add(rows, used, cap, e, e->hash);
		}
	}
	/* Compact, sort, then fold everything past TOP (and the workers'
	 * overflow) into the last row. */
	size_t n = 0;
	for (size_t i = 0; i < cap; i++)
		if (used[i] && rows[i].total)
			rows[n++] = rows[i];
	free(used);
	qsort(rows, n, sizeof *rows, scoreboard_cmp);
	struct scoreboard_row other = { .org = "other" };
	for (size_t i = top; i < n; i++) {
		for (int t = 0; t < SCOREBOARD_NTLS; t++)
			for (int v = 0; v < SCOREBOARD_NVERSIONS; v++)
				other.n[t][v] += rows[i].n[t][v];
		other.total += rows[i].total;
	}
	for (unsigned w = 0; w < nsb; w++)
		for (int t = 0; t < SCOREBOARD_NTLS; t++)
			for (int v = 0; v < SCOREBOARD_NVERSIONS; v++) {
				uint64_t c = atomic_load_explicit(&sbs[w]->other.n[t][v], memory_order_relaxed);
				other.n[t][v] += c;
				other.total += c;
			}
	if (n > top)
		n = top;
	if (other.total)
		rows[n++] = other;
	*out = rows;
	*nout = n;
	return 0;
}

int scoreboard_table(const struct scoreboard_row *rows, size_t nrows, char **out, size_t *len)
{
	struct growbuf b = { 0 };
	char line[512];
	int n = snprintf(line, sizeof line, "%-32s %9s %9s %9s %9s %9s %9s %9s %6s\n", "ORGANISATION",
	                 "SESSIONS", "SNI-OK", "SNI-UNKN", "NO-SNI", "PLAIN", "TLS1.2", "TLS1.3",
	                 "NOSNI%");
	int rc = growbuf_append(&b, line, (size_t)n);
	for (size_t i = 0; rc == 0 && i < nrows; i++) {
		const struct scoreboard_row *r = &rows[i];
		uint64_t t[SCOREBOARD_NTLS] = { 0 }, v[SCOREBOARD_NVERSIONS] = { 0 };
		for (int a = 0; a < SCOREBOARD_NTLS; a++)
			for (int c = 0; c < SCOREBOARD_NVERSIONS; c++) {
				t[a] += r->n[a][c];
				v[c] += r->n[a][c];
			}
		/* The share of TLS sessions that would get the default certificate
		 * whatever name they looked up. */
		uint64_t tls = t[SCOREBOARD_SNI_SERVED] + t[SCOREBOARD_SNI_UNKNOWN] + t[SCOREBOARD_NO_SNI];
		char share[16] = "-";
		if (tls)
			snprintf(share, sizeof share, "%.1f", 100.0 * (double)t[SCOREBOARD_NO_SNI] / (double)tls);
		n = snprintf(line, sizeof line, "%-32s %9llu %9llu %9llu %9llu %9llu %9llu %9llu %6s\n",
		             r->org, (unsigned long long)r->total,
		             (unsigned long long)t[SCOREBOARD_SNI_SERVED],
		             (unsigned long long)t[SCOREBOARD_SNI_UNKNOWN],
		             (unsigned long long)t[SCOREBOARD_NO_SNI],
		             (unsigned long long)t[SCOREBOARD_PLAINTEXT],
		             (unsigned long long)v[SCOREBOARD_TLS12], (unsigned long long)v[SCOREBOARD_TLS13],
		             share);
		rc = growbuf_append(&b, line, (size_t)n);
	}
	/* A C string too, for whoever prints it. */
	if (rc < 0 || growbuf_append(&b, "", 1) < 0) {
		growbuf_free(&b);
		return -1;
	}
	*out = growbuf_take(&b, len);
	--*len;
	return 0;
}
