/* stats: fixed-size counters and log-linear latency histograms, merged
 * across workers at the end, and the final report as text or one JSON
 * object. Prints only to the stream it is given. */
#include "stats.h"

#include <string.h>

static const char *const stats_err_names[STATS_ERR_COUNT] = {
	[STATS_ERR_CONNECT_REFUSED] = "connect_refused",
	[STATS_ERR_CONNECT] = "connect_error",
	[STATS_ERR_TLS] = "tls_error",
	[STATS_ERR_NO_STARTTLS] = "no_starttls",
	[STATS_ERR_TIMEOUT] = "timeout",
	[STATS_ERR_CLOSED] = "closed",
	[STATS_ERR_PROTOCOL] = "protocol",
};

static unsigned stats_bucket(uint64_t v)
{
	if (v < STATS_SUB)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - (STATS_SUB_BITS - 1);
	unsigned sub = (unsigned)(v >> shift) - STATS_HALF;
	return STATS_SUB + (shift - 1) * STATS_HALF + sub;
}

/* The middle of bucket I. */
static uint64_t stats_bucket_value(unsigned i)
{
	if (i < STATS_SUB)
		return i;
	unsigned shift = (i - STATS_SUB) / STATS_HALF + 1;
	uint64_t m = (i - STATS_SUB) % STATS_HALF + STATS_HALF;
	return (m << shift) + (((uint64_t)1 << shift) >> 1);
}

void stats_hist_add(struct stats_hist *h, uint64_t ns)
{
	h->bucket[stats_bucket(ns)]++;
	if (h->count == 0 || ns < h->min)
		h->min = ns;
	if (ns > h->max)
		h->max = ns;
	h->count++;
	h->sum += ns;
}

uint64_t stats_hist_quantile(const struct stats_hist *h, double p)
{
	if (h->count == 0)
		return 0;
	uint64_t rank = (uint64_t)(p * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < STATS_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t v = stats_bucket_value(i);
			return v > h->max ? h->max : v < h->min ? h->min : v;
		}
	}
	return h->max;
}

static void stats_hist_merge(struct stats_hist *into, const struct stats_hist *from)
{
	if (from->count == 0)
		return;
	if (into->count == 0 || from->min < into->min)
		into->min = from->min;
	if (from->max > into->max)
		into->max = from->max;
	into->count += from->count;
	into->sum += from->sum;
	for (unsigned i = 0; i < STATS_BUCKETS; i++)
		into->bucket[i] += from->bucket[i];
}

void stats_merge(struct stats *into, const struct stats *from)
{
	into->connects += from->connects;
	into->sessions += from->sessions;
	into->handshakes += from->handshakes;
	into->resumed += from->resumed;
	into->attempted += from->attempted;
	into->sent += from->sent;
	into->bytes += from->bytes;
	into->rcpt_ok += from->rcpt_ok;
	into->idle_established += from->idle_established;
	into->idle_lost += from->idle_lost;
	for (unsigned i = 0; i < 1000; i++)
		into->code[i] += from->code[i];
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		into->err[i] += from->err[i];
	stats_hist_merge(&into->msg_lat, &from->msg_lat);
	stats_hist_merge(&into->tls_lat, &from->tls_lat);
	stats_hist_merge(&into->conn_lat, &from->conn_lat);
}

uint64_t stats_errors(const struct stats *s)
{
	/* idle_lost is not added: each loss is already counted by its cause. */
	uint64_t n = 0;
	for (unsigned i = 0; i < 1000; i++)
		n += s->code[i];
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		n += s->err[i];
	return n;
}

static double stats_rate(uint64_t n, double s)
{
	return s > 0 ? (double)n / s : 0.0;
}

static double stats_ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

static void stats_text_hist(FILE *out, const char *name, const struct stats_hist *h)
{
	if (h->count == 0) {
		fprintf(out, "%-18s -\n", name);
		return;
	}
	fprintf(out, "%-18s p50 %.3f ms  p99 %.3f ms  max %.3f ms  (n=%llu)\n", name,
	        stats_ms(stats_hist_quantile(h, 0.50)), stats_ms(stats_hist_quantile(h, 0.99)),
	        stats_ms(h->max), (unsigned long long)h->count);
}

static void stats_text_errors(FILE *out, const struct stats *s)
{
	const char *sep = "";
	fprintf(out, "%-18s ", "errors");
	if (stats_errors(s) == 0) {
		fprintf(out, "none\n");
		return;
	}
	for (unsigned i = 0; i < 1000; i++) {
		if (s->code[i]) {
			fprintf(out, "%s%03u: %llu", sep, i, (unsigned long long)s->code[i]);
			sep = ", ";
		}
	}
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++) {
		if (s->err[i]) {
			fprintf(out, "%s%s: %llu", sep, stats_err_names[i], (unsigned long long)s->err[i]);
			sep = ", ";
		}
	}
	fprintf(out, "\n");
}

