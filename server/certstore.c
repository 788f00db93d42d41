/* certstore: loads certs.d/<label>/{fullchain,privkey}.pem into immutable,
 * ref-counted generations: a credential per distinct set of certificates serving
 * a name, an open-addressing index from name to entry. Certificates and
 * credentials are ref-counted too: a reload shares the unchanged ones and never
 * writes to the live generation. Never touches globals, prints or exits: bad
 * files go to the caller's callback. Loads on short-lived threads. */
#include "certstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/x509.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CERTSTORE_MAX_NAME 253         /* RFC 1035 2.3.4, without the trailing dot */
#define CERTSTORE_MAX_LABEL 63
#define CERTSTORE_MAX_CHAIN 16         /* GnuTLS's own verification depth limit */
#define CERTSTORE_MAX_FILE (1u << 20)  /* a PEM chain or key beyond 1 MiB is not one */
#define CERTSTORE_MAX_THREADS 8
#define CERTSTORE_BATCH 16             /* directories a loading thread takes at a time */
#define CERTSTORE_NONE UINT32_MAX
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
};

/* The state shared by the loading threads (each writes only its own items). */
struct certstore_loader {
	const char *dir;
	int dfd;
	time_t now;
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

/* Reports REASON about DIR/LABEL/FILE (FILE or LABEL may be NULL) now; for
 * the caller's thread only. */
static void certstore_report(struct certstore_loader *ld, const char *label, const char *file,
                             const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void certstore_report(struct certstore_loader *ld, const char *label, const char *file,
                             const char *fmt, ...)
{
	char path[PATH_MAX + 256], reason[600];
	va_list ap;

	if (ld->report == NULL)
		return;
	snprintf(path, sizeof path, "%s%s%s%s%s", ld->dir, label ? "/" : "", label ? label : "",
	         file ? "/" : "", file ? file : "");
	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	ld->report(ld->arg, path, reason);
}

/* Records a problem with FILE of directory IDX, to be reported after loading. */
static void certstore_note(struct certstore_worker *w, size_t idx, const char *file,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void certstore_note(struct certstore_worker *w, size_t idx, const char *file,
                           const char *fmt, ...)
{
	struct certstore_item *it = &w->ld->items[idx];
	va_list ap;

	free(it->reason); /* the last word on a directory is the one reported */
	va_start(ap, fmt);
	if (vasprintf(&it->reason, fmt, ap) < 0) {
		it->reason = NULL;
		w->nomem = true;
	}
	va_end(ap);
	it->file = file;
}

/* Makes room for N more bytes in B; false when out of memory. */
static bool certstore_buf_reserve(struct certstore_buf *b, size_t n)
{
	size_t cap = b->cap ? b->cap : 4096;
	char *p;

	if (b->len + n <= b->cap)
		return true;
	while (cap < b->len + n)
		cap *= 2;
	p = realloc(b->data, cap);
	if (p == NULL)
		return false;
	b->data = p;
	b->cap = cap;
	return true;
}

/* Appends S[0..LEN) and a NUL to arena B; returns its offset, or SIZE_MAX. */
static size_t certstore_buf_add(struct certstore_buf *b, const char *s, size_t len)
{
	size_t off = b->len;

	if (!certstore_buf_reserve(b, len + 1))
		return SIZE_MAX;
	memcpy(b->data + off, s, len);
	b->data[off + len] = '\0';
	b->len += len + 1;
	return off;
}

static void certstore_stamp_set(struct certstore_stamp *s, const struct stat *st)
{
	*s = (struct certstore_stamp){ .dev = st->st_dev, .ino = st->st_ino, .size = st->st_size,
		                       .mtim = st->st_mtim, .ctim = st->st_ctim };
}

static bool certstore_stamp_eq(const struct certstore_stamp *a, const struct certstore_stamp *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
	       a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* Reads LABEL/FILE under the open directory DFD into B (replacing its
 * contents) and stamps it as it was when opened (a change while reading
 * shows at the next reload); false with the reason in WHY if it cannot. */
static bool certstore_read(int dfd, const char *label, const char *file, struct certstore_buf *b,
                           struct certstore_stamp *stamp, char *why, size_t whysize)
{
	char rel[NAME_MAX + 32];
	struct stat st;
	ssize_t n = 1;
	int fd, err = 0;

	snprintf(rel, sizeof rel, "%s/%s", label, file);
	/* O_NONBLOCK: a FIFO planted here must not hang the loader. */
	fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) != 0) {
		err = errno;
	} else if (!S_ISREG(st.st_mode)) {
		snprintf(why, whysize, "not a regular file");
		n = -1;
	} else {
		certstore_stamp_set(stamp, &st);
	}
	for (b->len = 0; err == 0 && n > 0;) {
		size_t room = CERTSTORE_MAX_FILE - b->len;
		if (room == 0 || !certstore_buf_reserve(b, b->cap > b->len ? 1 : b->len + 1)) {
			err = room == 0 ? EFBIG : ENOMEM;
			break;
		}
		n = read(fd, b->data + b->len, b->cap - b->len < room ? b->cap - b->len : room);
		if (n > 0)
			b->len += (size_t)n;
		else if (n < 0 && errno != EINTR)
			err = errno;
		else if (n < 0)
			n = 1;
	}
	if (err != 0)
		snprintf(why, whysize, "%s", strerror_r(err, rel, sizeof rel));
	if (fd >= 0)
		close(fd);
	return err == 0 && n == 0;
}

/* Whether a file stamped S, read after STARTED, was modified so shortly
 * before that a rewrite could keep its stamp (racy git's problem). */
static bool certstore_racy(const struct certstore_stamp *s, const struct timespec *started)
{
	return s->mtim.tv_sec >= started->tv_sec - CERTSTORE_RACY_SECS;
}

/* Whether LABEL's two files under DFD are still those CERT was loaded from:
 * one stat each, nothing read. */
static bool certstore_unchanged(int dfd, const char *label, const struct certstore_cert *cert)
{
	char rel[NAME_MAX + 32];
	struct certstore_stamp s;
	struct stat st;

	if (cert->racy)
		return false;
	snprintf(rel, sizeof rel, "%s/fullchain.pem", label);
	if (fstatat(dfd, rel, &st, 0) != 0)
		return false;
	certstore_stamp_set(&s, &st);
	if (!certstore_stamp_eq(&s, &cert->chain_st))
		return false;
	snprintf(rel, sizeof rel, "%s/privkey.pem", label);
	if (fstatat(dfd, rel, &st, 0) != 0)
		return false;
	certstore_stamp_set(&s, &st);
	return certstore_stamp_eq(&s, &cert->key_st);
}

int certstore_normalize(const char *name, size_t len, char *out, size_t outsize)
{
	size_t i, label = 0;

	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > CERTSTORE_MAX_NAME || outsize < len + 1)
		return -1;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c == '.') {
			/* RFC 1123 2.1: no empty label, none starting or ending with a hyphen. */
			if (label == 0 || out[i - 1] == '-')
				return -1;
			label = 0;
			out[i] = '.';
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return -1;
		if ((c == '-' && label == 0) || ++label > CERTSTORE_MAX_LABEL)
			return -1;
		out[i] = (char)c;
	}
	if (label == 0 || out[len - 1] == '-')
		return -1;
	out[len] = '\0';
	return (int)len;
}

/* Normalises a name found in a certificate, which may also be a one-label
 * wildcard "*.rest"; returns its length or -1. OUT holds 256 bytes. */
