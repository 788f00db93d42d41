/* certstore_int: what certstore.c (generations, index, lookup),
 * certstore_scan.c (listing certs.d/, the loading threads) and
 * certstore_cert.c (one certificate directory read into a certificate and
 * its credential) share. Not for other modules. */
#ifndef MXFRONT_CERTSTORE_INT_H
#define MXFRONT_CERTSTORE_INT_H

#include <dirent.h>
#include <gnutls/abstract.h>
#include <gnutls/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "certstore.h"

#define CERTSTORE_MAX_NAME 253         /* RFC 1035 2.3.4, without the trailing dot */
#define CERTSTORE_MAX_LABEL 63
#define CERTSTORE_MAX_CHAIN 16         /* GnuTLS's own verification depth limit */
#define CERTSTORE_MAX_FILE (1u << 20)  /* a PEM chain or key beyond 1 MiB is not one */
#define CERTSTORE_MAX_THREADS 8
#define CERTSTORE_BATCH 16             /* directories a loading thread takes at a time */
#define CERTSTORE_NONE UINT32_MAX
#define CERTSTORE_MAX_WARN 2        /* one about the key, one about the names */
/* File times are coarse (a jiffy; whole seconds on some file systems): a file
 * modified this close to being read may be rewritten with the same stamp. */
#define CERTSTORE_RACY_SECS 2

/* A file as it was when read: if all of it is the same, so is the file. The
 * ctime catches an in-place rewrite that kept size and mtime (cp -p). */
struct certstore_stamp {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim, ctim;
	mode_t mode; /* not compared: a chmod or chgrp changes the ctim */
	gid_t gid;
};

/* A GnuTLS credential holding N certificates (chain and key each), shared by
 * every name served by exactly those certificates, across generations, and
 * by the certificates whose data it holds (their SRC). Immutable once built;
 * freed with its last reference. */
struct certstore_cred {
	atomic_int refs;
	uint32_t n;
	gnutls_certificate_credentials_t cred;
	char label[]; /* "dirA,dirB": its certificates' directories, in directory order */
};

/* One loaded certificate, shared by the generations that serve it. Its chain
 * and key live only in SRC, at position SRC_IDX: its own credential, or that
 * of a group it was first loaded into (then it served no name alone). SRC
 * is set while the generation that loaded it is built, never after.
 * XXX so when a group changes, the old group's credential lives on as the
 * source of its unchanged members (at most one such credential per cert). */
struct certstore_cert {
	atomic_int refs;
	unsigned src_idx;
	struct certstore_cred *src; /* a reference */
	struct certstore_stamp chain_st, key_st;
	bool racy; /* a file was modified just before it was read: the stamps prove nothing */
	time_t not_after;
	char keytype[16]; /* "RSA-2048", "ECDSA-P256", "Ed25519" */
	bool rsa;         /* RSA or RSA-PSS: offered after other key types */
	unsigned char spki_sha256[32]; /* SHA-256 of the leaf's SubjectPublicKeyInfo */
	char label[];     /* directory name */
};

/* One indexed name; the public part comes first so lookup can hand it out. */
struct certstore_name {
	struct certstore_entry pub;
	struct certstore_cred *cred; /* held through the generation's CREDS */
	uint32_t first, count;       /* its certificates: members[first .. first+count) */
};

struct certstore_slot {
	uint32_t hash;
	uint32_t idx; /* index into names + 1; 0 is an empty slot */
};

struct certstore {
	atomic_int refs;
	char *dir;                     /* as loaded: a reload from elsewhere starts afresh */
	struct certstore_cert **certs; /* references, in directory (label) order */
	bool *kept;                    /* per certificate: its directory failed, kept as last good */
	size_t ncerts;
	struct certstore_name *names; /* sorted by name */
	size_t nnames;
	uint32_t *members; /* indices into certs, ascending per name */
	size_t nmembers;
	struct certstore_cred **creds; /* references: the distinct credentials of the names */
	size_t ncreds;
	struct certstore_slot *slots;
	size_t mask; /* slot count - 1, a power of two minus one */
	char *strs;  /* name arena */
};

/* A growable byte buffer (file contents, string arenas). */
struct certstore_buf {
	char *data;
	size_t len, cap;
};

/* (name, certificate) as collected while loading. A loading thread fills
 * OFF (NAME is set once the arena stops moving) and CERT, its directory's
 * index; the index renumbers CERT into the generation's certificates. PREV
 * is the name's index in the previous generation when the pair comes from
 * there, CERTSTORE_NONE for a new certificate's pair. */
