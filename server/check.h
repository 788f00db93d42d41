/* check: `mxfront check`, what a hosted domain's senders will find: its
 * MTA-STS policy's mx patterns against its MX host names (RFC 8461), and
 * for each MX name the certificate a real handshake through tls.c serves
 * (the same lookup as for a client), verified against a CA bundle, with
 * its expiry; and what a sender without SNI gets on each listener. Prints
 * its report on stdout; never exits. */
#ifndef MXFRONT_CHECK_H
#define MXFRONT_CHECK_H

#include "generation.h"

struct check_options {
	const char *ca_file; /* PEM bundle to verify chains against; NULL: the system's store */
	unsigned days;       /* a certificate expiring within this many days fails */
};

/* Checks each of SPECS[0..N) ("DOMAIN:MX1,MX2[:POLICYFILE]") against
 * generation GEN (borrowed; its TLS context must exist). Returns 0 when
 * everything passed, 1 when a spec or the CA bundle is unusable, 3 when a
 * check failed. */
int check_run(const struct generation *gen, const struct check_options *opt, char **specs, int n);

#endif
