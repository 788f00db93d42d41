/* certstore: loads certs.d/<label>/{fullchain,privkey}.pem into one immutable,
 * reference-counted generation: a credential per distinct set of certificates
 * serving a name, and an open-addressing hash index from name to entry.
 * Owns everything it allocates; never touches globals, never prints or exits:
 * each bad certificate is reported through the caller's callback and skipped.
 * Loading runs on short-lived threads; reports are made on the caller's. */
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

/* One loaded certificate (leaf, chain and key). */
struct certstore_cert {
	gnutls_certificate_credentials_t cred; /* this pair alone; NULL if no name uses it alone */
	const char *label;                     /* directory name, in the label arena */
	time_t not_after;
	char keytype[16];                      /* "RSA-2048", "ECDSA-P256", "Ed25519" */
	bool rsa;                              /* RSA or RSA-PSS: offered after other key types */
	bool alone;                            /* some name is served by this certificate only */
};

/* One indexed name; the public part comes first so lookup can hand it out. */
struct certstore_name {
	struct certstore_entry pub;
	uint32_t first, count; /* its certificates: members[first .. first+count) */
};

/* A credential shared by every name served by the same several certificates. */
struct certstore_group {
	uint32_t first, count; /* into members, like a name's */
	gnutls_certificate_credentials_t cred;
	char *label; /* "dirA,dirB" */
};

struct certstore_slot {
	uint32_t hash;
	uint32_t idx; /* index into names + 1; 0 is an empty slot */
};

struct certstore {
	atomic_int refs;
	struct certstore_cert *certs;
	size_t ncerts;
	struct certstore_name *names; /* sorted by name */
	size_t nnames;
	uint32_t *members;
	struct certstore_group *groups;
	size_t ngroups;
	struct certstore_slot *slots;
	size_t mask;  /* slot count - 1, a power of two minus one */
	char *labels; /* label arena: directory names */
	char *strs;   /* name arena */
};

/* A growable byte buffer (file contents, string arenas). */
struct certstore_buf {
	char *data;
	size_t len, cap;
};

/* (name, certificate) as collected while loading; NAME is set once the arena stops moving. */
struct certstore_pair {
	size_t off;
	const char *name;
	uint32_t cert;
};

/* What loading one directory produced, filled in by whichever thread took it. */
struct certstore_item {
	struct certstore_cert cert;
	bool loaded;      /* CERT holds a credential */
	const char *file; /* the file REASON is about, NULL for the directory */
	char *reason;     /* the report to make, NULL if none */
};

/* The state shared by the loading threads (each writes only its own items). */
struct certstore_loader {
	const char *dir;
	int dfd;
	time_t now;
	certstore_report_fn report;
	void *arg;
	struct certstore *cs;
	const char **labels; /* sorted */
	size_t nlabels;
	struct certstore_item *items; /* one per label */
	atomic_size_t next;           /* the next label to take */
	struct certstore_pair *pairs; /* the threads' pairs, merged */
	size_t npairs;
	char *strs; /* the threads' name arenas, merged */
};

