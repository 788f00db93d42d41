/* certstore_cert: reads one certs.d/<label>/ directory (fullchain.pem,
 * privkey.pem) into a ref-counted certificate with its names, key type and
 * dates, checks it (chain parses, key matches, not expired) and builds its
 * GnuTLS credential; also the stamps that let a reload skip unchanged files.
 * Runs on certstore.c's loading threads: touches only its own item and worker;
 * never prints or exits (problems go to the item's report). */
#include "certstore_int.h"
#include "publicsuffix.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <grp.h>
#include <libpsl.h>
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

/* Hands REASON about DIR/LABEL/FILE (FILE or LABEL may be NULL) to FN. */
static void certstore_vreport(struct certstore_loader *ld, certstore_report_fn fn,
                              const char *label, const char *file, const char *fmt, va_list ap)
{
	char path[PATH_MAX + 256], reason[600];

	snprintf(path, sizeof path, "%s%s%s%s%s", ld->dir, label ? "/" : "", label ? label : "",
	         file ? "/" : "", file ? file : "");
	vsnprintf(reason, sizeof reason, fmt, ap);
	fn(ld->arg, path, reason);
}

/* Reports REASON about DIR/LABEL/FILE (FILE or LABEL may be NULL) now; for
 * the caller's thread only. */
void certstore_report(struct certstore_loader *ld, const char *label, const char *file,
                      const char *fmt, ...)
{
	va_list ap;

	if (ld->report == NULL)
		return;
	va_start(ap, fmt);
	certstore_vreport(ld, ld->report, label, file, fmt, ap);
	va_end(ap);
}

void certstore_warn(struct certstore_loader *ld, const char *label, const char *file,
                    const char *fmt, ...)
{
	va_list ap;

	if (ld->checks == NULL)
		return;
	va_start(ap, fmt);
	certstore_vreport(ld, ld->checks->warn, label, file, fmt, ap);
	va_end(ap);
}

/* Notes a warning about FILE of directory IDX, made if its certificate loads. */
static void certstore_note_warning(struct certstore_worker *w, size_t idx, const char *file,
                                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void certstore_note_warning(struct certstore_worker *w, size_t idx, const char *file,
                                   const char *fmt, ...)
{
	struct certstore_item *it = &w->ld->items[idx];
	va_list ap;

	if (it->nwarn == CERTSTORE_MAX_WARN)
		return;
	va_start(ap, fmt);
	if (vasprintf(&it->warn[it->nwarn], fmt, ap) < 0)
		w->nomem = true;
	else
		it->warn_file[it->nwarn++] = file;
	va_end(ap);
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
size_t certstore_buf_add(struct certstore_buf *b, const char *s, size_t len)
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
		                       .mtim = st->st_mtim, .ctim = st->st_ctim,
		                       .mode = st->st_mode, .gid = st->st_gid };
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

/* Whether NAME ("com", "co.uk", "github.io") is a public suffix: a wildcard
 * over it would serve names of unrelated owners. Only listed suffixes count,
 * not every unknown top-level name (libpsl's implicit "*" rule). */
static bool certstore_public_suffix(const char *name)
{
	const psl_ctx_t *psl = publicsuffix_list();

	return psl != NULL && psl_is_public_suffix2(psl, name, PSL_TYPE_ANY | PSL_TYPE_NO_STAR_RULE);
}

/* Notes a privkey.pem (stamped ST) that someone besides mxfront may read:
 * everyone, or a group other than mxfront's. */
static void certstore_check_key_mode(struct certstore_worker *w, size_t idx,
                                     const struct certstore_stamp *st)
{
	const struct certstore_checks *c = w->ld->checks;
	char buf[1024], name[64];
	struct group gr, *found = NULL;

	if (c == NULL)
		return;
	if (st->mode & S_IROTH) {
		certstore_note_warning(w, idx, "privkey.pem",
		                       "private key readable by everyone (mode %04o): chmod 0640 "
		                       "(group mxfront's) or 0600",
		                       (unsigned)(st->mode & 07777));
	} else if ((st->mode & S_IRGRP) && st->gid != c->key_group) {
		getgrgid_r(st->gid, &gr, buf, sizeof buf, &found);
		snprintf(name, sizeof name, "%s", found ? found->gr_name : "?");
		certstore_note_warning(w, idx, "privkey.pem",
		                       "private key readable by group %s (gid %u, mode %04o), not "
		                       "mxfront's group (gid %u): chgrp it or chmod 0600",
		                       name, (unsigned)st->gid, (unsigned)(st->mode & 07777),
		                       (unsigned)c->key_group);
	}
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
	if (norm[0] == '*' && w->ld->checks != NULL && certstore_public_suffix(norm + 2))
		certstore_note_warning(w, idx, "fullchain.pem",
		                       "wildcard %s covers a public suffix: it serves any name under "
		                       "'%s', domains of unrelated owners",
		                       norm, norm + 2);
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

/* SHA-256 of PUB's SubjectPublicKeyInfo (DER) into OUT: a DANE 3 1 1 record's data. */
static int certstore_spki_hash(gnutls_pubkey_t pub, unsigned char out[32])
{
	gnutls_datum_t der = { NULL, 0 };
	int ret = gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &der);

	if (ret == 0)
		ret = gnutls_hash_fast(GNUTLS_DIG_SHA256, der.data, der.size, out);
	gnutls_free(der.data);
	return ret;
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
int certstore_privkey(gnutls_x509_privkey_t x, gnutls_privkey_t *key)
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
void certstore_pair_free(gnutls_pcert_st *pcerts, unsigned n, gnutls_privkey_t key)
{
	unsigned i;

	for (i = 0; i < n; i++)
		gnutls_pcert_deinit(&pcerts[i]);
	gnutls_privkey_deinit(key);
}

/* Adds chain PCERTS[0..N) and KEY (all consumed, even on failure) to CRED;
 * CHECK asks GnuTLS to verify that they match. */
int certstore_cred_add(gnutls_certificate_credentials_t cred, gnutls_pcert_st *pcerts,
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
struct certstore_cred *certstore_cred_new(uint32_t n, const char *label, size_t len)
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

struct certstore_cred *certstore_cred_ref(struct certstore_cred *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

void certstore_cred_unref(struct certstore_cred *c)
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

struct certstore_cert *certstore_cert_ref(struct certstore_cert *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

void certstore_cert_unref(struct certstore_cert *c)
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
	ret = certstore_spki_hash(pcerts[0].pubkey, cert->spki_sha256);
	if (ret < 0) {
		certstore_pair_free(pcerts, n, key);
		return ret;
	}
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
void certstore_date(time_t t, char out[16])
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
void certstore_load_one(struct certstore_worker *w, size_t idx)
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
	} else {
		certstore_check_key_mode(w, idx, &it->key_st);
		if (certstore_parse(w, idx, &crts, &n, &x)) {
			certstore_add(w, idx, crts, n, x);
			x = NULL;
		}
	}
	if (x != NULL)
		gnutls_x509_privkey_deinit(x);
	for (i = 0; i < n; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
	if (w->key.data != NULL)
		explicit_bzero(w->key.data, w->key.len);
}
