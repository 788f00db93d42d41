/* listener: owns the listening sockets of one loop, the list of its
 * sessions, the shutdown and resume timers, and references to the
 * generation new sessions get. Enforces max_clients; out of descriptors, it
 * pauses accepting instead of spinning. Never reads client bytes: a new
 * connection is handed to a session at once. */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "iplimit.h"
#include "log.h"
#include "metrics.h"
#include "session.h"

/* What the listeners of all workers share: the client total for
 * max_clients and the per-address counts, behind one mutex (taken once per
 * connect and once per close, never while waiting). */
struct listener_shared {
	atomic_uint nclients;
	uv_mutex_t lock;
	struct iplimit *iplimit;
};

/* Accepting, done here rather than by uv_listen/uv_accept. When accept
 * fails with EMFILE, libuv (1.44, uv__server_io) closes a per-loop reserve
 * descriptor, accepts and closes every waiting connection (clients get a
 * silent close, no 421) and reopens the reserve. Worker threads share one
 * descriptor table, so another thread can take the freed slot: the reserve
 * is then lost, and uv__server_io retries the accept and reports EMFILE in a
 * loop that never returns to the event loop while connections wait. That
 * worker burns a CPU logging accept errors, never sees its sessions' EOFs
 * (so no descriptor is ever freed) and never reads the stop from its
 * mailbox. So the listening socket is watched with a uv_poll_t: a readiness
 * event takes at most LISTENER_ACCEPT_BATCH connections with accept4(2),
 * each given to its session's handle with uv_tcp_open; running out of
 * descriptors (or memory) stops watching the socket for LISTENER_PAUSE_MS
 * (as nginx disables its accept events), with the connections left waiting
 * in the kernel's backlog to be greeted once descriptors free up. */
#define LISTENER_ACCEPT_BATCH 32
#define LISTENER_PAUSE_MS 100
#define LISTENER_LOG_EVERY_MS 1000 /* at most one event=limit kind=fd line per loop */

/* One listening socket; allocated alone because libuv handles never move. */
struct listener_sock {
	uv_poll_t poll; /* watches fd, which it does not own */
	int fd;
	bool paused; /* not watched until the resume timer fires */
	struct listener *l;
	struct config_addr addr; /* copied: kept sockets outlive their config */
	size_t index; /* in l->gen->cfg->listen: its default certificate */
	unsigned metric; /* its metrics_listener_slot */
};

struct listener {
	uv_loop_t *loop;
	struct generation *gen; /* a reference: what new sessions get */
	struct config *cfg;     /* gen's */
	struct listener_sock **socks;
	size_t nsocks;
	size_t open_handles; /* sockets and the timer not yet closed */
	unsigned nclients;            /* this loop's sessions */
	struct listener_shared *shared;
	struct backend_pool *pool;
	struct session_link sessions; /* list head */
	uv_timer_t shutdown_timer;
	uv_timer_t resume_timer; /* active while a socket is paused */
	uint64_t accept_logged;  /* loop time of the last accept problem logged */
	unsigned long deferred;  /* accepts that failed since then */
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
};

static void listener_timer_closed_cb(uv_handle_t *h);
static void listener_resume(struct listener *l);
static void listener_poll_cb(uv_poll_t *p, int status, int events);

static void listener_maybe_done(struct listener *l)
{
	if (!l->stopping || l->nclients || l->open_handles)
		return;
	void (*done)(void *) = l->done;
	void *arg = l->done_arg;
	generation_unref(l->gen);
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
	if (k->counted) {
		uv_mutex_lock(&l->shared->lock);
		iplimit_release(l->shared->iplimit, (struct sockaddr *)&k->peer);
		uv_mutex_unlock(&l->shared->lock);
	}
	atomic_fetch_sub(&l->shared->nclients, 1);
	l->nclients--;
	metrics_gauge(METRICS_SESSIONS, -1);
	/* Its descriptor is free now (the timer covers those of other loops). */
	if (!l->stopping && uv_is_active((uv_handle_t *)&l->resume_timer))
		listener_resume(l);
	if (l->stopping && l->nclients == 0 && !uv_is_closing((uv_handle_t *)&l->shutdown_timer))
		uv_close((uv_handle_t *)&l->shutdown_timer, listener_timer_closed_cb);
	listener_maybe_done(l);
}

/* Applies max_clients to a new connection, at accept. Returns NULL to
 * admit it, or the refusal text for its 421. */