static int certstore_cert_name(const char *s, size_t len, char *out)
{
	int n;

	if (len < 2 || s[0] != '*' || s[1] != '.')
		return certstore_normalize(s, len, out, 256);
	n = certstore_normalize(s + 2, len - 2, out + 2, 254);
	if (n < 0 || n + 2 > CERTSTORE_MAX_NAME)
		return -1;
	out[0] = '*';
	out[1] = '.';
	return n + 2;
}

/* Describes the first unusable name of a certificate for a report: printable
 * ASCII kept, the rest escaped, cut at 64 bytes. */
static void certstore_escape(const char *s, size_t len, char *out, size_t size)
{
	size_t i, o = 0;

	for (i = 0; i < len && o + 5 < size && o < 64; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c > 0x20 && c < 0x7f && c != '"' && c != '\\')
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, size - o, "\\x%02x", c);
	}
	out[o] = '\0';
}

/* Notes an unusable name S[0..LEN) of the current certificate. */
static void certstore_bad_name(struct certstore_worker *w, const char *s, size_t len)
{
	if (w->nbad++ == 0)
		certstore_escape(s, len, w->bad, sizeof w->bad);
}

/* Records name S[0..LEN) of label IDX's certificate; returns 1 if usable, 0 if not. */
static int certstore_add_name(struct certstore_worker *w, uint32_t idx, const char *s, size_t len)
{
	char norm[256];
	int n = certstore_cert_name(s, len, norm);
	size_t off;

	if (n < 0) {
		certstore_bad_name(w, s, len);
		return 0;
	}
	if (w->npairs == w->pairs_cap) {
		size_t cap = w->pairs_cap ? w->pairs_cap * 2 : 256;
		struct certstore_pair *p = realloc(w->pairs, cap * sizeof *p);
		if (p == NULL)
			goto nomem;
		w->pairs = p;
		w->pairs_cap = cap;
	}
	off = certstore_buf_add(&w->strs, norm, (size_t)n);
	if (off == SIZE_MAX)
		goto nomem;
	w->pairs[w->npairs++] = (struct certstore_pair){ .off = off, .cert = idx };
	return 1;
nomem:
	w->nomem = true;
	return 0;
}

/* Adds the DNS names of LEAF's subjectAltName (as GnuTLS parsed them on
 * import); returns how many there are, usable or not, and adds the usable
 * ones to *USABLE. */
static int certstore_san_names(struct certstore_worker *w, uint32_t idx, gnutls_x509_crt_t leaf,
                               int *usable)
{
	char buf[256];
	unsigned i, type, critical;
	int seen = 0, ret;

	for (i = 0;; i++) {
		size_t size = sizeof buf;
		type = 0;
		ret = gnutls_x509_crt_get_subject_alt_name2(leaf, i, buf, &size, &type, &critical);
		if (ret < 0 && ret != GNUTLS_E_SHORT_MEMORY_BUFFER)
			break;
		if (type != GNUTLS_SAN_DNSNAME)
			continue;
		seen++;
		if (ret == GNUTLS_E_SHORT_MEMORY_BUFFER)
			certstore_bad_name(w, "(too long)", 10);
		else
			*usable += certstore_add_name(w, idx, buf, size);
	}
	return seen;
}

/* Adds LEAF's names (subjectAltName DNS names, else its most specific CN,
 * RFC 6125 6.4.4) as served by label IDX; returns how many are usable. */
