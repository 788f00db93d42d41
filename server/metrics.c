/* metrics: owns one counter block per worker (with its scoreboard and its
 * pages of per-name SNI counters), the registry that gives each certificate
 * name and listening address a stable slot, and the main thread's facts
 * (reloads, live certificates, health state). Renders the Prometheus text
 * format. A block is written only by its worker's thread, without locks or
 * allocation; readers sum blocks with relaxed loads (a scrape may see one
 * session's counters half updated: never a torn number). */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "certstore.h"
#include "growbuf.h"
#include "scoreboard.h"

#define METRICS_MAX_LISTENERS 32 /* the last slot is "other" */
#define METRICS_PAGE 4096        /* per-name counters per page */
#define METRICS_MAX_PAGES 512    /* 2 million names */
#define METRICS_NBUCKETS 14

enum { METRICS_TLS_OK, METRICS_TLS_FAILED, METRICS_NRESULTS };
enum { METRICS_V12, METRICS_V13, METRICS_VOTHER, METRICS_NVERSIONS };
enum { METRICS_SNI_SERVED, METRICS_SNI_UNKNOWN, METRICS_SNI_NONE, METRICS_NSNI };
enum {
	METRICS_M_EXACT,
	METRICS_M_WILDCARD,
	METRICS_M_LISTENER_DEFAULT,
	METRICS_M_DEFAULT,
	METRICS_M_REFUSED,
	METRICS_M_NONE,
	METRICS_NMATCH
};

static const char *const metrics_result_names[] = { "ok", "failed" };
static const char *const metrics_version_names[] = { "TLS1.2", "TLS1.3", "other" };
static const char *const metrics_sni_names[] = { "served", "unknown", "none" };
static const char *const metrics_match_names[] = {
	"exact", "wildcard", "listener_default", "default", "refused", "none",
};
static const char *const metrics_stage_names[] = { "connect", "command", "end_of_data" };
/* Upper bounds in microseconds. */
static const uint64_t metrics_buckets_us[METRICS_NBUCKETS] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 30000000,
};

typedef _Atomic uint64_t metrics_u64;

struct metrics_block {
	metrics_u64 c[METRICS_NCOUNTERS];
	metrics_u64 conn[METRICS_MAX_LISTENERS][2];
	metrics_u64 tls[METRICS_NRESULTS][METRICS_NVERSIONS][METRICS_NSNI][METRICS_NMATCH];
	metrics_u64 lat[METRICS_NSTAGES][METRICS_NBUCKETS + 1];
	metrics_u64 lat_sum_us[METRICS_NSTAGES];
	_Atomic(metrics_u64 *) pages[METRICS_MAX_PAGES];
	struct scoreboard *sb;
};

static struct metrics_block *metrics_blocks;
static unsigned metrics_nblocks;
static _Thread_local struct metrics_block *metrics_self;

/* ---- registries (names: main thread only; listeners: under the lock) ---- */

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static char *metrics_listeners[METRICS_MAX_LISTENERS]; /* under metrics_lock */

struct metrics_names {
	char **keys;     /* open addressing; NULL empty */
	uint32_t *slots;
	size_t mask;
	size_t n;        /* names registered: slots 1..n */
	size_t pages;    /* pages allocated in every block */
};
static struct metrics_names metrics_names;

/* ---- the main thread's facts ---- */

static struct {
	struct certstore *cs; /* under metrics_lock */
	atomic_bool tls_expected, tls_usable;
	metrics_u64 reloads_ok, reloads_failed;
	_Atomic int64_t last_reload_ok, started;
	atomic_uint listeners;
	atomic_bool stopping;
	atomic_uint senders_top;
} metrics_main = { .senders_top = 20 };

static void metrics_bump(metrics_u64 *p, uint64_t n)
{
	atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
	                      memory_order_relaxed);
}

static uint64_t metrics_get(metrics_u64 *p)
{
	return atomic_load_explicit(p, memory_order_relaxed);
}

/* ---- lifecycle ---- */

