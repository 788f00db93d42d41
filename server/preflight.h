/* preflight: what decides whether the daemon can start, asked without
 * starting it, so that `mxfront -t` and the start itself give the same
 * answer: the user and group to run as, and whether a listen address can be
 * bound (and who holds it now). Never prints or exits. */
#ifndef MXFRONT_PREFLIGHT_H
#define MXFRONT_PREFLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"

/* Who the daemon runs as once its sockets are bound. */
struct preflight_identity {
	bool change;  /* true: switch to UID/GID (started as root with [server] user) */
	uid_t uid;
	gid_t gid;    /* [server] group, else the user's primary group, else ours */
};

/* Resolves CFG's [server] user and group for a daemon started by the
 * current user, exactly as the start does. Returns 0, or -1 with the
 * offending KEY ("user" or "group") and ERR: unknown user or group, root
 * without a user, or a user other than ourselves without root. */
int preflight_identity(const struct config *cfg, struct preflight_identity *id, const char **key,
                       char *err, size_t errsize);

/* The group whose members mxfront reads private keys as: [server] group,
 * else the user's primary group, else the current one (also when the
 * configuration names someone unknown). */
gid_t preflight_key_group(const struct config *cfg);

/* Whether listen address A could be bound by a daemon started now, with the
 * listener's own socket code (bound and closed at once, never listening: no
 * connection can land on it). Returns 0 when it could, filling NOTE (or
 * leaving it empty) when a running mxfront holds it already (a reload keeps
 * that socket); -1 with ERR when not (a privileged port without root or
 * CAP_NET_BIND_SERVICE, an address of no interface here, in use by another
 * program, ...). */
int preflight_listen(const struct config_addr *a, char *note, size_t notesize, char *err,
                     size_t errsize);

#endif
