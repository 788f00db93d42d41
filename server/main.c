/* main: command line, wiring of config, listener and signals, exit code.
 * The only place that prints to stdout or exits; holds no protocol logic. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "certstore.h"
#include "check.h"
#include "config.h"
#include "control.h"
#include "fdlimit.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "preflight.h"
#include "publicsuffix.h"
#include "generation.h"
#include "reload.h"
#include "tls.h"

/* meson.build sets it from the installation's sysconfdir. */
#ifndef MXFRONT_DEFAULT_CONFIG
#define MXFRONT_DEFAULT_CONFIG "/etc/mxfront/mxfront.conf"
#endif

/* Exit codes beyond 0: see main_usage. */
enum {
	MAIN_EXIT_CONFIG = 1, /* configuration error: the daemon would not (or did not) start */
	MAIN_EXIT_USAGE = 2,
	MAIN_EXIT_CERTS = 3,  /* certificate problems only: the daemon runs, skipping them */
	MAIN_EXIT_NO = 4,     /* the daemon says no (not healthy, reload failed); certs: expiring */
	MAIN_EXIT_DOWN = 5,   /* no answer from the daemon's control socket */
};

/* How long `mxfront reload` waits: a first load of 100,000 names takes 7 s. */
#define MAIN_RELOAD_WAIT_MS 120000
#define MAIN_ASK_WAIT_MS 10000

static void main_usage(FILE *out)
{
	fprintf(out,
	        "Usage: mxfront [-c FILE] [--address-file FILE]   run in the foreground\n"
	        "       mxfront -t [-c FILE]                      check configuration and certificates\n"
	        "       mxfront certs [-c FILE] [--tlsa] [--warn-days N]\n"
	        "                                                 list the names served\n"
	        "       mxfront check [-c FILE] [--ca FILE] [--days N] DOMAIN:MX[,MX...][:POLICY] ...\n"
	        "                                                 check what senders to DOMAIN get\n"
	        "       mxfront reload [-c FILE]                  reload the running daemon, wait for\n"
	        "                                                 its verdict\n"
	        "       mxfront health [-c FILE]                  can the running daemon take mail?\n"
	        "       mxfront stats senders [-c FILE]           who sends SNI: sessions by sender\n"
	        "       mxfront --version | --help\n"
	        "\n"
	        "Inbound SMTP front-end: accepts SMTP and relays every message to an LMTP\n"
	        "backend, answering the client with the backend's verdict.\n"
	        "\n"
	        "  -c, --config FILE        configuration file (default " MXFRONT_DEFAULT_CONFIG ")\n"
	        "  -t, --test               check everything the start would: the configuration,\n"
	        "                           [server] user and group, that each listen address\n"
	        "                           can be bound, certs_dir, certs.d/, the defaults and\n"
	        "                           the ticket key file; print every problem\n"
	        "      --address-file FILE  once listening, write the bound addresses there,\n"
	        "                           one per line (useful with port 0)\n"
	        "      --tlsa               certs: print a DANE record per name and certificate,\n"
	        "                           _25._tcp.NAME. IN TLSA 3 1 1 SHA256-OF-ITS-KEY\n"
	        "      --warn-days N        certs: name on stderr each certificate that expires\n"
	        "                           within N days or has expired; exit 4 if any does\n"
	        "      --ca FILE            check: verify chains against this PEM bundle\n"
	        "                           (default: the system's trust store)\n"
	        "      --days N             check: fail a certificate that expires within N days\n"
	        "                           (default 14)\n"
	        "  -V, --version            print the version\n"
	        "  -h, --help               print this help\n"
	        "\n"
	        "certs: one line per name served by certs.d/: name, certificate directory,\n"
	        "key type, expiry, days left, and which default it is.\n"
	        "\n"
	        "reload, health, stats: ask the running daemon over its control socket\n"
	        "([server] control_socket; under systemd $RUNTIME_DIRECTORY/control, else\n"
	        "/run/mxfront/control). reload: exit 0 when the reload loaded, 4 when it\n"
	        "failed (the running configuration is kept). health: exit 0 when mxfront can\n"
	        "take mail now (listening, backend reachable, certificates loaded, not\n"
	        "stopping), 4 with the reasons when not. stats senders: sessions per sending\n"
	        "organisation (the EHLO name's registrable domain) with SNI for a served\n"
	        "name, for an unknown name, without SNI, without TLS. Exit 5: no daemon\n"
	        "answers on the control socket.\n"
	        "\n"
	        "check: for each hosted DOMAIN, given its MX host names and the file of its\n"
	        "MTA-STS policy (RFC 8461): every MX name matches an mx pattern of the policy\n"
	        "and every pattern an MX name; each MX name gets, through a real handshake\n"
	        "with its name in SNI, a certificate whose chain verifies for it and that\n"
	        "does not expire within --days; then what a sender without SNI gets on each\n"
	        "listener. Exit 0 if all passed, 3 if a check failed.\n"
	        "\n"
	        "Exit codes: 0 ok; 1 configuration error (mxfront would not start, or did\n"
	        "not); 2 usage; 3 (-t, certs) certificate problems only: a certificate that\n"
	        "is skipped, a key others may read, a wildcard for a public suffix, no usable\n"
	        "certificate at all (mxfront runs, without them); 4 (certs --warn-days) a\n"
	        "certificate expires within N days or has expired, (reload) the reload\n"
	        "failed, (health) not healthy; 5 (reload, health, stats) no answer.\n"
	        "\n"
	        "Signals: HUP reloads the configuration and certs.d/ (kept as they were if\n"
	        "anything fails to load); TERM or INT stop gracefully: idle sessions get\n"
	        "421 4.3.2, transactions in progress get [server] shutdown_timeout.\n"
	        "Logs go to stderr, one key=value line per event (under systemd, with the\n"
	        "journal's priority prefixes instead of a timestamp).\n");
}

