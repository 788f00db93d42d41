/* certstore_scan: lists the certificate directories of certs.d/ and runs
 * the short-lived threads that load them (each by certstore_load_one), for
 * certstore.c. Touches only the loader it is given; never prints or exits. */
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
int certstore_run(struct certstore_loader *ld, struct certstore_worker **ws, size_t *nw)
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
int certstore_list(struct certstore_loader *ld, DIR *d)
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
