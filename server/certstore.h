/* certstore: one immutable, reference-counted generation of the certificates
 * in certs.d/, indexed by the DNS names they serve. Loading never stops at a
 * bad file: each problem is reported (file and reason) and that certificate
 * skipped (on reload: its directory's last good one kept). A reload reads only
 * changed directories. Knows nothing of sessions or configuration. */
#ifndef MXFRONT_CERTSTORE_H
#define MXFRONT_CERTSTORE_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
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
	uint32_t metrics_slot; /* metrics' counter for this name (0 until metrics gives one) */
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

/* What loading also looks at in a certificate it loads (and so serves):
 * each finding is reported through WARN, with the report's ARG. */
struct certstore_checks {
	gid_t key_group;          /* mxfront's group: the one group that may read a key */
	certstore_report_fn warn; /* NULL: nothing checked */
};

/* Loads every DIR/<label>/fullchain.pem + privkey.pem (hidden entries
 * ignored) into a new generation with one reference (the caller's). NOW is
 * the time expiry is judged against. CHECKS (or NULL; borrowed for the call)
 * asks for warnings about each certificate read: a privkey.pem readable by
 * others or by a group other than CHECKS->key_group, a wildcard for a
 * public suffix ("*.com", "*.co.uk": the public suffix list through libpsl). Returns 0, or -1 only when DIR itself
 * cannot be read (REPORT says why); bad certificates are reported and skipped.
 * PREV (NULL on first load; borrowed: the caller holds a reference for the
 * call) is the live generation, loaded from the same DIR (else it is
 * ignored): a directory whose two files have the same device, inode, size,
 * mtime and ctime as when PREV read them is not read again (unless they had
 * been modified less than 2 s before that read: a coarse clock could hide a
 * rewrite), its certificate and credentials are shared; one that is still
 * listed but fails now keeps PREV's certificate from it if that has not
 * expired (the report ends "; keeping the previous certificate"); a removed
 * one takes its names away. Nothing reachable from PREV is changed but
 * reference counts, so PREV may be in use on other threads meanwhile, and
 * the two generations may be released in any order, on any threads. */
int certstore_load(const char *dir, time_t now, const struct certstore_checks *checks,
                   const struct certstore *prev, certstore_report_fn report, void *arg,
                   struct certstore **out);

/* What a reload changed, for its log line: names are counted once each,
 * directories once per certificate directory of NEXT. */
struct certstore_diff {
	size_t added;          /* names NEXT serves and PREV did not */
	size_t removed;        /* names PREV served and NEXT does not */
	size_t changed;        /* names served by other certificates (or ones read again) */
	size_t loaded;         /* directories read and loaded anew */
	size_t reused;         /* directories unchanged since PREV: certificate shared, not read */
	size_t kept_last_good; /* directories that failed, PREV's certificate from them kept */
};

/* Compares NEXT with PREV, the generation it was loaded beside (NULL: every
 * name is added, every directory loaded). O(names + certificates). */
void certstore_diff(const struct certstore *prev, const struct certstore *next,
                    struct certstore_diff *d);

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

/* The one way a name from outside (SNI, a configured default) is looked up:
 * normalised (into NORM when not NULL: NORMSIZE bytes, "" when it is not a
 * host name), then exact, then wildcard. NULL when nothing serves it or it
 * is not a host name. */
const struct certstore_entry *certstore_resolve(const struct certstore *cs, const char *name,
                                                size_t len, char *norm, size_t normsize,
                                                enum certstore_match *how);

/* The directory of the certificate of E (looked up in CS) whose leaf is DER
 * -- the one GnuTLS sent -- or E->label when it is not found. */
const char *certstore_served_label(const struct certstore *cs, const struct certstore_entry *e,
                                   const gnutls_datum_t *der);

/* Number of certificates loaded and names served. */
size_t certstore_ncerts(const struct certstore *cs);
size_t certstore_nnames(const struct certstore *cs);

/* One (name, certificate) pair, for `mxfront certs`. */
struct certstore_row {
	const char *name;    /* as indexed: lower case, maybe "*.example.com" */
	const char *label;   /* the certificate's directory */
	const char *keytype; /* "RSA-2048", "ECDSA-P256", ... */
	time_t not_after;    /* the certificate's expiry */
	const unsigned char *spki_sha256; /* 32 bytes: SHA-256 of its SubjectPublicKeyInfo (DANE 3 1 1) */
};

/* Calls FN once per (name, certificate) pair, names in sorted order; ROW is
 * borrowed for the call. */
typedef void (*certstore_each_fn)(void *arg, const struct certstore_row *row);
void certstore_foreach(const struct certstore *cs, certstore_each_fn fn, void *arg);

/* Calls FN once per certificate loaded, in directory order, with ROW->name
 * its first name (sorted). */
void certstore_foreach_cert(const struct certstore *cs, certstore_each_fn fn, void *arg);

/* The I-th name (0 <= I < certstore_nnames), in sorted order. Only its
 * metrics_slot may be written, and only before the store is shared with
 * another thread. */
struct certstore_entry *certstore_entry_at(struct certstore *cs, size_t i);

#endif