/* What loading certs.d/ reported: problems (a certificate skipped) and
 * warnings (one served, but see why), and the last reason, which is why the
 * directory itself could not be read when certstore_load() fails. */
struct main_reports {
	const char *dir; /* certs_dir: its own failure is said once, as a configuration error */
	int problems, warnings;
	int expired; /* problems that are certificates past their notAfter */
	char last[600];
};

static void main_cert_problem_cb(void *arg, const char *path, const char *reason)
{
	struct main_reports *r = arg;
	snprintf(r->last, sizeof r->last, "%s", reason);
	if (r->dir && strcmp(path, r->dir) == 0)
		return;
	r->problems++;
	/* certstore's words for a certificate past its notAfter. */
	if (strncmp(reason, "expired on ", 11) == 0) {
		r->expired++;
		fprintf(stderr, "mxfront: %s: %s: EXPIRED, not served\n", path, reason);
	}
	log_warn("event=cert_error file=%s reason=\"%s\"", path, reason);
}

static void main_cert_warning_cb(void *arg, const char *path, const char *reason)
{
	struct main_reports *r = arg;
	r->warnings++;
	log_warn("event=cert_warning file=%s reason=\"%s\"", path, reason);
}

/* Prints a problem of CFG's [SECTION] KEY as FILE:LINE: [SECTION] KEY: ...
 * (FILE: when the key kept its default). */
