/* session: one client connection: its socket, timer, input framing, reply
 * queue and the single close path. Glues smtp (protocol) to relay (backend);
 * knows no SMTP semantics itself. */
#ifndef MXFRONT_SESSION_H
#define MXFRONT_SESSION_H

#include <stdbool.h>
#include <uv.h>

#include "backend_pool.h"
#include "certstore.h"
#include "generation.h"

struct session;

/* Who owns the session: asked to admit its client once the client is known
 * (ADMIT: NULL to let it in, or the refusal text for its 421; SA is the
 * client, the PROXY header's on a proxy= listener), told once it is freed
 * (GONE, after its last handle closed). */
struct session_owner {
	void (*gone)(void *arg, struct session *s);
	const char *(*admit)(void *arg, struct session *s, const struct sockaddr *sa);
	void *arg;
};

/* Creates a session on LOOP holding a reference to generation GEN, with
 * its TCP handle initialised for the caller to open the accepted socket
 * into (session_tcp). LISTEN indexes GEN's listening addresses: the one the
 * socket was accepted on (its own default certificate, its PROXY protocol
 * and ticket settings). POOL (the worker's backend connections) must
 * outlive the session. */
struct session *session_new(uv_loop_t *loop, struct generation *gen, size_t listen,
                            struct backend_pool *pool, const struct session_owner *owner);

/* The handle to accept into. */
uv_tcp_t *session_tcp(struct session *s);

/* Starts the session after accept. On a proxy= listener it first reads the
 * PROXY header (closing without a word a peer not in [server]
 * proxy_trusted, a bad header, or none in [timeouts] proxy_header). Once
 * the client is known: with REFUSE set (the listener's max_clients) or a
 * refusal from owner->admit it answers "421 4.7.0 HOSTNAME <reason>" and
 * closes; else it greets (after [server] greeting_delay, refusing a
 * client that talks first). */
void session_start(struct session *s, const char *refuse);

/* Graceful stop: an idle session gets "421 4.3.2" and closes now; one in a
 * transaction finishes it first and closes at its next command. */
void session_shutdown(struct session *s);

/* The stop's grace time is over: 421 now, dropping a message in progress at
 * the backend before its final dot. Only a message whose final dot was
 * already sent is waited for (its verdict is owed to the client). */
void session_shutdown_now(struct session *s);

/* Closes at once: drops the backend connection (no final dot) and the client.
 * Idempotent; the session is freed later, then owner->gone is called. */
void session_close(struct session *s, const char *reason);

/* The owner keeps its sessions in a list of these (embedded in the session). */
struct session_link {
	struct session_link *next, *prev;
	struct session *session;
	struct sockaddr_storage peer; /* the owner's: for per-address limits */
	bool counted;                 /* the owner counted it against its address */
	unsigned metric;              /* the owner's: its listening address's metrics slot */
};
struct session_link *session_link(struct session *s);

#endif
