/* httpd: owns the [metrics] listening socket and the libmicrohttpd daemon
 * (one thread of its own) that serves /metrics and /healthz on it. Reads
 * only through metrics.h, which is safe from any thread; never touches a
 * worker or the main loop. */
#include "httpd.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

/* Scrapers and probes are few: a handful at once is plenty. */
#define HTTPD_CONNECTIONS 16
#define HTTPD_TIMEOUT_S 10

struct httpd {
	struct MHD_Daemon *mhd;
};

static enum MHD_Result httpd_reply(struct MHD_Connection *conn, unsigned status,
                                   const char *type, char *body, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result httpd_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
	char *body = strdup(text);
	return body ? httpd_reply(conn, status, "text/plain; charset=utf-8", body, strlen(body))
	            : MHD_NO;
}

static enum MHD_Result httpd_answer_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload, size_t *upload_size, void **state)
{
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return httpd_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET or HEAD only\n");
	if (strcmp(url, "/metrics") == 0) {
		char *body;
		size_t len;
		if (metrics_render(&body, &len) < 0)
			return httpd_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
		return httpd_reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
		                   len);
	}
	if (strcmp(url, "/healthz") == 0) {
		char reason[600], line[620];
		bool ok = metrics_healthy(reason, sizeof reason);
		snprintf(line, sizeof line, "%s\n", reason);
		return httpd_text(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, line);
	}
	return httpd_text(conn, MHD_HTTP_NOT_FOUND, "not found: /metrics, /healthz\n");
}

static void httpd_format(const struct sockaddr *sa, socklen_t len, char *out, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?", port[8] = "?";
	getnameinfo(sa, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(out, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

struct httpd *httpd_start(const struct config_addr *addr, char *bound, size_t boundsize,
                          char *err, size_t errsize)
{
	struct sockaddr_storage ss = addr->sa;
	socklen_t len = sizeof ss;
	int on = 1;
	int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
	    (addr->sa.ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) ||
	    bind(fd, (const struct sockaddr *)&addr->sa, addr->salen) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
		snprintf(err, errsize, "[metrics] listen %s: %s", addr->text, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	httpd_format((struct sockaddr *)&ss, len, bound, boundsize);
	struct httpd *h = calloc(1, sizeof *h);
	if (h)
		h->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
		                          httpd_answer_cb, h, MHD_OPTION_LISTEN_SOCKET, fd,
		                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTPD_CONNECTIONS,
		                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTPD_TIMEOUT_S,
		                          MHD_OPTION_END);
	if (!h || !h->mhd) {
		snprintf(err, errsize, "[metrics] listen %s: cannot start the HTTP server", addr->text);
		free(h);
		close(fd);
		return NULL;
	}
	return h;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	/* Also closes the listening socket it was given. */
	MHD_stop_daemon(h->mhd);
	free(h);
}
