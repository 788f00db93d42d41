/* stats: counters and latency histograms of one worker, their merge, and the
 * final report (text or JSON). Fixed-size: nothing grows with the run length.
 * Never does I/O except the two print functions. */
#ifndef SMTPLOAD_STATS_H
#define SMTPLOAD_STATS_H

#include <stdint.h>
#include <stdio.h>

/* Log-linear histogram (HdrHistogram-like) of nanoseconds: exact below 128,
 * then 64 sub-buckets per power of two, so any value is within 1/128. */
#define STATS_SUB_BITS 7
#define STATS_SUB (1u << STATS_SUB_BITS)
#define STATS_HALF (STATS_SUB / 2)
#define STATS_BUCKETS (STATS_SUB + (64 - STATS_SUB_BITS) * STATS_HALF)

/* Errors that are not a reply code. */
enum stats_err {
	STATS_ERR_CONNECT_REFUSED,
	STATS_ERR_CONNECT,      /* any other connect() failure (EADDRNOTAVAIL, EMFILE, ...) */
	STATS_ERR_TLS,          /* handshake or record failure, including verification */
	STATS_ERR_NO_STARTTLS,  /* --starttls but the EHLO reply does not offer it */
	STATS_ERR_TIMEOUT,
	STATS_ERR_CLOSED,       /* EOF or reset while a reply was awaited, or while idle */
	STATS_ERR_PROTOCOL,     /* a reply line that is not "DDD[ -]text", or too long */
	STATS_ERR_COUNT
};

struct stats_hist {
	uint64_t count, sum, min, max;
	uint64_t bucket[STATS_BUCKETS];
};

struct stats {
	uint64_t connects;     /* connect() attempts */
	uint64_t sessions;     /* greeting (and TLS, with --starttls) done, EHLO answered */
	uint64_t handshakes;   /* TLS handshakes completed */
	uint64_t resumed;      /* ... of which resumed a session */
	uint64_t attempted;    /* messages claimed (MAIL sent), plus failed connections */
	uint64_t sent;         /* messages that got 250 after the final dot */
	uint64_t bytes;        /* message octets of the sent messages */
	uint64_t rcpt_ok;
	uint64_t idle_established, idle_lost;
	uint64_t code[1000];   /* failing replies by code */
	uint64_t err[STATS_ERR_COUNT];
	struct stats_hist msg_lat, tls_lat, conn_lat;
};

/* What the report says besides the counters; filled by main. */
struct stats_summary {
	const char *target;
	unsigned threads, conns, idle;
	double elapsed_s, cpu_user_s, cpu_sys_s;
	size_t size;
	unsigned rcpts;
	int starttls;
};

/* Records one latency of NS nanoseconds: O(1), no allocation. */
void stats_hist_add(struct stats_hist *h, uint64_t ns);
/* The value at quantile P (0..1), within 1/128; 0 when empty. */
uint64_t stats_hist_quantile(const struct stats_hist *h, double p);
/* Adds FROM (a finished worker's stats) into INTO. */
void stats_merge(struct stats *into, const struct stats *from);
/* The sum of every error counter: what decides exit code 1. */
uint64_t stats_errors(const struct stats *s);
/* The final report: aligned text, or one JSON object on one line. */
void stats_print_text(FILE *out, const struct stats *s, const struct stats_summary *sum);
void stats_print_json(FILE *out, const struct stats *s, const struct stats_summary *sum);

#endif
