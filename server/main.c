/* main: command line, wiring of config, listener and signals, exit code.
 * The only place that prints to stdout or exits; holds no protocol logic. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "certstore.h"
#include "config.h"
#include "fdlimit.h"
#include "log.h"
#include "reload.h"
#include "tls.h"

/* meson.build sets it from the installation's sysconfdir. */
#ifndef MXFRONT_DEFAULT_CONFIG
#define MXFRONT_DEFAULT_CONFIG "/etc/mxfront/mxfront.conf"
#endif

static void main_usage(FILE *out)
{
	fprintf(out,
	        "Usage: mxfront [-c FILE] [--address-file FILE]   run in the foreground\n"
	        "       mxfront -t [-c FILE]                      check configuration and certificates\n"
	        "       mxfront certs [-c FILE]                   list the names served\n"
	        "       mxfront --version | --help\n"
	        "\n"
	        "Inbound SMTP front-end: accepts SMTP and relays every message to an LMTP\n"
	        "backend, answering the client with the backend's verdict.\n"
	        "\n"
	        "  -c, --config FILE        configuration file (default " MXFRONT_DEFAULT_CONFIG ")\n"
	        "  -t, --test               check the configuration and load certs.d/, print\n"
	        "                           every problem; exit 1 if there was any\n"
	        "      --address-file FILE  once listening, write the bound addresses there,\n"
	        "                           one per line (useful with port 0)\n"
	        "  -V, --version            print the version\n"
	        "  -h, --help               print this help\n"
	        "\n"
	        "certs: one line per name served by certs.d/: name, certificate directory,\n"
	        "key type, expiry, days left, and which default it is.\n"
	        "\n"
	        "Signals: HUP reloads the configuration and certs.d/ (kept as they were if\n"
	        "anything fails to load); TERM or INT stop gracefully: idle sessions get\n"
	        "421 4.3.2, transactions in progress get [server] shutdown_timeout.\n"
	        "Logs go to stderr, one key=value line per event.\n");
}

/* certstore problems: logged when running, printed when checking. */
static void main_cert_problem_cb(void *arg, const char *path, const char *reason)
{
	int *problems = arg;
	(*problems)++;
	log_warn("event=cert_error file=%s reason=\"%s\"", path, reason);
}

/* Loads certs.d/ and builds the TLS context. A missing or empty directory
 * means no STARTTLS (a warning), not a failure; a default that no loaded
 * certificate serves is a failure. *PROBLEMS counts the bad files. */
static int main_load_tls(struct config *cfg, struct certstore **cs, struct tls_context **tc,
                         int *problems, char *err, size_t errsize)
{
	*tc = NULL;
	*cs = NULL;
	int before = *problems;
	if (certstore_load(cfg->tls_certs_dir, time(NULL), NULL, main_cert_problem_cb, problems,
	                   cs) < 0) {
		/* No certs.d at all is a plaintext-only set-up, not a broken file. */
		*problems = before;
		*cs = NULL;
		log_warn("event=tls_disabled reason=\"cannot read %s\"", cfg->tls_certs_dir);
		return 0;
	}
	int rc = tls_context_new(cfg, *cs, tc, err, errsize);
	if (rc == 0 && certstore_ncerts(*cs) == 0)
		log_warn("event=tls_disabled reason=\"no usable certificate in %s\"", cfg->tls_certs_dir);
	else if (rc == 0)
		log_info("event=certs_loaded dir=%s certs=%zu names=%zu problems=%d", cfg->tls_certs_dir,
		         certstore_ncerts(*cs), certstore_nnames(*cs), *problems);
	return rc;
}

/* Switches to [server] user/group once the sockets are bound and the keys
 * read, before any client byte. Running on as root needs user = root. */
