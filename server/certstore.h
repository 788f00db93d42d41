/* certstore: one immutable, reference-counted generation of the certificates
 * in certs.d/, indexed by the DNS names they serve. Loading never stops at a
 * bad file: each problem is reported (file and reason) and that certificate
 * skipped. Knows nothing of sessions or configuration. */
#ifndef MXFRONT_CERTSTORE_H
#define MXFRONT_CERTSTORE_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct certstore;

/* What one name is served with: a GnuTLS credential holding every loaded
 * certificate (all key types) whose subjectAltName (or CN, without SAN)
 * covers the name. Borrowed from the certstore; valid while a reference to
 * the certstore is held. */
struct certstore_entry {
	gnutls_certificate_credentials_t cred;
	const char *name;  /* the name as indexed: lower case, maybe "*.example.com" */
	const char *label; /* directory name(s) of the certificate(s), comma-separated */
};

/* How a lookup matched, for logs. */
enum certstore_match {
	CERTSTORE_MATCH_NONE,
	CERTSTORE_MATCH_EXACT,
	CERTSTORE_MATCH_WILDCARD,
};

/* Called for each problem while loading: PATH is the file or directory,
 * REASON says what is wrong ("key does not match certificate", "expired on
 * 2026-01-01", "cannot read: No such file or directory", ...). */
typedef void (*certstore_report_fn)(void *arg, const char *path, const char *reason);

/* Loads every DIR/<label>/fullchain.pem + privkey.pem (hidden entries
 * ignored) into a new generation with one reference (the caller's). NOW is
 * the time expiry is judged against. Returns 0, or -1 only when DIR itself
 * cannot be read (REPORT says why); bad certificates are reported and skipped. */
int certstore_load(const char *dir, time_t now, certstore_report_fn report, void *arg,
                   struct certstore **out);

struct certstore *certstore_ref(struct certstore *cs);
void certstore_unref(struct certstore *cs);

/* Normalises NAME[0..LEN) into OUT (lower case, one trailing dot removed).
 * Returns the length, or -1 if it is not a plausible DNS host name (empty,
 * too long, bad characters or labels): such a name is treated as unknown. */
int certstore_normalize(const char *name, size_t len, char *out, size_t outsize);

/* Looks up an already normalised NAME: exact, then the one-label wildcard
 * ("*.example.com" serves "mx.example.com", not "a.b.example.com" nor
 * "example.com"). O(1) in the number of names. NULL if neither. */
const struct certstore_entry *certstore_lookup(const struct certstore *cs, const char *name,
                                               enum certstore_match *how);

/* Number of certificates loaded and names served. */
size_t certstore_ncerts(const struct certstore *cs);
size_t certstore_nnames(const struct certstore *cs);

/* For `mxfront certs`: calls FN once per (name, certificate) pair, names in
 * sorted order. KEYTYPE is "RSA-2048", "ECDSA-P256", ...; NOT_AFTER the
 * certificate's expiry. */
typedef void (*certstore_each_fn)(void *arg, const char *name, const char *label,
                                  const char *keytype, time_t not_after);
void certstore_foreach(const struct certstore *cs, certstore_each_fn fn, void *arg);

#endif