struct certstore_pair {
	size_t off;
	const char *name;
	uint32_t cert;
	uint32_t prev;
};

/* One directory: what it was before, and what loading it produced (filled
 * in by whichever thread took it). */
struct certstore_item {
	const char *label;           /* in the loader's label arena */
	int err;                     /* the entry itself cannot be read: its errno */
	struct certstore_cert *prev; /* the previous generation's certificate from it, or NULL */
	uint32_t prev_idx;           /* its index there */
	struct certstore_cert *cert; /* loaded anew (owned until collected) */
	bool reused;                 /* PREV is unchanged: shared, not read */
	struct certstore_stamp chain_st, key_st; /* of the files just read */
	const char *file;            /* the file REASON is about, NULL for the directory */
	char *reason;                /* the report to make, NULL if none */
	unsigned nwarn;              /* warnings about the certificate loaded from here */
	const char *warn_file[CERTSTORE_MAX_WARN];
	char *warn[CERTSTORE_MAX_WARN];
};

/* The state shared by the loading threads (each writes only its own items). */
struct certstore_loader {
	const char *dir;
	int dfd;
	time_t now;
	const struct certstore_checks *checks; /* or NULL */
	struct timespec started; /* CLOCK_REALTIME, before anything was read */
	const struct certstore *prev; /* NULL, or the live generation from the same DIR */
	certstore_report_fn report;
	void *arg;
	struct certstore *cs;
	char *labels; /* label arena */
	struct certstore_item *items; /* one per directory, sorted by label */
	size_t nlabels;
	atomic_size_t next;           /* the next directory to take */
	struct certstore_pair *pairs; /* new certificates' pairs, merged from the threads */
	size_t npairs;
	char *strs;        /* the threads' name arenas, merged */
	uint32_t *prevmap; /* PREV's certificate index -> this one's, or CERTSTORE_NONE */
	bool *fresh;       /* per certificate: loaded now (not shared with PREV) */
};

/* One loading thread's own state. */
struct certstore_worker {
	struct certstore_loader *ld;
	pthread_t thread;
	struct certstore_buf chain, key, strs;
	struct certstore_pair *pairs; /* .cert is the directory's index until the merge */
	size_t npairs, pairs_cap;
	unsigned nbad; /* unusable names in the current certificate */
	char bad[80];  /* the first of them, escaped */
	bool nomem;
};

/* ---- certstore_cert.c ---- */

/* Reports REASON about DIR/LABEL/FILE (FILE or LABEL may be NULL) now; for
 * the caller's thread only. */
void certstore_report(struct certstore_loader *ld, const char *label, const char *file,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The same for a warning about a certificate that loaded (ld->checks set). */
void certstore_warn(struct certstore_loader *ld, const char *label, const char *file,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Loads directory IDX of the loader into its item (cert, stamps, report). */
void certstore_load_one(struct certstore_worker *w, size_t idx);

/* Appends S to B; returns its offset, or SIZE_MAX when out of memory. */
size_t certstore_buf_add(struct certstore_buf *b, const char *s, size_t len);

/* Reference counts of the shared objects (the last unref frees). */
struct certstore_cred *certstore_cred_new(uint32_t n, const char *label, size_t len);
struct certstore_cred *certstore_cred_ref(struct certstore_cred *c);
void certstore_cred_unref(struct certstore_cred *c);
struct certstore_cert *certstore_cert_ref(struct certstore_cert *c);
void certstore_cert_unref(struct certstore_cert *c);

/* What the index also uses: building a credential shared by several
 * certificates, and "YYYY-MM-DD" for reports. */
int certstore_privkey(gnutls_x509_privkey_t x, gnutls_privkey_t *key);
void certstore_pair_free(gnutls_pcert_st *pcerts, unsigned n, gnutls_privkey_t key);
int certstore_cred_add(gnutls_certificate_credentials_t cred, gnutls_pcert_st *pcerts,
                       unsigned n, gnutls_privkey_t key, bool check);
void certstore_date(time_t t, char out[16]);

/* ---- certstore_scan.c ---- */

/* Lists the non-hidden subdirectories of D into LD->items, sorted by label
 * (in LD->labels); 0, or -1 with errno set. */
int certstore_list(struct certstore_loader *ld, DIR *d);

/* Loads every directory on *NW threads (this one included) into *WS. */
int certstore_run(struct certstore_loader *ld, struct certstore_worker **ws, size_t *nw);

#endif