void metrics_init(unsigned nworkers)
{
	if (metrics_blocks)
		return;
	metrics_blocks = calloc(nworkers, sizeof *metrics_blocks);
	if (!metrics_blocks)
		return;
	metrics_nblocks = nworkers;
	for (unsigned i = 0; i < nworkers; i++)
		metrics_blocks[i].sb = scoreboard_new();
}

void metrics_fini(void)
{
	for (unsigned i = 0; i < metrics_nblocks; i++) {
		scoreboard_free(metrics_blocks[i].sb);
		for (size_t p = 0; p < METRICS_MAX_PAGES; p++)
			free(atomic_load(&metrics_blocks[i].pages[p]));
	}
	free(metrics_blocks);
	metrics_blocks = NULL;
	metrics_nblocks = 0;
	for (size_t i = 0; metrics_names.keys && i <= metrics_names.mask; i++)
		free(metrics_names.keys[i]);
	free(metrics_names.keys);
	free(metrics_names.slots);
	memset(&metrics_names, 0, sizeof metrics_names);
	for (size_t i = 0; i < METRICS_MAX_LISTENERS; i++) {
		free(metrics_listeners[i]);
		metrics_listeners[i] = NULL;
	}
	certstore_unref(metrics_main.cs);
	metrics_main.cs = NULL;
}

void metrics_worker_enter(unsigned index)
{
	metrics_self = index < metrics_nblocks ? &metrics_blocks[index] : NULL;
}

/* ---- counting ---- */

void metrics_add(enum metrics_counter c, uint64_t n)
{
	if (metrics_self)
		metrics_bump(&metrics_self->c[c], n);
}

void metrics_inc(enum metrics_counter c)
{
	metrics_add(c, 1);
}

void metrics_gauge(enum metrics_counter c, int64_t delta)
{
	metrics_add(c, (uint64_t)delta);
}

void metrics_gauge_set(enum metrics_counter c, int64_t value)
{
	if (metrics_self)
		atomic_store_explicit(&metrics_self->c[c], (uint64_t)value, memory_order_relaxed);
}

unsigned metrics_listener_slot(const char *text)
{
	unsigned i;
	pthread_mutex_lock(&metrics_lock);
	for (i = 0; i < METRICS_MAX_LISTENERS - 1; i++) {
		if (!metrics_listeners[i]) {
			metrics_listeners[i] = strdup(text);
			break;
		}
		if (strcmp(metrics_listeners[i], text) == 0)
			break;
	}
	if (i < METRICS_MAX_LISTENERS - 1 && !metrics_listeners[i])
		i = METRICS_MAX_LISTENERS - 1; /* out of memory: other */
	pthread_mutex_unlock(&metrics_lock);
	return i;
}

void metrics_connection(unsigned slot, bool admitted)
{
	if (metrics_self && slot < METRICS_MAX_LISTENERS)
		metrics_bump(&metrics_self->conn[slot][admitted ? 0 : 1], 1);
}

static unsigned metrics_version_index(const char *v)
{
	if (strcmp(v, "TLS1.3") == 0)
		return METRICS_V13;
	if (strcmp(v, "TLS1.2") == 0)
		return METRICS_V12;
	return METRICS_VOTHER;
}

static unsigned metrics_match_index(const char *m)
{
	for (unsigned i = 0; i < METRICS_M_NONE; i++) {
		/* tls.c writes "listener-default"; the label value uses '_'. */
		const char *want = metrics_match_names[i];
		size_t k = 0;
		while (m[k] && want[k] && (m[k] == want[k] || (m[k] == '-' && want[k] == '_')))
			k++;
		if (!m[k] && !want[k])
			return i;
	}
	return METRICS_M_NONE;
}

