/* worker: one thread with its own libuv loop, listener and backend pool
 * (one loop per core). The main thread talks to it only through messages:
 * a new generation (and the sockets to take over) or stop. */
#ifndef MXFRONT_WORKER_H
#define MXFRONT_WORKER_H

#include "generation.h"
#include "listener.h"

struct worker;

/* Starts worker INDEX of NWORKERS serving generation GEN (a reference
 * taken) on FDS[i] for gen->cfg->listen[i] (ownership taken), with its own
 * share of the backend connections. DONE(ARG) is called on the worker's
 * thread once its loop has ended after worker_stop(). NULL on failure (FDS
 * closed). */
struct worker *worker_start(unsigned index, unsigned nworkers, struct listener_shared *shared,
                            struct generation *gen, const int *fds, void (*done)(void *arg),
                            void *arg);

/* Hands the worker a new generation: as listener_update(), FDS[i] >= 0 a
 * new socket for gen->cfg->listen[i] (ownership taken), -1 keep the one
 * open. */
void worker_update(struct worker *w, struct generation *gen, const int *fds);

/* Asks for a graceful stop. */
void worker_stop(struct worker *w);

/* Waits for the thread to end (after DONE was called) and frees W. */
void worker_join(struct worker *w);

#endif
