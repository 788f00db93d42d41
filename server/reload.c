/* reload: owns the signal watchers, the worker threads, the set of bound
 * listening addresses and the live generation (config, certificate store,
 * TLS context). A reload is built beside the live one on a libuv pool
 * thread and installed from the main loop only if the configuration parsed,
 * a default certificate exists and every new address could be bound;
 * otherwise the old generation keeps running untouched. */
#include "reload.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "preflight.h"
#include "worker.h"

/* One bound address: the same on every worker. */
struct reload_bound {
	struct config_addr addr; /* sa and salen only */
	char listen[80];         /* as configured: "127.0.0.1:0" */
	char text[80];           /* as bound: "127.0.0.1:41235" */
};

/* Sockets for one generation: fds[i * nworkers + w] for cfg->listen[i],
 * worker w; -1 where the worker keeps its socket. */
struct reload_binding {
	int *fds;
	struct reload_bound *bound;
	size_t n;
};

/* Someone waiting for the verdict of reload number ROUND. */
struct reload_waiter {
	struct reload_waiter *next;
	unsigned round;
	reload_done_fn done;
	void *arg;
};

struct reload {
	uv_loop_t *loop;
	uv_signal_t term, intr, hup;
	uv_async_t worker_done;
	uv_work_t work;
	int open;
	const char *path;
	const char *address_file;

	struct listener_shared *shared;
	struct worker **workers;
	unsigned nworkers;
	atomic_uint nstopped;
	struct reload_binding first; /* sockets of the first generation, until started */
	struct reload_bound *bound;  /* what is listening now */
	size_t nbound;

	struct generation *live; /* a reference: what the workers were given last */
	unsigned generation;

	unsigned round;     /* reloads started */
	struct reload_waiter *waiters;
	bool loading;       /* a pool thread is building the next generation */
	bool again;         /* SIGHUP arrived meanwhile: reload once more */
	bool stopping;
	bool close_pending; /* all workers stopped while loading */

	/* what the pool thread built; read on the loop thread after it finished */
	struct config *next_cfg;
	struct certstore *next_cs;
	int problems, warnings;
	double load_ms;
	char err[512];
};

/* ---- sockets ---- */

static void reload_binding_close(struct reload_binding *b, unsigned nworkers)
{
	for (size_t i = 0; b->fds && i < b->n * nworkers; i++)
		if (b->fds[i] >= 0)
			close(b->fds[i]);
	free(b->fds);
	free(b->bound);
	memset(b, 0, sizeof *b);
}

/* Binds every address of CFG not already bound (all-or-nothing). */
static int reload_bind(struct reload *r, const struct config *cfg, struct reload_binding *b,
                       char *err, size_t errsize)
{
	size_t n = cfg->n_listen;
	b->n = n;
	b->fds = malloc(n * r->nworkers * sizeof *b->fds);
	b->bound = calloc(n, sizeof *b->bound);
	if (!b->fds || !b->bound) {
		snprintf(err, errsize, "out of memory");
		reload_binding_close(b, r->nworkers);
		return -1;
	}
	for (size_t i = 0; i < n * r->nworkers; i++)
		b->fds[i] = -1;
	for (size_t i = 0; i < n; i++) {
		const struct config_addr *a = &cfg->listen[i];
		b->bound[i].addr.sa = a->sa;
		b->bound[i].addr.salen = a->salen;
		snprintf(b->bound[i].listen, sizeof b->bound[i].listen, "%s", a->text);
		size_t j;
		for (j = 0; j < r->nbound; j++)
			if (listener_same_address(&r->bound[j].addr, a))
				break;
		if (j < r->nbound) {
			memcpy(b->bound[i].text, r->bound[j].text, sizeof b->bound[i].text);
			continue;
		}
		if (listener_bind(a, r->nworkers, &b->fds[i * r->nworkers], b->bound[i].text,
		                  sizeof b->bound[i].text, err, errsize) < 0) {
			reload_binding_close(b, r->nworkers);
			return -1;
		}
		if (r->nbound)
			log_info("event=listener_opened listen=%s bound=%s", a->text, b->bound[i].text);
	}
	return 0;
}