static const char *listener_admit_total(struct listener *l)
{
	const struct config *cfg = l->cfg;
	if (atomic_load(&l->shared->nclients) > cfg->max_clients) {
		metrics_inc(METRICS_LIMIT_MAX_CLIENTS);
		log_warn("event=limit kind=max_clients limit=%u", cfg->max_clients);
		return "Too many connections, try again later";
	}
	return NULL;
}

/* session_owner.admit: the per-address limits for the session's client,
 * asked once it is known (after the PROXY header on a proxy= listener, so
 * that the real client is counted, not the load balancer). Returns NULL to
 * admit it, or the refusal text for its 421. */
static const char *listener_admit_cb(void *arg, struct session *s, const struct sockaddr *sa)
{
	struct listener *l = arg;
	const struct config *cfg = l->cfg;
	struct session_link *k = session_link(s);
	socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
	                                          : sizeof(struct sockaddr_in);
	memset(&k->peer, 0, sizeof k->peer);
	memcpy(&k->peer, sa, len);
	uv_mutex_lock(&l->shared->lock);
	enum iplimit_verdict v = iplimit_acquire(l->shared->iplimit, (struct sockaddr *)&k->peer,
	                                         uv_now(l->loop), cfg->max_clients_per_ip,
	                                         cfg->max_connection_rate);
	uv_mutex_unlock(&l->shared->lock);
	metrics_connection(k->metric, v == IPLIMIT_OK);
	switch (v) {
	case IPLIMIT_OK:
		k->counted = true;
		return NULL;
	case IPLIMIT_TOO_MANY:
		metrics_inc(METRICS_LIMIT_MAX_CLIENTS_PER_IP);
		log_warn("event=limit kind=max_clients_per_ip limit=%u", cfg->max_clients_per_ip);
		return "Too many connections from your address, try again later";
	case IPLIMIT_TOO_FAST:
		metrics_inc(METRICS_LIMIT_MAX_CONNECTION_RATE);
		log_warn("event=limit kind=max_connection_rate limit=%u/min", cfg->max_connection_rate);
		return "Too many connections from your address per minute, try again later";
	}
	return NULL;
}

/* Connections waiting in LS's accept queue (Linux reports it in TCP_INFO
 * of a listening socket), or -1. */
static long listener_backlog(const struct listener_sock *ls)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;
	if (getsockopt(ls->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_state != TCP_LISTEN)
		return -1;
	return (long)ti.tcpi_unacked;
}

static void listener_resume_cb(uv_timer_t *t)
{
	listener_resume(t->data);
}

/* Watches every paused socket again. */
static void listener_resume(struct listener *l)
{
	uv_timer_stop(&l->resume_timer);
	for (size_t i = 0; i < l->nsocks; i++) {
		struct listener_sock *ls = l->socks[i];
		if (ls->paused) {
			ls->paused = false;
			uv_poll_start(&ls->poll, UV_READABLE, listener_poll_cb);
		}
	}
}

/* Accept failed with ERR (an errno): stops watching LS until the resume
 * timer, leaving the connection in the backlog; logs at most once per
 * LISTENER_LOG_EVERY_MS, with the failures since the last line. */
static void listener_pause(struct listener_sock *ls, int err)
{
	struct listener *l = ls->l;
	uv_poll_stop(&ls->poll);
	ls->paused = true;
	if (!uv_is_active((uv_handle_t *)&l->resume_timer))
		uv_timer_start(&l->resume_timer, listener_resume_cb, LISTENER_PAUSE_MS, 0);
	l->deferred++;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
		metrics_inc(METRICS_LIMIT_FD);
	uint64_t now = uv_now(l->loop);
	if (l->accept_logged && now - l->accept_logged < LISTENER_LOG_EVERY_MS)
		return;
	l->accept_logged = now ? now : 1;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
		log_warn("event=limit kind=fd listen=%s reason=\"%s\" deferred=%lu backlog=%ld "
		         "sessions=%u",
		         ls->addr.text, strerror(err), l->deferred, listener_backlog(ls), l->nclients);
	else
		log_warn("event=accept_error listen=%s reason=\"%s\" deferred=%lu", ls->addr.text,
		         strerror(err), l->deferred);
	l->deferred = 0;
}

