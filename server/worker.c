/* worker: owns one thread, its loop, its listener, its backend connection
 * pool and a mailbox (mutex + uv_async) through which the main thread sends
 * generations and the stop.
 * Nothing else crosses threads: config and TLS context are immutable and
 * reference-counted. */
#include "worker.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_pool.h"
#include "log.h"
#include "metrics.h"

enum worker_kind { WORKER_UPDATE, WORKER_STOP };

/* One message; owns its references and file descriptors until handled. */
struct worker_msg {
	struct worker_msg *next;
	enum worker_kind kind;
	struct generation *gen;
	struct config *cfg; /* gen's */
	int *fds;
};

struct worker {
	unsigned index;
	unsigned nworkers;
	uv_thread_t thread;
	uv_loop_t loop;
	uv_async_t mailbox;
	uv_mutex_t lock;
	struct worker_msg *head, *tail; /* under lock */
	struct listener *listener;
	struct backend_pool *pool;
	struct listener_shared *shared;
	struct worker_msg *first; /* the initial generation, handled on the thread */
	bool stopping;
	void (*done)(void *arg);
	void *arg;
};

static void worker_msg_free(struct worker_msg *m)
{
	generation_unref(m->gen);
	free(m->fds);
	free(m);
}

static struct worker_msg *worker_msg_new(enum worker_kind kind, struct generation *gen,
                                         const int *fds)
{
	struct worker_msg *m = calloc(1, sizeof *m);
	size_t n = gen ? gen->cfg->n_listen : 0;
	if (!m || (n && !(m->fds = malloc(n * sizeof *m->fds)))) {
		free(m);
		for (size_t i = 0; i < n; i++)
			if (fds[i] >= 0)
				close(fds[i]);
		return NULL;
	}
	m->kind = kind;
	m->gen = gen ? generation_ref(gen) : NULL;
	m->cfg = gen ? gen->cfg : NULL;
	if (n)
		memcpy(m->fds, fds, n * sizeof *fds);
	return m;
}

static void worker_closed_cb(uv_handle_t *h)
{
	(void)h;
}

static void worker_listener_done_cb(void *arg)
{
	struct worker *w = arg;
	w->listener = NULL;
	/* Every session is gone: no connection is lent any more. */
	backend_pool_free(w->pool);
	w->pool = NULL;
	uv_close((uv_handle_t *)&w->mailbox, worker_closed_cb);
}

static void worker_handle(struct worker *w, struct worker_msg *m)
{
	if (m->kind == WORKER_STOP) {
		if (!w->stopping) {
			w->stopping = true;
			listener_stop(w->listener, worker_listener_done_cb, w);
		}
	} else if (w->stopping) {
		for (size_t i = 0; i < m->cfg->n_listen; i++)
			if (m->fds[i] >= 0)
				close(m->fds[i]);
	} else {
		backend_pool_update(w->pool, m->cfg);
		listener_update(w->listener, m->gen, m->fds);
	}
	worker_msg_free(m);
}

static void worker_mailbox_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	uv_mutex_lock(&w->lock);
	struct worker_msg *m = w->head;
	w->head = w->tail = NULL;
	uv_mutex_unlock(&w->lock);
	while (m) {
		struct worker_msg *next = m->next;
		worker_handle(w, m);
		m = next;
	}
}

static void worker_post(struct worker *w, struct worker_msg *m)
{
	if (!m)
		return;
	uv_mutex_lock(&w->lock);
	if (w->tail)
		w->tail->next = m;
	else
		w->head = m;
	w->tail = m;
	uv_mutex_unlock(&w->lock);
	uv_async_send(&w->mailbox);
}

static void worker_main(void *arg)
{
	struct worker *w = arg;
	struct worker_msg *m = w->first;
	w->first = NULL;
	metrics_worker_enter(w->index);
	/* The listener takes the sockets; the array stays the message's. */
	w->pool = backend_pool_new(&w->loop, m->cfg, w->nworkers);
	if (w->pool)
		w->listener = listener_new(&w->loop, w->shared, w->pool, m->gen, m->fds);
	else
		for (size_t i = 0; i < m->cfg->n_listen; i++)
			close(m->fds[i]);
	worker_msg_free(m);
	if (!w->listener) {
		log_error("event=worker_error worker=%u reason=\"out of memory\"", w->index);
		w->stopping = true;
		backend_pool_free(w->pool);
		w->pool = NULL;
		uv_close((uv_handle_t *)&w->mailbox, worker_closed_cb);
	}
	uv_run(&w->loop, UV_RUN_DEFAULT);
	/* Messages that arrived after the stop still own references. */
	worker_mailbox_cb(&w->mailbox);
	uv_loop_close(&w->loop);
	w->done(w->arg);
}

struct worker *worker_start(unsigned index, unsigned nworkers, struct listener_shared *shared,
                            struct generation *gen, const int *fds,
                            void (*done)(void *arg), void *arg)
{
	struct worker *w = calloc(1, sizeof *w);
	struct worker_msg *m = worker_msg_new(WORKER_UPDATE, gen, fds);
	if (!w || !m) {
		free(w);
		if (m)
			worker_msg_free(m);
		return NULL;
	}
	w->index = index;
	w->nworkers = nworkers;
	w->shared = shared;
	w->first = m;
	w->done = done;
	w->arg = arg;
	uv_loop_init(&w->loop);
	uv_mutex_init(&w->lock);
	uv_async_init(&w->loop, &w->mailbox, worker_mailbox_cb);
	w->mailbox.data = w;
	if (uv_thread_create(&w->thread, worker_main, w) != 0) {
		/* Never started: undo by hand. */
		uv_close((uv_handle_t *)&w->mailbox, NULL);
		uv_run(&w->loop, UV_RUN_DEFAULT);
		uv_loop_close(&w->loop);
		uv_mutex_destroy(&w->lock);
		for (size_t i = 0; i < gen->cfg->n_listen; i++)
			close(m->fds[i]);
		worker_msg_free(m);
		free(w);
		return NULL;
	}
	return w;
}

void worker_update(struct worker *w, struct generation *gen, const int *fds)
{
	worker_post(w, worker_msg_new(WORKER_UPDATE, gen, fds));
}

void worker_stop(struct worker *w)
{
	worker_post(w, worker_msg_new(WORKER_STOP, NULL, NULL));
}

void worker_join(struct worker *w)
{
	uv_thread_join(&w->thread);
	uv_mutex_destroy(&w->lock);
	free(w);
}
