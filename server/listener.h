/* listener: the listening sockets of one event loop, accept, the connection
 * limit, and the list of live sessions (for shutdown). Reads no client byte. */
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

/* Number of listening sockets, and the bound address of socket I as
 * "ip:port" / "[ip6]:port" (useful with port 0). */
size_t listener_count(const struct listener *l);
int listener_address(const struct listener *l, size_t i, char *out, size_t size);

/* Stops accepting, ends every session politely and frees everything once
 * the last session is gone; then calls DONE(ARG). */
void listener_stop(struct listener *l, void (*done)(void *arg), void *arg);

#endif
