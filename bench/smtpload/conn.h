/* conn: one client connection slot: TCP connect, reads framed into reply
 * lines, a double-buffered output queue that can point at the shared message
 * (plaintext) or carries TLS records, the STARTTLS switch and one close path.
 * Never decides what to send: that is proto.c. */
#ifndef SMTPLOAD_CONN_H
#define SMTPLOAD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proto.h"
#include "stats.h"

#define CONN_RX 4096
/* Stop encrypting the message while this much ciphertext is unsent. */
#define CONN_TX_HIGH (256 * 1024)

struct worker;
struct tlsc;

enum conn_state {
	CONN_FREE,        /* no socket; waiting in the worker to be started */
	CONN_CONNECTING,
	CONN_OPEN,
	CONN_CLOSING,     /* uv_close called, waiting for its callback */
};

/* A piece of pending output: octets in the active tx buffer (base NULL) or a
 * borrowed read-only buffer (the shared message). */
struct conn_seg {
	const char *base;
	size_t off, len;
};

struct conn {
	struct worker *w;
	unsigned index;
	enum conn_state state;
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_write_t wreq;
	uint64_t deadline;      /* uv_hrtime() after which the awaited event times out; 0: none */
	uint64_t retry_at;      /* CONN_FREE: do not start before this (back-off after a failure) */
	uint64_t t_connect;
	bool failed;            /* closed on an error (counted where it was seen) */
	/* input: reply octets (plaintext, or decrypted) */
	size_t rxlen, rxpos;
	bool rx_switched;       /* STARTTLS began inside the line loop */
	char rx[CONN_RX];
	/* output: tx[txact] collects, tx[!txact] may be in flight */
	char *tx[2];
	size_t txcap[2], txlen[2];
	int txact;
	bool inflight;
	size_t inflight_len;
	struct conn_seg seg[4];
	unsigned nseg;
	bool close_after_flush;
	/* TLS */
	struct tlsc *tls;
	bool tls_on, handshaking;
	char *stage;            /* plaintext commands waiting to become one record */
	size_t stagelen, stagecap;
	bool body_tls;          /* the message is being encrypted in chunks */
	size_t body_off;
	struct proto p;
};

/* Prepares slot INDEX of W once (buffers, TLS holder, reply ring); 0 or -1.
 * conn_fini frees them; the socket must be closed by then. */
int conn_init(struct conn *c, struct worker *w, unsigned index);
void conn_fini(struct conn *c);

/* Connects the free slot to the target. 0, or -1 (counted, slot stays free). */
int conn_start(struct conn *c);

/* Queues command text (copied). */
void conn_puts(struct conn *c, const char *s, size_t len);
/* Queues the shared message: no copy in plaintext; encrypted in chunks with TLS. */
void conn_put_body(struct conn *c);
/* Hands queued output to the socket (uv_try_write, then uv_write for the rest). */
void conn_flush(struct conn *c);

/* Starts the TLS client handshake; the plaintext input must be empty. 0 or -1. */
int conn_start_tls(struct conn *c);
/* Octets received after the line being handled (STARTTLS injection check). */
size_t conn_rx_pending(const struct conn *c);

/* A reply is awaited: arm the timeout. */
void conn_expect(struct conn *c);
/* Nothing awaited (idle hold): no timeout. */
void conn_unexpect(struct conn *c);

/* conn_close: a graceful end, or a failure that the caller already counted. */
#define CONN_CLOSE_OK (-1)
#define CONN_CLOSE_FAILED (-2)

/* Closes now; ERR >= 0 (enum stats_err) is counted and marks the slot failed,
 * as does CONN_CLOSE_FAILED; CONN_CLOSE_OK is a graceful end. */
void conn_close(struct conn *c, int err);
/* Graceful end after QUIT's reply: close_notify with TLS, flush, then close. */
void conn_finish(struct conn *c);

/* Called by the worker's sweep: the deadline has passed. */
void conn_check_timeout(struct conn *c, uint64_t now);

#endif