static int main_drop_privileges(const struct config *cfg, char *err, size_t errsize)
{
	if (cfg->user[0] == '\0') {
		if (geteuid() == 0) {
			snprintf(err, errsize, "refusing to run as root: set [server] user "
			                       "(user = root to accept the risk)");
			return -1;
		}
		return 0;
	}
	struct passwd *pw = getpwnam(cfg->user);
	if (!pw) {
		snprintf(err, errsize, "[server] user: no such user '%s'", cfg->user);
		return -1;
	}
	gid_t gid = pw->pw_gid;
	if (cfg->group[0]) {
		struct group *gr = getgrnam(cfg->group);
		if (!gr) {
			snprintf(err, errsize, "[server] group: no such group '%s'", cfg->group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (geteuid() != 0) {
		if (pw->pw_uid == geteuid())
			return 0;
		snprintf(err, errsize, "[server] user: cannot switch to '%s' without root", cfg->user);
		return -1;
	}
	if (pw->pw_uid == 0)
		return 0; /* told to stay root */
	if (setgroups(1, &gid) < 0 || setgid(gid) < 0 || setuid(pw->pw_uid) < 0) {
		snprintf(err, errsize, "cannot switch to user '%s': %s", cfg->user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		snprintf(err, errsize, "could regain root after switching to '%s'", cfg->user);
		return -1;
	}
	log_info("event=privileges user=%s uid=%d gid=%d", cfg->user, (int)pw->pw_uid, (int)gid);
	return 0;
}

/* A default as `mxfront certs` shows it: the row of the name that serves
 * it, and the text of its mark there. */
struct main_certs_mark {
	const char *row; /* the certstore's indexed name, NULL if none serves it */
	char text[320];
};

struct main_certs_row {
	const struct main_certs_mark *marks;
	size_t nmarks;
	time_t now;
};

/* Resolves default NAME as the handshake does (normalised, exact then
 * wildcard): marked MARK on its own row, "MARK:NAME" on a wildcard's. */
static void main_certs_resolve(const struct certstore *cs, const char *name, const char *mark,
                               struct main_certs_mark *out)
{
	enum certstore_match how;
	char norm[256];
	const struct certstore_entry *e = NULL;
	if (certstore_normalize(name, strlen(name), norm, sizeof norm) >= 0)
		e = certstore_lookup(cs, norm, &how);
	out->row = e ? e->name : NULL;
	if (e && strcmp(norm, e->name) == 0)
		snprintf(out->text, sizeof out->text, "%s", mark);
	else if (e)
		snprintf(out->text, sizeof out->text, "%s:%s", mark, norm);
}

static void main_certs_row_cb(void *arg, const char *name, const char *label, const char *keytype,
                              time_t not_after)
{
	const struct main_certs_row *m = arg;
	char date[32], marks[1024] = "";
	struct tm tm;
	gmtime_r(&not_after, &tm);
	strftime(date, sizeof date, "%Y-%m-%d", &tm);
	for (size_t i = 0; i < m->nmarks; i++) {
		if (!m->marks[i].row || strcmp(m->marks[i].row, name) != 0)
			continue;
		size_t n = strlen(marks);
		snprintf(marks + n, sizeof marks - n, "%s%s", n ? "," : "", m->marks[i].text);
	}
	long days = (long)((not_after - m->now) / 86400);
	printf("%-40s %-24s %-11s %s %5ld %s\n", name, label, keytype, date, days,
	       marks[0] ? marks : "-");
}

/* `mxfront certs`: one line per (name, certificate). */
static int main_certs(struct config *cfg)
{
	struct certstore *cs;
	int problems = 0;
	if (certstore_load(cfg->tls_certs_dir, time(NULL), NULL, main_cert_problem_cb, &problems,
	                   &cs) < 0)
		return 1;
	struct main_certs_mark *marks = calloc(cfg->n_listen + 1, sizeof *marks);
	if (!marks) {
		certstore_unref(cs);
		fprintf(stderr, "mxfront: out of memory\n");
		return 1;
	}
	size_t n = 0;
	main_certs_resolve(cs, cfg->tls_default_cert[0] ? cfg->tls_default_cert : cfg->hostname,
	                   "default", &marks[n++]);
	for (size_t i = 0; i < cfg->n_listen; i++) {
		char mark[300];
		if (!cfg->listen[i].default_cert)
			continue;
		snprintf(mark, sizeof mark, "listener-default(%s)", cfg->listen[i].text);
		main_certs_resolve(cs, cfg->listen[i].default_cert, mark, &marks[n++]);
	}
	struct main_certs_row m = { marks, n, time(NULL) };
	printf("%-40s %-24s %-11s %-10s %5s %s\n", "NAME", "CERTIFICATE", "KEY", "NOT-AFTER", "DAYS",
	       "DEFAULT");
	certstore_foreach(cs, main_certs_row_cb, &m);
	free(marks);
	certstore_unref(cs);
	return problems ? 1 : 0;
}

/* Binds, drops privileges, starts the workers and runs the main loop
 * (signals and reloads) until a graceful stop has ended every worker. */
static int main_run(const char *path, struct config *cfg, struct certstore *cs,
                    struct tls_context *tc, const char *address_file)
{
	uv_loop_t loop;
	char err[512];
	unsigned workers = cfg->workers ? cfg->workers : uv_available_parallelism();
	if (cfg->backend_max_connections < workers) {
		fprintf(stderr, "mxfront: %s: [backend] max_connections: %u is fewer than the %u "
		                "workers (each needs at least one backend connection)\n",
		        path, cfg->backend_max_connections, workers);
		return 1;
	}
	fdlimit_setup(cfg, workers, cfg->backend_max_connections);
	uv_loop_init(&loop);
	struct reload *r = reload_new(&loop, path, address_file, workers, cfg, cs, tc, err, sizeof err);
	int rc = 0;
	if (!r) {
		fprintf(stderr, "mxfront: %s\n", err);
		rc = 1;
	} else if (main_drop_privileges(cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s: %s\n", path, err);
		rc = 1;
	} else if (reload_start(r, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s\n", err);
		rc = 1;
	} else {
		log_info("event=start version=%s hostname=%s backend=%s workers=%u starttls=%s",
		         MXFRONT_VERSION, cfg->hostname, cfg->backend.text, workers,
		         tls_context_usable(tc) ? "yes" : "no");
		uv_run(&loop, UV_RUN_DEFAULT);
	}
	reload_free(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		log_warn("event=exit reason=\"handles left open\"");
	if (rc == 0)
		log_info("event=exit");
	return rc;
}

int main(int argc, char **argv)
{
	enum { OPT_ADDRESS_FILE = 256 };
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "test", no_argument, NULL, 't' },
		{ "address-file", required_argument, NULL, OPT_ADDRESS_FILE },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = MXFRONT_DEFAULT_CONFIG, *address_file = NULL;
	bool test = false;
	int c;
	while ((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 't': test = true; break;
		case OPT_ADDRESS_FILE: address_file = optarg; break;
		case 'V': printf("mxfront %s\n", MXFRONT_VERSION); return 0;
		case 'h': main_usage(stdout); return 0;
		default: main_usage(stderr); return 2;
		}
	}
	/* GNU getopt has moved the options before the command word. */
	bool certs = optind < argc && strcmp(argv[optind], "certs") == 0;
	if (certs)
		optind++;
	if (optind < argc) {
		fprintf(stderr, "mxfront: unexpected argument '%s'\n", argv[optind]);
		main_usage(stderr);
		return 2;
	}
	/* libuv leaves SIGPIPE alone; a client reset mid-write must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	struct config *cfg;
	char err[512];
	if (config_load(path, &cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s\n", err);
		return 1;
	}
	if (certs) {
		int rc = main_certs(cfg);
		config_unref(cfg);
		return rc;
	}
	struct tls_context *tc;
	struct certstore *cs;
	int problems = 0;
	if (main_load_tls(cfg, &cs, &tc, &problems, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s: %s\n", path, err);
		certstore_unref(cs);
		config_unref(cfg);
		return 1;
	}
	int rc;
	if (test) {
		if (problems)
			fprintf(stderr, "mxfront: %s: %d certificate problem(s), see above\n", path, problems);
		else
			printf("mxfront: %s: configuration ok\n", path);
		rc = problems ? 1 : 0;
	} else {
		rc = main_run(path, cfg, cs, tc, address_file);
	}
	certstore_unref(cs);
	tls_context_unref(tc);
	config_unref(cfg);
	return rc;
}
