/* opts: parses smtpload's command line into struct opts and prints --help.
 * Resolves the target once (the only address ever connected to) and reads
 * the --sni-list file. Never exits: main decides (exit code 2). */
#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

enum {
	OPTS_STARTTLS = 256,
	OPTS_SNI_LIST,
	OPTS_NO_SNI_SHARE,
	OPTS_CA,
	OPTS_PRIORITY,
	OPTS_RESUME,
	OPTS_IDLE,
	OPTS_JSON,
	OPTS_TIMEOUT,
	OPTS_EHLO,
	OPTS_NO_PIPELINING,
	OPTS_PIPELINE_DOT,
	OPTS_MAX_PENDING,
	OPTS_HELP,
};

static const struct option opts_long[] = {
	{"starttls", no_argument, NULL, OPTS_STARTTLS},
	{"sni-list", required_argument, NULL, OPTS_SNI_LIST},
	{"no-sni-share", required_argument, NULL, OPTS_NO_SNI_SHARE},
	{"ca", required_argument, NULL, OPTS_CA},
	{"priority", required_argument, NULL, OPTS_PRIORITY},
	{"resume", no_argument, NULL, OPTS_RESUME},
	{"idle", required_argument, NULL, OPTS_IDLE},
	{"json", no_argument, NULL, OPTS_JSON},
	{"timeout", required_argument, NULL, OPTS_TIMEOUT},
	{"ehlo", required_argument, NULL, OPTS_EHLO},
	{"no-pipelining", no_argument, NULL, OPTS_NO_PIPELINING},
	{"pipeline-dot", no_argument, NULL, OPTS_PIPELINE_DOT},
	{"max-pending", required_argument, NULL, OPTS_MAX_PENDING},
	{"help", no_argument, NULL, OPTS_HELP},
	{NULL, 0, NULL, 0},
};

void opts_usage(FILE *out)
{
	fprintf(out,
	"Usage: smtpload -s HOST:PORT [options]\n"
	"\n"
	"SMTP load generator for benchmarking mxfront (or any SMTP server): one libuv\n"
	"loop per thread, GnuTLS sessions over memory buffers, pipelined transactions.\n"
	"A message counts as sent only when the final dot gets a 250 reply.\n"
	"\n"
	"Target and load:\n"
	"  -s HOST:PORT        the server (also [IPv6]:PORT); the only address used\n"
	"  -c N                concurrent connections (default 10)\n"
	"  -n COUNT            messages to attempt in total (default 1000 when no -d)\n"
	"  -d SECONDS          run this long (decimals allowed); with -n, whichever ends first\n"
	"  -m M                messages per connection, then QUIT and reconnect\n"
	"                      (default 0: keep the connection; -m 1: one per connection)\n"
	"  -T THREADS          worker threads, each its own loop (default 1); results merged\n"
	"  --max-pending N     at most N connections being set up at once per thread\n"
	"                      (default 200)\n"
	"  --timeout SECONDS   limit on every wait: connect, each reply, handshake (default 30)\n"
	"\n"
	"Messages:\n"
	"  -S BYTES            message size, suffix k/M for KiB/MiB (default 1024); built\n"
	"                      once: headers, 76-octet CRLF lines, some dot-stuffed\n"
	"  -r R                recipients per message (default 1)\n"
	"  -t TEMPLATE         recipient template, %%d is replaced by a counter\n"
	"                      (default user%%d@example.com)\n"
	"  -R COUNT            the counter cycles over 0..COUNT-1 (default 1000)\n"
	"  -f ADDRESS          envelope sender (default smtpload@example.net)\n"
	"  --ehlo NAME         EHLO name (default smtpload.example)\n"
	"  --no-pipelining     one command per round trip even if PIPELINING is offered\n"
	"  --pipeline-dot      also send the next MAIL/RCPT/DATA (or QUIT) with the\n"
	"                      message's final dot: one round trip per message (RFC 2920)\n"
	"\n"
	"TLS:\n"
	"  --starttls          STARTTLS after EHLO (fails the session if not offered)\n"
	"  --sni-list FILE     server names, one per line, used round-robin per connection\n"
	"                      (without it no SNI is sent)\n"
	"  --no-sni-share P    P percent of the connections send no SNI (default 0)\n"
	"  --ca FILE           verify the server's chain (and the SNI name) against FILE;\n"
	"                      default: no verification\n"
	"  --priority STR      GnuTLS priority string (default NORMAL)\n"
	"  --resume            resume sessions (TLS 1.3 tickets / 1.2 session data)\n"
	"\n"
	"Idle sessions:\n"
	"  --idle N            open N connections, EHLO (+STARTTLS+EHLO), hold them idle\n"
	"                      for -d seconds (default 10), then QUIT. Prints the line\n"
	"                      \"ESTABLISHED n\" on stdout (flushed) once all N are up or\n"
	"                      failed; connections lost while held count as errors.\n"
	"\n"
	"Output:\n"
	"  --json              one JSON object instead of the text report\n"
	"  -h, --help          this text\n"
	"\n"
	"Report: sessions/s, messages/s, MB/s (10^6 octets of accepted messages),\n"
	"latency p50/p99/max of messages (MAIL queued to the reply to the final dot),\n"
	"handshakes (STARTTLS 220 to handshake done) and connects, errors by reply code\n"
	"and connect_refused, connect_error, tls_error, no_starttls, timeout, closed,\n"
	"protocol, and smtpload's own CPU time.\n"
	"Exit: 0 no error, 1 some error was counted, 2 usage or setup error.\n");
}

