/* generation: owns references to one generation's configuration,
 * certificate store and TLS context, and the array of listener defaults.
 * Built on the thread that loads; read-only once built, from any worker. */
#include "generation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

int generation_new(struct config *cfg, struct certstore *cs, struct generation **out, char *err,
                   size_t errsize)
{
	struct generation *g = calloc(1, sizeof *g);
	size_t n = cfg->n_listen;
	if (!g || !(g->listen_default = calloc(n ? n : 1, sizeof *g->listen_default))) {
		free(g);
		snprintf(err, errsize, "out of memory");
		return -1;
	}
	atomic_init(&g->refs, 1);
	g->cfg = config_ref(cfg);
	g->cs = cs ? certstore_ref(cs) : NULL;
	/* Before any worker sees CS: its names' SNI counters. */
	metrics_register_names(cs);
	if (cs && tls_context_new(cfg, cs, &g->tc, err, errsize) < 0) {
		generation_unref(g);
		return -1;
	}
	for (size_t i = 0; cs && certstore_ncerts(cs) && i < n; i++) {
		const char *d = cfg->listen[i].default_cert;
		enum certstore_match how;
		if (d && !(g->listen_default[i] = certstore_resolve(cs, d, strlen(d), NULL, 0, &how))) {
			snprintf(err, errsize, "listen %s: default_cert: no certificate serves '%s'",
			         cfg->listen[i].text, d);
			generation_unref(g);
			return -1;
		}
	}
	*out = g;
	return 0;
}

struct generation *generation_ref(struct generation *g)
{
	atomic_fetch_add(&g->refs, 1);
	return g;
}

void generation_unref(struct generation *g)
{
	if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	/* The TLS context holds the certstore too; both may go in any order. */
	tls_context_unref(g->tc);
	certstore_unref(g->cs);
	config_unref(g->cfg);
	free(g->listen_default);
	free(g);
}
