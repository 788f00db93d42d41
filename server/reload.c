/* reload: owns the signal watchers. TERM/INT → the stop callback, once;
 * HUP → a log line (configuration reload comes with the reload issue). */
#include "reload.h"

#include <stdbool.h>
#include <stdlib.h>

#include "log.h"

struct reload {
	uv_signal_t term, intr, hup;
	int open;
	bool stopped;
	void (*stop)(void *arg);
	void *arg;
};

static void reload_stop_cb(uv_signal_t *h, int signum)
{
	struct reload *r = h->data;
	if (r->stopped)
		return;
	r->stopped = true;
	log_info("event=stop signal=%s", signum == SIGTERM ? "TERM" : "INT");
	r->stop(r->arg);
}

static void reload_hup_cb(uv_signal_t *h, int signum)
{
	log_warn("event=reload result=unsupported reason=\"SIGHUP reload is not implemented yet\"");
}

struct reload *reload_new(uv_loop_t *loop, void (*stop)(void *arg), void *arg)
{
	struct reload *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->stop = stop;
	r->arg = arg;
	uv_signal_t *hs[] = { &r->term, &r->intr, &r->hup };
	int sigs[] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		uv_signal_init(loop, hs[i]);
		hs[i]->data = r;
		uv_signal_start(hs[i], i == 2 ? reload_hup_cb : reload_stop_cb, sigs[i]);
		r->open++;
	}
	/* Signal handles would keep the loop alive after the stop. */
	for (int i = 0; i < 3; i++)
		uv_unref((uv_handle_t *)hs[i]);
	return r;
}

static void reload_closed_cb(uv_handle_t *h)
{
	struct reload *r = h->data;
	if (--r->open == 0)
		free(r);
}

void reload_free(struct reload *r)
{
	if (!r)
		return;
	uv_close((uv_handle_t *)&r->term, reload_closed_cb);
	uv_close((uv_handle_t *)&r->intr, reload_closed_cb);
	uv_close((uv_handle_t *)&r->hup, reload_closed_cb);
}