static void main_config_error(const struct config *cfg, const char *section, const char *key,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void main_config_error(const struct config *cfg, const char *section, const char *key,
                              const char *fmt, ...)
{
	char reason[600], where[32] = "";
	int line = config_key_line(cfg, section, key);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(where, sizeof where, ":%d", line);
	fprintf(stderr, "mxfront: %s%s: [%s] %s: %s\n", cfg->path, where, section, key, reason);
}

/* Loads certs.d/ as the daemon does (problems and warnings logged and
 * counted in *R) and builds the first generation into *GEN. An empty
 * certs_dir means plaintext only, on purpose; a certs_dir that cannot be
 * read, or a default that no loaded certificate serves, is a failure
 * (printed, *GEN NULL). */
static int main_load_generation(struct config *cfg, struct generation **gen,
                                struct main_reports *r)
{
	char err[512];
	struct certstore *cs = NULL; /* NULL: plaintext only, on purpose */
	*gen = NULL;
	if (!cfg->tls_certs_dir) {
		log_warn("event=tls_disabled reason=\"[tls] certs_dir is empty: plaintext only\"");
	} else {
		struct certstore_checks checks = { preflight_key_group(cfg), main_cert_warning_cb };
		r->dir = cfg->tls_certs_dir;
		if (certstore_load(cfg->tls_certs_dir, time(NULL), &checks, NULL, main_cert_problem_cb,
		                   r, &cs) < 0) {
			/* A mistyped certs_dir must not make a plaintext-only MX unnoticed. */
			main_config_error(cfg, "tls", "certs_dir", "%s: %s (leave certs_dir empty for a "
			                  "plaintext-only MX)", cfg->tls_certs_dir, r->last);
			return -1;
		}
		if (certstore_ncerts(cs) == 0) {
			r->problems++;
			log_warn("event=tls_disabled reason=\"no usable certificate in %s\"",
			         cfg->tls_certs_dir);
		} else {
			log_info("event=certs_loaded dir=%s certs=%zu names=%zu problems=%d warnings=%d",
			         cfg->tls_certs_dir, certstore_ncerts(cs), certstore_nnames(cs),
			         r->problems, r->warnings);
		}
	}
	int rc = generation_new(cfg, cs, gen, err, sizeof err);
	certstore_unref(cs); /* the generation holds its own reference */
	if (rc < 0) {
		fprintf(stderr, "mxfront: %s: %s\n", cfg->path, err);
		return -1;
	}
	return 0;
}

/* Switches to [server] user/group once the sockets are bound and the keys
 * read, before any client byte. Running on as root needs user = root. */
static int main_drop_privileges(const struct config *cfg)
{
	struct preflight_identity id;
	const char *key;
	char err[512];
	if (preflight_identity(cfg, &id, &key, err, sizeof err) < 0) {
		main_config_error(cfg, "server", key, "%s", err);
		return -1;
	}
	if (!id.change)
		return 0;
	if (setgroups(1, &id.gid) < 0 || setgid(id.gid) < 0 || setuid(id.uid) < 0) {
		fprintf(stderr, "mxfront: cannot switch to user '%s': %s\n", cfg->user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		fprintf(stderr, "mxfront: could regain root after switching to '%s'\n", cfg->user);
		return -1;
	}
	log_info("event=privileges user=%s uid=%d gid=%d", cfg->user, (int)id.uid, (int)id.gid);
	return 0;
}

/* `mxfront -t`: everything the start would decide, without starting.
 * Returns the exit code: 0, MAIN_EXIT_CONFIG (the daemon would not start)
 * or MAIN_EXIT_CERTS (it would, with certificate problems). */
static int main_test(struct config *cfg)
{
	struct preflight_identity id;
	const char *key;
	char err[512], note[512];
	int errors = 0;
	if (preflight_identity(cfg, &id, &key, err, sizeof err) < 0) {
		main_config_error(cfg, "server", key, "%s", err);
		errors++;
	}
	for (size_t i = 0; i < cfg->n_listen; i++) {
		if (preflight_listen(&cfg->listen[i], note, sizeof note, err, sizeof err) < 0) {
			main_config_error(cfg, "server", "listen", "%s", err);
			errors++;
		} else if (note[0]) {
			log_info("event=check listen=%s note=\"%s\"", cfg->listen[i].text, note);
		}
	}
	if (cfg->metrics_listen.text) {
		if (preflight_listen(&cfg->metrics_listen, note, sizeof note, err, sizeof err) < 0) {
			main_config_error(cfg, "metrics", "listen", "%s", err);
			errors++;
		} else if (note[0]) {
			log_info("event=check metrics=%s note=\"%s\"", cfg->metrics_listen.text, note);
		}
	}
	struct main_reports r = { 0 };
	struct generation *gen;
	if (main_load_generation(cfg, &gen, &r) < 0)
		errors++;
	generation_unref(gen);
	if (errors) {
		fprintf(stderr, "mxfront: %s: %d configuration error(s): mxfront would not start\n",
		        cfg->path, errors);
		return MAIN_EXIT_CONFIG;
	}
	if (r.problems || r.warnings) {
		fprintf(stderr, "mxfront: %s: configuration ok; certificate problems: %d, warnings: %d "
		        "(see above)\n", cfg->path, r.problems, r.warnings);
		return MAIN_EXIT_CERTS;
	}
	printf("mxfront: %s: configuration ok\n", cfg->path);
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
	long warn_days; /* --warn-days, or -1 */
	unsigned expiring;
};

/* Resolves default NAME as the handshake does (normalised, exact then
 * wildcard): marked MARK on its own row, "MARK:NAME" on a wildcard's. */
static void main_certs_resolve(const struct certstore *cs, const char *name, const char *mark,
                               struct main_certs_mark *out)
{
	enum certstore_match how;
	char norm[256];
	const struct certstore_entry *e = certstore_resolve(cs, name, strlen(name), norm, sizeof norm,
	                                                    &how);
	out->row = e ? e->name : NULL;
	if (e && strcmp(norm, e->name) == 0)
		snprintf(out->text, sizeof out->text, "%s", mark);
	else if (e)
		snprintf(out->text, sizeof out->text, "%s:%s", mark, norm);
}

static void main_certs_row_cb(void *arg, const struct certstore_row *row)
{
	struct main_certs_row *m = arg;
	char date[32], marks[1024] = "";
	struct tm tm;
	gmtime_r(&row->not_after, &tm);
	strftime(date, sizeof date, "%Y-%m-%d", &tm);
	for (size_t i = 0; i < m->nmarks; i++) {
		if (!m->marks[i].row || strcmp(m->marks[i].row, row->name) != 0)
			continue;
		size_t n = strlen(marks);
		snprintf(marks + n, sizeof marks - n, "%s%s", n ? "," : "", m->marks[i].text);
	}
	long days = (long)((row->not_after - m->now) / 86400);
	printf("%-40s %-24s %-11s %s %5ld %s\n", row->name, row->label, row->keytype, date, days,
	       marks[0] ? marks : "-");
	if (m->warn_days >= 0 && row->not_after - m->now < (time_t)m->warn_days * 86400) {
		m->expiring++;
		fprintf(stderr, "mxfront: %s: certificate %s (%s) expires on %s, in %ld days (within "
		        "--warn-days %ld)\n", row->name, row->label, row->keytype, date, days,
		        m->warn_days);
	}
}

/* `mxfront certs --tlsa`: a DANE-EE SPKI SHA-256 record (RFC 7671, RFC 7672)
 * per name and certificate, as zone file lines. A wildcard has no host name
 * to own a record: it is shown as a comment, for each host it serves. */
static void main_tlsa_row_cb(void *arg, const struct certstore_row *row)
{
	char hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", row->spki_sha256[i]);
	if (row->name[0] == '*')
		printf("; %s: for each host it serves: _25._tcp.HOST. IN TLSA 3 1 1 %s ; %s %s\n",
		       row->name, hex, row->label, row->keytype);
	else
		printf("_25._tcp.%s. IN TLSA 3 1 1 %s ; %s %s\n", row->name, hex, row->label,
		       row->keytype);
}

/* `mxfront certs [--tlsa] [--warn-days N]`: one line per (name, certificate).
 * WARN_DAYS >= 0: names (and skipped certificates) that expire within that
 * many days are said on stderr and the exit code is MAIN_EXIT_NO. */
static int main_certs(struct config *cfg, bool tlsa, long warn_days)
{
	struct certstore *cs;
	struct main_reports r = { 0 };
	if (!cfg->tls_certs_dir) {
		main_config_error(cfg, "tls", "certs_dir", "empty: no certificates (plaintext only)");
		return MAIN_EXIT_CONFIG;
	}
	struct certstore_checks checks = { preflight_key_group(cfg), main_cert_warning_cb };
	if (certstore_load(cfg->tls_certs_dir, time(NULL), &checks, NULL, main_cert_problem_cb, &r,
	                   &cs) < 0)
		return MAIN_EXIT_CONFIG;
	if (tlsa) {
		certstore_foreach(cs, main_tlsa_row_cb, NULL);
		certstore_unref(cs);
		return r.problems || r.warnings ? MAIN_EXIT_CERTS : 0;
	}
	struct main_certs_mark *marks = calloc(cfg->n_listen + 1, sizeof *marks);
	if (!marks) {
		certstore_unref(cs);
		fprintf(stderr, "mxfront: out of memory\n");
		return MAIN_EXIT_CONFIG;
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
	struct main_certs_row m = { marks, n, time(NULL), warn_days, 0 };
	printf("%-40s %-24s %-11s %-10s %5s %s\n", "NAME", "CERTIFICATE", "KEY", "NOT-AFTER", "DAYS",
	       "DEFAULT");
	certstore_foreach(cs, main_certs_row_cb, &m);
	free(marks);
	certstore_unref(cs);
	if (warn_days >= 0 && (m.expiring || r.expired)) {
		fprintf(stderr, "mxfront: %u name(s) expire within %ld days, %d certificate(s) have "
		        "expired\n", m.expiring, warn_days, r.expired);
		return MAIN_EXIT_NO;
	}
	return r.problems || r.warnings ? MAIN_EXIT_CERTS : 0;
}

/* `mxfront reload|health|stats senders`: COMMAND to the daemon's control
 * socket; prints its answer. Returns the exit code. */
static int main_ask(const struct config *cfg, const char *command, int timeout_ms)
{
	char buf[300], err[600];
	const char *path = control_path(cfg, true, buf, sizeof buf);
	int status;
	char *body;
	if (control_ask(path, command, timeout_ms, &status, &body, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s: is mxfront running? (%s)\n", command, err);
		return MAIN_EXIT_DOWN;
	}
	/* The first line is the verdict; a table follows it. */
	char *nl = strchr(body, '\n');
	if (strcmp(command, "senders") == 0)
		fputs(nl ? nl + 1 : "", stdout);
	else
		printf("%s", body);
	free(body);
	return status == 200 ? 0 : MAIN_EXIT_NO;
}

/* Binds, drops privileges, starts the workers and runs the main loop
 * (signals and reloads) until a graceful stop has ended every worker. */
static int main_run(const char *path, struct generation *gen, const char *address_file)
{
	uv_loop_t loop;
	char err[512];
	struct config *cfg = gen->cfg;
	unsigned workers = cfg->workers ? cfg->workers : uv_available_parallelism();
	if (cfg->backend_max_connections < workers) {
		fprintf(stderr, "mxfront: %s: [backend] max_connections: %u is fewer than the %u "
		                "workers (each needs at least one backend connection)\n",
		        path, cfg->backend_max_connections, workers);
		return 1;
	}
	fdlimit_setup(cfg, workers, cfg->backend_max_connections);
	uv_loop_init(&loop);
	struct reload *r = reload_new(&loop, path, address_file, workers, gen, err, sizeof err);
	struct httpd *http = NULL;
	struct control *ctl = NULL;
	char metrics_at[80] = "off", ctl_buf[300], listen[1024];
	const char *ctl_path = control_path(cfg, false, ctl_buf, sizeof ctl_buf);
	int rc = 0;
	if (!r) {
		fprintf(stderr, "mxfront: %s\n", err);
		rc = 1;
	} else if (cfg->metrics_listen.text &&
	           !(http = httpd_start(&cfg->metrics_listen, metrics_at, sizeof metrics_at, err,
	                                sizeof err))) {
		main_config_error(cfg, "metrics", "listen", "%s", err);
		rc = 1;
	} else if (main_drop_privileges(cfg) < 0) {
		rc = 1;
	} else if (ctl_path && !(ctl = control_new(&loop, r, ctl_path, err, sizeof err))) {
		/* As the user it runs as: the socket is that user's. */
		main_config_error(cfg, "server", "control_socket", "%s", err);
		rc = 1;
	} else if (reload_start(r, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s\n", err);
		rc = 1;
	} else {
		reload_addresses(r, listen, sizeof listen);
		log_info("event=start version=%s hostname=%s backend=%s workers=%u starttls=%s "
		         "listen=%s metrics=%s control=%s",
		         MXFRONT_VERSION, cfg->hostname, cfg->backend.text, workers,
		         tls_context_usable(gen->tc) ? "yes" : "no", listen, metrics_at,
		         ctl_path ? ctl_path : "off");
		char status[1200];
		snprintf(status, sizeof status, "listening on %s, backend %s", listen, cfg->backend.text);
		notify_ready(status);
		uv_run(&loop, UV_RUN_DEFAULT);
	}
	control_free(ctl);
	reload_free(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	/* The workers are gone: nothing counts any more. */
	httpd_stop(http);
	if (uv_loop_close(&loop) != 0)
		log_warn("event=exit reason=\"handles left open\"");
	if (rc == 0)
		log_info("event=exit");
	return rc;
}

int main(int argc, char **argv)
{
	enum { OPT_ADDRESS_FILE = 256, OPT_TLSA, OPT_CA, OPT_DAYS, OPT_WARN_DAYS };
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "test", no_argument, NULL, 't' },
		{ "address-file", required_argument, NULL, OPT_ADDRESS_FILE },
		{ "tlsa", no_argument, NULL, OPT_TLSA },
		{ "ca", required_argument, NULL, OPT_CA },
		{ "days", required_argument, NULL, OPT_DAYS },
		{ "warn-days", required_argument, NULL, OPT_WARN_DAYS },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = MXFRONT_DEFAULT_CONFIG, *address_file = NULL;
	bool test = false, tlsa = false;
	struct check_options check = { NULL, 14 };
	bool check_opts = false;
	long warn_days = -1;
	char *end;
	int c;
	while ((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 't': test = true; break;
		case OPT_ADDRESS_FILE: address_file = optarg; break;
		case OPT_TLSA: tlsa = true; break;
		case OPT_CA: check.ca_file = optarg; check_opts = true; break;
		case OPT_DAYS:
			check.days = (unsigned)strtoul(optarg, &end, 10);
			check_opts = true;
			if (*optarg < '0' || *optarg > '9' || *end || check.days > 3650) {
				fprintf(stderr, "mxfront: --days takes a number of days, 0 to 3650\n");
				return MAIN_EXIT_USAGE;
			}
			break;
		case OPT_WARN_DAYS:
			warn_days = strtol(optarg, &end, 10);
			if (*optarg < '0' || *optarg > '9' || *end || warn_days > 3650) {
				fprintf(stderr, "mxfront: --warn-days takes a number of days, 0 to 3650\n");
				return MAIN_EXIT_USAGE;
			}
			break;
		case 'V': printf("mxfront %s\n", MXFRONT_VERSION); return 0;
		case 'h': main_usage(stdout); return 0;
		default: main_usage(stderr); return MAIN_EXIT_USAGE;
		}
	}
	/* GNU getopt has moved the options before the command word. */
	bool certs = optind < argc && strcmp(argv[optind], "certs") == 0;
	bool checking = optind < argc && strcmp(argv[optind], "check") == 0;
	/* Commands for the running daemon: the control socket's command word. */
	const char *ask = NULL;
	if (optind < argc && (strcmp(argv[optind], "reload") == 0 ||
	                      strcmp(argv[optind], "health") == 0))
		ask = argv[optind++];
	else if (optind + 1 < argc && strcmp(argv[optind], "stats") == 0 &&
	         strcmp(argv[optind + 1], "senders") == 0)
		ask = "senders", optind += 2;
	if (certs || checking)
		optind++;
	const char *misplaced = NULL;
	if (tlsa && !certs)
		misplaced = "--tlsa";
	else if (warn_days >= 0 && !certs)
		misplaced = "--warn-days";
	else if (ask && (test || address_file))
		misplaced = test ? "-t" : "--address-file";
	else if (check_opts && !checking)
		misplaced = "--ca and --days";
	else if (address_file && (certs || test || checking))
		misplaced = "--address-file";
	else if (test && (certs || checking))
		misplaced = "-t";
	if (checking && optind == argc) {
		fprintf(stderr, "mxfront: check: name at least one DOMAIN:MX[,MX...][:POLICYFILE]\n");
		main_usage(stderr);
		return MAIN_EXIT_USAGE;
	}
	if ((optind < argc && !checking) || misplaced) {
		if (misplaced)
			fprintf(stderr, "mxfront: %s does not go with this command\n", misplaced);
		else
			fprintf(stderr, "mxfront: unexpected argument '%s'\n", argv[optind]);
		main_usage(stderr);
		return MAIN_EXIT_USAGE;
	}
	/* libuv leaves SIGPIPE alone; a client reset mid-write must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	struct config *cfg;
	char err[512];
	if (config_load(path, &cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mxfront: %s\n", err);
		return MAIN_EXIT_CONFIG;
	}
	int rc;
	if (ask) {
		rc = main_ask(cfg, ask, strcmp(ask, "reload") == 0 ? MAIN_RELOAD_WAIT_MS : MAIN_ASK_WAIT_MS);
	} else if (certs) {
		rc = main_certs(cfg, tlsa, warn_days);
	} else if (test) {
		rc = main_test(cfg);
	} else if (checking) {
		struct generation *gen;
		struct main_reports r = { 0 };
		rc = MAIN_EXIT_CONFIG;
		if (main_load_generation(cfg, &gen, &r) == 0 && !tls_context_usable(gen->tc))
			fprintf(stderr, "mxfront: check: no usable certificate: STARTTLS is off\n");
		else if (gen)
			rc = check_run(gen, &check, argv + optind, argc - optind);
		generation_unref(gen);
	} else {
		struct generation *gen;
		struct main_reports r = { 0 };
		rc = MAIN_EXIT_CONFIG;
		log_init();
		/* Before the first generation: it gives its names their counters. */
		metrics_init(cfg->workers ? cfg->workers : uv_available_parallelism());
		if (main_load_generation(cfg, &gen, &r) == 0)
			rc = main_run(path, gen, address_file);
		generation_unref(gen);
		metrics_fini();
	}
	config_unref(cfg);
	publicsuffix_free();
	return rc;
}
