/* fdlimit: raises the soft RLIMIT_NOFILE to the hard limit and says at start
 * whether max_clients, the backend connections and a reserve fit in it.
 * Touches nothing but the process's limit; never exits, never refuses to
 * start. */
#include "fdlimit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"

#define FDLIMIT_STDIO 3     /* stdin, stdout, stderr (the log) */
#define FDLIMIT_PER_LOOP 5  /* epoll, async eventfd, signal pipe, libuv's EMFILE reserve */
#define FDLIMIT_SIGNALS 2   /* libuv's process-wide signal lock pipe */
#define FDLIMIT_LOADING 16  /* certs.d/ loading threads, each with a directory and a file open */
#define FDLIMIT_MARGIN 32   /* refused clients on their way out, passwd lookups, the resolver */

unsigned long fdlimit_reserve(unsigned workers, size_t n_listen)
{
	/* Twice the listening sockets: a reload binds new addresses before the
	 * old ones close. */
	return FDLIMIT_STDIO + FDLIMIT_PER_LOOP * ((unsigned long)workers + 1) + FDLIMIT_SIGNALS +
	       2 * (unsigned long)n_listen * workers + FDLIMIT_LOADING + FDLIMIT_MARGIN;
}

/* The highest soft limit the kernel takes when the hard one is unlimited. */
static rlim_t fdlimit_ceiling(rlim_t hard)
{
	if (hard != RLIM_INFINITY)
		return hard;
	unsigned long nr_open = 1048576; /* the kernel's default fs.nr_open */
	FILE *f = fopen("/proc/sys/fs/nr_open", "r");
	if (f) {
		if (fscanf(f, "%lu", &nr_open) != 1)
			nr_open = 1048576;
		fclose(f);
	}
	return (rlim_t)nr_open;
}

int fdlimit_setup(const struct config *cfg, unsigned workers, unsigned backend_max)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		log_warn("event=fd_limit reason=\"getrlimit: %s\"", strerror(errno));
		return -1;
	}
	rlim_t want = fdlimit_ceiling(rl.rlim_max);
	if (rl.rlim_cur < want) {
		struct rlimit raised = { want, rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
			rl.rlim_cur = want;
		else
			log_warn("event=fd_limit_raise soft=%llu want=%llu reason=\"%s\"",
			         (unsigned long long)rl.rlim_cur, (unsigned long long)want,
			         strerror(errno));
	}
	unsigned long reserve = fdlimit_reserve(workers, cfg->n_listen);
	unsigned long need = (unsigned long)cfg->max_clients + backend_max + reserve;
	unsigned long long soft = rl.rlim_cur, hard = rl.rlim_max;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		log_warn("event=fd_limit soft=%llu hard=%llu need=%lu max_clients=%u "
		         "backend_connections=%u reserve=%lu reason=\"the descriptor limit is below "
		         "max_clients + backend connections + reserve: raise the hard limit "
		         "(LimitNOFILE=) or lower max_clients; out of descriptors, accepting pauses\"",
		         soft, hard, need, cfg->max_clients, backend_max, reserve);
		return -1;
	}
	log_info("event=fd_limit soft=%llu hard=%llu need=%lu max_clients=%u backend_connections=%u "
	         "reserve=%lu",
	         soft, hard, need, cfg->max_clients, backend_max, reserve);
	return 0;
}
