/* metrics: the daemon's counters, one block per worker, and their Prometheus
 * text exposition. A worker's block is written only by its own thread, with
 * relaxed atomic loads and stores (plain moves on x86: no lock, no
 * allocation on the session path); a scrape sums the blocks on its own
 * thread. Calls from a thread without a block (the main thread, the CLI
 * commands, unit tests) count nothing, except the main thread's own facts
 * (reloads, the live certificates, the state health reports). */
#ifndef MXFRONT_METRICS_H
#define MXFRONT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* No GnuTLS here: smtp.c counts too. */
struct certstore;
struct certstore_entry;

/* Scalar counters and gauges of a worker. */
enum metrics_counter {
	METRICS_SESSIONS,            /* gauge: sessions open now */
	METRICS_RCPT_ACCEPTED,       /* RCPT accepted by the backend */
	METRICS_RCPT_REFUSED,        /* RCPT refused (backend, or lost) */
	METRICS_MSG_DELIVERED,       /* 250 at the end of DATA */
	METRICS_MSG_TEMPFAIL,        /* 4xx for the whole message */
	METRICS_MSG_PERMFAIL,        /* 5xx */
	METRICS_MSG_PARTIAL,         /* some recipients only (then a 4xx or, PRDR, per recipient) */
	METRICS_MSG_BYTES,           /* message bytes received, of every message with a verdict */
	METRICS_MSG_BYTES_DELIVERED, /* of the delivered ones */
	METRICS_POOL_SIZE,           /* gauge: backend connections open */
	METRICS_POOL_BUSY,           /* gauge: lent to a transaction */
	METRICS_POOL_WAITING,        /* gauge: sessions queued for one */
	METRICS_POOL_CONNECT_ERRORS, /* connections that could not be set up */
	METRICS_BACKEND_STATE,       /* gauge: 0 not reached yet, 1 up, 2 down */
	METRICS_LIMIT_MAX_CLIENTS,
	METRICS_LIMIT_MAX_CLIENTS_PER_IP,
	METRICS_LIMIT_MAX_CONNECTION_RATE,
	METRICS_LIMIT_FD,
	METRICS_LIMIT_BACKEND_QUEUE,
	METRICS_LIMIT_ERRORS,
	METRICS_LIMIT_JUNK,
	METRICS_LIMIT_TIMEOUT,
	METRICS_LIMIT_IDLE,
	METRICS_LIMIT_HANDSHAKE_TIMEOUT,
	METRICS_LIMIT_EARLY_TALKER,
	METRICS_NCOUNTERS
};

enum { METRICS_BACKEND_UNKNOWN, METRICS_BACKEND_UP, METRICS_BACKEND_DOWN };

/* What a backend latency is measured for. */
enum metrics_stage {
	METRICS_STAGE_CONNECT,     /* connect, greeting and LHLO of a new connection */
	METRICS_STAGE_COMMAND,     /* MAIL or RCPT (a pipelined group from its write) */
	METRICS_STAGE_END_OF_DATA, /* the final dot to the last recipient's reply */
	METRICS_NSTAGES
};

/* Slot 0 of the per-name counters: SNI naming nothing served, or names
 * beyond the registry's capacity. */
#define METRICS_OTHER 0

/* Sets up NWORKERS blocks (once, on the main thread, before any generation
 * is built and any worker starts). Without it every call counts nothing. */
void metrics_init(unsigned nworkers);

/* Frees the blocks (after every worker has ended). */
void metrics_fini(void);

/* On worker INDEX's own thread: from now on this thread counts into its
 * block. */
void metrics_worker_enter(unsigned index);

/* This thread's block: add N, add 1, or (gauges) add a signed DELTA. */
void metrics_add(enum metrics_counter c, uint64_t n);
void metrics_inc(enum metrics_counter c);
void metrics_gauge(enum metrics_counter c, int64_t delta);
void metrics_gauge_set(enum metrics_counter c, int64_t value);

/* A listening address's slot for metrics_connection() (the same TEXT gets
 * the same slot; beyond the capacity, one shared "other"). Any thread; takes
 * a lock: call when a socket is opened, not per connection. */
unsigned metrics_listener_slot(const char *text);

/* A connection accepted on listener SLOT: ADMITTED, or refused with 421. */
void metrics_connection(unsigned slot, bool admitted);

/* A TLS handshake that ended (OK or not), as tls.c names what it chose:
 * VERSION "TLS1.3", MATCH exact|wildcard|listener-default|default|refused|
 * none, SNI the normalised name or none|invalid; ENTRY the certificate
 * entry chosen (NULL if none). A completed one also counts for the SNI
 * hits of ENTRY's name and on the scoreboard for HELO's organisation. */
void metrics_tls(const char *version, const char *match, const char *sni,
                 const struct certstore_entry *entry, const char *helo, bool ok);

/* A session that ends without TLS, after HELO (its organisation's
 * plaintext column on the scoreboard); HELO "" counts nothing. */
void metrics_plaintext(const char *helo);

/* smtp asked to close its session for REASON ("error_limit", "timeout",
 * ...): counted as a limit when it is one. */
void metrics_close_reason(const char *reason);

/* A transaction's final reply CODE to the client, with DELIVERED of NRCPT
 * recipients taken and SIZE message bytes. */
void metrics_message(int code, unsigned delivered, unsigned nrcpt, uint64_t size);

/* One backend wait of NS nanoseconds. */
void metrics_latency(enum metrics_stage stage, uint64_t ns);

/* Gives every name of CS a slot for its SNI hit counters (kept across
 * generations: the same name, the same slot) in its entry's metrics_slot.
 * Main thread, while CS is not yet used by any worker; a name already
 * slotted is not written again. */
void metrics_register_names(struct certstore *cs);

/* ---- the main thread's facts ---- */

/* The certificates the live generation serves (a reference is taken; NULL:
 * none, plaintext on purpose), and whether STARTTLS is usable with them. */
void metrics_set_certs(struct certstore *cs, bool tls_expected, bool tls_usable);

/* A reload ended (OK or failed); NOW its wall clock time. */
void metrics_reload(bool ok, int64_t now);

/* Listening sockets bound now; mxfront started; stopping. */
void metrics_set_listeners(unsigned n);
void metrics_set_started(int64_t now);
void metrics_set_stopping(void);

/* [metrics] senders: rows of the scoreboard before "other". */
void metrics_set_senders_top(unsigned n);

/* ---- reading ---- */

/* Whether mxfront can take mail now; when not, REASON says why (all
 * reasons, "; "-separated). Any thread. */
bool metrics_healthy(char *reason, size_t size);

/* The whole exposition (text format 0.0.4) into a new buffer (*OUT, *LEN;
 * the caller frees it). Returns 0 or -1 when out of memory. Any thread. */
int metrics_render(char **out, size_t *len);

/* The scoreboard as a table for `mxfront stats senders`, into a new buffer. */
int metrics_senders_table(char **out, size_t *len);

#endif
