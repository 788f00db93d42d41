/* reload: the daemon's signals, its worker threads and its live generation.
 * SIGHUP re-reads the configuration and certs.d/ on a worker thread of
 * libuv's pool and hands the result to every worker only if everything
 * loaded and new listening sockets could be bound; SIGTERM/SIGINT stop all
 * workers gracefully. */
#ifndef MXFRONT_RELOAD_H
#define MXFRONT_RELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "generation.h"

struct reload;

/* Takes a reference to the first generation GEN and binds its listening
 * sockets for WORKERS loops. PATH is the configuration file to re-read;
 * ADDRESS_FILE (or NULL) receives the bound addresses now and after each
 * reload. NULL with ERR on failure. */
struct reload *reload_new(uv_loop_t *loop, const char *path, const char *address_file,
                          unsigned workers, struct generation *gen, char *err, size_t errsize);

/* Starts the workers and watches the signals (call after dropping
 * privileges). Returns 0 or -1 with ERR. Once every worker has stopped, the
 * signal watchers close and LOOP ends; then call reload_free(). */
int reload_start(struct reload *r, char *err, size_t errsize);

/* The verdict of a reload: OK, and TEXT (borrowed for the call) saying
 * what was loaded or why nothing was. */
typedef void (*reload_done_fn)(void *arg, bool ok, const char *text);

/* Reloads as SIGHUP does and calls DONE(ARG, ...) on LOOP's thread once a
 * reload that began after this call has ended (at once when stopping).
 * Returns 0, or -1 when out of memory (DONE is not called). */
int reload_request(struct reload *r, reload_done_fn done, void *arg);

/* DONE will not be called for ARG any more (its client went away). */
void reload_forget(struct reload *r, void *arg);

/* The bound listening addresses, comma-separated, into OUT; returns the
 * length. */
size_t reload_addresses(const struct reload *r, char *out, size_t size);

/* Joins the worker threads and frees everything. */
void reload_free(struct reload *r);

#endif
