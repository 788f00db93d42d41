/* main: command line, wiring of config, listener and signals, exit code.
 * The only place that prints to stdout or exits; holds no protocol logic. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "reload.h"

#define MXFRONT_DEFAULT_CONFIG "/etc/mxfront/mxfront.conf"

static void main_usage(FILE *out)
{
	fprintf(out,
	        "Usage: mxfront [-c FILE] [--address-file FILE]   run in the foreground\n"
	        "       mxfront -t [-c FILE]                      check the configuration\n"
	        "       mxfront --version | --help\n"
	        "\n"
	        "Inbound SMTP front-end: accepts SMTP and relays every message to an LMTP\n"
	        "backend, answering the client with the backend's verdict.\n"
	        "\n"
	        "  -c, --config FILE        configuration file (default " MXFRONT_DEFAULT_CONFIG ")\n"
	        "  -t, --test               check the configuration, print problems, exit 0 or 1\n"
	        "      --address-file FILE  once listening, write the bound addresses there,\n"
	        "                           one per line (useful with port 0)\n"
	        "  -V, --version            print the version\n"
	        "  -h, --help               print this help\n"
	        "\n"
	        "Signals: TERM or INT stop (sessions get 421 4.3.2).\n"
	        "Logs go to stderr, one key=value line per event.\n");
}

/* Writes the bound addresses to PATH via a temporary file and rename, so a
 * reader never sees half of it. */
static int main_write_addresses(const struct listener *l, const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	for (size_t i = 0; i < listener_count(l); i++) {
		char addr[80];
		if (listener_address(l, i, addr, sizeof addr) == 0)
			fprintf(f, "%s\n", addr);
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

struct main_state {
	struct listener *listener;
	struct reload *reload;
};

static void main_stopped_cb(void *arg)
{
	struct main_state *m = arg;
	m->listener = NULL;
	reload_free(m->reload);
	m->reload = NULL;
}

static void main_stop_cb(void *arg)
{
	struct main_state *m = arg;
	if (m->listener)
		listener_stop(m->listener, main_stopped_cb, m);
}

static int main_run(struct config *cfg, const char *address_file)
{
	uv_loop_t loop;
	char err[512];
	struct main_state m = { 0 };
	uv_loop_init(&loop);
	m.listener = listener_new(&loop, cfg, err, sizeof err);
	int rc = 0;
	if (!m.listener) {
		fprintf(stderr, "mxfront: %s\n", err);
		rc = 1;
	} else if (address_file && main_write_addresses(m.listener, address_file) < 0) {
		fprintf(stderr, "mxfront: cannot write %s\n", address_file);
		listener_stop(m.listener, NULL, NULL);
		m.listener = NULL;
		rc = 1;
	}
	if (rc == 0) {
		m.reload = reload_new(&loop, main_stop_cb, &m);
		log_info("event=start version=%s hostname=%s backend=%s listeners=%zu", MXFRONT_VERSION,
		         cfg->hostname, cfg->backend.text, listener_count(m.listener));
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	reload_free(m.reload);
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
	if (test) {
		printf("mxfront: %s: configuration ok\n", path);
		config_unref(cfg);
		return 0;
	}
	int rc = main_run(cfg, address_file);
	config_unref(cfg);
	return rc;
}
