/* reload: the daemon's signals. SIGTERM and SIGINT ask for a graceful stop;
 * SIGHUP (configuration and certificate reload) is logged and ignored until
 * reload is implemented. */
#ifndef MXFRONT_RELOAD_H
#define MXFRONT_RELOAD_H

#include <uv.h>

struct reload;

/* Watches the signals on LOOP; STOP(ARG) is called on the first TERM/INT. */
struct reload *reload_new(uv_loop_t *loop, void (*stop)(void *arg), void *arg);

/* Stops watching; the memory goes with the handles' close callbacks. */
void reload_free(struct reload *r);

#endif
