/* listener: the listening sockets of one event loop, accept, the connection
 * limits, the live sessions (for a graceful stop) and the generation (config
 * and TLS context) that new sessions get. Sockets are bound by
 * listener_bind() (on the main thread, for all loops at once) and handed
 * over as file descriptors. Reads no client byte. */
#ifndef MXFRONT_LISTENER_H
#define MXFRONT_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "backend_pool.h"
#include "config.h"
#include "generation.h"

struct listener;
struct listener_shared;

/* State shared by the listeners of every loop: the client total for
 * max_clients and the per-address counts. Owned by the caller. */
struct listener_shared *listener_shared_new(void);
void listener_shared_free(struct listener_shared *sh);

/* Sessions open on every loop together. */
unsigned listener_shared_sessions(struct listener_shared *sh);

/* Creates N listening sockets for A, all on the same address and port
 * (SO_REUSEPORT: the kernel spreads connections over the loops; port 0
 * picks one port for all), stores them in FDS and the bound address in
 * BOUND ("ip:port", "[ip6]:port"). Returns 0, or -1 with ERR and nothing
 * left open. */
int listener_bind(const struct config_addr *a, unsigned n, int *fds, char *bound, size_t boundsize,
                  char *err, size_t errsize);

/* Binds one socket to A as listener_bind() would, without listening, and
 * closes it: whether the daemon could bind A now. Returns 0, or -1 with
 * the errno in *ERROR and its text in ERR. */
int listener_try_bind(const struct config_addr *a, int *error, char *err, size_t errsize);

/* True when A and B name the same socket address. */
bool listener_same_address(const struct config_addr *a, const struct config_addr *b);

/* A listener on LOOP for generation GEN (a reference is taken), taking
 * ownership of FDS[i], the bound socket for gen->cfg->listen[i]. SHARED and
 * POOL (the loop's backend connections, lent to its sessions) must outlive
 * it. */
struct listener *listener_new(uv_loop_t *loop, struct listener_shared *shared,
                              struct backend_pool *pool, struct generation *gen,
                              const int *fds);

/* Switches new sessions to GEN (a reference taken, the old one dropped;
 * sessions in progress keep theirs). For each gen->cfg->listen[i], FDS[i]
 * >= 0 is a new socket to take over; -1 keeps the open socket with the
 * same address. Sockets not named any more are closed. */
void listener_update(struct listener *l, struct generation *gen, const int *fds);

/* Sessions open on this loop now. */
unsigned listener_sessions(const struct listener *l);

/* Graceful stop: closes the sockets, lets each session finish its
 * transaction for up to [server] shutdown_timeout, then cuts the rest; once
 * the last session is gone, frees everything and calls DONE(ARG). */
void listener_stop(struct listener *l, void (*done)(void *arg), void *arg);

#endif
