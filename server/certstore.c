/* certstore: loads certs.d/<label>/{fullchain,privkey}.pem into immutable,
 * ref-counted generations: a credential per distinct set of certificates serving
 * a name, an open-addressing index from name to entry. Certificates and
 * credentials are ref-counted too: a reload shares the unchanged ones and never
 * writes to the live generation. Never touches globals, prints or exits: bad
 * files go to the caller's callback. Loads on short-lived threads
 * (certstore_scan.c), each directory by certstore_cert.c. */
#include "certstore_int.h"

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
		for (unsigned k = 0; it->cert != NULL && k < it->nwarn; k++)
			certstore_warn(ld, it->label, it->warn_file[k], "%s", it->warn[k]);
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
	size_t cap = 16, mask, nset = 0, i, j = 0;
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
		for (unsigned k = 0; k < ld->items[i].nwarn; k++)
			free(ld->items[i].warn[k]);
	}
	free(ld->items);
	free(ld->labels);
	free(ld->pairs);
	free(ld->strs);
	free(ld->prevmap);
	free(ld->fresh);
}

int certstore_load(const char *dir, time_t now, const struct certstore_checks *checks,
                   const struct certstore *prev, certstore_report_fn report, void *arg,
                   struct certstore **out)
{
	struct certstore_loader ld = { .dir = dir, .now = now, .report = report, .arg = arg };
	struct certstore_worker *w = NULL;
	size_t nw = 0;
	DIR *d = NULL;
	int ret = -1;

	*out = NULL;
	if (checks != NULL && checks->warn != NULL)
		ld.checks = checks;
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

const struct certstore_entry *certstore_resolve(const struct certstore *cs, const char *name,
                                                size_t len, char *norm, size_t normsize,
                                                enum certstore_match *how)
{
	char own[256];
	if (norm == NULL) {
		norm = own;
		normsize = sizeof own;
	}
	if (how != NULL)
		*how = CERTSTORE_MATCH_NONE;
	if (certstore_normalize(name, len, norm, normsize) < 0) {
		if (normsize)
			norm[0] = '\0';
		return NULL;
	}
	return certstore_lookup(cs, norm, how);
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
			struct certstore_row row = { n->pub.name, c->label, c->keytype, c->not_after,
				                     c->spki_sha256 };
			fn(arg, &row);
		}
	}
}

void certstore_foreach_cert(const struct certstore *cs, certstore_each_fn fn, void *arg)
{
	size_t i, j;
	const char **first = calloc(cs->ncerts ? cs->ncerts : 1, sizeof *first);

	/* Names are sorted: a certificate's first name is the first seen. */
	for (i = 0; first != NULL && i < cs->nnames; i++)
		for (j = 0; j < cs->names[i].count; j++)
			if (first[cs->members[cs->names[i].first + j]] == NULL)
				first[cs->members[cs->names[i].first + j]] = cs->names[i].pub.name;
	for (i = 0; i < cs->ncerts; i++) {
		const struct certstore_cert *c = cs->certs[i];
		struct certstore_row row = { first != NULL && first[i] != NULL ? first[i] : "",
			                     c->label, c->keytype, c->not_after, c->spki_sha256 };
		fn(arg, &row);
	}
	free(first);
}

struct certstore_entry *certstore_entry_at(struct certstore *cs, size_t i)
{
	return &cs->names[i].pub;
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
