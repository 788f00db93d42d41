/* backend_pool: owns one worker's backend connections while they are not
 * lent (being set up, idle, being reset), the queue of relays waiting for
 * one, the backend's up/down state and its cached capabilities. Never sees a
 * client or a transaction: a lent connection is the relay's alone. */
#include "backend_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

#define BACKEND_POOL_BACKOFF_MIN_MS 250
#define BACKEND_POOL_BACKOFF_MAX_MS 10000

enum backend_pool_state {
	POOL_CONN_CONNECTING,
	POOL_CONN_GREETING,
	POOL_CONN_LHLO,
	POOL_CONN_IDLE,
	POOL_CONN_RESET,
	POOL_CONN_LENT,
};

static const char *const backend_pool_stage[] = {
	"connecting", "greeting", "lhlo", "idle", "reset", "lent",
};

/* A list of connections (idle ones: most recently used first). */
struct backend_pool_list {
	struct backend_conn *head;
	unsigned n;
};

struct backend_pool {
	uv_loop_t *loop;
	struct config *cfg; /* a reference */
	unsigned nworkers;
	unsigned max;        /* this worker's share of max_connections */
	unsigned generation;
	unsigned nconns;     /* open: setting up, idle, resetting or lent */
	unsigned nsetup;
	struct backend_pool_list idle;
	struct backend_pool_list owned; /* setting up or resetting */
	struct backend_waiter *whead, *wtail;
	unsigned nwaiting;
	uv_timer_t queue_timer;
	uv_timer_t retry_timer;
	int open_timers;
	bool stopping;

	bool down;
	bool probing;        /* a connection is being set up while down */
	uint64_t retry_at;   /* while down: no new attempt before this */
	unsigned backoff_ms;

	bool caps_known;
	unsigned caps;
};

static const struct backend_conn_cbs backend_pool_conn_cbs;

/* The worker's gauges follow the pool: called at the end of each entry
 * point and callback that changes it. */
static void backend_pool_gauges(const struct backend_pool *p)
{
	metrics_gauge_set(METRICS_POOL_SIZE, p->nconns);
	metrics_gauge_set(METRICS_POOL_BUSY, p->nconns - p->idle.n - p->owned.n);
	metrics_gauge_set(METRICS_POOL_WAITING, p->nwaiting);
	metrics_gauge_set(METRICS_BACKEND_STATE, p->down ? METRICS_BACKEND_DOWN
	                  : p->caps_known ? METRICS_BACKEND_UP : METRICS_BACKEND_UNKNOWN);
}

static void backend_pool_list_add(struct backend_pool_list *l, struct backend_conn *c)
{
	c->prev = NULL;
	c->next = l->head;
	if (l->head)
		l->head->prev = c;
	l->head = c;
	l->n++;
}

static void backend_pool_list_del(struct backend_pool_list *l, struct backend_conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	l->n--;
}

/* ---- the queue ---- */

static void backend_pool_queue_timer_cb(uv_timer_t *t);

static void backend_pool_arm_queue(struct backend_pool *p)
{
	if (!p->whead) {
		uv_timer_stop(&p->queue_timer);
		return;
	}
	uint64_t due = p->whead->since + p->cfg->backend_queue_timeout_ms, now = uv_now(p->loop);
	uv_timer_start(&p->queue_timer, backend_pool_queue_timer_cb, due > now ? due - now : 0, 0);
}

static void backend_pool_unqueue(struct backend_pool *p, struct backend_waiter *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		p->whead = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		p->wtail = w->prev;
	w->next = w->prev = NULL;
	w->queued = false;
	p->nwaiting--;
}

static void backend_pool_enqueue(struct backend_pool *p, struct backend_waiter *w)
{
	w->since = uv_now(p->loop);
	w->queued = true;
	w->next = NULL;
	w->prev = p->wtail;
	if (p->wtail)
		p->wtail->next = w;
	else
		p->whead = w;
	p->wtail = w;
	p->nwaiting++;
	if (p->whead == w)
		backend_pool_arm_queue(p);
}

/* Answers every queued relay with RESULT (no connection). */
static void backend_pool_fail_waiters(struct backend_pool *p, enum backend_get_result result)
{
	while (p->whead) {
		struct backend_waiter *w = p->whead;
		backend_pool_unqueue(p, w);
		w->ready(w, NULL, result);
	}
	uv_timer_stop(&p->queue_timer);
}

