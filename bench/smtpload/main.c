/* main: smtpload's entry point: options, the shared run state, the worker
 * threads, the merged report and the exit code (0 no error, 1 errors counted,
 * 2 usage or setup error). The only place that exits; holds no protocol logic. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "msg.h"
#include "opts.h"
#include "stats.h"
#include "worker.h"

static struct run *main_run;

static void main_signal(int sig)
{
	(void)sig;
	/* A second signal kills: SA_RESETHAND. */
	if (main_run)
		atomic_store(&main_run->stop, true);
}

static void main_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = main_signal;
	sa.sa_flags = SA_RESETHAND | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* libuv does not ignore it; a reset mid-write would kill us. */
	signal(SIGPIPE, SIG_IGN);
}

/* Many connections need many descriptors: take the hard limit. */
static void main_raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int main_run_init(struct run *r, const struct opts *o, const struct msg *m,
                         const struct msg_rcpt *rc)
{
	memset(r, 0, sizeof *r);
	r->o = o;
	r->msg = m;
	r->rcpt = rc;
	int n1 = snprintf(r->mail_cmd, sizeof r->mail_cmd, "MAIL FROM:<%s>\r\n", o->from);
	int n2 = snprintf(r->mail_cmd_size, sizeof r->mail_cmd_size, "MAIL FROM:<%s> SIZE=%zu\r\n",
	                  o->from, m->size);
	int n3 = snprintf(r->ehlo_cmd, sizeof r->ehlo_cmd, "EHLO %s\r\n", o->ehlo);
	if (n1 < 0 || n2 < 0 || n3 < 0 || (size_t)n1 >= sizeof r->mail_cmd ||
	    (size_t)n2 >= sizeof r->mail_cmd_size || (size_t)n3 >= sizeof r->ehlo_cmd)
		return -1;
	r->mail_len = (size_t)n1;
	r->mail_size_len = (size_t)n2;
	r->ehlo_len = (size_t)n3;
	atomic_init(&r->remaining, o->idle ? -1 : o->count);
	atomic_init(&r->stop, false);
	atomic_init(&r->idle_settled, 0);
	atomic_init(&r->idle_established, 0);
	atomic_init(&r->hold_until, 0);
	return 0;
}

/* Runs every worker in its own thread and waits for all; returns the end time. */
static uint64_t main_run_workers(struct worker *ws, unsigned n, struct run *r)
{
	uint64_t end = 0;
	r->start_ns = uv_hrtime();
	if (!r->o->idle && r->o->duration > 0)
		r->deadline_ns = r->start_ns + (uint64_t)(r->o->duration * 1e9);
	for (unsigned i = 0; i < n; i++) {
		if (uv_thread_create(&ws[i].thread, worker_run, &ws[i]) != 0) {
			fprintf(stderr, "smtpload: cannot start thread %u\n", i);
			exit(2);
		}
	}
	for (unsigned i = 0; i < n; i++) {
		uv_thread_join(&ws[i].thread);
		if (ws[i].end_ns > end)
			end = ws[i].end_ns;
	}
	return end;
}

static void main_report(const struct opts *o, const struct stats *total, double elapsed)
{
	struct rusage ru;
	struct stats_summary sum = {
		.target = o->target, .threads = o->threads, .conns = o->conns, .idle = o->idle,
		.elapsed_s = elapsed, .size = o->size, .rcpts = o->rcpts, .starttls = o->starttls,
	};
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		sum.cpu_user_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
		sum.cpu_sys_s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	}
	if (o->json)
		stats_print_json(stdout, total, &sum);
	else
		stats_print_text(stdout, total, &sum);
	fflush(stdout);
}

/* Builds the run, starts the workers, reports. Returns the exit code. */
static int main_load(const struct opts *o, const struct msg *m, const struct msg_rcpt *rc)
{
	static struct run run;
	char err[512];
	int code = 2;
	unsigned total = o->idle ? o->idle : o->conns, ready = 0;
	struct worker *ws = calloc(o->threads, sizeof *ws);
	struct stats *all = calloc(1, sizeof *all);
	if (!ws || !all) {
		fprintf(stderr, "smtpload: out of memory\n");
		goto out;
	}
	if (main_run_init(&run, o, m, rc) < 0) {
		fprintf(stderr, "smtpload: sender or EHLO name too long\n");
		goto out;
	}
	for (; ready < o->threads; ready++) {
		unsigned share = total / o->threads + (ready < total % o->threads);
		if (worker_init(&ws[ready], &run, ready, share, err, sizeof err) < 0) {
			fprintf(stderr, "smtpload: %s\n", err);
			ready++; /* partly initialised: worker_fini cleans it too */
			goto out;
		}
	}
	main_run = &run;
	uint64_t end = main_run_workers(ws, o->threads, &run);
	main_run = NULL;
	for (unsigned i = 0; i < o->threads; i++)
		stats_merge(all, ws[i].st);
	main_report(o, all, (double)(end - run.start_ns) / 1e9);
	for (unsigned i = 0; i < o->threads; i++) {
		if (ws[i].tls_reason) {
			fprintf(stderr, "smtpload: first tls_error: %s\n", ws[i].tls_reason);
			break;
		}
	}
	code = stats_errors(all) > 0 ? 1 : 0;
out:
	for (unsigned i = 0; i < ready; i++)
		worker_fini(&ws[i]);
	free(ws);
	free(all);
	return code;
}

int main(int argc, char **argv)
{
	static struct opts o;
	struct msg m = {0};
	struct msg_rcpt rc = {0};
	char err[512], first[MSG_ADDR_MAX];
	int code = 2;
	int prc = opts_parse(&o, argc, argv, stdout, err, sizeof err);
	if (prc != 0) {
		if (prc < 0)
			fprintf(stderr, "smtpload: %s (see smtpload --help)\n", err);
		opts_fini(&o);
		return prc < 0 ? 2 : 0;
	}
	main_signals();
	main_raise_nofile();
	if (msg_rcpt_init(&rc, o.rcpt_template, o.rcpt_count, err, sizeof err) < 0) {
		fprintf(stderr, "smtpload: %s\n", err);
		goto out;
	}
	msg_rcpt_format(&rc, 0, first);
	if (msg_build(&m, o.size, o.from, first, err, sizeof err) < 0) {
		fprintf(stderr, "smtpload: %s\n", err);
		goto out;
	}
	code = main_load(&o, &m, &rc);
out:
	msg_fini(&m);
	msg_rcpt_fini(&rc);
	opts_fini(&o);
	return code;
}
