/* reload: owns the signal watchers and the live generation (config,
 * certificate store, TLS context). A reload is built beside the live one on
 * a libuv worker thread and installed on the loop thread only if the
 * configuration parsed, a default certificate exists and the listeners
 * could be opened; otherwise the old generation keeps running untouched. */
#include "reload.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

struct reload {
	uv_loop_t *loop;
	uv_signal_t term, intr, hup;
	uv_work_t work;
	int open;
	const char *path;
	const char *address_file;
	struct listener *listener;

	/* the live generation: references */
	struct config *cfg;
	struct certstore *cs;
	struct tls_context *tc;
	unsigned generation;

	bool loading;  /* a worker is building the next generation */
	bool again;    /* SIGHUP arrived meanwhile: reload once more */
	bool stopping;
	bool close_pending; /* stopped while loading: close once the worker is back */
	void (*stopped)(void *arg);
	void *arg;

	/* what the worker built; read on the loop thread after it finished */
	struct config *next_cfg;
	struct certstore *next_cs;
	int problems;
	double load_ms;
	char err[512];
};

/* certstore reports, from the worker thread: one log line each. */
static void reload_problem_cb(void *arg, const char *path, const char *reason)
{
	struct reload *r = arg;
	r->problems++;
	log_warn("event=cert_error file=%s reason=\"%s\"", path, reason);
}

static double reload_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Worker thread: only reads files and the live certstore (immutable). */
static void reload_work_cb(uv_work_t *req)
{
	struct reload *r = req->data;
	double t0 = reload_now_ms();
	r->next_cfg = NULL;
	r->next_cs = NULL;
	r->problems = 0;
	r->err[0] = '\0';
	if (config_load(r->path, &r->next_cfg, r->err, sizeof r->err) < 0)
		return;
	int rc = certstore_load(r->next_cfg->tls_certs_dir, time(NULL), reload_problem_cb, r,
	                        &r->next_cs);
	if (rc < 0) {
		/* An unreadable certs.d/ never switches TLS off: keep the live store. */
		log_warn("event=reload_warning reason=\"cannot read %s, keeping the loaded "
		         "certificates\"", r->next_cfg->tls_certs_dir);
		r->next_cs = r->cs ? certstore_ref(r->cs) : NULL;
	}
	r->load_ms = reload_now_ms() - t0;
}

static void reload_start(struct reload *r);
static void reload_close(struct reload *r);

/* Loop thread: install what the worker built, or keep everything. */
static void reload_after_cb(uv_work_t *req, int status)
{
	struct reload *r = req->data;
	struct config *cfg = r->next_cfg;
	struct certstore *cs = r->next_cs;
	struct tls_context *tc = NULL;
	char err[512] = "";
	r->loading = false;
	if (r->stopping || status < 0) {
		snprintf(err, sizeof err, "stopping");
	} else if (!cfg) {
		snprintf(err, sizeof err, "%s", r->err);
	} else if (cs && tls_context_new(cfg, cs, &tc, err, sizeof err) < 0) {
		tc = NULL;
	} else if (listener_update(r->listener, cfg, tc, err, sizeof err) < 0) {
		tls_context_unref(tc);
		tc = NULL;
	} else {
		if (strcmp(cfg->user, r->cfg->user) != 0 || strcmp(cfg->group, r->cfg->group) != 0)
			log_warn("event=reload_warning reason=\"user/group changes need a restart\"");
		struct config *old_cfg = r->cfg;
		struct certstore *old_cs = r->cs;
		struct tls_context *old_tc = r->tc;
		r->cfg = cfg;
		r->cs = cs;
		r->tc = tc;
		r->generation++;
		log_info("event=reload result=ok generation=%u certs=%zu names=%zu problems=%d "
		         "listeners=%zu load_ms=%.1f",
		         r->generation, cs ? certstore_ncerts(cs) : 0, cs ? certstore_nnames(cs) : 0,
		         r->problems, listener_count(r->listener), r->load_ms);
		if (r->address_file && listener_write_addresses(r->listener, r->address_file) < 0)
			log_warn("event=reload_warning reason=\"cannot write %s\"", r->address_file);
		config_unref(old_cfg);
		certstore_unref(old_cs);
		tls_context_unref(old_tc);
		cfg = NULL;
		cs = NULL;
	}
	if (cfg || err[0]) {
		if (!r->stopping)
			log_error("event=reload result=failed generation=%u reason=\"%s\" "
			          "action=\"kept the running configuration and certificates\"",
			          r->generation, err);
		config_unref(cfg);
		certstore_unref(cs);
	}
	if (r->again && !r->stopping) {
		r->again = false;
		reload_start(r);
	}
	if (r->close_pending)
		reload_close(r);
}

