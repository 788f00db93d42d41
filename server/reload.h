/* reload: the daemon's signals and its live generation. SIGHUP re-reads the
 * configuration and certs.d/ on a worker thread and switches new sessions to
 * the result only if everything loaded; SIGTERM/SIGINT stop gracefully. */
#ifndef MXFRONT_RELOAD_H
#define MXFRONT_RELOAD_H

#include <uv.h>

#include "certstore.h"
#include "config.h"
#include "listener.h"
#include "tls.h"

struct reload;

/* Takes over the running generation (references to CFG, CS (may be NULL)
 * and TC (may be NULL), and the listener L) and watches the signals.
 * PATH is the configuration file to re-read; ADDRESS_FILE (or NULL) is
 * rewritten after each reload. STOPPED(ARG) is called once the listener has
 * stopped after TERM/INT; the reload then frees itself. */
struct reload *reload_new(uv_loop_t *loop, const char *path, const char *address_file,
                          struct config *cfg, struct certstore *cs, struct tls_context *tc,
                          struct listener *l, void (*stopped)(void *arg), void *arg);

#endif