static void backend_pool_queue_timer_cb(uv_timer_t *t)
{
	struct backend_pool *p = t->data;
	uint64_t now = uv_now(p->loop);
	while (p->whead && p->whead->since + p->cfg->backend_queue_timeout_ms <= now) {
		struct backend_waiter *w = p->whead;
		backend_pool_unqueue(p, w);
		w->ready(w, NULL, BACKEND_BUSY);
	}
	backend_pool_arm_queue(p);
	backend_pool_gauges(p);
}

/* ---- connections ---- */

static void backend_pool_open(struct backend_pool *p);

/* C (off every list) becomes W's until backend_pool_put(). */
static void backend_pool_hand(struct backend_conn *c, struct backend_waiter *w)
{
	backend_conn_disarm(c);
	c->pool_state = POOL_CONN_LENT;
	w->ready(w, c, BACKEND_GOT);
}

/* A connection is the pool's and usable: lend it to the oldest waiter, or
 * keep it idle until idle_timeout. */
static void backend_pool_offer(struct backend_pool *p, struct backend_conn *c)
{
	if (p->whead && !p->stopping) {
		struct backend_waiter *w = p->whead;
		backend_pool_unqueue(p, w);
		backend_pool_arm_queue(p);
		backend_pool_hand(c, w);
		return;
	}
	c->pool_state = POOL_CONN_IDLE;
	backend_pool_list_add(&p->idle, c);
	backend_conn_arm(c, p->cfg->backend_idle_timeout_ms);
}

/* Closes a connection the pool holds (not lent). */
static void backend_pool_drop(struct backend_pool *p, struct backend_conn *c)
{
	if (c->pool_state == POOL_CONN_IDLE)
		backend_pool_list_del(&p->idle, c);
	else if (c->pool_state != POOL_CONN_LENT)
		backend_pool_list_del(&p->owned, c);
	if (c->pool_state < POOL_CONN_IDLE)
		p->nsetup--;
	p->nconns--;
	backend_conn_close(c);
}

/* Opens more connections while relays wait for one that no connection
 * being set up will serve. */
static void backend_pool_grow(struct backend_pool *p)
{
	while (!p->stopping && !p->down && p->nwaiting > p->nsetup && p->nconns < p->max)
		backend_pool_open(p);
}

/* While down: one connection now and then, so that the capabilities are
 * learnt and the state is known again even when nobody asks. */
static void backend_pool_retry_cb(uv_timer_t *t)
{
	struct backend_pool *p = t->data;
	if (!p->probing)
		backend_pool_open(p);
	backend_pool_gauges(p);
}

static void backend_pool_set_down(struct backend_pool *p, const char *reason)
{
	if (!p->down) {
		p->down = true;
		p->backoff_ms = BACKEND_POOL_BACKOFF_MIN_MS;
		log_warn("event=backend_down backend=%s reason=\"%s\"", p->cfg->backend.text, reason);
	} else if (p->backoff_ms < BACKEND_POOL_BACKOFF_MAX_MS) {
		p->backoff_ms *= 2;
		if (p->backoff_ms > BACKEND_POOL_BACKOFF_MAX_MS)
			p->backoff_ms = BACKEND_POOL_BACKOFF_MAX_MS;
	}
	p->retry_at = uv_now(p->loop) + p->backoff_ms;
	if (!p->stopping)
		uv_timer_start(&p->retry_timer, backend_pool_retry_cb, p->backoff_ms, 0);
}

static void backend_pool_set_up(struct backend_pool *p)
{
	if (p->down)
		log_info("event=backend_up backend=%s", p->cfg->backend.text);
	p->down = false;
	uv_timer_stop(&p->retry_timer);
}

static void backend_pool_conn_error(void *owner, struct backend_conn *c, const char *reason)
{
	struct backend_pool *p = owner;
	int st = c->pool_state;
	bool setup = st < POOL_CONN_IDLE;
	if (st != POOL_CONN_IDLE || strcmp(reason, "timeout") != 0)
		log_warn("event=backend_error backend=%s stage=%s reason=\"%s\"", p->cfg->backend.text,
		         backend_pool_stage[st], reason);
	backend_pool_drop(p, c);
	if (!setup) {
		/* An idle connection the backend closed or broke: with none left,
		 * one new connection finds out whether the backend is still there
		 * (health and EHLO's capabilities would otherwise lag until the
		 * next MAIL). */
		if (st == POOL_CONN_IDLE && strcmp(reason, "timeout") != 0 && p->nconns == 0)
			backend_pool_open(p);
		backend_pool_grow(p);
		backend_pool_gauges(p);
		return;
	}
	metrics_inc(METRICS_POOL_CONNECT_ERRORS);
	p->probing = false;
	/* A connection that cannot be set up: the backend is down for every
	 * session until a retry works. Those waiting hear it at once. */
	backend_pool_set_down(p, reason);
	backend_pool_fail_waiters(p, BACKEND_DOWN);
	backend_pool_gauges(p);
}