static void reload_start(struct reload *r)
{
	if (r->loading) {
		r->again = true;
		return;
	}
	r->loading = true;
	r->work.data = r;
	int rc = uv_queue_work(r->loop, &r->work, reload_work_cb, reload_after_cb);
	if (rc < 0) {
		r->loading = false;
		log_error("event=reload result=failed reason=\"%s\"", uv_strerror(rc));
	}
}

static void reload_hup_cb(uv_signal_t *h, int signum)
{
	struct reload *r = h->data;
	if (r->stopping)
		return;
	log_info("event=reload_requested signal=HUP generation=%u", r->generation);
	reload_start(r);
}

static void reload_closed_cb(uv_handle_t *h)
{
	struct reload *r = h->data;
	if (--r->open > 0)
		return;
	config_unref(r->cfg);
	certstore_unref(r->cs);
	tls_context_unref(r->tc);
	void (*stopped)(void *) = r->stopped;
	void *arg = r->arg;
	free(r);
	stopped(arg);
}

static void reload_close(struct reload *r)
{
	r->close_pending = false;
	uv_close((uv_handle_t *)&r->term, reload_closed_cb);
	uv_close((uv_handle_t *)&r->intr, reload_closed_cb);
	uv_close((uv_handle_t *)&r->hup, reload_closed_cb);
}

/* The listener has stopped: close the signal watchers; the loop then ends. */
static void reload_listener_done_cb(void *arg)
{
	struct reload *r = arg;
	r->listener = NULL;
	if (r->loading)
		r->close_pending = true; /* the worker still uses r */
	else
		reload_close(r);
}

static void reload_stop_cb(uv_signal_t *h, int signum)
{
	struct reload *r = h->data;
	if (r->stopping)
		return;
	r->stopping = true;
	log_info("event=stop signal=%s sessions=%u", signum == SIGTERM ? "TERM" : "INT",
	         listener_sessions(r->listener));
	listener_stop(r->listener, reload_listener_done_cb, r);
}

struct reload *reload_new(uv_loop_t *loop, const char *path, const char *address_file,
                          struct config *cfg, struct certstore *cs, struct tls_context *tc,
                          struct listener *l, void (*stopped)(void *arg), void *arg)
{
	struct reload *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->loop = loop;
	r->path = path;
	r->address_file = address_file;
	r->listener = l;
	r->cfg = config_ref(cfg);
	r->cs = cs ? certstore_ref(cs) : NULL;
	r->tc = tc ? tls_context_ref(tc) : NULL;
	r->generation = 1;
	r->stopped = stopped;
	r->arg = arg;
	uv_signal_t *hs[] = { &r->term, &r->intr, &r->hup };
	int sigs[] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		uv_signal_init(loop, hs[i]);
		hs[i]->data = r;
		uv_signal_start(hs[i], i == 2 ? reload_hup_cb : reload_stop_cb, sigs[i]);
		/* Signal watchers alone must not keep the loop running. */
		uv_unref((uv_handle_t *)hs[i]);
		r->open++;
	}
	return r;
}