/* The sockets of worker W in B, one per listen address. */
static void reload_worker_fds(const struct reload_binding *b, unsigned nworkers, unsigned w, int *out)
{
	for (size_t i = 0; i < b->n; i++)
		out[i] = b->fds[i * nworkers + w];
}

static void reload_write_addresses(struct reload *r)
{
	if (!r->address_file)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", r->address_file, (int)getpid());
	FILE *f = fopen(tmp, "w");
	bool ok = f != NULL;
	for (size_t i = 0; ok && i < r->nbound; i++)
		fprintf(f, "%s\n", r->bound[i].text);
	if (f && fclose(f) != 0)
		ok = false;
	if (!ok || rename(tmp, r->address_file) != 0) {
		unlink(tmp);
		log_warn("event=address_file_error file=%s", r->address_file);
	}
}

/* Hands B's sockets to the workers with the generation, and makes B the
 * set of bound addresses (logging the ones that went away). */
static void reload_hand_over(struct reload *r, struct reload_binding *b)
{
	int *fds = malloc((b->n ? b->n : 1) * sizeof *fds);
	for (unsigned w = 0; fds && w < r->nworkers; w++) {
		reload_worker_fds(b, r->nworkers, w, fds);
		worker_update(r->workers[w], r->live, fds);
	}
	free(fds);
	for (size_t j = 0; j < r->nbound; j++) {
		bool kept = false;
		for (size_t i = 0; i < b->n && !kept; i++)
			kept = listener_same_address(&r->bound[j].addr, &b->bound[i].addr);
		if (!kept)
			log_info("event=listener_closed listen=%s bound=%s", r->bound[j].listen,
			         r->bound[j].text);
	}
	free(r->bound);
	r->bound = b->bound;
	r->nbound = b->n;
	free(b->fds);
	memset(b, 0, sizeof *b);
}

/* ---- what others read: metrics, health, systemd ---- */

/* The live generation's facts, for metrics and health (main thread). */
static void reload_publish(struct reload *r)
{
	const struct config *cfg = r->live->cfg;
	metrics_set_certs(r->live->cs, cfg->tls_certs_dir != NULL, tls_context_usable(r->live->tc));
	metrics_set_listeners((unsigned)r->nbound);
	metrics_set_senders_top(cfg->metrics_senders);
}

/* Tells the waiters of the reload that just ended (round r->round) its
 * verdict; the others wait for the next. */
static void reload_answer(struct reload *r, bool ok, const char *text)
{
	struct reload_waiter **pw = &r->waiters;
	while (*pw) {
		struct reload_waiter *w = *pw;
		if (w->round <= r->round || r->stopping) {
			*pw = w->next;
			w->done(w->arg, ok, text);
			free(w);
		} else {
			pw = &w->next;
		}
	}
}

size_t reload_addresses(const struct reload *r, char *out, size_t size)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; i < r->nbound && o < size; i++)
		o += (size_t)snprintf(out + o, size - o, "%s%s", i ? "," : "", r->bound[i].text);
	return o < size ? o : size - 1;
}

/* ---- the reload itself ---- */

/* certstore reports, from the pool thread: one log line each. */
static void reload_problem_cb(void *arg, const char *path, const char *reason)
{
	struct reload *r = arg;
	r->problems++;
	log_warn("event=cert_error file=%s reason=\"%s\"", path, reason);
}

static void reload_warning_cb(void *arg, const char *path, const char *reason)
{
	struct reload *r = arg;
	r->warnings++;
	log_warn("event=cert_warning file=%s reason=\"%s\"", path, reason);
}

