/* listener: the listening sockets of one event loop, accept, the connection
 * limit, the live sessions (for a graceful stop) and the generation (config
 * and TLS context) that new sessions get. Reads no client byte. */
#ifndef MXFRONT_LISTENER_H
#define MXFRONT_LISTENER_H

#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "tls.h"

struct listener;

/* Binds and listens on every address of CFG, taking references to CFG and
 * TC (NULL: no STARTTLS). Returns NULL with ERR filled ("listen ADDR:
 * reason") on failure. */
struct listener *listener_new(uv_loop_t *loop, struct config *cfg, struct tls_context *tc,
                              char *err, size_t errsize);

/* Switches new sessions to CFG and TC (references taken, the old ones
 * dropped; sessions in progress keep theirs). Sockets whose address is
 * unchanged stay open; new addresses are bound first and, if any fails,
 * nothing changes and -1 comes back with ERR. */
int listener_update(struct listener *l, struct config *cfg, struct tls_context *tc, char *err,
                    size_t errsize);

/* Number of listening sockets, and the bound address of socket I as
 * "ip:port" / "[ip6]:port" (useful with port 0). */
size_t listener_count(const struct listener *l);
int listener_address(const struct listener *l, size_t i, char *out, size_t size);

/* Writes every bound address, one per line, to PATH (temporary file and
 * rename, so a reader never sees half of it). Returns 0 or -1. */
int listener_write_addresses(const struct listener *l, const char *path);

/* Sessions open now. */
unsigned listener_sessions(const struct listener *l);

/* Graceful stop: closes the sockets, lets each session finish its
 * transaction for up to [server] shutdown_timeout, then cuts the rest; once
 * the last session is gone, frees everything and calls DONE(ARG). */
void listener_stop(struct listener *l, void (*done)(void *arg), void *arg);

#endif
