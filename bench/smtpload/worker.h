/* worker: one thread's libuv loop and its connection slots: starting and
 * restarting them (bounded by --max-pending), handing out messages, the
 * 100 ms tick that enforces timeouts and the run's end, and the idle hold.
 * Never parses SMTP. */
#ifndef SMTPLOAD_WORKER_H
#define SMTPLOAD_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "msg.h"
#include "opts.h"
#include "stats.h"

struct conn;
struct tlsc_ctx;

/* What all workers share; owned by main, outlives them. */
struct run {
	const struct opts *o;
	const struct msg *msg;
	const struct msg_rcpt *rcpt;
	char mail_cmd[MSG_ADDR_MAX + 32];       /* "MAIL FROM:<from>\r\n" */
	char mail_cmd_size[MSG_ADDR_MAX + 64];  /* ... with SIZE= (RFC 1870) */
	size_t mail_len, mail_size_len;
	char ehlo_cmd[MSG_ADDR_MAX + 16];       /* "EHLO name\r\n" */
	size_t ehlo_len;
	uint64_t start_ns;
	uint64_t deadline_ns;                   /* -d in load mode; 0: none */
	atomic_llong remaining;                 /* messages left to claim; -1: no -n */
	atomic_bool stop;                       /* SIGINT/SIGTERM */
	atomic_uint idle_settled;               /* idle connections established or failed */
	atomic_uint idle_established;
	atomic_ullong hold_until;               /* idle: end of the hold; 0: not started */
};

struct worker {
	struct run *run;
	unsigned index;
	uv_thread_t thread;
	uv_loop_t loop;
	bool loop_ok;
	uv_timer_t tick;
	struct conn *conns;
	unsigned nconns;
	unsigned *wait;       /* free slots ready to start (a stack) */
	unsigned nwait;
	unsigned open;        /* slots not CONN_FREE */
	unsigned pending;     /* slots connecting or not yet established */
	unsigned backoff;     /* free slots waiting for retry_at */
	struct tlsc_ctx *tls;
	struct stats *st;
	unsigned long long sni_seq, sni_name_seq, rcpt_seq;
	bool stopping;
	const char *tls_reason;  /* the first tls_error's reason (GnuTLS static text) */
	uint64_t drain_deadline;
	uint64_t end_ns;
};

/* Prepares NCONNS slots. 0, or -1 with ERR filled. */
int worker_init(struct worker *w, struct run *r, unsigned index, unsigned nconns, char *err,
                size_t errsize);
/* Runs the loop until every slot is done (the thread body). */
void worker_run(void *arg);
/* Frees what worker_init made, also after a failed init. */
void worker_fini(struct worker *w);

/* Takes one message to send, or false when the run is over. */
bool worker_claim(struct worker *w);
/* The session is up (greeting, TLS, EHLO). */
void worker_established(struct worker *w, struct conn *c);
/* The slot's socket is closed; it may be started again. */
void worker_slot_done(struct worker *w, struct conn *c);
/* The next SNI name for a new connection (NULL: none) and its cache slot. */
const char *worker_next_sni(struct worker *w, size_t *slot);

#endif
