/* fdlimit: the process's descriptor limit (RLIMIT_NOFILE). At start the soft
 * limit is raised to the hard one and the connections the configuration
 * allows are checked against it. It only reports: a limit that is too low
 * is the operator's to fix, and running out of descriptors at run time
 * slows accepting down (listener.c), it never stops mxfront. */
#ifndef MXFRONT_FDLIMIT_H
#define MXFRONT_FDLIMIT_H

#include <stddef.h>

#include "config.h"

/* Descriptors needed beside client and backend connections, with WORKERS
 * event loops and N_LISTEN listen addresses: listening sockets, the loops'
 * own descriptors, standard streams, certificate loading and a margin. */
unsigned long fdlimit_reserve(unsigned workers, size_t n_listen);

/* Raises the soft limit to the hard one, then checks that max_clients of
 * CFG plus BACKEND_MAX backend connections (over all workers) plus the
 * reserve for WORKERS loops fit in it. Logs event=fd_limit: info when they
 * fit, warn when they do not (or the limit could not be read). Returns 0
 * when they fit, -1 otherwise. */
int fdlimit_setup(const struct config *cfg, unsigned workers, unsigned backend_max);

#endif
