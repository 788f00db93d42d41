/* httpd: the [metrics] HTTP listener: GET /metrics (Prometheus text
 * format) and GET /healthz (200 "ok", or 503 with the reasons mxfront
 * cannot take mail now), served by libmicrohttpd on a thread of its own. */
#ifndef MXFRONT_HTTPD_H
#define MXFRONT_HTTPD_H

#include <stddef.h>

#include "config.h"

struct httpd;

/* Binds ADDR (before privileges are dropped), writes the bound address to
 * BOUND ("127.0.0.1:9125") and starts serving. NULL with ERR on failure. */
struct httpd *httpd_start(const struct config_addr *addr, char *bound, size_t boundsize,
                          char *err, size_t errsize);

/* Stops the thread and closes the socket. NULL is ignored. */
void httpd_stop(struct httpd *h);

#endif
