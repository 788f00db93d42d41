/* control: the local control socket (a unix stream socket) through which
 * `mxfront reload`, `mxfront health` and `mxfront stats senders` talk to
 * the running daemon, and the client side those commands use. One command
 * line per connection ("reload", "health", "senders"); the answer is a
 * status line "CODE text" (200 ok, 503 not healthy, 500 reload failed)
 * followed by a body, then the daemon closes. */
#ifndef MXFRONT_CONTROL_H
#define MXFRONT_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "reload.h"

struct control;

/* Where the control socket of CFG is, into BUF: [server] control_socket,
 * else $RUNTIME_DIRECTORY/control (systemd's RuntimeDirectory=); for a
 * client (CLIENT true), else /run/mxfront/control, where the unit's
 * RuntimeDirectory=mxfront puts it. NULL when the daemon has none. */
const char *control_path(const struct config *cfg, bool client, char *buf, size_t size);

/* Listens on PATH on LOOP (the main loop: reloads answer there), replacing
 * a stale socket file but not a live one. The handles do not keep LOOP
 * running. NULL with ERR on failure. */
struct control *control_new(uv_loop_t *loop, struct reload *r, const char *path, char *err,
                            size_t errsize);

/* Closes the socket and every client connection, removes the socket file
 * and frees C once LOOP has run the close callbacks. NULL is ignored. */
void control_free(struct control *c);

/* The client: sends COMMAND to the socket at PATH and waits up to
 * TIMEOUT_MS for the whole answer: *STATUS its code, *BODY (owned by the
 * caller) the text after the code. Returns 0, or -1 with ERR (nothing
 * listens there, no answer in time). */
int control_ask(const char *path, const char *command, int timeout_ms, int *status, char **body,
                char *err, size_t errsize);

#endif