static int certstore_names(struct certstore_worker *w, uint32_t idx, gnutls_x509_crt_t leaf)
{
	char cn[256];
	size_t size;
	int usable = 0, last = -1;
	unsigned i;

	if (certstore_san_names(w, idx, leaf, &usable) > 0)
		return usable;
	for (i = 0; i < 16; i++) {
		size = sizeof cn;
		if (gnutls_x509_crt_get_dn_by_oid(leaf, GNUTLS_OID_X520_COMMON_NAME, i, 0, cn, &size) ==
		    GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
			break;
		last = (int)i;
	}
	size = sizeof cn;
	if (last >= 0 && gnutls_x509_crt_get_dn_by_oid(leaf, GNUTLS_OID_X520_COMMON_NAME,
	                                               (unsigned)last, 0, cn, &size) == 0)
		usable += certstore_add_name(w, idx, cn, size);
	return usable;
}

/* Writes what kind of key PUB is ("RSA-2048", "ECDSA-P256", "Ed25519") into OUT. */
static void certstore_keytype(gnutls_pubkey_t pub, char *out, size_t size, bool *rsa)
{
	gnutls_ecc_curve_t curve = GNUTLS_ECC_CURVE_INVALID;
	unsigned bits = 0;
	int pk = gnutls_pubkey_get_pk_algorithm(pub, &bits);

	*rsa = pk == GNUTLS_PK_RSA || pk == GNUTLS_PK_RSA_PSS;
	switch (pk) {
	case GNUTLS_PK_RSA:
		snprintf(out, size, "RSA-%u", bits);
		break;
	case GNUTLS_PK_RSA_PSS:
		snprintf(out, size, "RSA-PSS-%u", bits);
		break;
	case GNUTLS_PK_ECDSA:
		gnutls_pubkey_export_ecc_raw2(pub, &curve, NULL, NULL, 0);
		snprintf(out, size, "ECDSA-%s",
		         curve == GNUTLS_ECC_CURVE_SECP256R1   ? "P256"
		         : curve == GNUTLS_ECC_CURVE_SECP384R1 ? "P384"
		         : curve == GNUTLS_ECC_CURVE_SECP521R1 ? "P521"
		                                               : "other");
		break;
	case GNUTLS_PK_EDDSA_ED25519:
		snprintf(out, size, "Ed25519");
		break;
	case GNUTLS_PK_EDDSA_ED448:
		snprintf(out, size, "Ed448");
		break;
	default:
		snprintf(out, size, "%s", pk > 0 ? gnutls_pk_get_name(pk) : "unknown");
	}
}

/* Allocates an empty server credential with a minimal trust list. */
static int certstore_gnutls_new(gnutls_certificate_credentials_t *cred)
{
	gnutls_x509_trust_list_t tl;
	int ret = gnutls_certificate_allocate_credentials(cred);

	if (ret < 0)
		return ret;
	/* The default trust list is a 127-bucket table (~6 KiB) that a server which
	 * never verifies clients does not use: with 50,000 credentials that is
	 * 300 MB. One bucket will do. */
	if (gnutls_x509_trust_list_init(&tl, 1) == 0)
		gnutls_certificate_set_trust_list(*cred, tl, 0);
	return 0;
}

/* Wraps X (consumed, even on failure) in a new abstract key *KEY. */
static int certstore_privkey(gnutls_x509_privkey_t x, gnutls_privkey_t *key)
{
	int ret;

	*key = NULL;
	ret = gnutls_privkey_init(key);
	if (ret == 0)
		ret = gnutls_privkey_import_x509(*key, x, GNUTLS_PRIVKEY_IMPORT_AUTO_RELEASE);
	if (ret < 0) {
		if (*key != NULL)
			gnutls_privkey_deinit(*key);
		*key = NULL;
		gnutls_x509_privkey_deinit(x);
	}
	return ret;
}

/* Frees a chain and key that no credential took. */
static void certstore_pair_free(gnutls_pcert_st *pcerts, unsigned n, gnutls_privkey_t key)
{
	unsigned i;

	for (i = 0; i < n; i++)
		gnutls_pcert_deinit(&pcerts[i]);
	gnutls_privkey_deinit(key);
}

/* Adds chain PCERTS[0..N) and KEY (all consumed, even on failure) to CRED;
 * CHECK asks GnuTLS to verify that they match. */
static int certstore_cred_add(gnutls_certificate_credentials_t cred, gnutls_pcert_st *pcerts,
                              unsigned n, gnutls_privkey_t key, bool check)
{
	static const char *no_names[1]; /* not NULL: GnuTLS then keeps no names of its own */
	int ret;

	gnutls_certificate_set_flags(cred, check ? 0 : GNUTLS_CERTIFICATE_SKIP_KEY_CERT_MATCH);
	/* Takes the pcerts and key on success; leaves them to us on failure. */
	ret = gnutls_certificate_set_key(cred, no_names, 0, pcerts, (int)n, key);
	if (ret < 0)
		certstore_pair_free(pcerts, n, key);
	return ret < 0 ? ret : 0;
}

/* Exports the public values of PUB: RSA modulus and exponent, EC point, EdDSA key. */
static int certstore_pub_raw(gnutls_pubkey_t pub, gnutls_datum_t *a, gnutls_datum_t *b)
{
	switch (gnutls_pubkey_get_pk_algorithm(pub, NULL)) {
	case GNUTLS_PK_RSA:
	case GNUTLS_PK_RSA_PSS:
		return gnutls_pubkey_export_rsa_raw2(pub, a, b, 0);
	case GNUTLS_PK_ECDSA:
	case GNUTLS_PK_EDDSA_ED25519:
	case GNUTLS_PK_EDDSA_ED448:
		return gnutls_pubkey_export_ecc_raw2(pub, NULL, a, b, 0);
	default:
		return GNUTLS_E_UNIMPLEMENTED_FEATURE;
	}
}

static bool certstore_datum_eq(const gnutls_datum_t *a, const gnutls_datum_t *b)
{
	return a->size == b->size && (a->size == 0 || memcmp(a->data, b->data, a->size) == 0);
}

/* Whether KEY is the private half of PUB: same algorithm, same public values. */
static bool certstore_same_key(gnutls_pubkey_t pub, gnutls_privkey_t key)
{
	gnutls_pubkey_t kpub = NULL;
	gnutls_datum_t d[4] = { { NULL, 0 }, { NULL, 0 }, { NULL, 0 }, { NULL, 0 } };
	bool same = false;
	int i;

	if (gnutls_pubkey_init(&kpub) == 0 && gnutls_pubkey_import_privkey(kpub, key, 0, 0) == 0 &&
	    gnutls_pubkey_get_pk_algorithm(pub, NULL) == gnutls_pubkey_get_pk_algorithm(kpub, NULL) &&
	    certstore_pub_raw(pub, &d[0], &d[1]) == 0 && certstore_pub_raw(kpub, &d[2], &d[3]) == 0)
		same = certstore_datum_eq(&d[0], &d[2]) && certstore_datum_eq(&d[1], &d[3]);
	for (i = 0; i < 4; i++)
		gnutls_free(d[i].data);
	gnutls_pubkey_deinit(kpub);
	return same;
}

/* A new credential object for N certificates, labelled LABEL[0..LEN), with
 * an empty GnuTLS credential and one reference (the caller's); NULL if out
 * of memory. */
static struct certstore_cred *certstore_cred_new(uint32_t n, const char *label, size_t len)
{
	struct certstore_cred *c = malloc(sizeof *c + len + 1);

	if (c == NULL)
		return NULL;
	if (certstore_gnutls_new(&c->cred) < 0) {
		free(c);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	c->n = n;
	memcpy(c->label, label, len);
	c->label[len] = '\0';
	return c;
}

static struct certstore_cred *certstore_cred_ref(struct certstore_cred *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

static void certstore_cred_unref(struct certstore_cred *c)
{
	if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
		gnutls_certificate_free_credentials(c->cred);
		free(c);
	}
}

/* A new, empty certificate from directory LABEL, with one reference. */
static struct certstore_cert *certstore_cert_new(const char *label)
{
	size_t len = strlen(label);
	struct certstore_cert *c = calloc(1, sizeof *c + len + 1);

	if (c == NULL)
		return NULL;
	atomic_init(&c->refs, 1);
	memcpy(c->label, label, len + 1);
	return c;
}

static struct certstore_cert *certstore_cert_ref(struct certstore_cert *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

static void certstore_cert_unref(struct certstore_cert *c)
{
	if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
		certstore_cred_unref(c->src);
		free(c);
	}
}

/* Builds CERT's own credential (its SRC) from a parsed pair; consumes X.
 * Returns 0, or a GnuTLS error (GNUTLS_E_CERTIFICATE_KEY_MISMATCH for a
 * foreign key) or GNUTLS_E_MEMORY_ERROR. */
static int certstore_cert_cred(struct certstore_cert *cert, gnutls_x509_crt_t *crts, unsigned n,
                               gnutls_x509_privkey_t x)
{
	gnutls_pcert_st pcerts[CERTSTORE_MAX_CHAIN];
	gnutls_privkey_t key;
	bool same;
	int ret = certstore_privkey(x, &key);

	if (ret < 0)
		return ret;
	ret = gnutls_pcert_import_x509_list(pcerts, crts, &n, 0);
	if (ret < 0) {
		gnutls_privkey_deinit(key);
		return ret;
	}
	certstore_keytype(pcerts[0].pubkey, cert->keytype, sizeof cert->keytype, &cert->rsa);
	/* GnuTLS's own match test signs and verifies (~1 ms with RSA-2048, too
	 * slow for 50,000 certificates): equal public values prove the match, and
	 * only when they differ (a mismatch, or an RSA key in an RSA-PSS
	 * certificate) is GnuTLS asked to decide. */
	same = certstore_same_key(pcerts[0].pubkey, key);
	cert->src = certstore_cred_new(1, cert->label, strlen(cert->label));
	if (cert->src == NULL) {
		certstore_pair_free(pcerts, n, key);
		return GNUTLS_E_MEMORY_ERROR;
	}
	cert->src_idx = 0;
	/* A failed pair stays inside the credential (MACHINE.md): discard it. */
	ret = certstore_cred_add(cert->src->cred, pcerts, n, key, !same);
	if (ret < 0) {
		certstore_cred_unref(cert->src);
		cert->src = NULL;
	}
	return ret;
}

/* Formats T as YYYY-MM-DD (UTC) into OUT. */
static void certstore_date(time_t t, char out[16])
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(out, 16, "%Y-%m-%d", &tm) == 0)
		snprintf(out, 16, "?");
}

/* Checks the leaf's validity period against NOW; returns NULL or why not,
 * formatted into WHY. */
static const char *certstore_check_dates(gnutls_x509_crt_t leaf, time_t now, char *why,
                                         size_t size)
{
	time_t before = gnutls_x509_crt_get_activation_time(leaf);
	time_t after = gnutls_x509_crt_get_expiration_time(leaf);
	char date[16];

	if (before == (time_t)-1 || after == (time_t)-1)
		return "certificate has no readable validity period";
	if (after < now) {
		certstore_date(after, date);
		snprintf(why, size, "expired on %s", date);
		return why;
	}
	if (before > now) {
		certstore_date(before, date);
		snprintf(why, size, "not valid before %s", date);
		return why;
	}
	return NULL;
}