static int opts_number(const char *s, unsigned long long min, unsigned long long max,
                       unsigned long long *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)s[0]))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int opts_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)s[0]))
		return -1;
	unsigned long long v = strtoull(s, &end, 10), mul = 1;
	if (*end == 'k' || *end == 'K')
		mul = 1024, end++;
	else if (*end == 'M')
		mul = 1024 * 1024, end++;
	if (errno || *end || v > (1ull << 30) / mul)
		return -1;
	*out = (size_t)(v * mul);
	return 0;
}

static int opts_seconds(const char *s, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || end == s || !isfinite(v) || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int opts_target(struct opts *o, const char *s, char *err, size_t errsize)
{
	char host[256];
	const char *colon = strrchr(s, ':');
	const char *h = s;
	size_t hl;
	if (!colon || !colon[1]) {
		snprintf(err, errsize, "-s %s: expected HOST:PORT", s);
		return -1;
	}
	hl = (size_t)(colon - s);
	if (hl >= 2 && s[0] == '[' && colon[-1] == ']')
		h++, hl -= 2;
	if (hl == 0 || hl >= sizeof host) {
		snprintf(err, errsize, "-s %s: expected HOST:PORT", s);
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0 || !ai) {
		snprintf(err, errsize, "-s %s: %s", s, rc ? gai_strerror(rc) : "no address");
		return -1;
	}
	memcpy(&o->addr, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	snprintf(o->target, sizeof o->target, "%s", s);
	return 0;
}

static int opts_sni_add(struct opts *o, const char *name, size_t len)
{
	char **v = realloc(o->sni, (o->nsni + 1) * sizeof *v);
	if (!v)
		return -1;
	o->sni = v;
	if (!(v[o->nsni] = strndup(name, len)))
		return -1;
	o->nsni++;
	return 0;
}

/* One name per line; blank lines and lines starting with '#' are skipped. */
static int opts_sni_list(struct opts *o, const char *path, char *err, size_t errsize)
{
	char line[512];
	unsigned lineno = 0;
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errsize, "--sni-list %s: %s", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof line, f)) {
		char *p = line, *e;
		lineno++;
		while (isspace((unsigned char)*p))
			p++;
		e = p + strlen(p);
		while (e > p && isspace((unsigned char)e[-1]))
			e--;
		if (e == p || *p == '#')
			continue;
		if (e - p > 253 || memchr(p, ' ', (size_t)(e - p)) || memchr(p, '\t', (size_t)(e - p))) {
			snprintf(err, errsize, "--sni-list %s:%u: not a host name", path, lineno);
			fclose(f);
			return -1;
		}
		if (opts_sni_add(o, p, (size_t)(e - p)) < 0) {
			snprintf(err, errsize, "out of memory");
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	if (o->nsni == 0) {
		snprintf(err, errsize, "--sni-list %s: no name in the file", path);
		return -1;
	}
	return 0;
}

static void opts_defaults(struct opts *o)
{
	memset(o, 0, sizeof *o);
	o->conns = 10;
	o->threads = 1;
	o->count = -1;
	o->size = 1024;
	o->rcpts = 1;
	o->rcpt_template = "user%d@example.com";
	o->rcpt_count = 1000;
	o->from = "smtpload@example.net";
	o->ehlo = "smtpload.example";
	o->priority = "NORMAL";
	o->timeout = 30;
	o->pipelining = true;
	o->max_pending = 200;
}

/* Combinations that make no sense are refused rather than ignored. */
static int opts_check(struct opts *o, bool have_target, const char *sni_file, bool tls_opt,
                      char *err, size_t errsize)
{
	if (!have_target) {
		snprintf(err, errsize, "-s HOST:PORT is required");
		return -1;
	}
	if (tls_opt && !o->starttls) {
		snprintf(err, errsize, "--sni-list, --no-sni-share, --ca, --priority and --resume "
		         "need --starttls");
		return -1;
	}
	if (o->idle && o->count >= 0) {
		snprintf(err, errsize, "--idle holds connections for -d seconds: -n does not apply");
		return -1;
	}
	if (o->pipeline_dot && !o->pipelining) {
		snprintf(err, errsize, "--pipeline-dot and --no-pipelining contradict each other");
		return -1;
	}
	if (strlen(o->from) > 200 || strlen(o->ehlo) > 200) {
		snprintf(err, errsize, "-f and --ehlo take at most 200 octets");
		return -1;
	}
	if (o->idle && o->duration == 0)
		o->duration = 10;
	if (!o->idle && o->count < 0 && o->duration == 0)
		o->count = 1000;
	if (sni_file && opts_sni_list(o, sni_file, err, errsize) < 0)
		return -1;
	return 0;
}

int opts_parse(struct opts *o, int argc, char **argv, FILE *out, char *err, size_t errsize)
{
	unsigned long long v;
	const char *sni_file = NULL;
	bool have_target = false, tls_opt = false;
	int c;
	opts_defaults(o);
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":s:c:n:d:m:S:r:t:R:f:T:h", opts_long, NULL)) != -1) {
		const char *a = optarg;
		int bad = 0;
		switch (c) {
		case 's':
			if (opts_target(o, a, err, errsize) < 0)
				return -1;
			have_target = true;
			break;
		case 'c':
			bad = opts_number(a, 1, 1000000, &v);
			o->conns = (unsigned)v;
			break;
		case 'n':
			bad = opts_number(a, 0, 1ull << 62, &v);
			o->count = (long long)v;
			break;
		case 'd':
			bad = opts_seconds(a, 0.001, 1e7, &o->duration);
			break;
		case 'm':
			bad = opts_number(a, 0, 1u << 31, &v);
			o->per_conn = (unsigned)v;
			break;
		case 'S':
			bad = opts_size(a, &o->size);
			break;
		case 'r':
			bad = opts_number(a, 1, 1000, &v);
			o->rcpts = (unsigned)v;
			break;
		case 't':
			o->rcpt_template = a;
			break;
		case 'R':
			bad = opts_number(a, 1, 1u << 31, &v);
			o->rcpt_count = (unsigned)v;
			break;
		case 'f':
			o->from = a;
			break;
		case 'T':
			bad = opts_number(a, 1, 64, &v);
			o->threads = (unsigned)v;
			break;
		case OPTS_STARTTLS:
			o->starttls = true;
			break;
		case OPTS_SNI_LIST:
			sni_file = a;
			tls_opt = true;
			break;
		case OPTS_NO_SNI_SHARE:
			bad = opts_number(a, 0, 100, &v);
			o->no_sni_pct = (unsigned)v;
			tls_opt = true;
			break;
		case OPTS_CA:
			o->ca = a;
			tls_opt = true;
			break;
		case OPTS_PRIORITY:
			o->priority = a;
			tls_opt = true;
			break;
		case OPTS_RESUME:
			o->resume = true;
			tls_opt = true;
			break;
		case OPTS_IDLE:
			bad = opts_number(a, 1, 1000000, &v);
			o->idle = (unsigned)v;
			break;
		case OPTS_JSON:
			o->json = true;
			break;
		case OPTS_TIMEOUT:
			bad = opts_seconds(a, 0.1, 86400, &o->timeout);
			break;
		case OPTS_EHLO:
			o->ehlo = a;
			break;
		case OPTS_NO_PIPELINING:
			o->pipelining = false;
			break;
		case OPTS_PIPELINE_DOT:
			o->pipeline_dot = true;
			break;
		case OPTS_MAX_PENDING:
			bad = opts_number(a, 1, 1000000, &v);
			o->max_pending = (unsigned)v;
			break;
		case 'h':
		case OPTS_HELP:
			opts_usage(out);
			return 1;
		case ':':
			snprintf(err, errsize, "option %s needs a value", argv[optind - 1]);
			return -1;
		default:
			snprintf(err, errsize, "unknown option %s", argv[optind - 1]);
			return -1;
		}
		if (bad) {
			/* "-c 0" is two words, "-c0" and "--idle=0" one */
			const char *name = a == argv[optind - 1] ? argv[optind - 2] : argv[optind - 1];
			snprintf(err, errsize, "option %s: bad value '%s'", name, a);
			return -1;
		}
	}
	if (optind < argc) {
		snprintf(err, errsize, "unexpected argument '%s'", argv[optind]);
		return -1;
	}
	return opts_check(o, have_target, sni_file, tls_opt, err, errsize);
}

void opts_fini(struct opts *o)
{
	for (size_t i = 0; i < o->nsni; i++)
		free(o->sni[i]);
	free(o->sni);
	o->sni = NULL;
	o->nsni = 0;
}
