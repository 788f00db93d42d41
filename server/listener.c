/* listener: owns the listening sockets of one loop, the list of its
 * sessions, the shutdown timer, and references to the generation new
 * sessions get. Enforces max_clients. Never reads client bytes: a new
 * connection is handed to a session at once. */
#include "listener.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "iplimit.h"
#include "log.h"
#include "session.h"

/* One listening socket; allocated alone because libuv handles never move. */
struct listener_sock {
	uv_tcp_t tcp;
	struct listener *l;
	struct config_addr addr; /* copied: kept sockets outlive their config */
	const char *default_cert; /* borrowed from l->cfg */
};

struct listener {
	uv_loop_t *loop;
	struct config *cfg;     /* a reference: the generation for new sessions */
	struct tls_context *tc; /* a reference, or NULL */
	struct listener_sock **socks;
	size_t nsocks;
	size_t open_handles; /* sockets and the timer not yet closed */
	unsigned nclients;
	struct iplimit *iplimit;
	struct session_link sessions; /* list head */
	uv_timer_t shutdown_timer;
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
};

static void listener_timer_closed_cb(uv_handle_t *h);

static void listener_maybe_done(struct listener *l)
{
	if (!l->stopping || l->nclients || l->open_handles)
		return;
	void (*done)(void *) = l->done;
	void *arg = l->done_arg;
	config_unref(l->cfg);
	tls_context_unref(l->tc);
	iplimit_free(l->iplimit);
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
	if (k->counted)
		iplimit_release(l->iplimit, (struct sockaddr *)&k->peer);
	l->nclients--;
	if (l->stopping && l->nclients == 0 && !uv_is_closing((uv_handle_t *)&l->shutdown_timer))
		uv_close((uv_handle_t *)&l->shutdown_timer, listener_timer_closed_cb);
	listener_maybe_done(l);
}

/* Applies max_clients and the per-address limits to a new connection.
 * Returns NULL to admit it, or the refusal text for its 421. */
static const char *listener_admit(struct listener *l, struct session_link *k, uv_tcp_t *tcp)
{
	const struct config *cfg = l->cfg;
	if (l->nclients > cfg->max_clients) {
		log_warn("event=limit kind=max_clients limit=%u", cfg->max_clients);
		return "Too many connections, try again later";
	}
	int len = sizeof k->peer;
	if (uv_tcp_getpeername(tcp, (struct sockaddr *)&k->peer, &len) != 0)
		return NULL;
	switch (iplimit_acquire(l->iplimit, (struct sockaddr *)&k->peer, uv_now(l->loop),
	                        cfg->max_clients_per_ip, cfg->max_connection_rate)) {
	case IPLIMIT_OK:
		k->counted = true;
		return NULL;
	case IPLIMIT_TOO_MANY:
		log_warn("event=limit kind=max_clients_per_ip limit=%u", cfg->max_clients_per_ip);
		return "Too many connections from your address, try again later";
	case IPLIMIT_TOO_FAST:
		log_warn("event=limit kind=max_connection_rate limit=%u/min", cfg->max_connection_rate);
		return "Too many connections from your address per minute, try again later";
	}
	return NULL;
}