/* Parses the chain and key read into W's buffers and checks the leaf's dates;
 * notes why and returns false if directory IDX is unusable. */
static bool certstore_parse(struct certstore_worker *w, size_t idx, gnutls_x509_crt_t **crts,
                            unsigned *n, gnutls_x509_privkey_t *x)
{
	gnutls_datum_t chain = { (unsigned char *)w->chain.data, (unsigned)w->chain.len };
	gnutls_datum_t key = { (unsigned char *)w->key.data, (unsigned)w->key.len };
	const char *why;
	char buf[64];
	int ret;

	ret = gnutls_x509_crt_list_import2(crts, n, &chain, GNUTLS_X509_FMT_PEM, 0);
	if (ret < 0) {
		*crts = NULL;
		*n = 0;
		certstore_note(w, idx, "fullchain.pem", "not a PEM certificate chain: %s",
		               gnutls_strerror(ret));
		return false;
	}
	if (*n > CERTSTORE_MAX_CHAIN) {
		certstore_note(w, idx, "fullchain.pem", "chain of %u certificates is too long", *n);
		return false;
	}
	why = certstore_check_dates((*crts)[0], w->ld->now, buf, sizeof buf);
	if (why != NULL) {
		certstore_note(w, idx, "fullchain.pem", "%s", why);
		return false;
	}
	ret = gnutls_x509_privkey_init(x);
	if (ret == 0)
		ret = gnutls_x509_privkey_import2(*x, &key, GNUTLS_X509_FMT_PEM, NULL, 0);
	if (ret < 0) {
		certstore_note(w, idx, "privkey.pem", "not a usable private key: %s",
		               gnutls_strerror(ret));
		return false;
	}
	return true;
}

/* Makes the parsed pair of directory IDX a certificate, or notes why it
 * cannot serve; consumes X. */