void metrics_tls(const char *version, const char *match, const char *sni,
                 const struct certstore_entry *entry, const char *helo, bool ok)
{
	struct metrics_block *b = metrics_self;
	if (!b)
		return;
	unsigned v = metrics_version_index(version), m = metrics_match_index(match);
	unsigned s = strcmp(sni, "none") == 0 ? METRICS_SNI_NONE
	             : m == METRICS_M_EXACT || m == METRICS_M_WILDCARD ? METRICS_SNI_SERVED
	                                                                : METRICS_SNI_UNKNOWN;
	metrics_bump(&b->tls[ok ? METRICS_TLS_OK : METRICS_TLS_FAILED][v][s][m], 1);
	if (!ok)
		return;
	if (s != METRICS_SNI_NONE) {
		uint32_t slot = s == METRICS_SNI_SERVED && entry ? entry->metrics_slot : METRICS_OTHER;
		metrics_u64 *page = atomic_load_explicit(&b->pages[slot / METRICS_PAGE],
		                                         memory_order_acquire);
		if (page)
			metrics_bump(&page[slot % METRICS_PAGE], 1);
	}
	if (b->sb && helo[0]) {
		static const enum scoreboard_tls tls[] = { SCOREBOARD_SNI_SERVED, SCOREBOARD_SNI_UNKNOWN,
			                                   SCOREBOARD_NO_SNI };
		static const enum scoreboard_version ver[] = { SCOREBOARD_TLS12, SCOREBOARD_TLS13,
			                                       SCOREBOARD_TLS_OTHER };
		scoreboard_count(b->sb, helo, tls[s], ver[v]);
	}
}

void metrics_plaintext(const char *helo)
{
	if (metrics_self && metrics_self->sb && helo[0])
		scoreboard_count(metrics_self->sb, helo, SCOREBOARD_PLAINTEXT, SCOREBOARD_NONE);
}

void metrics_close_reason(const char *reason)
{
	static const struct {
		const char *reason;
		enum metrics_counter c;
	} kinds[] = {
		{ "error_limit", METRICS_LIMIT_ERRORS },
		{ "junk_limit", METRICS_LIMIT_JUNK },
		{ "timeout", METRICS_LIMIT_TIMEOUT },
		{ "idle_timeout", METRICS_LIMIT_IDLE },
		{ "early_talker", METRICS_LIMIT_EARLY_TALKER },
		{ "tls handshake timeout", METRICS_LIMIT_HANDSHAKE_TIMEOUT },
	};
	for (size_t i = 0; reason && i < sizeof kinds / sizeof kinds[0]; i++)
		if (strcmp(reason, kinds[i].reason) == 0)
			metrics_inc(kinds[i].c);
}

void metrics_message(int code, unsigned delivered, unsigned nrcpt, uint64_t size)
{
	if (!metrics_self)
		return;
	if (delivered && delivered < nrcpt)
		metrics_inc(METRICS_MSG_PARTIAL);
	else if (code / 100 == 2)
		metrics_inc(METRICS_MSG_DELIVERED);
	else if (code / 100 == 4)
		metrics_inc(METRICS_MSG_TEMPFAIL);
	else
		metrics_inc(METRICS_MSG_PERMFAIL);
	metrics_add(METRICS_MSG_BYTES, size);
	if (code / 100 == 2)
		metrics_add(METRICS_MSG_BYTES_DELIVERED, size);
}

void metrics_latency(enum metrics_stage stage, uint64_t ns)
{
	struct metrics_block *b = metrics_self;
	if (!b)
		return;
	uint64_t us = ns / 1000;
	unsigned i = 0;
	while (i < METRICS_NBUCKETS && us > metrics_buckets_us[i])
		i++;
	metrics_bump(&b->lat[stage][i], 1);
	metrics_bump(&b->lat_sum_us[stage], us);
}

/* ---- the name registry ---- */

static uint32_t metrics_hash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int metrics_names_grow(void)
{
	struct metrics_names *r = &metrics_names;
	size_t cap = r->keys ? (r->mask + 1) * 2 : 1024;
	char **keys = calloc(cap, sizeof *keys);
	uint32_t *slots = calloc(cap, sizeof *slots);
	if (!keys || !slots) {
		free(keys);
		free(slots);
		return -1;
	}
	for (size_t i = 0; r->keys && i <= r->mask; i++) {
		if (!r->keys[i])
			continue;
		size_t j = metrics_hash(r->keys[i]) & (cap - 1);
		while (keys[j])
			j = (j + 1) & (cap - 1);
		keys[j] = r->keys[i];
		slots[j] = r->slots[i];
	}
	free(r->keys);
	free(r->slots);
	r->keys = keys;
	r->slots = slots;
	r->mask = cap - 1;
	return 0;
}