/* One loading thread's own state. */
struct certstore_worker {
	struct certstore_loader *ld;
	pthread_t thread;
	struct certstore_buf chain, key, strs;
	struct certstore_pair *pairs; /* .cert is the label's index until the merge */
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
	char path[PATH_MAX + 256], reason[512];
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

/* Records a problem with FILE of label IDX, to be reported after loading. */
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

/* Reads LABEL/FILE under the open directory DFD into B (replacing its
 * contents); false with the reason in WHY if it cannot. */
static bool certstore_read(int dfd, const char *label, const char *file, struct certstore_buf *b,
                           char *why, size_t whysize)
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
static int certstore_cred_new(gnutls_certificate_credentials_t *cred)
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

/* Builds the credential of a parsed pair into CERT; consumes X. Returns 0, or
 * a GnuTLS error (GNUTLS_E_CERTIFICATE_KEY_MISMATCH for a foreign key). */
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
	ret = certstore_cred_new(&cert->cred);
	if (ret < 0) {
		certstore_pair_free(pcerts, n, key);
		return ret;
	}
	/* A failed pair stays inside the credential (MACHINE.md): discard it. */
	ret = certstore_cred_add(cert->cred, pcerts, n, key, !same);
	if (ret < 0) {
		gnutls_certificate_free_credentials(cert->cred);
		cert->cred = NULL;
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
 * notes why and returns false if label IDX is unusable. */
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

/* Makes the parsed pair of label IDX a certificate, or notes why it cannot
 * serve; consumes X. */
static void certstore_add(struct certstore_worker *w, size_t idx, gnutls_x509_crt_t *crts,
                          unsigned n, gnutls_x509_privkey_t x)
{
	struct certstore_item *it = &w->ld->items[idx];
	size_t npairs = w->npairs, nstrs = w->strs.len;
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
	it->cert.label = w->ld->labels[idx];
	it->cert.not_after = gnutls_x509_crt_get_expiration_time(crts[0]);
	ret = certstore_cert_cred(&it->cert, crts, n, x);
	if (ret < 0) {
		if (ret == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
			certstore_note(w, idx, "privkey.pem", "key does not match certificate");
		else
			certstore_note(w, idx, "fullchain.pem", "unusable: %s", gnutls_strerror(ret));
		goto undo;
	}
	it->loaded = true;
	if (w->nbad > 0)
		certstore_note(w, idx, "fullchain.pem", "ignoring %u name%s that %s not a host name: \"%s\"",
		               w->nbad, w->nbad > 1 ? "s" : "", w->nbad > 1 ? "are" : "is", w->bad);
	return;
undo:
	w->npairs = npairs;
	w->strs.len = nstrs;
}

/* Loads DIR/<label IDX>/{fullchain,privkey}.pem, or notes why not. */
static void certstore_load_one(struct certstore_worker *w, size_t idx)
{
	const char *label = w->ld->labels[idx];
	gnutls_x509_crt_t *crts = NULL;
	gnutls_x509_privkey_t x = NULL;
	unsigned i, n = 0;
	char why[128];

	if (!certstore_read(w->ld->dfd, label, "fullchain.pem", &w->chain, why, sizeof why)) {
		certstore_note(w, idx, "fullchain.pem", "cannot read: %s", why);
	} else if (!certstore_read(w->ld->dfd, label, "privkey.pem", &w->key, why, sizeof why)) {
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
 * certbot-style trees are often linked in); reports one that cannot be read. */
static bool certstore_is_dir(struct certstore_loader *ld, const struct dirent *de)
{
	struct stat st;

	if (de->d_type == DT_DIR)
		return true;
	if (de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
		return false;
	if (fstatat(ld->dfd, de->d_name, &st, 0) != 0) {
		certstore_report(ld, de->d_name, NULL, "cannot read: %s", strerror(errno));
		return false;
	}
	return S_ISDIR(st.st_mode);
}

static int certstore_cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Lists the non-hidden subdirectories of D, sorted, into LD->labels (pointing
 * into the label arena, which the certstore keeps); 0, or -1 with errno set. */
static int certstore_list(struct certstore_loader *ld, DIR *d)
{
	struct certstore_buf arena = { 0 };
	struct dirent *de;
	size_t n = 0, i, off;

	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !certstore_is_dir(ld, de))
			continue;
		if (certstore_buf_add(&arena, de->d_name, strlen(de->d_name)) == SIZE_MAX) {
			free(arena.data);
			errno = ENOMEM;
			return -1;
		}
		n++;
		errno = 0;
	}
	ld->cs->labels = arena.data;
	if (errno != 0)
		return -1;
	ld->labels = malloc((n + 1) * sizeof *ld->labels);
	if (ld->labels == NULL)
		return -1;
	for (i = 0, off = 0; i < n; i++, off += strlen(arena.data + off) + 1)
		ld->labels[i] = arena.data + off;
	qsort(ld->labels, n, sizeof *ld->labels, certstore_cmp_str);
	ld->nlabels = n;
	return 0;
}

/* Makes the reports noted while loading, in directory order, and moves the
 * loaded certificates into the certstore; returns each label's certificate
 * index (the caller frees it), or NULL. */
static uint32_t *certstore_collect(struct certstore_loader *ld)
{
	struct certstore *cs = ld->cs;
	uint32_t *map = malloc((ld->nlabels + 1) * sizeof *map);
	size_t i;

	cs->certs = malloc((ld->nlabels + 1) * sizeof *cs->certs);
	if (map == NULL || cs->certs == NULL) {
		free(map);
		return NULL;
	}
	for (i = 0; i < ld->nlabels; i++) {
		struct certstore_item *it = &ld->items[i];
		if (it->reason != NULL)
			certstore_report(ld, ld->labels[i], it->file, "%s", it->reason);
		map[i] = (uint32_t)cs->ncerts;
		if (it->loaded) {
			cs->certs[cs->ncerts++] = it->cert;
			it->loaded = false;
		}
	}
	return map;
}

/* Merges the threads' name arenas and (name, certificate) pairs, the pairs
 * now naming certificates by their index in the certstore. */
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
				.off = base + w[i].pairs[j].off, .cert = map[w[i].pairs[j].cert] };
	}
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

/* Sorts the merged (name, certificate) pairs into the sorted names array,
 * each with its certificates in MEMBERS. */
static int certstore_index_names(struct certstore_loader *ld)
{
	struct certstore *cs = ld->cs;
	struct certstore_pair *p = ld->pairs;
	size_t i, m = 0;

	for (i = 0; i < ld->npairs; i++)
		p[i].name = ld->strs + p[i].off;
	if (ld->npairs > 0)
		qsort(p, ld->npairs, sizeof *p, certstore_cmp_pair);
	cs->strs = ld->strs; /* the arena stops moving: the certstore owns it */
	ld->strs = NULL;
	cs->members = malloc((ld->npairs + 1) * sizeof *cs->members);
	cs->names = malloc((ld->npairs + 1) * sizeof *cs->names);
	if (cs->members == NULL || cs->names == NULL)
		return -1;
	for (i = 0; i < ld->npairs; i++) {
		if (i == 0 || strcmp(p[i].name, p[i - 1].name) != 0) {
			cs->names[cs->nnames++] = (struct certstore_name){
				.pub = { .name = p[i].name }, .first = (uint32_t)m };
		} else if (p[i].cert == p[i - 1].cert) {
			continue; /* listed twice in one certificate */
		}
		cs->members[m++] = p[i].cert;
		cs->names[cs->nnames - 1].count++;
	}
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

/* Adds a copy of the single pair held by SRC to DST (already checked once). */
static int certstore_cred_copy(gnutls_certificate_credentials_t dst,
                               gnutls_certificate_credentials_t src)
{
	gnutls_pcert_st pcerts[CERTSTORE_MAX_CHAIN];
	gnutls_x509_privkey_t x;
	gnutls_privkey_t key;
	gnutls_datum_t der;
	unsigned n = 0;
	int ret = gnutls_certificate_get_x509_key(src, 0, &x);

	if (ret < 0 || (ret = certstore_privkey(x, &key)) < 0)
		return ret;
	while (n < CERTSTORE_MAX_CHAIN && gnutls_certificate_get_crt_raw(src, 0, n, &der) == 0) {
		ret = gnutls_pcert_import_x509_raw(&pcerts[n], &der, GNUTLS_X509_FMT_DER, 0);
		if (ret < 0) {
			certstore_pair_free(pcerts, n, key);
			return ret;
		}
		n++;
	}
	return certstore_cred_add(dst, pcerts, n, key, false);
}

/* Orders a group's certificates as GnuTLS should try them: it takes the first
 * one the client can use, so ECDSA/EdDSA (cheaper handshakes) before RSA, and
 * within a key type the latest expiry (a renewal beside the old one) first. */
static int certstore_cmp_offer(const void *a, const void *b, void *arg)
{
	const struct certstore *cs = arg;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	const struct certstore_cert *x = &cs->certs[i], *y = &cs->certs[j];

	if (x->rsa != y->rsa)
		return x->rsa ? 1 : -1;
	if (x->not_after != y->not_after)
		return x->not_after > y->not_after ? -1 : 1;
	return (i > j) - (i < j);
}

/* Builds group G's credential (all its certificates) and label ("a,b"). */
static int certstore_group_build(struct certstore *cs, struct certstore_group *g)
{
	const uint32_t *m = cs->members + g->first;
	uint32_t *order = malloc(g->count * sizeof *order);
	size_t len = 0, i;
	int ret = -1;

	for (i = 0; i < g->count; i++)
		len += strlen(cs->certs[m[i]].label) + 1;
	g->label = malloc(len);
	if (order == NULL || g->label == NULL || certstore_cred_new(&g->cred) < 0)
		goto out;
	for (i = 0, len = 0; i < g->count; i++)
		len += (size_t)sprintf(g->label + len, "%s%s", i ? "," : "", cs->certs[m[i]].label);
	memcpy(order, m, g->count * sizeof *order);
	qsort_r(order, g->count, sizeof *order, certstore_cmp_offer, cs);
	for (i = 0; i < g->count; i++)
		if (certstore_cred_copy(g->cred, cs->certs[order[i]].cred) < 0)
			goto out;
	ret = 0;
out:
	free(order);
	return ret;
}

static uint32_t certstore_hash_members(const uint32_t *m, uint32_t n)
{
	uint32_t h = 2166136261u, i;

	for (i = 0; i < n; i++)
		h = (h ^ m[i]) * 16777619u;
	return h ^ (h >> 15);
}

/* Gives each name served by several certificates the credential of that set
 * of certificates, building one credential per distinct set, not per name. */
static int certstore_index_groups(struct certstore *cs, size_t nmulti)
{
	size_t cap = 16, mask, i, j;
	uint32_t *table;

	while (cap < 2 * nmulti)
		cap *= 2;
	mask = cap - 1;
	table = calloc(cap, sizeof *table);
	cs->groups = calloc(nmulti + 1, sizeof *cs->groups);
	if (table == NULL || cs->groups == NULL) {
		free(table);
		return -1;
	}
	for (i = 0; i < cs->nnames; i++) {
		struct certstore_name *n = &cs->names[i];
		const uint32_t *m = cs->members + n->first;
		struct certstore_group *g = NULL;
		if (n->count < 2)
			continue;
		for (j = certstore_hash_members(m, n->count) & mask; table[j] != 0; j = (j + 1) & mask) {
			g = &cs->groups[table[j] - 1];
			if (g->count == n->count &&
			    memcmp(cs->members + g->first, m, n->count * sizeof *m) == 0)
				break;
			g = NULL;
		}
		if (g == NULL) {
			g = &cs->groups[cs->ngroups++];
			*g = (struct certstore_group){ .first = n->first, .count = n->count };
			table[j] = (uint32_t)cs->ngroups;
			if (certstore_group_build(cs, g) < 0) {
				free(table);
				return -1;
			}
		}
		n->pub.cred = g->cred;
		n->pub.label = g->label;
	}
	free(table);
	return 0;
}

/* Builds the index from what the loader collected; then drops the credential
 * of every certificate that serves no name alone. */
static int certstore_index(struct certstore_loader *ld)
{
	struct certstore *cs = ld->cs;
	size_t i, nmulti = 0;

	if (certstore_index_names(ld) < 0 || certstore_index_hash(cs) < 0)
		return -1;
	for (i = 0; i < cs->nnames; i++) {
		struct certstore_name *n = &cs->names[i];
		struct certstore_cert *c = &cs->certs[cs->members[n->first]];
		if (n->count > 1) {
			nmulti++;
			continue;
		}
		c->alone = true;
		n->pub.cred = c->cred;
		n->pub.label = c->label;
	}
	if (nmulti > 0 && certstore_index_groups(cs, nmulti) < 0)
		return -1;
	for (i = 0; i < cs->ncerts; i++) {
		if (!cs->certs[i].alone) {
			gnutls_certificate_free_credentials(cs->certs[i].cred);
			cs->certs[i].cred = NULL;
		}
	}
	return 0;
}

/* Frees CS and everything it holds. */
static void certstore_free(struct certstore *cs)
{
	size_t i;

	for (i = 0; i < cs->ncerts; i++)
		gnutls_certificate_free_credentials(cs->certs[i].cred);
	for (i = 0; i < cs->ngroups; i++) {
		gnutls_certificate_free_credentials(cs->groups[i].cred);
		free(cs->groups[i].label);
	}
	free(cs->groups);
	free(cs->certs);
	free(cs->names);
	free(cs->members);
	free(cs->slots);
	free(cs->labels);
	free(cs->strs);
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
		if (ld->items[i].loaded)
			gnutls_certificate_free_credentials(ld->items[i].cert.cred);
		free(ld->items[i].reason);
	}
	free(ld->items);
	free(ld->labels);
	free(ld->pairs);
	free(ld->strs);
}

int certstore_load(const char *dir, time_t now, certstore_report_fn report, void *arg,
                   struct certstore **out)
{
	struct certstore_loader ld = { .dir = dir, .now = now, .report = report, .arg = arg };
	struct certstore_worker *w = NULL;
	size_t nw = 0;
	DIR *d = NULL;
	int ret = -1;

	*out = NULL;
	ld.cs = calloc(1, sizeof *ld.cs);
	if (ld.cs == NULL || (d = opendir(dir)) == NULL) {
		certstore_report(&ld, NULL, NULL, "cannot read: %s", strerror(errno));
		free(ld.cs);
		return -1;
	}
	ld.dfd = dirfd(d);
	if (certstore_list(&ld, d) < 0)
		certstore_report(&ld, NULL, NULL, "cannot read: %s", strerror(errno));
	else if ((ld.items = calloc(ld.nlabels + 1, sizeof *ld.items)) == NULL ||
	         certstore_run(&ld, &w, &nw) < 0 || certstore_merge(&ld, w, nw) < 0 ||
	         certstore_index(&ld) < 0)
		certstore_report(&ld, NULL, NULL, "cannot load: %s", strerror(ENOMEM));
	else
		ret = 0;
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
			const struct certstore_cert *c = &cs->certs[cs->members[n->first + j]];
			fn(arg, n->pub.name, c->label, c->keytype, c->not_after);
		}
	}
}