static void certstore_add(struct certstore_worker *w, size_t idx, gnutls_x509_crt_t *crts,
                          unsigned n, gnutls_x509_privkey_t x)
{
	struct certstore_item *it = &w->ld->items[idx];
	size_t npairs = w->npairs, nstrs = w->strs.len;
	struct certstore_cert *cert = NULL;
	int ret;

	w->nbad = 0;
	if (certstore_names(w, (uint32_t)idx, crts[0]) == 0 || w->nomem) {
		gnutls_x509_privkey_deinit(x);
		if (!w->nomem)
			certstore_note(w, idx, "fullchain.pem", "no usable name%s%s%s",
			               w->nbad ? " (not a host name: \"" : " (no DNS subjectAltName nor CN)",
			               w->nbad ? w->bad : "", w->nbad ? "\")" : "");
		goto undo;
	}
	cert = certstore_cert_new(it->label);
	if (cert == NULL) {
		gnutls_x509_privkey_deinit(x);
		w->nomem = true;
		goto undo;
	}
	cert->chain_st = it->chain_st;
	cert->key_st = it->key_st;
	cert->racy = certstore_racy(&it->chain_st, &w->ld->started) ||
	             certstore_racy(&it->key_st, &w->ld->started);
	cert->not_after = gnutls_x509_crt_get_expiration_time(crts[0]);
	ret = certstore_cert_cred(cert, crts, n, x);
	if (ret < 0) {
		if (ret == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
			certstore_note(w, idx, "privkey.pem", "key does not match certificate");
		else if (ret == GNUTLS_E_MEMORY_ERROR)
			w->nomem = true;
		else
			certstore_note(w, idx, "fullchain.pem", "unusable: %s", gnutls_strerror(ret));
		goto undo;
	}
	it->cert = cert;
	if (w->nbad > 0)
		certstore_note(w, idx, "fullchain.pem", "ignoring %u name%s that %s not a host name: \"%s\"",
		               w->nbad, w->nbad > 1 ? "s" : "", w->nbad > 1 ? "are" : "is", w->bad);
	return;
undo:
	certstore_cert_unref(cert);
	w->npairs = npairs;
	w->strs.len = nstrs;
}

/* Loads DIR/<label IDX>/{fullchain,privkey}.pem, or notes why not; with
 * the previous generation's certificate from there if its files have not
 * changed. */
static void certstore_load_one(struct certstore_worker *w, size_t idx)
{
	struct certstore_item *it = &w->ld->items[idx];
	gnutls_x509_crt_t *crts = NULL;
	gnutls_x509_privkey_t x = NULL;
	unsigned i, n = 0;
	char why[128];

	if (it->err != 0) {
		certstore_note(w, idx, NULL, "cannot read: %s", strerror_r(it->err, why, sizeof why));
		return;
	}
	if (it->prev != NULL && certstore_unchanged(w->ld->dfd, it->label, it->prev)) {
		it->reused = true;
		return;
	}
	if (!certstore_read(w->ld->dfd, it->label, "fullchain.pem", &w->chain, &it->chain_st, why,
	                    sizeof why)) {
		certstore_note(w, idx, "fullchain.pem", "cannot read: %s", why);
	} else if (!certstore_read(w->ld->dfd, it->label, "privkey.pem", &w->key, &it->key_st, why,
	                           sizeof why)) {
		certstore_note(w, idx, "privkey.pem", "cannot read: %s", why);
	} else if (certstore_parse(w, idx, &crts, &n, &x)) {
		certstore_add(w, idx, crts, n, x);
		x = NULL;
	}
	if (x != NULL)
		gnutls_x509_privkey_deinit(x);
	for (i = 0; i < n; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
	if (w->key.data != NULL)
		explicit_bzero(w->key.data, w->key.len);
}

/* A loading thread: takes directories in small batches until none is left. */
static void *certstore_worker_run(void *arg)
{
	struct certstore_worker *w = arg;
	struct certstore_loader *ld = w->ld;
	size_t i, end;

	while (!w->nomem) {
		i = atomic_fetch_add(&ld->next, CERTSTORE_BATCH);
		if (i >= ld->nlabels)
			break;
		end = i + CERTSTORE_BATCH < ld->nlabels ? i + CERTSTORE_BATCH : ld->nlabels;
		for (; i < end && !w->nomem; i++)
			certstore_load_one(w, i);
	}
	return NULL;
}

/* How many threads to load NLABELS directories with: one per CPU we may
 * run on, fewer for a small directory. */
static size_t certstore_nthreads(size_t nlabels)
{
	cpu_set_t set;
	size_t n = 1, batches = (nlabels + CERTSTORE_BATCH - 1) / CERTSTORE_BATCH;

	if (sched_getaffinity(0, sizeof set, &set) == 0)
		n = (size_t)CPU_COUNT(&set);
	if (n > CERTSTORE_MAX_THREADS)
		n = CERTSTORE_MAX_THREADS;
	if (n > batches)
		n = batches;
	return n > 0 ? n : 1;
}

/* Loads every directory on *NW threads (this one included) into *WS. */
static int certstore_run(struct certstore_loader *ld, struct certstore_worker **ws, size_t *nw)
{
	size_t n = certstore_nthreads(ld->nlabels), started, i;
	struct certstore_worker *w = calloc(n, sizeof *w);
	sigset_t all, old;

	if (w == NULL)
		return -1;
	for (i = 0; i < n; i++)
		w[i].ld = ld;
	/* Signals are for the daemon's own threads, never for these. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (started = 1; started < n; started++)
		if (pthread_create(&w[started].thread, NULL, certstore_worker_run, &w[started]) != 0)
			break;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	certstore_worker_run(&w[0]);
	for (i = 1; i < started; i++)
		pthread_join(w[i].thread, NULL);
	*ws = w;
	*nw = n;
	for (i = 0; i < n; i++)
		if (w[i].nomem)
			return -1;
	return 0;
}

/* Whether directory entry DE is a certificate directory (symlinks followed:
 * certbot-style trees are often linked in). One that cannot be stat'ed
 * (a dangling link) counts, with its errno in *ERR: it is reported, and
 * keeps its last good certificate on reload. */
static bool certstore_is_dir(struct certstore_loader *ld, const struct dirent *de, int *err)
{
	struct stat st;

	*err = 0;
	if (de->d_type == DT_DIR)
		return true;
	if (de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
		return false;
	if (fstatat(ld->dfd, de->d_name, &st, 0) != 0) {
		*err = errno;
		return true;
	}
	return S_ISDIR(st.st_mode);
}

/* A directory as listed: its name (an offset into the label arena until
 * the arena stops moving) and the errno of the entry itself. */
struct certstore_dirent {
	union {
		size_t off;
		const char *label;
	};
	int err;
};

static int certstore_cmp_dirent(const void *a, const void *b)
{
	return strcmp(((const struct certstore_dirent *)a)->label,
	              ((const struct certstore_dirent *)b)->label);
}

/* Lists the non-hidden subdirectories of D into LD->items, sorted by label
 * (in LD->labels); 0, or -1 with errno set. */
static int certstore_list(struct certstore_loader *ld, DIR *d)
{
	struct certstore_buf arena = { 0 };
	struct certstore_dirent *ents = NULL, *p;
	struct dirent *de;
	size_t n = 0, cap = 0, i;
	int err;

	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !certstore_is_dir(ld, de, &err))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			p = realloc(ents, cap * sizeof *ents);
			if (p == NULL)
				goto nomem;
			ents = p;
		}
		ents[n].off = certstore_buf_add(&arena, de->d_name, strlen(de->d_name));
		if (ents[n].off == SIZE_MAX)
			goto nomem;
		ents[n++].err = err;
		errno = 0;
	}
	ld->labels = arena.data;
	if (errno != 0 || (ld->items = calloc(n + 1, sizeof *ld->items)) == NULL) {
		errno = errno ? errno : ENOMEM;
		free(ents);
		return -1;
	}
	for (i = 0; i < n; i++)
		ents[i].label = arena.data + ents[i].off;
	/* Sorting these small entries, not the items, keeps 50,000 labels cheap. */
	if (n > 0)
		qsort(ents, n, sizeof *ents, certstore_cmp_dirent);
	for (i = 0; i < n; i++)
		ld->items[i] = (struct certstore_item){ .label = ents[i].label, .err = ents[i].err,
			                                .prev_idx = CERTSTORE_NONE };
	ld->nlabels = n;
	free(ents);
	return 0;
nomem:
	free(arena.data);
	free(ents);
	errno = ENOMEM;
	return -1;
}

/* Pairs each directory with the previous generation's certificate from it
 * (both sorted by label). */
static void certstore_match_prev(struct certstore_loader *ld)
{
	const struct certstore *p = ld->prev;
	size_t i = 0, j = 0;
	int c;

	while (p != NULL && i < ld->nlabels && j < p->ncerts) {
		c = strcmp(ld->items[i].label, p->certs[j]->label);
		if (c == 0) {
			ld->items[i].prev = p->certs[j];
			ld->items[i].prev_idx = (uint32_t)j;
		}
		i += c <= 0;
		j += c >= 0;
	}
}

/* Makes the reports noted while loading, in directory order, and puts each
 * directory's certificate into the certstore: the one loaded now, the
 * unchanged previous one, or the previous one as the last good when the
 * directory failed. Returns each directory's certificate index (the caller
 * frees it), or NULL. */
static uint32_t *certstore_collect(struct certstore_loader *ld)
{
	static const char keeping[] = "; keeping the previous certificate";
	struct certstore *cs = ld->cs;
	size_t nprev = ld->prev ? ld->prev->ncerts : 0, i;
	uint32_t *map = malloc((ld->nlabels + 1) * sizeof *map);
	char date[16];

	cs->certs = malloc((ld->nlabels + 1) * sizeof *cs->certs);
	cs->kept = calloc(ld->nlabels + 1, sizeof *cs->kept);
	ld->fresh = calloc(ld->nlabels + 1, sizeof *ld->fresh);
	ld->prevmap = malloc((nprev + 1) * sizeof *ld->prevmap);
	if (map == NULL || cs->certs == NULL || cs->kept == NULL || ld->fresh == NULL ||
	    ld->prevmap == NULL) {
		free(map);
		return NULL;
	}
	for (i = 0; i < nprev; i++)
		ld->prevmap[i] = CERTSTORE_NONE;
	for (i = 0; i < ld->nlabels; i++) {
		struct certstore_item *it = &ld->items[i];
		/* A last good certificate that has expired since is no longer good. */
		bool prev_ok = it->prev != NULL && it->prev->not_after >= ld->now;
		bool keep = it->cert == NULL && !it->reused && prev_ok;
		map[i] = (uint32_t)cs->ncerts;
		if (it->reason != NULL)
			certstore_report(ld, it->label, it->file, "%s%s", it->reason, keep ? keeping : "");
		if (it->reused && !prev_ok) {
			certstore_date(it->prev->not_after, date);
			certstore_report(ld, it->label, "fullchain.pem", "expired on %s", date);
		}
		if (it->cert != NULL) {
			ld->fresh[cs->ncerts] = true;
			cs->certs[cs->ncerts++] = it->cert;
			it->cert = NULL;
		} else if ((it->reused && prev_ok) || keep) {
			ld->prevmap[it->prev_idx] = (uint32_t)cs->ncerts;
			cs->kept[cs->ncerts] = keep;
			cs->certs[cs->ncerts++] = certstore_cert_ref(it->prev);
		}
	}
	return map;
}

/* Merges the threads' name arenas and the new certificates' (name,
 * certificate) pairs, now naming certificates by their index in the
 * certstore. */
static int certstore_merge(struct certstore_loader *ld, const struct certstore_worker *w,
                           size_t nw)
{
	uint32_t *map = certstore_collect(ld);
	size_t nstrs = 0, npairs = 0, base = 0, i, j;

	for (i = 0; i < nw; i++) {
		nstrs += w[i].strs.len;
		npairs += w[i].npairs;
	}
	ld->strs = malloc(nstrs + 1);
	ld->pairs = malloc((npairs + 1) * sizeof *ld->pairs);
	if (map == NULL || ld->strs == NULL || ld->pairs == NULL) {
		free(map);
		return -1;
	}
	for (i = 0; i < nw; base += w[i].strs.len, i++) {
		if (w[i].strs.len > 0)
			memcpy(ld->strs + base, w[i].strs.data, w[i].strs.len);
		for (j = 0; j < w[i].npairs; j++)
			ld->pairs[ld->npairs++] = (struct certstore_pair){
				.off = base + w[i].pairs[j].off, .cert = map[w[i].pairs[j].cert],
				.prev = CERTSTORE_NONE };
	}
	for (i = 0; i < ld->npairs; i++)
		ld->pairs[i].name = ld->strs + ld->pairs[i].off;
	free(map);
	return 0;
}

/* FNV-1a over PFX then S, with a final mix so that the low bits (the slot)
 * depend on every byte. */
static uint32_t certstore_hash(const char *pfx, const char *s)
{
	uint32_t h = 2166136261u;

	for (; *pfx != '\0'; pfx++)
		h = (h ^ (unsigned char)*pfx) * 16777619u;
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	return h;
}

/* Finds the name PFX+S in the index. */
static const struct certstore_name *certstore_find(const struct certstore *cs, const char *pfx,
                                                   const char *s)
{
	uint32_t h = certstore_hash(pfx, s);
	size_t plen = strlen(pfx), i;

	for (i = h & cs->mask; cs->slots[i].idx != 0; i = (i + 1) & cs->mask) {
		const struct certstore_name *n = &cs->names[cs->slots[i].idx - 1];
		if (cs->slots[i].hash == h && strncmp(n->pub.name, pfx, plen) == 0 &&
		    strcmp(n->pub.name + plen, s) == 0)
			return n;
	}
	return NULL;
}

static int certstore_cmp_pair(const void *a, const void *b)
{
	const struct certstore_pair *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c != 0 ? c : (x->cert > y->cert) - (x->cert < y->cert);
}

/* Walks the previous generation's (name, certificate) pairs in order,
 * skipping certificates the new one does not have, renumbering the others:
 * they come out sorted as the new generation sorts them, since both number
 * certificates in directory order. */
struct certstore_walk {
	const struct certstore *prev;
	const uint32_t *map;
	size_t name, k;
};

static bool certstore_walk_next(struct certstore_walk *wk, struct certstore_pair *out)
{
	const struct certstore *p = wk->prev;

	for (; p != NULL && wk->name < p->nnames; wk->name++, wk->k = 0) {
		const struct certstore_name *n = &p->names[wk->name];
		while (wk->k < n->count) {
			uint32_t j = wk->map[p->members[n->first + wk->k++]];
			if (j != CERTSTORE_NONE) {
				*out = (struct certstore_pair){ .name = n->pub.name, .cert = j,
					                        .prev = (uint32_t)wk->name };
				return true;
			}
		}
	}
	return false;
}

/* All (name, certificate) pairs of the new generation, sorted: the previous
 * generation's (already sorted) merged with the new certificates' (sorted
 * here), so that a reload which changed little costs O(names). */
static struct certstore_pair *certstore_index_pairs(struct certstore_loader *ld, size_t *np)
{
	struct certstore_walk wk = { ld->prev, ld->prevmap, 0, 0 };
	struct certstore_pair a, *b = ld->pairs, *m;
	size_t nb = ld->npairs, ib = 0, n = 0;
	bool more;

	m = malloc((nb + (ld->prev ? ld->prev->nmembers : 0) + 1) * sizeof *m);
	if (m == NULL)
		return NULL;
	if (nb > 0)
		qsort(b, nb, sizeof *b, certstore_cmp_pair);
	more = certstore_walk_next(&wk, &a);
	while (more || ib < nb) {
		if (more && (ib == nb || certstore_cmp_pair(&a, &b[ib]) < 0)) {
			m[n++] = a;
			more = certstore_walk_next(&wk, &a);
		} else {
			m[n++] = b[ib++];
		}
	}
	*np = n;
	return m;
}

/* Builds the sorted names array, each with its certificates in MEMBERS and
 * its string in the certstore's own arena, from the sorted pairs P[0..NP).
 * REUSE[i] is set to the previous generation's index of name i when it is
 * served by exactly the same certificates as there, else CERTSTORE_NONE. */
static int certstore_index_names(struct certstore_loader *ld, const struct certstore_pair *p,
                                 size_t np, uint32_t *reuse)
{
	struct certstore *cs = ld->cs;
	size_t i, nnames = 0, len = 0, off = 0, m = 0;
	uint32_t from_prev = 0, from_new = 0, pidx = CERTSTORE_NONE;

	for (i = 0; i < np; i++) {
		if (i == 0 || strcmp(p[i].name, p[i - 1].name) != 0) {
			nnames++;
			len += strlen(p[i].name) + 1;
		}
	}
	cs->strs = malloc(len + 1);
	cs->members = malloc((np + 1) * sizeof *cs->members);
	cs->names = malloc((nnames + 1) * sizeof *cs->names);
	if (cs->strs == NULL || cs->members == NULL || cs->names == NULL)
		return -1;
	for (i = 0; i <= np; i++) {
		bool first = i == np || i == 0 || strcmp(p[i].name, p[i - 1].name) != 0;
		/* Past a name's last pair: all its certificates were the previous
		 * name's, and all of those are still here. */
		if (first && cs->nnames > 0)
			reuse[cs->nnames - 1] = from_new == 0 && pidx != CERTSTORE_NONE &&
			                        ld->prev->names[pidx].count == from_prev ? pidx
			                                                                  : CERTSTORE_NONE;
		if (i == np)
			break;
		if (first) {
			size_t l = strlen(p[i].name) + 1;
			memcpy(cs->strs + off, p[i].name, l);
			cs->names[cs->nnames++] = (struct certstore_name){
				.pub = { .name = cs->strs + off }, .first = (uint32_t)m };
			off += l;
			from_prev = from_new = 0;
			pidx = CERTSTORE_NONE;
		} else if (p[i].cert == p[i - 1].cert) {
			continue; /* listed twice in one certificate */
		}
		cs->members[m++] = p[i].cert;
		cs->names[cs->nnames - 1].count++;
		if (p[i].prev != CERTSTORE_NONE) {
			from_prev++;
			pidx = p[i].prev;
		} else {
			from_new++;
		}
	}
	cs->nmembers = m;
	return 0;
}

/* Builds the open-addressing table over the names, at most half full. */
static int certstore_index_hash(struct certstore *cs)
{
	size_t cap = 16, i, j;

	while (cap < 2 * cs->nnames)
		cap *= 2;
	cs->slots = calloc(cap, sizeof *cs->slots);
	if (cs->slots == NULL)
		return -1;
	cs->mask = cap - 1;
	for (i = 0; i < cs->nnames; i++) {
		uint32_t h = certstore_hash("", cs->names[i].pub.name);
		for (j = h & cs->mask; cs->slots[j].idx != 0; j = (j + 1) & cs->mask)
			;
		cs->slots[j] = (struct certstore_slot){ h, (uint32_t)(i + 1) };
	}
	return 0;
}

/* Adds a copy of CERT's chain and key (from its SRC, checked when loaded)
 * to DST. Reads SRC only: it may be in use by live sessions. */
static int certstore_cred_copy(gnutls_certificate_credentials_t dst,
                               const struct certstore_cert *cert)
{
	gnutls_certificate_credentials_t src = cert->src->cred;
	gnutls_pcert_st pcerts[CERTSTORE_MAX_CHAIN];
	gnutls_x509_privkey_t x;
	gnutls_privkey_t key;
	gnutls_datum_t der;
	unsigned n = 0;
	int ret = gnutls_certificate_get_x509_key(src, cert->src_idx, &x);

	if (ret < 0 || (ret = certstore_privkey(x, &key)) < 0)
		return ret;
	while (n < CERTSTORE_MAX_CHAIN &&
	       gnutls_certificate_get_crt_raw(src, cert->src_idx, n, &der) == 0) {
		ret = gnutls_pcert_import_x509_raw(&pcerts[n], &der, GNUTLS_X509_FMT_DER, 0);
		if (ret < 0) {
			certstore_pair_free(pcerts, n, key);
			return ret;
		}
		n++;
	}
	return certstore_cred_add(dst, pcerts, n, key, false);
}

/* Orders a credential's certificates as GnuTLS should try them: it takes the
 * first one the client can use, so ECDSA/EdDSA (cheaper handshakes) before
 * RSA, and within a key type the latest expiry (a renewal beside the old one)
 * first. */
static int certstore_cmp_offer(const void *a, const void *b, void *arg)
{
	const struct certstore *cs = arg;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	const struct certstore_cert *x = cs->certs[i], *y = cs->certs[j];

	if (x->rsa != y->rsa)
		return x->rsa ? 1 : -1;
	if (x->not_after != y->not_after)
		return x->not_after > y->not_after ? -1 : 1;
	return (i > j) - (i < j);
}

/* Where a certificate loaded now may keep its chain and key when no name
 * uses its own credential: a credential built for one of its groups. */
struct certstore_home {
	struct certstore_cred *cred;
	unsigned idx;
};

/* Builds a new credential holding copies of name N's certificates, labelled
 * "a,b"; notes it in HOME as the home of each new certificate without one.
 * NULL if out of memory. */
static struct certstore_cred *certstore_cred_build(struct certstore_loader *ld,
                                                   const struct certstore_name *n,
                                                   struct certstore_home *home)
{
	struct certstore *cs = ld->cs;
	const uint32_t *m = cs->members + n->first;
	uint32_t *order = malloc(n->count * sizeof *order);
	struct certstore_cred *cr = NULL;
	char *label = NULL;
	size_t len = 0, i;

	for (i = 0; i < n->count; i++)
		len += strlen(cs->certs[m[i]]->label) + 1;
	label = malloc(len);
	if (order == NULL || label == NULL)
		goto out;
	for (i = 0, len = 0; i < n->count; i++)
		len += (size_t)sprintf(label + len, "%s%s", i ? "," : "", cs->certs[m[i]]->label);
	cr = certstore_cred_new(n->count, label, len);
	if (cr == NULL)
		goto out;
	memcpy(order, m, n->count * sizeof *order);
	qsort_r(order, n->count, sizeof *order, certstore_cmp_offer, cs);
	for (i = 0; i < n->count; i++) {
		if (certstore_cred_copy(cr->cred, cs->certs[order[i]]) < 0) {
			certstore_cred_unref(cr);
			cr = NULL;
			goto out;
		}
		if (ld->fresh[order[i]] && home[order[i]].cred == NULL)
			home[order[i]] = (struct certstore_home){ cr, (unsigned)i };
	}
out:
	free(label);
	free(order);
	return cr;
}

static uint32_t certstore_hash_members(const uint32_t *m, uint32_t n)
{
	uint32_t h = 2166136261u, i;

	for (i = 0; i < n; i++)
		h = (h ^ m[i]) * 16777619u;
	return h ^ (h >> 15);
}

/* Whether name N is served by one certificate alone that has its own
 * credential: then that is the name's. */
static bool certstore_own(const struct certstore *cs, const struct certstore_name *n)
{
	return n->count == 1 && cs->certs[cs->members[n->first]]->src->n == 1;
}

/* Gives each name its credential: a certificate's own when it alone serves
 * the name; else the one for that set of certificates, built once per
 * distinct set, or shared with the previous generation when the name was
 * served by exactly the same certificates there (REUSE). */
static int certstore_index_creds(struct certstore_loader *ld, const uint32_t *reuse,
                                 struct certstore_home *home, bool *alone)
{
	struct certstore *cs = ld->cs;
	size_t cap = 16, mask, nset = 0, i, j;
	uint32_t *table;

	for (i = 0; i < cs->nnames; i++)
		nset += !certstore_own(cs, &cs->names[i]);
	while (cap < 2 * nset)
		cap *= 2;
	mask = cap - 1;
	table = calloc(cap, sizeof *table); /* name index + 1; 0 is empty */
	cs->creds = malloc((cs->nnames + 1) * sizeof *cs->creds);
	if (table == NULL || cs->creds == NULL) {
		free(table);
		return -1;
	}
	for (i = 0; i < cs->nnames; i++) {
		struct certstore_name *n = &cs->names[i];
		const uint32_t *m = cs->members + n->first;
		struct certstore_cred *cr = NULL;
		if (certstore_own(cs, n)) {
			cr = cs->certs[m[0]]->src;
			if (!alone[m[0]])
				cs->creds[cs->ncreds++] = certstore_cred_ref(cr);
			alone[m[0]] = true;
		} else {
			for (j = certstore_hash_members(m, n->count) & mask; table[j] != 0;
			     j = (j + 1) & mask) {
				const struct certstore_name *o = &cs->names[table[j] - 1];
				if (o->count == n->count &&
				    memcmp(cs->members + o->first, m, n->count * sizeof *m) == 0) {
					cr = o->cred;
					break;
				}
			}
		}
		if (cr == NULL) {
			if (reuse[i] != CERTSTORE_NONE)
				cr = certstore_cred_ref(ld->prev->names[reuse[i]].cred);
			else if ((cr = certstore_cred_build(ld, n, home)) == NULL)
				break;
			cs->creds[cs->ncreds++] = cr;
			table[j] = (uint32_t)(i + 1);
		}
		n->cred = cr;
		n->pub.cred = cr->cred;
		n->pub.label = cr->label;
	}
	free(table);
	return i == cs->nnames ? 0 : -1;
}

/* Builds the index from what the loader collected; then moves each new
 * certificate that serves no name alone into a credential of its groups,
 * dropping its own (no generation has seen it yet). */
static int certstore_index(struct certstore_loader *ld)
{
	struct certstore *cs = ld->cs;
	struct certstore_pair *pairs;
	struct certstore_home *home = NULL;
	uint32_t *reuse = NULL;
	bool *alone = NULL;
	size_t np = 0, i;
	int ret = -1;

	pairs = certstore_index_pairs(ld, &np);
	if (pairs == NULL)
		return -1;
	reuse = malloc((np + 1) * sizeof *reuse);
	home = calloc(cs->ncerts + 1, sizeof *home);
	alone = calloc(cs->ncerts + 1, sizeof *alone);
	if (reuse == NULL || home == NULL || alone == NULL ||
	    certstore_index_names(ld, pairs, np, reuse) < 0 || certstore_index_hash(cs) < 0 ||
	    certstore_index_creds(ld, reuse, home, alone) < 0)
		goto out;
	for (i = 0; i < cs->ncerts; i++) {
		struct certstore_cert *c = cs->certs[i];
		struct certstore_cred *own = c->src;
		/* HOME is always set for these: each of their names has a credential
		 * built just now; checked all the same, keeping the own one. */
		if (!ld->fresh[i] || alone[i] || home[i].cred == NULL)
			continue;
		c->src = certstore_cred_ref(home[i].cred);
		c->src_idx = home[i].idx;
		certstore_cred_unref(own);
	}
	ret = 0;
out:
	free(pairs);
	free(reuse);
	free(home);
	free(alone);
	return ret;
}

/* Frees CS, dropping its references to certificates and credentials. */
static void certstore_free(struct certstore *cs)
{
	size_t i;

	for (i = 0; i < cs->ncreds; i++)
		certstore_cred_unref(cs->creds[i]);
	for (i = 0; i < cs->ncerts; i++)
		certstore_cert_unref(cs->certs[i]);
	free(cs->creds);
	free(cs->certs);
	free(cs->kept);
	free(cs->names);
	free(cs->members);
	free(cs->slots);
	free(cs->strs);
	free(cs->dir);
	free(cs);
}

/* Releases the loading state, wiping the buffers that held keys. */
static void certstore_loader_fini(struct certstore_loader *ld, struct certstore_worker *w,
                                  size_t nw)
{
	size_t i;

	for (i = 0; i < nw; i++) {
		if (w[i].key.data != NULL)
			explicit_bzero(w[i].key.data, w[i].key.cap);
		free(w[i].key.data);
		free(w[i].chain.data);
		free(w[i].strs.data);
		free(w[i].pairs);
	}
	free(w);
	for (i = 0; ld->items != NULL && i < ld->nlabels; i++) {
		certstore_cert_unref(ld->items[i].cert);
		free(ld->items[i].reason);
	}
	free(ld->items);
	free(ld->labels);
	free(ld->pairs);
	free(ld->strs);
	free(ld->prevmap);
	free(ld->fresh);
}

int certstore_load(const char *dir, time_t now, const struct certstore *prev,
                   certstore_report_fn report, void *arg, struct certstore **out)
{
	struct certstore_loader ld = { .dir = dir, .now = now, .report = report, .arg = arg };
	struct certstore_worker *w = NULL;
	size_t nw = 0;
	DIR *d = NULL;
	int ret = -1;

	*out = NULL;
	clock_gettime(CLOCK_REALTIME, &ld.started);
	/* Another directory (the configuration changed) has no last good. */
	if (prev != NULL && strcmp(prev->dir, dir) == 0)
		ld.prev = prev;
	ld.cs = calloc(1, sizeof *ld.cs);
	if (ld.cs == NULL || (ld.cs->dir = strdup(dir)) == NULL || (d = opendir(dir)) == NULL) {
		certstore_report(&ld, NULL, NULL, "cannot read: %s", strerror(errno));
		if (ld.cs != NULL)
			free(ld.cs->dir);
		free(ld.cs);
		return -1;
	}
	ld.dfd = dirfd(d);
	if (certstore_list(&ld, d) < 0) {
		certstore_report(&ld, NULL, NULL, "cannot read: %s", strerror(errno));
	} else {
		certstore_match_prev(&ld);
		if (certstore_run(&ld, &w, &nw) < 0 || certstore_merge(&ld, w, nw) < 0 ||
		    certstore_index(&ld) < 0)
			certstore_report(&ld, NULL, NULL, "cannot load: %s", strerror(ENOMEM));
		else
			ret = 0;
	}
	closedir(d);
	certstore_loader_fini(&ld, w, nw);
	if (ret < 0) {
		certstore_free(ld.cs);
		return -1;
	}
	atomic_init(&ld.cs->refs, 1);
	*out = ld.cs;
	return 0;
}

struct certstore *certstore_ref(struct certstore *cs)
{
	if (cs != NULL)
		atomic_fetch_add_explicit(&cs->refs, 1, memory_order_relaxed);
	return cs;
}

void certstore_unref(struct certstore *cs)
{
	if (cs != NULL && atomic_fetch_sub_explicit(&cs->refs, 1, memory_order_acq_rel) == 1)
		certstore_free(cs);
}

const struct certstore_entry *certstore_lookup(const struct certstore *cs, const char *name,
                                               enum certstore_match *how)
{
	const struct certstore_name *n = NULL;
	enum certstore_match m = CERTSTORE_MATCH_NONE;
	const char *dot;

	/* A normalised name never starts with '*': "*.x" must not hit the wildcard. */
	if (cs != NULL && name != NULL && name[0] != '*') {
		n = certstore_find(cs, "", name);
		if (n != NULL) {
			m = CERTSTORE_MATCH_EXACT;
		} else if ((dot = strchr(name, '.')) != NULL && dot[1] != '\0') {
			n = certstore_find(cs, "*.", dot + 1);
			m = n != NULL ? CERTSTORE_MATCH_WILDCARD : CERTSTORE_MATCH_NONE;
		}
	}
	if (how != NULL)
		*how = m;
	return n != NULL ? &n->pub : NULL;
}

size_t certstore_ncerts(const struct certstore *cs)
{
	return cs->ncerts;
}

size_t certstore_nnames(const struct certstore *cs)
{
	return cs->nnames;
}

void certstore_foreach(const struct certstore *cs, certstore_each_fn fn, void *arg)
{
	size_t i, j;

	for (i = 0; i < cs->nnames; i++) {
		const struct certstore_name *n = &cs->names[i];
		for (j = 0; j < n->count; j++) {
			const struct certstore_cert *c = cs->certs[cs->members[n->first + j]];
			fn(arg, n->pub.name, c->label, c->keytype, c->not_after);
		}
	}
}

/* Whether name X of A and name Y of B are served by the same certificates. */
static bool certstore_same_members(const struct certstore *a, const struct certstore_name *x,
                                   const struct certstore *b, const struct certstore_name *y)
{
	uint32_t i;

	if (x->count != y->count)
		return false;
	for (i = 0; i < x->count; i++)
		if (a->certs[a->members[x->first + i]] != b->certs[b->members[y->first + i]])
			return false;
	return true;
}

void certstore_diff(const struct certstore *prev, const struct certstore *next,
                    struct certstore_diff *d)
{
	size_t np = prev ? prev->ncerts : 0, nn = next ? next->ncerts : 0, i = 0, j = 0;
	int c;

	*d = (struct certstore_diff){ 0 };
	/* Both list certificates in directory order, one per directory. */
	while (j < nn) {
		c = i < np ? strcmp(prev->certs[i]->label, next->certs[j]->label) : 1;
		if (c < 0) {
			i++;
			continue;
		}
		if (c == 0 && prev->certs[i] == next->certs[j] && next->kept[j])
			d->kept_last_good++;
		else if (c == 0 && prev->certs[i] == next->certs[j])
			d->reused++;
		else
			d->loaded++;
		i += c == 0;
		j++;
	}
	np = prev ? prev->nnames : 0;
	nn = next ? next->nnames : 0;
	for (i = 0, j = 0; i < np || j < nn;) {
		c = i == np ? 1 : j == nn ? -1 : strcmp(prev->names[i].pub.name, next->names[j].pub.name);
		if (c < 0) {
			d->removed++;
		} else if (c > 0) {
			d->added++;
		} else if (!certstore_same_members(prev, &prev->names[i], next, &next->names[j])) {
			d->changed++;
		}
		i += c <= 0;
		j += c >= 0;
	}
}

const char *certstore_served_label(const struct certstore *cs, const struct certstore_entry *e,
                                   const gnutls_datum_t *der)
{
	const struct certstore_name *n = (const struct certstore_name *)e;
	if (n->count == 1 || !der || !der->data)
		return e->label;
	uint32_t order[16];
	uint32_t count = n->count < 16 ? n->count : 16;
	memcpy(order, cs->members + n->first, count * sizeof *order);
	/* The credential holds the name's certificates in offer order. */
	qsort_r(order, count, sizeof *order, certstore_cmp_offer, (void *)cs);
	for (uint32_t i = 0; i < count; i++) {
		gnutls_datum_t raw;
		if (gnutls_certificate_get_crt_raw(e->cred, i, 0, &raw) < 0)
			break;
		if (raw.size == der->size && memcmp(raw.data, der->data, raw.size) == 0)
			return cs->certs[order[i]]->label;
	}
	return e->label;
}
