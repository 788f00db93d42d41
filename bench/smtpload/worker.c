/* worker: one thread, one libuv loop, a fixed array of connection slots.
 * Starts slots (at most --max-pending being set up), restarts them after
 * QUIT (after a back-off when they failed early), hands out messages from the
 * shared count, and runs a 100 ms tick that enforces deadlines and ends the
 * run. Never parses SMTP (proto.c) nor touches sockets (conn.c). */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "proto.h"
#include "tlsc.h"

#define WORKER_TICK_MS 100
#define WORKER_BACKOFF_NS (100 * 1000 * 1000ull)

static void worker_push_wait(struct worker *w, struct conn *c)
{
	w->wait[w->nwait++] = c->index;
}

int worker_init(struct worker *w, struct run *r, unsigned index, unsigned nconns, char *err,
                size_t errsize)
{
	memset(w, 0, sizeof *w);
	w->run = r;
	w->index = index;
	w->nconns = nconns;
	if (uv_loop_init(&w->loop) < 0) {
		snprintf(err, errsize, "uv_loop_init failed");
		return -1;
	}
	w->loop_ok = true;
	uv_timer_init(&w->loop, &w->tick);
	w->tick.data = w;
	if (r->o->starttls && tlsc_ctx_new(r->o, &w->tls, err, errsize) < 0)
		return -1;
	w->st = calloc(1, sizeof *w->st);
	w->conns = calloc(nconns ? nconns : 1, sizeof *w->conns);
	w->wait = calloc(nconns ? nconns : 1, sizeof *w->wait);
	if (!w->st || !w->conns || !w->wait) {
		snprintf(err, errsize, "out of memory for %u connections", nconns);
		return -1;
	}
	for (unsigned i = 0; i < nconns; i++) {
		if (conn_init(&w->conns[i], w, i) < 0) {
			snprintf(err, errsize, "out of memory for %u connections", nconns);
			return -1;
		}
	}
	/* Slot 0 first. */
	for (unsigned i = nconns; i-- > 0;)
		worker_push_wait(w, &w->conns[i]);
	/* Spread recipients and SNI names of the threads apart. */
	w->rcpt_seq = (unsigned long long)index * 7919;
	return 0;
}

void worker_fini(struct worker *w)
{
	if (w->conns)
		for (unsigned i = 0; i < w->nconns; i++)
			conn_fini(&w->conns[i]);
	free(w->conns);
	free(w->wait);
	free(w->st);
	tlsc_ctx_free(w->tls);
	if (w->loop_ok) {
		/* A worker that never ran still has its tick open. */
		if (!uv_is_closing((uv_handle_t *)&w->tick))
			uv_close((uv_handle_t *)&w->tick, NULL);
		uv_run(&w->loop, UV_RUN_DEFAULT);
		uv_loop_close(&w->loop);
	}
}

static bool worker_work_remains(const struct worker *w)
{
	if (w->stopping)
		return false;
	if (w->run->o->idle)
		return true;
	return atomic_load(&w->run->remaining) != 0;
}

bool worker_claim(struct worker *w)
{
	struct run *r = w->run;
	if (w->stopping)
		return false;
	long long v = atomic_load(&r->remaining);
	/* Ends: each failed exchange means another thread took one. */
	while (v != -1) {
		if (v <= 0)
			return false;
		if (atomic_compare_exchange_weak(&r->remaining, &v, v - 1))
			break;
	}
	w->st->attempted++;
	return true;
}

const char *worker_next_sni(struct worker *w, size_t *slot)
{
	const struct opts *o = w->run->o;
	unsigned long long k = w->sni_seq++ * o->threads + w->index;
	*slot = o->nsni;
	/* Exactly P of every 100 consecutive connections send no SNI. */
	if (o->no_sni_pct && (k + 1) * o->no_sni_pct / 100 > k * o->no_sni_pct / 100)
		return NULL;
	if (o->nsni == 0)
		return NULL;
	*slot = (w->sni_name_seq++ + w->index) % o->nsni;
	return o->sni[*slot];
}

/* Idle mode: one more connection is up or has failed for good. The thread
 * that settles the last one announces it and starts the hold. */