static double reload_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Pool thread: only reads files and the live certstore (immutable). */
static void reload_work_cb(uv_work_t *req)
{
	struct reload *r = req->data;
	double t0 = reload_now_ms();
	r->next_cfg = NULL;
	r->next_cs = NULL;
	r->problems = 0;
	r->warnings = 0;
	r->err[0] = '\0';
	if (config_load(r->path, &r->next_cfg, r->err, sizeof r->err) < 0)
		return;
	if (!r->next_cfg->tls_certs_dir) {
		r->next_cs = NULL; /* plaintext only, on purpose */
		r->load_ms = reload_now_ms() - t0;
		return;
	}
	/* Unchanged directories are reused from the live store without reading
	 * them; a directory that fails now keeps its last good certificate. */
	struct certstore_checks checks = { preflight_key_group(r->next_cfg), reload_warning_cb };
	int rc = certstore_load(r->next_cfg->tls_certs_dir, time(NULL), &checks, r->live->cs,
	                        reload_problem_cb, r, &r->next_cs);
	if (rc < 0) {
		/* An unreadable certs.d/ never switches TLS off: keep the live store. */
		log_warn("event=reload_warning reason=\"cannot read %s, keeping the loaded "
		         "certificates\"", r->next_cfg->tls_certs_dir);
		r->next_cs = r->live->cs ? certstore_ref(r->live->cs) : NULL;
	}
	r->load_ms = reload_now_ms() - t0;
}

static void reload_start_work(struct reload *r);
static void reload_close(struct reload *r);

/* Makes GEN (the reference handed over) the live generation: one pointer. */
static void reload_install(struct reload *r, struct generation *gen, struct reload_binding *b)
{
	const struct config *cfg = gen->cfg, *old = r->live->cfg;
	struct certstore *cs = gen->cs;
	if (strcmp(cfg->user, old->user) != 0 || strcmp(cfg->group, old->group) != 0)
		log_warn("event=reload_warning reason=\"user/group changes need a restart\"");
	if (cfg->workers != old->workers)
		log_warn("event=reload_warning reason=\"a new number of workers needs a restart\"");
	struct generation *prev = r->live;
	r->live = gen;
	r->generation++;
	reload_hand_over(r, b);
	struct certstore_diff d = { 0 };
	if (cs)
		certstore_diff(prev->cs, cs, &d);
	log_info("event=reload result=ok generation=%u certs=%zu names=%zu added=%zu removed=%zu "
	         "changed=%zu kept_last_good=%zu reused=%zu problems=%d warnings=%d listeners=%zu "
	         "load_ms=%.1f",
	         r->generation, cs ? certstore_ncerts(cs) : 0, cs ? certstore_nnames(cs) : 0, d.added,
	         d.removed, d.changed, d.kept_last_good, d.reused, r->problems, r->warnings, r->nbound,
	         r->load_ms);
	generation_unref(prev);
	reload_write_addresses(r);
	reload_publish(r);
}

/* Loop thread: install what the pool thread built, or keep everything. */
static void reload_after_cb(uv_work_t *req, int status)
{
	struct reload *r = req->data;
	struct config *cfg = r->next_cfg;
	struct certstore *cs = r->next_cs;
	struct generation *gen = NULL;
	struct reload_binding b = { 0 };
	char err[512] = "";
	r->loading = false;
	if (r->stopping || status < 0)
		snprintf(err, sizeof err, "stopping");
	else if (!cfg)
		snprintf(err, sizeof err, "%s", r->err);
	else if (r->live->cs && certstore_ncerts(r->live->cs) > 0 &&
	         (!cs || certstore_ncerts(cs) == 0))
		snprintf(err, sizeof err, "no usable certificate left in %s; TLS stays on with the "
		         "loaded ones", cfg->tls_certs_dir ? cfg->tls_certs_dir : "(certs_dir empty)");
	else if (generation_new(cfg, cs, &gen, err, sizeof err) < 0)
		gen = NULL;
	else if (reload_bind(r, cfg, &b, err, sizeof err) < 0)
		generation_unref(gen);
	else
		reload_install(r, gen, &b);
	if (err[0] && !r->stopping)
		log_error("event=reload result=failed generation=%u reason=\"%s\" "
		          "action=\"kept the running configuration and certificates\"",
		          r->generation, err);
	char verdict[700];
	if (err[0])
		snprintf(verdict, sizeof verdict, "reload failed: %s; kept the running configuration "
		         "and certificates (generation %u)", err, r->generation);
	else
		snprintf(verdict, sizeof verdict, "reloaded: generation %u, %zu certificates, %zu names, "
		         "%d problems, %d warnings", r->generation,
		         r->live->cs ? certstore_ncerts(r->live->cs) : 0,
		         r->live->cs ? certstore_nnames(r->live->cs) : 0, r->problems, r->warnings);
	if (!r->stopping) {
		metrics_reload(!err[0], (int64_t)time(NULL));
		notify_ready(verdict);
	}
	reload_answer(r, !err[0], verdict);
	/* The generation, when there is one, holds its own references. */
	config_unref(cfg);
	certstore_unref(cs);
	if (r->again && !r->stopping) {
		r->again = false;
		reload_start_work(r);
	}
	if (r->close_pending)
		reload_close(r);
}