/* Every block gets the page that holds SLOT before any worker can see it:
 * the generation carrying the slot reaches the workers later, through
 * their mailbox's lock. */
static bool metrics_names_page(uint32_t slot)
{
	size_t need = slot / METRICS_PAGE + 1;
	if (need > METRICS_MAX_PAGES)
		return false;
	while (metrics_names.pages < need) {
		for (unsigned w = 0; w < metrics_nblocks; w++) {
			metrics_u64 *page = calloc(METRICS_PAGE, sizeof *page);
			if (!page)
				return false;
			atomic_store_explicit(&metrics_blocks[w].pages[metrics_names.pages], page,
			                      memory_order_release);
		}
		metrics_names.pages++;
	}
	return true;
}

static uint32_t metrics_name_slot(const char *name)
{
	struct metrics_names *r = &metrics_names;
	if ((!r->keys || (r->n + 1) * 2 > r->mask + 1) && metrics_names_grow() < 0)
		return METRICS_OTHER;
	size_t j = metrics_hash(name) & r->mask;
	while (r->keys[j]) {
		if (strcmp(r->keys[j], name) == 0)
			return r->slots[j];
		j = (j + 1) & r->mask;
	}
	uint32_t slot = (uint32_t)r->n + 1;
	if (!metrics_names_page(slot) || !(r->keys[j] = strdup(name)))
		return METRICS_OTHER;
	r->slots[j] = slot;
	r->n++;
	return slot;
}

void metrics_register_names(struct certstore *cs)
{
	if (!metrics_blocks || !cs)
		return;
	/* Slot 0 ("other") needs its page too. */
	metrics_names_page(METRICS_OTHER);
	for (size_t i = 0; i < certstore_nnames(cs); i++) {
		struct certstore_entry *e = certstore_entry_at(cs, i);
		uint32_t slot = metrics_name_slot(e->name);
		if (e->metrics_slot != slot)
			e->metrics_slot = slot;
	}
}

/* ---- the main thread's facts ---- */

void metrics_set_certs(struct certstore *cs, bool tls_expected, bool tls_usable)
{
	struct certstore *old;
	certstore_ref(cs);
	pthread_mutex_lock(&metrics_lock);
	old = metrics_main.cs;
	metrics_main.cs = cs;
	pthread_mutex_unlock(&metrics_lock);
	certstore_unref(old);
	atomic_store(&metrics_main.tls_expected, tls_expected);
	atomic_store(&metrics_main.tls_usable, tls_usable);
}

void metrics_reload(bool ok, int64_t now)
{
	metrics_bump(ok ? &metrics_main.reloads_ok : &metrics_main.reloads_failed, 1);
	if (ok)
		atomic_store(&metrics_main.last_reload_ok, now);
}

void metrics_set_listeners(unsigned n)
{
	atomic_store(&metrics_main.listeners, n);
}

void metrics_set_started(int64_t now)
{
	atomic_store(&metrics_main.started, now);
	/* The start is the first good load. */
	atomic_store(&metrics_main.last_reload_ok, now);
}

void metrics_set_stopping(void)
{
	atomic_store(&metrics_main.stopping, true);
}

void metrics_set_senders_top(unsigned n)
{
	atomic_store(&metrics_main.senders_top, n);
}

/* ---- reading ---- */

static int64_t metrics_sum(enum metrics_counter c)
{
	uint64_t n = 0;
	for (unsigned w = 0; w < metrics_nblocks; w++)
		n += metrics_get(&metrics_blocks[w].c[c]);
	return (int64_t)n;
}