static void worker_idle_settled(struct worker *w)
{
	struct run *r = w->run;
	unsigned n = atomic_fetch_add(&r->idle_settled, 1) + 1;
	if (n != r->o->idle)
		return;
	printf("ESTABLISHED %u\n", atomic_load(&r->idle_established));
	fflush(stdout);
	atomic_store(&r->hold_until, uv_hrtime() + (uint64_t)(r->o->duration * 1e9));
}

static void worker_start(struct worker *w, struct conn *c)
{
	if (conn_start(c) == 0) {
		w->open++;
		w->pending++;
		return;
	}
	if (w->run->o->idle) {
		worker_idle_settled(w);
		return;
	}
	c->retry_at = uv_hrtime() + WORKER_BACKOFF_NS;
	w->backoff++;
}

static void worker_kick(struct worker *w)
{
	while (w->nwait > 0 && w->pending < w->run->o->max_pending && worker_work_remains(w))
		worker_start(w, &w->conns[w->wait[--w->nwait]]);
}

static void worker_maybe_finish(struct worker *w)
{
	if (w->open > 0 || uv_is_closing((uv_handle_t *)&w->tick))
		return;
	if (worker_work_remains(w) && (w->nwait > 0 || w->backoff > 0))
		return;
	uv_timer_stop(&w->tick);
	uv_close((uv_handle_t *)&w->tick, NULL);
}

void worker_established(struct worker *w, struct conn *c)
{
	w->st->sessions++;
	w->pending--;
	if (w->run->o->idle) {
		w->st->idle_established++;
		atomic_fetch_add(&w->run->idle_established, 1);
		worker_idle_settled(w);
		if (w->stopping)
			proto_quit_idle(c);
	}
	worker_kick(w);
}

void worker_slot_done(struct worker *w, struct conn *c)
{
	w->open--;
	if (!c->p.established)
		w->pending--;
	if (w->run->o->idle) {
		if (!c->p.established)
			worker_idle_settled(w);
		else if (c->failed)
			w->st->idle_lost++;
	} else if (c->failed && !c->p.established) {
		/* A connection that failed before any message still uses one up,
		 * so that a dead server ends a -n run. */
		if (c->p.msgs == 0)
			worker_claim(w);
		c->retry_at = uv_hrtime() + WORKER_BACKOFF_NS;
		w->backoff++;
	} else {
		worker_push_wait(w, c);
	}
	worker_kick(w);
	worker_maybe_finish(w);
}

static void worker_stop(struct worker *w, uint64_t now)
{
	w->stopping = true;
	w->drain_deadline = now + (uint64_t)((w->run->o->timeout + 1) * 1e9);
	for (unsigned i = 0; i < w->nconns; i++)
		proto_quit_idle(&w->conns[i]);
}

static bool worker_should_stop(const struct worker *w, uint64_t now)
{
	const struct run *r = w->run;
	uint64_t hold = atomic_load(&r->hold_until);
	return atomic_load(&r->stop) || (r->deadline_ns && now >= r->deadline_ns) ||
	       (r->o->idle && hold && now >= hold);
}

/* Every 100 ms: timeouts, back-offs that are due, the end of the run. */
static void worker_tick_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	uint64_t now = uv_hrtime();
	if (!w->stopping && worker_should_stop(w, now))
		worker_stop(w, now);
	bool drain_over = w->stopping && now >= w->drain_deadline;
	for (unsigned i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_FREE && c->retry_at && now >= c->retry_at) {
			c->retry_at = 0;
			w->backoff--;
			worker_push_wait(w, c);
		} else if (drain_over && c->state != CONN_FREE) {
			conn_close(c, STATS_ERR_TIMEOUT);
		} else {
			conn_check_timeout(c, now);
		}
	}
	worker_kick(w);
	worker_maybe_finish(w);
}

void worker_run(void *arg)
{
	struct worker *w = arg;
	uv_timer_start(&w->tick, worker_tick_cb, WORKER_TICK_MS, WORKER_TICK_MS);
	worker_kick(w);
	worker_maybe_finish(w);
	uv_run(&w->loop, UV_RUN_DEFAULT);
	w->end_ns = uv_hrtime();
}