static void listener_accept_cb(uv_stream_t *server, int status)
{
	struct listener_sock *ls = server->data;
	struct listener *l = ls->l;
	if (status < 0) {
		log_warn("event=accept_error listen=%s reason=\"%s\"", ls->addr.text, uv_strerror(status));
		return;
	}
	struct session_owner owner = { listener_session_gone, l };
	struct session *s = session_new(l->loop, l->cfg, l->tc, ls->default_cert, &owner);
	if (!s) {
		log_error("event=accept_error listen=%s reason=\"out of memory\"", ls->addr.text);
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
	session_start(s, listener_admit(l, k, session_tcp(s)));
}

static void listener_sock_closed_cb(uv_handle_t *h)
{
	struct listener_sock *ls = h->data;
	struct listener *l = ls->l;
	free(ls->addr.text);
	free(ls->addr.unix_path);
	free(ls->addr.default_cert);
	free(ls);
	l->open_handles--;
	listener_maybe_done(l);
}

static void listener_sock_close(struct listener_sock *ls)
{
	if (!uv_is_closing((uv_handle_t *)&ls->tcp))
		uv_close((uv_handle_t *)&ls->tcp, listener_sock_closed_cb);
}

/* Opens a socket for A; NULL with ERR on failure (the handle then closes). */
static struct listener_sock *listener_sock_open(struct listener *l, const struct config_addr *a,
                                                char *err, size_t errsize)
{
	struct listener_sock *ls = calloc(1, sizeof *ls);
	if (!ls || !(ls->addr.text = strdup(a->text))) {
		free(ls);
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	ls->l = l;
	ls->tcp.data = ls;
	ls->addr.sa = a->sa;
	ls->addr.salen = a->salen;
	uv_tcp_init(l->loop, &ls->tcp);
	l->open_handles++;
	unsigned flags = a->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
	int rc = uv_tcp_bind(&ls->tcp, (const struct sockaddr *)&a->sa, flags);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&ls->tcp, 511, listener_accept_cb);
	if (rc < 0) {
		snprintf(err, errsize, "listen %s: %s", a->text, uv_strerror(rc));
		listener_sock_close(ls);
		return NULL;
	}
	return ls;
}

static bool listener_same_addr(const struct config_addr *a, const struct config_addr *b)
{
	return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

int listener_update(struct listener *l, struct config *cfg, struct tls_context *tc, char *err,
                    size_t errsize)
{
	struct listener_sock **next = calloc(cfg->n_listen ? cfg->n_listen : 1, sizeof *next);
	bool *fresh = calloc(cfg->n_listen ? cfg->n_listen : 1, sizeof *fresh);
	bool *kept = calloc(l->nsocks ? l->nsocks : 1, sizeof *kept);
	int rc = next && fresh && kept ? 0 : -1;
	if (rc < 0)
		snprintf(err, errsize, "out of memory");
	for (size_t i = 0; rc == 0 && i < cfg->n_listen; i++) {
		for (size_t j = 0; j < l->nsocks && !next[i]; j++)
			if (!kept[j] && listener_same_addr(&l->socks[j]->addr, &cfg->listen[i]))
				next[i] = l->socks[j], kept[j] = true;
		if (!next[i]) {
			next[i] = listener_sock_open(l, &cfg->listen[i], err, errsize);
			fresh[i] = true;
			if (!next[i])
				rc = -1;
		}
	}
	if (rc < 0) {
		/* Nothing changes: close only what this call opened. */
		for (size_t i = 0; next && i < cfg->n_listen; i++)
			if (fresh && fresh[i] && next[i])
				listener_sock_close(next[i]);
	} else {
		for (size_t j = 0; j < l->nsocks; j++) {
			if (!kept[j]) {
				log_info("event=listener_closed listen=%s", l->socks[j]->addr.text);
				listener_sock_close(l->socks[j]);
			}
		}
		for (size_t i = 0; i < cfg->n_listen; i++) {
			next[i]->default_cert = cfg->listen[i].default_cert;
			if (fresh[i] && l->nsocks)
				log_info("event=listener_opened listen=%s", cfg->listen[i].text);
		}
		free(l->socks);
		l->socks = next;
		next = NULL;
		l->nsocks = cfg->n_listen;
		struct config *old_cfg = l->cfg;
		struct tls_context *old_tc = l->tc;
		l->cfg = config_ref(cfg);
		l->tc = tc ? tls_context_ref(tc) : NULL;
		config_unref(old_cfg);
		tls_context_unref(old_tc);
	}
	free(next);
	free(fresh);
	free(kept);
	return rc;
}

size_t listener_count(const struct listener *l)
{
	return l->nsocks;
}

unsigned listener_sessions(const struct listener *l)
{
	return l->nclients;
}

int listener_address(const struct listener *l, size_t i, char *out, size_t size)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	char ip[INET6_ADDRSTRLEN];
	if (i >= l->nsocks || uv_tcp_getsockname(&l->socks[i]->tcp, (struct sockaddr *)&ss, &len) != 0)
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

int listener_write_addresses(const struct listener *l, const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	for (size_t i = 0; i < l->nsocks; i++) {
		char addr[80];
		if (listener_address(l, i, addr, sizeof addr) == 0)
			fprintf(f, "%s\n", addr);
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

struct listener *listener_new(uv_loop_t *loop, struct config *cfg, struct tls_context *tc,
                              char *err, size_t errsize)
{
	struct listener *l = calloc(1, sizeof *l);
	if (!l) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	l->loop = loop;
	l->sessions.next = l->sessions.prev = &l->sessions;
	l->iplimit = iplimit_new();
	if (!l->iplimit) {
		free(l);
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	uv_timer_init(loop, &l->shutdown_timer);
	l->shutdown_timer.data = l;
	l->open_handles = 1;
	l->cfg = config_ref(cfg);
	if (listener_update(l, cfg, tc, err, errsize) < 0) {
		listener_stop(l, NULL, NULL);
		return NULL;
	}
	return l;
}

static void listener_timer_closed_cb(uv_handle_t *h)
{
	struct listener *l = h->data;
	l->open_handles--;
	listener_maybe_done(l);
}

static void listener_grace_over_cb(uv_timer_t *t)
{
	struct listener *l = t->data;
	log_info("event=shutdown_timeout sessions=%u", l->nclients);
	struct session_link *k = l->sessions.next;
	while (k != &l->sessions) {
		struct session_link *next = k->next; /* closing frees later, never now */
		session_shutdown_now(k->session);
		k = next;
	}
}

void listener_stop(struct listener *l, void (*done)(void *arg), void *arg)
{
	if (l->stopping)
		return;
	l->stopping = true;
	l->done = done;
	l->done_arg = arg;
	for (size_t i = 0; i < l->nsocks; i++)
		listener_sock_close(l->socks[i]);
	l->nsocks = 0;
	l->shutdown_timer.data = l;
	if (l->nclients == 0) {
		uv_close((uv_handle_t *)&l->shutdown_timer, listener_timer_closed_cb);
		listener_maybe_done(l);
		return;
	}
	/* listener_session_gone closes the timer with this callback. */
	uv_timer_start(&l->shutdown_timer, listener_grace_over_cb, l->cfg->shutdown_timeout_ms, 0);
	struct session_link *k = l->sessions.next;
	while (k != &l->sessions) {
		struct session_link *next = k->next;
		session_shutdown(k->session);
		k = next;
	}
}
