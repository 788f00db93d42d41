/* publicsuffix: the one public suffix list of the process (libpsl), for
 * certstore (wildcards over a public suffix) and scoreboard (a sender's
 * registrable domain). */
#ifndef MXFRONT_PUBLICSUFFIX_H
#define MXFRONT_PUBLICSUFFIX_H

#include <libpsl.h>

/* The newer of libpsl's built-in list and the system's (Debian's
 * publicsuffix package), loaded once; NULL if neither loads. Any thread. */
const psl_ctx_t *publicsuffix_list(void);

/* At exit, once no thread uses the list any more (it is not loaded again). */
void publicsuffix_free(void);

#endif