/* Hands accepted FD (owned) to a new session. */
static void listener_start_session(struct listener_sock *ls, int fd)
{
	struct listener *l = ls->l;
	struct session_owner owner = { listener_session_gone, listener_admit_cb, l };
	struct session *s = session_new(l->loop, l->gen, ls->index, l->pool, &owner);
	if (!s) {
		close(fd);
		log_error("event=accept_error listen=%s reason=\"out of memory\"", ls->addr.text);
		return;
	}
	struct session_link *k = session_link(s);
	k->next = &l->sessions;
	k->prev = l->sessions.prev;
	l->sessions.prev->next = k;
	l->sessions.prev = k;
	l->nclients++;
	atomic_fetch_add(&l->shared->nclients, 1);
	metrics_gauge(METRICS_SESSIONS, 1);
	if (uv_tcp_open(session_tcp(s), fd) != 0) {
		if (uv_fileno((uv_handle_t *)session_tcp(s), &(uv_os_fd_t){ 0 }) != 0)
			close(fd);
		session_close(s, "accept failed");
		return;
	}
	/* Counted as admitted or not once the per-address limits have spoken
	 * (listener_admit_cb), unless max_clients refuses it now. */
	const char *refuse = listener_admit_total(l);
	k->metric = ls->metric;
	if (refuse)
		metrics_connection(ls->metric, false);
	session_start(s, refuse);
}

static void listener_poll_cb(uv_poll_t *p, int status, int events)
{
	struct listener_sock *ls = p->data;
	if (status < 0) {
		listener_pause(ls, -status);
		return;
	}
	for (int i = 0; i < LISTENER_ACCEPT_BATCH; i++) {
		int fd = accept4(ls->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			listener_start_session(ls, fd);
			continue;
		}
		switch (errno) {
		case EAGAIN:
			return;
		/* This connection is gone (taken off the queue), or failed with a
		 * network error that accept(2) passes on: the next may be fine. */
		case EINTR:
		case ECONNABORTED:
		case EPROTO:
		case ENETDOWN:
		case ENOPROTOOPT:
		case EHOSTDOWN:
		case ENONET:
		case EHOSTUNREACH:
		case EOPNOTSUPP:
		case ENETUNREACH:
			continue;
		default: /* out of descriptors or memory, EPERM (an LSM), a bug: never spin */
			listener_pause(ls, errno);
			return;
		}
	}
}

static void listener_sock_closed_cb(uv_handle_t *h)
{
	struct listener_sock *ls = h->data;
	struct listener *l = ls->l;
	close(ls->fd);
	free(ls->addr.text);
	free(ls->addr.unix_path);
	free(ls->addr.default_cert);
	free(ls);
	l->open_handles--;
	listener_maybe_done(l);
}

static void listener_sock_close(struct listener_sock *ls)
{
	if (!uv_is_closing((uv_handle_t *)&ls->poll))
		uv_close((uv_handle_t *)&ls->poll, listener_sock_closed_cb);
}

/* Wraps the bound, listening FD for A; NULL on failure (FD closed). */
static struct listener_sock *listener_sock_open(struct listener *l, const struct config_addr *a,
                                                int fd)
{
	struct listener_sock *ls = calloc(1, sizeof *ls);
	if (!ls || !(ls->addr.text = strdup(a->text))) {
		free(ls);
		close(fd);
		log_error("event=listen_error listen=%s reason=\"out of memory\"", a->text);
		return NULL;
	}
	ls->l = l;
	ls->fd = fd;
	ls->metric = metrics_listener_slot(a->text);
	ls->addr.sa = a->sa;
	ls->addr.salen = a->salen;
	/* listener_bind made it listen. */
	int rc = uv_poll_init_socket(l->loop, &ls->poll, fd);
	if (rc < 0) {
		log_error("event=listen_error listen=%s reason=\"%s\"", a->text, uv_strerror(rc));
		close(fd);
		free(ls->addr.text);
		free(ls);
		return NULL;
	}
	ls->poll.data = ls;
	l->open_handles++;
	rc = uv_poll_start(&ls->poll, UV_READABLE, listener_poll_cb);
	if (rc < 0) {
		log_error("event=listen_error listen=%s reason=\"%s\"", a->text, uv_strerror(rc));
		listener_sock_close(ls); /* closes fd */
		return NULL;
	}
	return ls;
}

