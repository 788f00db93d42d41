/* publicsuffix: owns the process's public suffix context, loaded once on
 * first use (libpsl's contexts are read-only once loaded) and freed at
 * exit. */
#include "publicsuffix.h"

#include <pthread.h>

static const psl_ctx_t *publicsuffix_ctx;

static void publicsuffix_load(void)
{
	publicsuffix_ctx = psl_latest(NULL);
	if (publicsuffix_ctx == NULL)
		publicsuffix_ctx = psl_builtin();
}

const psl_ctx_t *publicsuffix_list(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, publicsuffix_load);
	return publicsuffix_ctx;
}

void publicsuffix_free(void)
{
	/* psl_free leaves the built-in context alone. */
	psl_free((psl_ctx_t *)publicsuffix_ctx);
	publicsuffix_ctx = NULL;
}