static void reload_start_work(struct reload *r)
{
	if (r->loading) {
		r->again = true;
		return;
	}
	r->loading = true;
	r->round++;
	r->work.data = r;
	notify_reloading();
	int rc = uv_queue_work(r->loop, &r->work, reload_work_cb, reload_after_cb);
	if (rc < 0) {
		char why[200];
		r->loading = false;
		log_error("event=reload result=failed reason=\"%s\"", uv_strerror(rc));
		snprintf(why, sizeof why, "reload failed: %s", uv_strerror(rc));
		metrics_reload(false, (int64_t)time(NULL));
		notify_ready(why);
		reload_answer(r, false, why);
	}
}

int reload_request(struct reload *r, reload_done_fn done, void *arg)
{
	struct reload_waiter *w = calloc(1, sizeof *w);
	if (!w)
		return -1;
	if (r->stopping) {
		free(w);
		done(arg, false, "reload refused: mxfront is stopping");
		return 0;
	}
	log_info("event=reload_requested by=control generation=%u", r->generation);
	/* Loading now: what it reads may predate the request; the next one
	 * does not. */
	w->round = r->round + 1;
	w->done = done;
	w->arg = arg;
	w->next = r->waiters;
	r->waiters = w;
	reload_start_work(r);
	return 0;
}

void reload_forget(struct reload *r, void *arg)
{
	struct reload_waiter **pw = &r->waiters;
	while (*pw) {
		struct reload_waiter *w = *pw;
		if (w->arg == arg) {
			*pw = w->next;
			free(w);
		} else {
			pw = &w->next;
		}
	}
}

/* ---- signals and the stop ---- */

static void reload_hup_cb(uv_signal_t *h, int signum)
{
	struct reload *r = h->data;
	if (r->stopping)
		return;
	log_info("event=reload_requested signal=HUP generation=%u", r->generation);
	reload_start_work(r);
}

static void reload_closed_cb(uv_handle_t *h)
{
	struct reload *r = h->data;
	r->open--;
}

static void reload_close(struct reload *r)
{
	r->close_pending = false;
	uv_close((uv_handle_t *)&r->term, reload_closed_cb);
	uv_close((uv_handle_t *)&r->intr, reload_closed_cb);
	uv_close((uv_handle_t *)&r->hup, reload_closed_cb);
	uv_close((uv_handle_t *)&r->worker_done, reload_closed_cb);
}

/* A worker thread said its loop ended; once all have, the main loop ends. */
static void reload_worker_done_cb(uv_async_t *a)
{
	struct reload *r = a->data;
	if (atomic_load(&r->nstopped) < r->nworkers || uv_is_closing((uv_handle_t *)a))
		return;
	if (r->loading)
		r->close_pending = true; /* the pool thread still uses r */
	else
		reload_close(r);
}

/* Called on each worker's own thread. */
static void reload_worker_stopped(void *arg)
{
	struct reload *r = arg;
	atomic_fetch_add(&r->nstopped, 1);
	uv_async_send(&r->worker_done);
}