static bool listener_same_addr(const struct config_addr *a, const struct config_addr *b)
{
	return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

bool listener_same_address(const struct config_addr *a, const struct config_addr *b)
{
	return listener_same_addr(a, b);
}

void listener_update(struct listener *l, struct generation *gen, const int *fds)
{
	struct config *cfg = gen->cfg;
	struct listener_sock **next = calloc(cfg->n_listen ? cfg->n_listen : 1, sizeof *next);
	bool *kept = calloc(l->nsocks ? l->nsocks : 1, sizeof *kept);
	if (!next || !kept) {
		log_error("event=reload_error reason=\"out of memory: listeners unchanged\"");
		for (size_t i = 0; i < cfg->n_listen; i++)
			if (fds[i] >= 0)
				close(fds[i]);
		free(next);
		free(kept);
		return;
	}
	size_t n = 0;
	for (size_t i = 0; i < cfg->n_listen; i++) {
		struct listener_sock *ls = NULL;
		if (fds[i] >= 0) {
			ls = listener_sock_open(l, &cfg->listen[i], fds[i]);
		} else {
			for (size_t j = 0; j < l->nsocks && !ls; j++)
				if (!kept[j] && listener_same_addr(&l->socks[j]->addr, &cfg->listen[i]))
					ls = l->socks[j], kept[j] = true;
		}
		if (ls) {
			ls->index = i;
			next[n++] = ls;
		}
	}
	for (size_t j = 0; j < l->nsocks; j++)
		if (!kept[j])
			listener_sock_close(l->socks[j]);
	free(l->socks);
	free(kept);
	l->socks = next;
	l->nsocks = n;
	struct generation *old = l->gen;
	l->gen = generation_ref(gen);
	l->cfg = gen->cfg;
	generation_unref(old);
}

/* One socket bound to SA with SO_REUSEPORT, listening if LISTEN; -1 with ERR. */
static int listener_socket(const struct sockaddr *sa, socklen_t salen, bool listen_too, char *err,
                           size_t errsize)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int on = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
	    (sa->sa_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) ||
	    bind(fd, sa, salen) < 0 || (listen_too && listen(fd, 511) < 0)) {
		int e = errno;
		snprintf(err, errsize, "%s", strerror(e));
		if (fd >= 0)
			close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int listener_try_bind(const struct config_addr *a, int *error, char *err, size_t errsize)
{
	int fd = listener_socket((const struct sockaddr *)&a->sa, a->salen, false, err, errsize);
	*error = fd < 0 ? errno : 0;
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static void listener_format(const struct sockaddr *sa, char *out, size_t size)
{
	char ip[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		snprintf(out, size, "[%s]:%d", ip, ntohs(sin6->sin6_port));
	} else {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		snprintf(out, size, "%s:%d", ip, ntohs(sin->sin_port));
	}
}

int listener_bind(const struct config_addr *a, unsigned n, int *fds, char *bound, size_t boundsize,
                  char *err, size_t errsize)
{
	struct sockaddr_storage ss = a->sa;
	socklen_t len = a->salen;
	char why[200];
	for (unsigned i = 0; i < n; i++) {
		fds[i] = listener_socket((struct sockaddr *)&ss, len, true, why, sizeof why);
		if (fds[i] < 0) {
			snprintf(err, errsize, "listen %s: %s", a->text, why);
			while (i--)
				close(fds[i]);
			return -1;
		}
		if (i == 0) {
			/* Port 0: every worker's socket must share the one port picked. */
			socklen_t got = sizeof ss;
			getsockname(fds[0], (struct sockaddr *)&ss, &got);
			len = got;
			listener_format((struct sockaddr *)&ss, bound, boundsize);
		}
	}
	return 0;
}

struct listener_shared *listener_shared_new(void)
{
	struct listener_shared *sh = calloc(1, sizeof *sh);
	if (!sh)
		return NULL;
	sh->iplimit = iplimit_new();
	if (!sh->iplimit || uv_mutex_init(&sh->lock) != 0) {
		iplimit_free(sh->iplimit);
		free(sh);
		return NULL;
	}
	return sh;
}

unsigned listener_shared_sessions(struct listener_shared *sh)
{
	return atomic_load(&sh->nclients);
}

void listener_shared_free(struct listener_shared *sh)
{
	if (!sh)
		return;
	uv_mutex_destroy(&sh->lock);
	iplimit_free(sh->iplimit);
	free(sh);
}

unsigned listener_sessions(const struct listener *l)
{
	return l->nclients;
}

struct listener *listener_new(uv_loop_t *loop, struct listener_shared *shared,
                              struct backend_pool *pool, struct generation *gen,
                              const int *fds)
{
	struct listener *l = calloc(1, sizeof *l);
	if (!l) {
		for (size_t i = 0; i < gen->cfg->n_listen; i++)
			close(fds[i]);
		return NULL;
	}
	l->loop = loop;
	l->shared = shared;
	l->pool = pool;
	l->sessions.next = l->sessions.prev = &l->sessions;
	uv_timer_init(loop, &l->shutdown_timer);
	l->shutdown_timer.data = l;
	uv_timer_init(loop, &l->resume_timer);
	l->resume_timer.data = l;
	l->open_handles = 2;
	l->gen = generation_ref(gen);
	l->cfg = gen->cfg;
	listener_update(l, gen, fds);
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
	uv_close((uv_handle_t *)&l->resume_timer, listener_timer_closed_cb);
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
