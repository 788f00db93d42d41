/* generation: what new sessions get, as one immutable, reference-counted
 * object: the configuration, its certificate store, its TLS context and the
 * default certificate of each listening address, resolved once when the
 * generation is built. A reload builds the next one beside the live one and
 * swaps one pointer; a session keeps the generation it started with. */
#ifndef MXFRONT_GENERATION_H
#define MXFRONT_GENERATION_H

#include <stdatomic.h>
#include <stddef.h>

#include "certstore.h"
#include "config.h"
#include "tls.h"

struct generation {
	atomic_int refs;
	struct config *cfg;     /* a reference */
	struct certstore *cs;   /* a reference, or NULL (plaintext on purpose) */
	struct tls_context *tc; /* a reference, or NULL: no STARTTLS */
	/* cfg->listen[i]'s own default certificate, or NULL (then the
	 * generation's default applies); entries of cs */
	const struct certstore_entry **listen_default;
};

/* Builds a generation from CFG and CS (references taken; CS may be NULL):
 * the TLS context and every default resolved. Returns 0, or -1 with ERR
 * ("listen ADDR: default_cert: no certificate serves 'x'"). */
int generation_new(struct config *cfg, struct certstore *cs, struct generation **out, char *err,
                   size_t errsize);

struct generation *generation_ref(struct generation *g);

/* Drops a reference; frees on the last one. NULL is ignored. */
void generation_unref(struct generation *g);

#endif