void stats_print_text(FILE *out, const struct stats *s, const struct stats_summary *m)
{
	double t = m->elapsed_s;
	fprintf(out, "target             %s  threads=%u conns=%u size=%zu rcpts=%u tls=%s\n",
	        m->target, m->threads, m->idle ? m->idle : m->conns, m->size, m->rcpts,
	        m->starttls ? "starttls" : "no");
	fprintf(out, "elapsed            %.3f s\n", t);
	fprintf(out, "sessions           %llu  (%.1f/s; %llu connects)\n",
	        (unsigned long long)s->sessions, stats_rate(s->sessions, t),
	        (unsigned long long)s->connects);
	if (m->starttls)
		fprintf(out, "handshakes         %llu  (%.1f/s; %llu resumed)\n",
		        (unsigned long long)s->handshakes, stats_rate(s->handshakes, t),
		        (unsigned long long)s->resumed);
	if (m->idle)
		fprintf(out, "idle               %llu of %u established, %llu lost while held\n",
		        (unsigned long long)s->idle_established, m->idle,
		        (unsigned long long)s->idle_lost);
	else
		fprintf(out, "messages           %llu sent of %llu attempted  (%.1f/s, %.2f MB/s)\n",
		        (unsigned long long)s->sent, (unsigned long long)s->attempted,
		        stats_rate(s->sent, t), stats_rate(s->bytes, t) / 1e6);
	stats_text_hist(out, "latency message", &s->msg_lat);
	if (m->starttls)
		stats_text_hist(out, "latency handshake", &s->tls_lat);
	stats_text_hist(out, "latency connect", &s->conn_lat);
	stats_text_errors(out, s);
	fprintf(out, "cpu (smtpload)     %.2f s user + %.2f s sys = %.1f%% of one core\n",
	        m->cpu_user_s, m->cpu_sys_s,
	        t > 0 ? 100.0 * (m->cpu_user_s + m->cpu_sys_s) / t : 0.0);
}

static void stats_json_hist(FILE *out, const char *name, const struct stats_hist *h,
                            const char *sep)
{
	fprintf(out, "\"%s\":{\"count\":%llu,\"p50\":%.4f,\"p99\":%.4f,\"max\":%.4f,\"mean\":%.4f}%s",
	        name, (unsigned long long)h->count, stats_ms(stats_hist_quantile(h, 0.50)),
	        stats_ms(stats_hist_quantile(h, 0.99)), stats_ms(h->max),
	        h->count ? stats_ms(h->sum / h->count) : 0.0, sep);
}

static void stats_json_errors(FILE *out, const struct stats *s)
{
	const char *sep = "";
	fprintf(out, "\"errors\":{");
	for (unsigned i = 0; i < 1000; i++) {
		if (s->code[i]) {
			fprintf(out, "%s\"%03u\":%llu", sep, i, (unsigned long long)s->code[i]);
			sep = ",";
		}
	}
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++) {
		if (s->err[i]) {
			fprintf(out, "%s\"%s\":%llu", sep, stats_err_names[i], (unsigned long long)s->err[i]);
			sep = ",";
		}
	}
	fprintf(out, "},\"errors_total\":%llu,", (unsigned long long)stats_errors(s));
}

/* The target is "host:port" as typed: escape what JSON needs. */
static void stats_json_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', out);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, out);
	}
	fputc('"', out);
}

void stats_print_json(FILE *out, const struct stats *s, const struct stats_summary *m)
{
	double t = m->elapsed_s;
	fprintf(out, "{\"target\":");
	stats_json_string(out, m->target);
	fprintf(out, ",\"threads\":%u,\"connections\":%u,\"size\":%zu,\"rcpts\":%u,\"starttls\":%s,",
	        m->threads, m->idle ? m->idle : m->conns, m->size, m->rcpts,
	        m->starttls ? "true" : "false");
	fprintf(out, "\"elapsed_s\":%.6f,\"connects\":%llu,\"sessions\":%llu,\"sessions_per_s\":%.2f,",
	        t, (unsigned long long)s->connects, (unsigned long long)s->sessions,
	        stats_rate(s->sessions, t));
	fprintf(out, "\"handshakes\":%llu,\"handshakes_per_s\":%.2f,\"resumed\":%llu,",
	        (unsigned long long)s->handshakes, stats_rate(s->handshakes, t),
	        (unsigned long long)s->resumed);
	fprintf(out, "\"messages_attempted\":%llu,\"messages_sent\":%llu,\"messages_per_s\":%.2f,"
	        "\"bytes\":%llu,\"mb_per_s\":%.4f,",
	        (unsigned long long)s->attempted, (unsigned long long)s->sent,
	        stats_rate(s->sent, t), (unsigned long long)s->bytes, stats_rate(s->bytes, t) / 1e6);
	fprintf(out, "\"idle\":{\"requested\":%u,\"established\":%llu,\"lost\":%llu},", m->idle,
	        (unsigned long long)s->idle_established, (unsigned long long)s->idle_lost);
	fprintf(out, "\"latency_ms\":{");
	stats_json_hist(out, "message", &s->msg_lat, ",");
	stats_json_hist(out, "handshake", &s->tls_lat, ",");
	stats_json_hist(out, "connect", &s->conn_lat, "},");
	stats_json_errors(out, s);
	fprintf(out, "\"cpu\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"share_of_one_core\":%.4f}}\n",
	        m->cpu_user_s, m->cpu_sys_s, t > 0 ? (m->cpu_user_s + m->cpu_sys_s) / t : 0.0);
}