static void backend_pool_conn_connected(void *owner, struct backend_conn *c)
{
	struct backend_pool *p = owner;
	c->pool_state = POOL_CONN_GREETING;
	backend_conn_arm(c, p->cfg->backend_connect_timeout_ms);
}

/* What EHLO offers from now on depends on this: said once per change. */
static void backend_pool_log_caps(const struct backend_pool *p, unsigned caps)
{
	static const char *const names[] = { "PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES",
		                             "SMTPUTF8", "DSN", "XCLIENT" };
	char list[200] = "";
	size_t o = 0;
	for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
		if (caps & (1u << i))
			o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", o ? "," : "", names[i]);
	log_info("event=backend_ready backend=%s caps=%s max_connections=%u", p->cfg->backend.text,
	         o ? list : "none", p->max);
}

static void backend_pool_conn_reply(void *owner, struct backend_conn *c, const struct smtp_reply *r)
{
	struct backend_pool *p = owner;
	char line[300];
	switch (c->pool_state) {
	case POOL_CONN_GREETING:
		if (r->code != 220)
			return backend_pool_conn_error(p, c, "backend refused the connection");
		c->pool_state = POOL_CONN_LHLO;
		snprintf(line, sizeof line, "LHLO %s\r\n", p->cfg->hostname);
		backend_conn_expect_lhlo(c);
		backend_conn_arm(c, p->cfg->backend_timeout_ms);
		backend_conn_write(c, line, strlen(line));
		return;
	case POOL_CONN_LHLO:
		if (r->code != 250)
			return backend_pool_conn_error(p, c, "LHLO refused");
		if (!p->caps_known || p->caps != c->caps)
			backend_pool_log_caps(p, c->caps);
		p->caps = c->caps;
		p->caps_known = true;
		p->probing = false;
		backend_pool_set_up(p);
		metrics_latency(METRICS_STAGE_CONNECT, uv_hrtime() - c->opened_ns);
		break;
	case POOL_CONN_RESET:
		if (r->code != 250)
			return backend_pool_conn_error(p, c, "RSET refused");
		break;
	default:
		return backend_pool_conn_error(p, c, "reply without a command");
	}
	p->nsetup -= c->pool_state == POOL_CONN_LHLO;
	backend_pool_list_del(&p->owned, c);
	backend_pool_offer(p, c);
	backend_pool_gauges(p);
}

static const struct backend_conn_cbs backend_pool_conn_cbs = {
	.connected = backend_pool_conn_connected,
	.reply = backend_pool_conn_reply,
	.error = backend_pool_conn_error,
};

static void backend_pool_open(struct backend_pool *p)
{
	if (p->stopping || p->nconns >= p->max)
		return;
	struct backend_conn *c = backend_conn_new(p->loop, &p->cfg->backend, &backend_pool_conn_cbs, p);
	if (!c) {
		log_error("event=backend_error backend=%s stage=connecting reason=\"out of memory\"",
		          p->cfg->backend.text);
		return;
	}
	if (p->down)
		p->probing = true;
	c->opened_ns = uv_hrtime();
	c->generation = p->generation;
	c->pool_state = POOL_CONN_CONNECTING;
	p->nconns++;
	p->nsetup++;
	backend_pool_list_add(&p->owned, c);
	backend_conn_arm(c, p->cfg->backend_connect_timeout_ms);
}

/* ---- the interface ---- */

static void backend_pool_lend(struct backend_pool *p, struct backend_waiter *w)
{
	if (p->stopping) {
		w->ready(w, NULL, BACKEND_DOWN);
		return;
	}
	if (p->idle.head) {
		struct backend_conn *c = p->idle.head;
		backend_pool_list_del(&p->idle, c);
		backend_pool_hand(c, w);
		return;
	}
	if (p->down && !p->probing) {
		if (uv_now(p->loop) < p->retry_at) {
			w->ready(w, NULL, BACKEND_DOWN);
			return;
		}
		/* Time for another try: this relay waits for it. */
		uv_timer_stop(&p->retry_timer);
		backend_pool_enqueue(p, w);
		backend_pool_open(p);
		return;
	}
	backend_pool_enqueue(p, w);
	backend_pool_grow(p);
}