static void metrics_reason(char *out, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void metrics_reason(char *out, size_t size, const char *fmt, ...)
{
	size_t n = strlen(out);
	if (n && n + 2 < size) {
		memcpy(out + n, "; ", 3);
		n += 2;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out + n, size - n, fmt, ap);
	va_end(ap);
}

bool metrics_healthy(char *reason, size_t size)
{
	reason[0] = '\0';
	if (atomic_load(&metrics_main.stopping))
		metrics_reason(reason, size, "shutting down");
	if (!atomic_load(&metrics_main.started) || atomic_load(&metrics_main.listeners) == 0)
		metrics_reason(reason, size, "not listening");
	if (atomic_load(&metrics_main.tls_expected) && !atomic_load(&metrics_main.tls_usable))
		metrics_reason(reason, size, "no certificate loaded: STARTTLS is off");
	unsigned down = 0, unknown = 0;
	for (unsigned w = 0; w < metrics_nblocks; w++) {
		uint64_t s = metrics_get(&metrics_blocks[w].c[METRICS_BACKEND_STATE]);
		down += s == METRICS_BACKEND_DOWN;
		unknown += s == METRICS_BACKEND_UNKNOWN;
	}
	if (down)
		metrics_reason(reason, size, "backend down (%u of %u workers): MAIL gets 4xx", down,
		               metrics_nblocks);
	else if (unknown)
		metrics_reason(reason, size, "backend not reached yet (%u of %u workers)", unknown,
		               metrics_nblocks);
	if (reason[0])
		return false;
	snprintf(reason, size, "ok");
	return true;
}

struct metrics_out {
	struct growbuf b;
	int err;
};

static void metrics_printf(struct metrics_out *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void metrics_printf(struct metrics_out *o, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = (int)sizeof line - 1;
	if (!o->err && growbuf_append(&o->b, line, (size_t)n) < 0)
		o->err = -1;
}

/* A label value as the text format wants it: \, " and newline escaped. */
static const char *metrics_escape(const char *s, char *out, size_t size)
{
	size_t o = 0;
	for (; *s && o + 3 < size; s++) {
		if (*s == '\\' || *s == '"') {
			out[o++] = '\\';
			out[o++] = *s;
		} else if (*s == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else {
			out[o++] = *s;
		}
	}
	out[o] = '\0';
	return out;
}

static void metrics_family(struct metrics_out *o, const char *name, const char *type,
                           const char *help)
{
	metrics_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metrics_scalar(struct metrics_out *o, const char *name, const char *type,
                           const char *help, int64_t v)
{
	metrics_family(o, name, type, help);
	metrics_printf(o, "%s %lld\n", name, (long long)v);
}

/* A counter family with one label: one series per counter of SERIES. */
struct metrics_series {
	enum metrics_counter c;
	const char *value;
};

static void metrics_labelled(struct metrics_out *o, const char *name, const char *label,
                             const char *help, const struct metrics_series *series, size_t n)
{
	metrics_family(o, name, "counter", help);
	for (size_t i = 0; i < n; i++)
		metrics_printf(o, "%s{%s=\"%s\"} %lld\n", name, label, series[i].value,
		               (long long)metrics_sum(series[i].c));
}

static void metrics_render_counters(struct metrics_out *o)
{
	char esc[300];
	metrics_family(o, "mxfront_connections_total", "counter",
	               "Connections accepted, by listening address and outcome (refused: 421 at once).");
	pthread_mutex_lock(&metrics_lock);
	for (unsigned l = 0; l < METRICS_MAX_LISTENERS; l++) {
		const char *name = l == METRICS_MAX_LISTENERS - 1 ? "other" : metrics_listeners[l];
		if (!name)
			continue;
		uint64_t n[2] = { 0, 0 };
		for (unsigned w = 0; w < metrics_nblocks; w++)
			for (int k = 0; k < 2; k++)
				n[k] += metrics_get(&metrics_blocks[w].conn[l][k]);
		if (l == METRICS_MAX_LISTENERS - 1 && !n[0] && !n[1])
			continue;
		metrics_escape(name, esc, sizeof esc);
		metrics_printf(o, "mxfront_connections_total{listener=\"%s\",outcome=\"accepted\"} %llu\n"
		               "mxfront_connections_total{listener=\"%s\",outcome=\"refused\"} %llu\n",
		               esc, (unsigned long long)n[0], esc, (unsigned long long)n[1]);
	}
	pthread_mutex_unlock(&metrics_lock);
	metrics_scalar(o, "mxfront_sessions", "gauge", "Client sessions open now.",
	               metrics_sum(METRICS_SESSIONS));

	metrics_family(o, "mxfront_tls_handshakes_total", "counter",
	               "TLS handshakes by result, protocol version, SNI (served: a certificate here "
	               "serves the name; unknown; none) and how the certificate was chosen.");
	for (unsigned r = 0; r < METRICS_NRESULTS; r++)
		for (unsigned v = 0; v < METRICS_NVERSIONS; v++)
			for (unsigned s = 0; s < METRICS_NSNI; s++)
				for (unsigned m = 0; m < METRICS_NMATCH; m++) {
					uint64_t n = 0;
					for (unsigned w = 0; w < metrics_nblocks; w++)
						n += metrics_get(&metrics_blocks[w].tls[r][v][s][m]);
					if (n)
						metrics_printf(o, "mxfront_tls_handshakes_total{result=\"%s\","
						               "version=\"%s\",sni=\"%s\",match=\"%s\"} %llu\n",
						               metrics_result_names[r], metrics_version_names[v],
						               metrics_sni_names[s], metrics_match_names[m],
						               (unsigned long long)n);
				}

	static const struct metrics_series msgs[] = {
		{ METRICS_MSG_DELIVERED, "delivered" }, { METRICS_MSG_TEMPFAIL, "temporary_failure" },
		{ METRICS_MSG_PERMFAIL, "permanent_failure" }, { METRICS_MSG_PARTIAL, "partial" },
	};
	static const struct metrics_series rcpts[] = {
		{ METRICS_RCPT_ACCEPTED, "accepted" }, { METRICS_RCPT_REFUSED, "refused" },
	};
	static const struct metrics_series bytes[] = {
		{ METRICS_MSG_BYTES, "all" }, { METRICS_MSG_BYTES_DELIVERED, "delivered" },
	};
	metrics_labelled(o, "mxfront_messages_total", "result",
	                 "Messages (transactions that reached the end of DATA) by the client's verdict.",
	                 msgs, sizeof msgs / sizeof msgs[0]);
	metrics_labelled(o, "mxfront_recipients_total", "result",
	                 "RCPT commands answered by the backend, by its verdict.", rcpts,
	                 sizeof rcpts / sizeof rcpts[0]);
	metrics_labelled(o, "mxfront_message_bytes_total", "result",
	                 "Message bytes received (as RFC 1870 counts them), of every message and of "
	                 "the delivered ones.", bytes, sizeof bytes / sizeof bytes[0]);

	metrics_scalar(o, "mxfront_backend_connections", "gauge",
	               "Backend (LMTP) connections open, over all workers.",
	               metrics_sum(METRICS_POOL_SIZE));
	metrics_scalar(o, "mxfront_backend_connections_busy", "gauge",
	               "Backend connections lent to a transaction.", metrics_sum(METRICS_POOL_BUSY));
	metrics_scalar(o, "mxfront_backend_waiting", "gauge",
	               "Sessions waiting for a backend connection.", metrics_sum(METRICS_POOL_WAITING));
	metrics_scalar(o, "mxfront_backend_connect_errors_total", "counter",
	               "Backend connections that could not be set up (connect, greeting, LHLO).",
	               metrics_sum(METRICS_POOL_CONNECT_ERRORS));
	unsigned up = 0;
	for (unsigned w = 0; w < metrics_nblocks; w++)
		up += metrics_get(&metrics_blocks[w].c[METRICS_BACKEND_STATE]) == METRICS_BACKEND_UP;
	metrics_scalar(o, "mxfront_backend_up", "gauge",
	               "1 when every worker's pool has reached the backend and none finds it down.",
	               metrics_nblocks && up == metrics_nblocks);

	metrics_family(o, "mxfront_backend_latency_seconds", "histogram",
	               "Backend waits: a new connection's setup, the reply to MAIL/RCPT, the final "
	               "dot to the last recipient's reply.");
	for (unsigned s = 0; s < METRICS_NSTAGES; s++) {
		uint64_t cum = 0, sum = 0;
		for (unsigned i = 0; i <= METRICS_NBUCKETS; i++) {
			for (unsigned w = 0; w < metrics_nblocks; w++)
				cum += metrics_get(&metrics_blocks[w].lat[s][i]);
			if (i < METRICS_NBUCKETS)
				metrics_printf(o, "mxfront_backend_latency_seconds_bucket{stage=\"%s\",le=\"%g\"} "
				               "%llu\n", metrics_stage_names[s],
				               (double)metrics_buckets_us[i] / 1e6, (unsigned long long)cum);
		}
		for (unsigned w = 0; w < metrics_nblocks; w++)
			sum += metrics_get(&metrics_blocks[w].lat_sum_us[s]);
		metrics_printf(o, "mxfront_backend_latency_seconds_bucket{stage=\"%s\",le=\"+Inf\"} %llu\n"
		               "mxfront_backend_latency_seconds_sum{stage=\"%s\"} %.6f\n"
		               "mxfront_backend_latency_seconds_count{stage=\"%s\"} %llu\n",
		               metrics_stage_names[s], (unsigned long long)cum, metrics_stage_names[s],
		               (double)sum / 1e6, metrics_stage_names[s], (unsigned long long)cum);
	}

	static const struct metrics_series limits[] = {
		{ METRICS_LIMIT_MAX_CLIENTS, "max_clients" },
		{ METRICS_LIMIT_MAX_CLIENTS_PER_IP, "max_clients_per_ip" },
		{ METRICS_LIMIT_MAX_CONNECTION_RATE, "max_connection_rate" },
		{ METRICS_LIMIT_FD, "fd" },
		{ METRICS_LIMIT_BACKEND_QUEUE, "backend_queue" },
		{ METRICS_LIMIT_ERRORS, "max_errors" },
		{ METRICS_LIMIT_JUNK, "max_junk_commands" },
		{ METRICS_LIMIT_TIMEOUT, "timeout" },
		{ METRICS_LIMIT_IDLE, "idle_timeout" },
		{ METRICS_LIMIT_HANDSHAKE_TIMEOUT, "handshake_timeout" },
		{ METRICS_LIMIT_EARLY_TALKER, "early_talker" },
	};
	metrics_labelled(o, "mxfront_limits_total", "kind",
	                 "Limits hit, by kind (the event=limit, error_limit, junk_limit, timeout and "
	                 "early_talker log lines).", limits, sizeof limits / sizeof limits[0]);

	metrics_family(o, "mxfront_reloads_total", "counter", "Reloads (SIGHUP, mxfront reload) by result.");
	metrics_printf(o, "mxfront_reloads_total{result=\"ok\"} %llu\n"
	               "mxfront_reloads_total{result=\"failed\"} %llu\n",
	               (unsigned long long)metrics_get(&metrics_main.reloads_ok),
	               (unsigned long long)metrics_get(&metrics_main.reloads_failed));
	metrics_scalar(o, "mxfront_last_reload_success_timestamp_seconds", "gauge",
	               "When the configuration and certificates last loaded (the start counts).",
	               atomic_load(&metrics_main.last_reload_ok));
	metrics_scalar(o, "mxfront_start_time_seconds", "gauge", "When mxfront started.",
	               atomic_load(&metrics_main.started));
}

struct metrics_cert_ctx {
	struct metrics_out *o;
};

static void metrics_cert_row_cb(void *arg, const struct certstore_row *row)
{
	struct metrics_out *o = arg;
	char label[300], name[300], key[40];
	metrics_printf(o, "mxfront_certificate_not_after_seconds{cert=\"%s\",name=\"%s\",key=\"%s\"} "
	               "%lld\n", metrics_escape(row->label, label, sizeof label),
	               metrics_escape(row->name, name, sizeof name),
	               metrics_escape(row->keytype, key, sizeof key), (long long)row->not_after);
}

/* The series whose count follows certs.d/: per name and per certificate. */
static void metrics_render_certs(struct metrics_out *o)
{
	pthread_mutex_lock(&metrics_lock);
	struct certstore *cs = certstore_ref(metrics_main.cs);
	pthread_mutex_unlock(&metrics_lock);
	metrics_family(o, "mxfront_sni_hits_total", "counter",
	               "Completed handshakes whose SNI named this certificate name (wildcards as "
	               "served: *.example.com); other: SNI naming nothing served here.");
	metrics_u64 *other = NULL;
	uint64_t n = 0;
	for (unsigned w = 0; w < metrics_nblocks; w++)
		if ((other = atomic_load(&metrics_blocks[w].pages[0])))
			n += metrics_get(&other[METRICS_OTHER]);
	metrics_printf(o, "mxfront_sni_hits_total{name=\"other\"} %llu\n", (unsigned long long)n);
	for (size_t i = 0; cs && i < certstore_nnames(cs) && !o->err; i++) {
		const struct certstore_entry *e = certstore_entry_at(cs, i);
		uint32_t slot = e->metrics_slot;
		if (slot == METRICS_OTHER)
			continue;
		n = 0;
		for (unsigned w = 0; w < metrics_nblocks; w++) {
			metrics_u64 *page = atomic_load(&metrics_blocks[w].pages[slot / METRICS_PAGE]);
			if (page)
				n += metrics_get(&page[slot % METRICS_PAGE]);
		}
		char name[300];
		metrics_printf(o, "mxfront_sni_hits_total{name=\"%s\"} %llu\n",
		               metrics_escape(e->name, name, sizeof name), (unsigned long long)n);
	}
	metrics_family(o, "mxfront_certificate_not_after_seconds", "gauge",
	               "Expiry (notAfter, Unix time) of each certificate loaded from certs.d/: its "
	               "directory, first name and key type.");
	if (cs)
		certstore_foreach_cert(cs, metrics_cert_row_cb, o);
	metrics_scalar(o, "mxfront_certificates", "gauge", "Certificates loaded from certs.d/.",
	               cs ? (int64_t)certstore_ncerts(cs) : 0);
	metrics_scalar(o, "mxfront_certificate_names", "gauge", "Names served by them.",
	               cs ? (int64_t)certstore_nnames(cs) : 0);
	certstore_unref(cs);
}

static int metrics_senders(struct scoreboard_row **rows, size_t *n)
{
	struct scoreboard **sbs = calloc(metrics_nblocks ? metrics_nblocks : 1, sizeof *sbs);
	unsigned k = 0;
	if (!sbs)
		return -1;
	for (unsigned w = 0; w < metrics_nblocks; w++)
		if (metrics_blocks[w].sb)
			sbs[k++] = metrics_blocks[w].sb;
	int rc = scoreboard_merge(sbs, k, atomic_load(&metrics_main.senders_top), rows, n);
	free(sbs);
	return rc;
}

static void metrics_render_senders(struct metrics_out *o)
{
	struct scoreboard_row *rows;
	size_t n;
	metrics_family(o, "mxfront_sender_sessions_total", "counter",
	               "Sessions by sending organisation (registrable domain of the EHLO name; the "
	               "top [metrics] senders, then other), TLS/SNI outcome and TLS version.");
	if (metrics_senders(&rows, &n) < 0) {
		o->err = -1;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char org[200];
		metrics_escape(rows[i].org, org, sizeof org);
		for (int t = 0; t < SCOREBOARD_NTLS; t++)
			for (int v = 0; v < SCOREBOARD_NVERSIONS; v++)
				if (rows[i].n[t][v])
					metrics_printf(o, "mxfront_sender_sessions_total{org=\"%s\",tls=\"%s\","
					               "version=\"%s\"} %llu\n", org, scoreboard_tls_names[t],
					               scoreboard_version_names[v],
					               (unsigned long long)rows[i].n[t][v]);
	}
	free(rows);
}

int metrics_render(char **out, size_t *len)
{
	struct metrics_out o = { 0 };
	char reason[512];
	metrics_scalar(&o, "mxfront_up", "gauge",
	               "1 when mxfront can take mail now (what /healthz says with 200).",
	               metrics_healthy(reason, sizeof reason));
	metrics_render_counters(&o);
	metrics_render_senders(&o);
	metrics_render_certs(&o);
	if (o.err) {
		growbuf_free(&o.b);
		return -1;
	}
	*out = growbuf_take(&o.b, len);
	return 0;
}

int metrics_senders_table(char **out, size_t *len)
{
	struct scoreboard_row *rows;
	size_t n;
	if (metrics_senders(&rows, &n) < 0)
		return -1;
	int rc = scoreboard_table(rows, n, out, len);
	free(rows);
	return rc;
}