static void reload_stop_cb(uv_signal_t *h, int signum)
{
	struct reload *r = h->data;
	if (r->stopping)
		return;
	r->stopping = true;
	metrics_set_stopping();
	notify_stopping();
	log_info("event=stop signal=%s sessions=%u workers=%u", signum == SIGTERM ? "TERM" : "INT",
	         listener_shared_sessions(r->shared), r->nworkers);
	reload_answer(r, false, "reload refused: mxfront is stopping");
	for (unsigned w = 0; w < r->nworkers; w++)
		worker_stop(r->workers[w]);
}

/* ---- lifecycle ---- */

struct reload *reload_new(uv_loop_t *loop, const char *path, const char *address_file,
                          unsigned workers, struct generation *gen, char *err, size_t errsize)
{
	struct reload *r = calloc(1, sizeof *r);
	if (!r || !(r->workers = calloc(workers, sizeof *r->workers)) ||
	    !(r->shared = listener_shared_new())) {
		if (r)
			free(r->workers);
		free(r);
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	r->loop = loop;
	r->path = path;
	r->address_file = address_file;
	r->nworkers = workers;
	r->live = generation_ref(gen);
	r->generation = 1;
	if (reload_bind(r, gen->cfg, &r->first, err, errsize) < 0) {
		reload_free(r);
		return NULL;
	}
	return r;
}

int reload_start(struct reload *r, char *err, size_t errsize)
{
	int *fds = malloc((r->first.n ? r->first.n : 1) * sizeof *fds);
	if (!fds) {
		snprintf(err, errsize, "out of memory");
		return -1;
	}
	uv_async_init(r->loop, &r->worker_done, reload_worker_done_cb);
	r->worker_done.data = r;
	r->open = 1;
	uv_signal_t *hs[] = { &r->term, &r->intr, &r->hup };
	int sigs[] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		uv_signal_init(r->loop, hs[i]);
		hs[i]->data = r;
		uv_signal_start(hs[i], i == 2 ? reload_hup_cb : reload_stop_cb, sigs[i]);
		r->open++;
	}
	for (unsigned w = 0; w < r->nworkers; w++) {
		reload_worker_fds(&r->first, r->nworkers, w, fds);
		for (size_t i = 0; i < r->first.n; i++)
			r->first.fds[i * r->nworkers + w] = -1; /* handed over */
		r->workers[w] = worker_start(w, r->nworkers, r->shared, r->live, fds,
		                             reload_worker_stopped, r);
		if (!r->workers[w]) {
			snprintf(err, errsize, "cannot start worker thread %u", w);
			reload_binding_close(&r->first, r->nworkers);
			for (unsigned k = 0; k < w; k++)
				worker_stop(r->workers[k]);
			r->nworkers = w; /* reload_free joins the ones that started */
			free(fds);
			return -1;
		}
	}
	free(fds);
	/* The first generation's sockets now belong to the workers. */
	struct reload_binding b = r->first;
	memset(&r->first, 0, sizeof r->first);
	free(b.fds);
	r->bound = b.bound;
	r->nbound = b.n;
	reload_write_addresses(r);
	reload_publish(r);
	metrics_set_started((int64_t)time(NULL));
	return 0;
}

void reload_free(struct reload *r)
{
	if (!r)
		return;
	/* After a failed start the watchers are still open; handles live in r,
	 * so they must be closed before r is freed. */
	uv_handle_t *hs[] = { (uv_handle_t *)&r->term, (uv_handle_t *)&r->intr,
	                      (uv_handle_t *)&r->hup, (uv_handle_t *)&r->worker_done };
	for (int i = 0; i < 4 && r->open; i++)
		if (!uv_is_closing(hs[i]))
			uv_close(hs[i], reload_closed_cb);
	uv_run(r->loop, UV_RUN_DEFAULT);
	for (unsigned w = 0; w < r->nworkers; w++)
		if (r->workers[w])
			worker_join(r->workers[w]);
	reload_binding_close(&r->first, r->nworkers);
	while (r->waiters) {
		struct reload_waiter *w = r->waiters;
		r->waiters = w->next;
		free(w);
	}
	free(r->workers);
	free(r->bound);
	listener_shared_free(r->shared);
	generation_unref(r->live);
	free(r);
}
