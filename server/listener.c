/* listener: owns the listening sockets of one loop and the list of its
 * sessions; enforces max_clients. Never reads client bytes: a new connection
 * is handed to a session at once. */
#include "listener.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"

struct listener_sock {
	uv_tcp_t tcp;
	struct listener *l;
	const char *default_cert; /* borrowed from cfg */
	char text[64];
};

struct listener {
	uv_loop_t *loop;
	struct config *cfg; /* a reference */
	struct tls_context *tc; /* a reference, or NULL */
	struct listener_sock *socks;
	size_t nsocks;
	size_t open_socks;
	unsigned nclients;
	struct session_link sessions; /* list head */
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
};

static void listener_maybe_done(struct listener *l)
{
	if (!l->stopping || l->nclients || l->open_socks)
		return;
	void (*done)(void *) = l->done;
	void *arg = l->done_arg;
	config_unref(l->cfg);
	tls_context_unref(l->tc);
	free(l->socks);
	free(l);
	if (done)
		done(arg);
}

static void listener_session_gone(void *arg, struct session *s)
{
	struct listener *l = arg;
	struct session_link *k = session_link(s);
	k->prev->next = k->next;
	k->next->prev = k->prev;
	l->nclients--;
	listener_maybe_done(l);
}

static void listener_accept_cb(uv_stream_t *server, int status)
{
	struct listener_sock *ls = server->data;
	struct listener *l = ls->l;
	if (status < 0) {
		log_warn("event=accept_error listen=%s reason=\"%s\"", ls->text, uv_strerror(status));
		return;
	}
	struct session_owner owner = { listener_session_gone, l };
	struct session *s = session_new(l->loop, l->cfg, l->tc, ls->default_cert, &owner);
	if (!s) {
		log_error("event=accept_error listen=%s reason=\"out of memory\"", ls->text);
		return;
	}
	struct session_link *k = session_link(s);
	k->next = &l->sessions;
	k->prev = l->sessions.prev;
	l->sessions.prev->next = k;
	l->sessions.prev = k;
	l->nclients++;
	if (uv_accept(server, (uv_stream_t *)session_tcp(s)) != 0) {
		session_close(s, "accept failed");
		return;
	}
	bool busy = l->nclients > l->cfg->max_clients;
	if (busy)
		log_warn("event=limit kind=max_clients limit=%u", l->cfg->max_clients);
	session_start(s, busy);
}

static int listener_bind(struct listener *l, struct listener_sock *ls, const struct config_addr *a,
                         char *err, size_t errsize)
{
	ls->l = l;
	ls->tcp.data = ls;
	ls->default_cert = a->default_cert;
	snprintf(ls->text, sizeof ls->text, "%s", a->text);
	uv_tcp_init(l->loop, &ls->tcp);
	l->open_socks++;
	unsigned flags = a->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
	int rc = uv_tcp_bind(&ls->tcp, (const struct sockaddr *)&a->sa, flags);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&ls->tcp, 511, listener_accept_cb);
	if (rc < 0) {
		snprintf(err, errsize, "listen %s: %s", a->text, uv_strerror(rc));
		return -1;
	}
	return 0;
}

size_t listener_count(const struct listener *l)
{
	return l->nsocks;
}

int listener_address(const struct listener *l, size_t i, char *out, size_t size)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	char ip[INET6_ADDRSTRLEN];
	if (i >= l->nsocks || uv_tcp_getsockname(&l->socks[i].tcp, (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		snprintf(out, size, "[%s]:%d", ip, ntohs(sin6->sin6_port));
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		snprintf(out, size, "%s:%d", ip, ntohs(sin->sin_port));
	}
	return 0;
}

static void listener_sock_closed_cb(uv_handle_t *h)
{
	struct listener_sock *ls = h->data;
	struct listener *l = ls->l;
	l->open_socks--;
	listener_maybe_done(l);
}

static void listener_close_socks(struct listener *l)
{
	for (size_t i = 0; i < l->nsocks; i++)
		if (!uv_is_closing((uv_handle_t *)&l->socks[i].tcp))
			uv_close((uv_handle_t *)&l->socks[i].tcp, listener_sock_closed_cb);
}

struct listener *listener_new(uv_loop_t *loop, struct config *cfg, struct tls_context *tc,
                              char *err, size_t errsize)
{
	struct listener *l = calloc(1, sizeof *l);
	struct listener_sock *socks = calloc(cfg->n_listen, sizeof *socks);
	if (!l || !socks) {
		free(l);
		free(socks);
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	l->loop = loop;
	l->cfg = config_ref(cfg);
	l->tc = tc ? tls_context_ref(tc) : NULL;
	l->socks = socks;
	l->sessions.next = l->sessions.prev = &l->sessions;
	for (size_t i = 0; i < cfg->n_listen; i++) {
		l->nsocks++;
		if (listener_bind(l, &socks[i], &cfg->listen[i], err, errsize) < 0) {
			listener_stop(l, NULL, NULL);
			return NULL;
		}
	}
	return l;
}

void listener_stop(struct listener *l, void (*done)(void *arg), void *arg)
{
	if (l->stopping)
		return;
	l->stopping = true;
	l->done = done;
	l->done_arg = arg;
	listener_close_socks(l);
	/* session_shutdown may free nothing synchronously: closes complete in
	 * later callbacks, so walking the list here is safe. */
	for (struct session_link *k = l->sessions.next; k != &l->sessions; k = k->next)
		session_shutdown(k->session);
	listener_maybe_done(l);
}