void backend_pool_get(struct backend_pool *p, struct backend_waiter *w)
{
	backend_pool_lend(p, w);
	backend_pool_gauges(p);
}

void backend_pool_cancel(struct backend_pool *p, struct backend_waiter *w)
{
	if (!w->queued)
		return;
	bool head = p->whead == w;
	backend_pool_unqueue(p, w);
	if (head)
		backend_pool_arm_queue(p);
	backend_pool_gauges(p);
}

static void backend_pool_take_back(struct backend_pool *p, struct backend_conn *c,
                                   enum backend_put how)
{
	backend_conn_set_owner(c, &backend_pool_conn_cbs, p);
	if (how == BACKEND_PUT_CLOSE || c->generation != p->generation || p->stopping) {
		backend_pool_drop(p, c);
		backend_pool_grow(p);
		return;
	}
	if (how == BACKEND_PUT_RESET) {
		c->pool_state = POOL_CONN_RESET;
		backend_pool_list_add(&p->owned, c);
		backend_conn_arm(c, p->cfg->backend_timeout_ms);
		backend_conn_write(c, "RSET\r\n", 6);
		return;
	}
	backend_pool_offer(p, c);
}

void backend_pool_put(struct backend_pool *p, struct backend_conn *c, enum backend_put how)
{
	backend_pool_take_back(p, c, how);
	backend_pool_gauges(p);
}

unsigned backend_pool_caps(const struct backend_pool *p, bool *known)
{
	*known = p->caps_known;
	return p->caps;
}

/* This worker's share of max_connections; at least one (main refuses to
 * start with fewer connections than workers; a reload that asks for that
 * gets one each, said in the log). */
static unsigned backend_pool_share(const struct config *cfg, unsigned nworkers)
{
	unsigned n = cfg->backend_max_connections / (nworkers ? nworkers : 1);
	if (n == 0)
		log_warn("event=config_warning key=max_connections reason=\"%u is fewer than the %u "
		         "workers: one each\"", cfg->backend_max_connections, nworkers);
	return n ? n : 1;
}

void backend_pool_update(struct backend_pool *p, struct config *cfg)
{
	struct config *old = p->cfg;
	p->cfg = config_ref(cfg);
	config_unref(old);
	p->max = backend_pool_share(cfg, p->nworkers);
	/* Connections of the old generation close as they come back; idle ones
	 * now. The new generation's first connection learns the capabilities
	 * again (the backend may have been changed too). */
	p->generation++;
	while (p->idle.head)
		backend_pool_drop(p, p->idle.head);
	p->down = false;
	p->probing = false;
	uv_timer_stop(&p->retry_timer);
	backend_pool_open(p);
	backend_pool_gauges(p);
}

struct backend_pool *backend_pool_new(uv_loop_t *loop, struct config *cfg, unsigned nworkers)
{
	struct backend_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->loop = loop;
	p->cfg = config_ref(cfg);
	p->nworkers = nworkers;
	p->max = backend_pool_share(cfg, nworkers);
	uv_timer_init(loop, &p->queue_timer);
	uv_timer_init(loop, &p->retry_timer);
	p->queue_timer.data = p->retry_timer.data = p;
	p->open_timers = 2;
	backend_pool_open(p);
	backend_pool_gauges(p);
	return p;
}

static void backend_pool_timer_closed_cb(uv_handle_t *h)
{
	struct backend_pool *p = h->data;
	if (--p->open_timers == 0) {
		config_unref(p->cfg);
		free(p);
	}
}

void backend_pool_free(struct backend_pool *p)
{
	if (!p)
		return;
	p->stopping = true;
	backend_pool_fail_waiters(p, BACKEND_DOWN);
	while (p->idle.head)
		backend_pool_drop(p, p->idle.head);
	while (p->owned.head)
		backend_pool_drop(p, p->owned.head);
	uv_close((uv_handle_t *)&p->queue_timer, backend_pool_timer_closed_cb);
	uv_close((uv_handle_t *)&p->retry_timer, backend_pool_timer_closed_cb);
}
