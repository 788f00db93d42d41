/* Unit tests for config: the value parsers, then config_load on files
 * written by each case into its own temporary directory (removed after), so
 * no case depends on a file left by another. Errors must read
 * "FILE:LINE: key: reason"; in the tables "FILE" stands for the case's path. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "proxy.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- temporary config files ---- */

struct tmpconf {
	char dir[64];
	char path[128];
};

/* Writes TEXT to DIR/mxfront.conf in a new temporary directory. */
static bool tmpconf_write(struct tmpconf *tc, const char *text)
{
	snprintf(tc->dir, sizeof tc->dir, "/tmp/mxfront-test-config-XXXXXX");
	if (!CHECK(mkdtemp(tc->dir) != NULL, "mkdtemp: %s", strerror(errno)))
		return false;
	snprintf(tc->path, sizeof tc->path, "%s/mxfront.conf", tc->dir);
	FILE *f = fopen(tc->path, "w");
	if (!CHECK(f != NULL, "fopen %s: %s", tc->path, strerror(errno)))
		return false;
	fputs(text, f);
	fclose(f);
	return true;
}

static void tmpconf_remove(struct tmpconf *tc)
{
	unlink(tc->path);
	rmdir(tc->dir);
}

/* WANT with each "FILE" replaced by PATH. */
static void expand_file(char *out, size_t size, const char *want, const char *path)
{
	size_t o = 0;
	out[0] = '\0';
	for (const char *p = want; *p && o + 1 < size;) {
		if (strncmp(p, "FILE", 4) == 0) {
			o += (size_t)snprintf(out + o, size - o, "%s", path);
			p += 4;
		} else {
			out[o++] = *p++;
			out[o] = '\0';
		}
	}
}

/* Loads TEXT; returns the config (caller unrefs) or NULL with ERR filled. */
static struct config *load_text(struct tmpconf *tc, const char *text, char *err, size_t errsize)
{
	err[0] = '\0';
	if (!tmpconf_write(tc, text))
		return NULL;
	struct config sentinel_cfg, *cfg = &sentinel_cfg;
	int rc = config_load(tc->path, &cfg, err, errsize);
	if (rc < 0) {
		CHECK(cfg == &sentinel_cfg, "*out untouched on error");
		return NULL;
	}
	CHECK(rc == 0, "config_load returns 0 or negative, got %d", rc);
	return cfg;
}

/* ---- config_parse_duration / config_parse_size ---- */

struct number_case {
	const char *input;
	int want;
	uint64_t want_value;
};

static const struct number_case duration_cases[] = {
	{ "90", 0, 90000 },
	{ "90s", 0, 90000 },
	{ "5m", 0, 300000 },
	{ "1h", 0, 3600000 },
	{ "0", 0, 0 },
	{ "0s", 0, 0 },
	{ "10s", 0, 10000 },
	{ "5x", -1, 0 },
	{ "", -1, 0 },
	{ "s", -1, 0 },
	{ "m", -1, 0 },
	{ "-5", -1, 0 },
	{ "5 s", -1, 0 },
	{ "5s ", -1, 0 },
	{ "1.5m", -1, 0 },
	{ "5M", -1, 0 },
	{ "5ms", -1, 0 },
	{ "5d", -1, 0 },
	{ "99999999999999999999", -1, 0 },
	{ "18446744073709552s", -1, 0 },
	{ "5124095576030432h", -1, 0 },
};

static const struct number_case size_cases[] = {
	{ "1024", 0, 1024 },
	{ "10k", 0, 10240 },
	{ "10K", 0, 10240 },
	{ "50M", 0, 52428800 },
	{ "50m", 0, 52428800 },
	{ "1G", 0, 1073741824 },
	{ "1g", 0, 1073741824 },
	{ "16G", 0, 17179869184ull },
	{ "0", 0, 0 },
	{ "10x", -1, 0 },
	{ "", -1, 0 },
	{ "k", -1, 0 },
	{ "-1", -1, 0 },
	{ "-1k", -1, 0 },
	{ " -5", -1, 0 }, /* strtoull skips the space and negates */
	{ "10kb", -1, 0 },
	{ "10 k", -1, 0 },
	{ "1.5M", -1, 0 },
	{ "17179869184G", -1, 0 }, /* 2^64 */
	{ "99999999999999999999", -1, 0 },
};

static void test_numbers(void)
{
	for (size_t i = 0; i < N_ELEMS(duration_cases); i++) {
		const struct number_case *c = &duration_cases[i];
		char name[64];
		snprintf(name, sizeof name, "duration '%s'", c->input);
		check_case(name);
		uint64_t v = 4242;
		int rc = config_parse_duration(c->input, &v);
		CHECK_INT_EQ(rc, c->want);
		if (rc == 0 && c->want == 0)
			CHECK(v == c->want_value, "got %llu ms, want %llu", (unsigned long long)v,
			      (unsigned long long)c->want_value);
	}
	for (size_t i = 0; i < N_ELEMS(size_cases); i++) {
		const struct number_case *c = &size_cases[i];
		char name[64];
		snprintf(name, sizeof name, "size '%s'", c->input);
		check_case(name);
		uint64_t v = 4242;
		int rc = config_parse_size(c->input, &v);
		CHECK(rc == c->want, "returned %d (value %llu), want %d", rc, (unsigned long long)v, c->want);
		if (rc == 0 && c->want == 0)
			CHECK(v == c->want_value, "got %llu bytes, want %llu", (unsigned long long)v,
			      (unsigned long long)c->want_value);
	}
	check_case("");
}

/* ---- config_parse_addr ---- */

struct addr_case {
	const char *text;
	bool allow_unix;
	int want;
	int want_family;       /* AF_INET / AF_INET6, or 0 for unix */
	const char *want_host; /* numeric, or the unix path */
	int want_port;
	const char *want_err;
};

#define LONG_PATH                                                                                  \
	"/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"  \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static const struct addr_case addr_cases[] = {
	{ "127.0.0.1:25", false, 0, AF_INET, "127.0.0.1", 25, NULL },
	{ "0.0.0.0:0", false, 0, AF_INET, "0.0.0.0", 0, NULL },
	{ "[::1]:2525", false, 0, AF_INET6, "::1", 2525, NULL },
	{ "[2001:db8::1]:65535", true, 0, AF_INET6, "2001:db8::1", 65535, NULL },
	{ "unix:/run/dovecot/lmtp", true, 0, 0, "/run/dovecot/lmtp", 0, NULL },
	{ "unix:lmtp", true, 0, 0, "/etc/mxfront/lmtp", 0, NULL },
	{ "unix:sub/lmtp", true, 0, 0, "/etc/mxfront/sub/lmtp", 0, NULL },
	{ "unix:", true, -1, 0, NULL, 0, "empty unix socket path" },
	{ "unix:" LONG_PATH, true, -1, 0, NULL, 0, "unix socket path too long" },
	{ "unix:/run/lmtp", false, -1, 0, NULL, 0, "'unix:/run/lmtp': port must be 0 to 65535" },
	{ "1.2.3.4", false, -1, 0, NULL, 0, "'1.2.3.4' is not host:port (use [addr]:port for IPv6)" },
	{ ":25", false, -1, 0, NULL, 0, "':25' is not host:port (use [addr]:port for IPv6)" },
	{ "::1:25", false, -1, 0, NULL, 0, "'::1:25' is not host:port (use [addr]:port for IPv6)" },
	{ "[::1]25", false, -1, 0, NULL, 0, "'[::1]25' is not [ipv6]:port" },
	{ "[::1", false, -1, 0, NULL, 0, "'[::1' is not [ipv6]:port" },
	{ "127.0.0.1:70000", false, -1, 0, NULL, 0, "'127.0.0.1:70000': port must be 0 to 65535" },
	{ "127.0.0.1:65536", false, -1, 0, NULL, 0, "'127.0.0.1:65536': port must be 0 to 65535" },
	{ "127.0.0.1:", false, -1, 0, NULL, 0, "'127.0.0.1:': port must be 0 to 65535" },
	{ "127.0.0.1:-1", false, -1, 0, NULL, 0, "'127.0.0.1:-1': port must be 0 to 65535" },
	{ "127.0.0.1:2x", false, -1, 0, NULL, 0, "'127.0.0.1:2x': port must be 0 to 65535" },
	{ "[::1]:99999", false, -1, 0, NULL, 0, "'[::1]:99999': port must be 0 to 65535" },
};

static void addr_describe(const struct config_addr *a, int *family, char *host, size_t hostsize,
                          int *port)
{
	*family = a->sa.ss_family;
	*port = -1;
	host[0] = '\0';
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
		inet_ntop(AF_INET, &in->sin_addr, host, (socklen_t)hostsize);
		*port = ntohs(in->sin_port);
	} else if (a->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)hostsize);
		*port = ntohs(in6->sin6_port);
	}
}

static void test_addr(void)
{
	for (size_t i = 0; i < N_ELEMS(addr_cases); i++) {
		const struct addr_case *c = &addr_cases[i];
		check_case(c->text);
		struct config_addr a;
		char err[256] = "";
		int rc = config_parse_addr(c->text, "/etc/mxfront", c->allow_unix, &a, err, sizeof err);
		CHECK(rc == c->want, "returned %d, want %d (%s)", rc, c->want, err);
		if (rc != 0) {
			if (c->want_err)
				CHECK_STR_EQ(err, c->want_err);
			continue;
		}
		if (c->want != 0) {
			free(a.unix_path);
			free(a.text);
			continue;
		}
		CHECK_STR_EQ(a.text, c->text);
		if (c->want_family == 0) {
			CHECK_STR_EQ(a.unix_path, c->want_host);
		} else {
			int family, port;
			char host[INET6_ADDRSTRLEN];
			addr_describe(&a, &family, host, sizeof host, &port);
			CHECK(a.unix_path == NULL, "no unix path for %s", c->text);
			CHECK_INT_EQ(family, c->want_family);
			CHECK_STR_EQ(host, c->want_host);
			CHECK_INT_EQ(port, c->want_port);
			CHECK_INT_EQ(a.salen, family == AF_INET ? sizeof(struct sockaddr_in)
			                                        : sizeof(struct sockaddr_in6));
		}
		free(a.unix_path);
		free(a.text);
	}
	check_case("");
}

/* ---- config_load: errors ---- */

struct load_err_case {
	const char *name;
	const char *text;
	const char *want; /* "FILE" stands for the path; a final '*' matches any rest */
};

static const struct load_err_case load_err_cases[] = {
	/* ranges: the key, the range and the line */
	{ "max_recipients 0", "[server]\nmax_recipients = 0\n",
	  "FILE:2: max_recipients: must be between 1 and 100000" },
	{ "max_recipients 100001", "# c\n[server]\nmax_recipients = 100001\n",
	  "FILE:3: max_recipients: must be between 1 and 100000" },
	{ "max_clients 0", "[server]\nmax_clients = 0\n", "FILE:2: max_clients: must be between 1 and 1000000" },
	{ "max_clients 1000001", "[server]\nmax_clients = 1000001\n",
	  "FILE:2: max_clients: must be between 1 and 1000000" },
	{ "max_errors 0", "[server]\nmax_errors = 0\n", "FILE:2: max_errors: must be between 1 and 1000" },
	{ "max_errors 1001", "[server]\nmax_errors = 1001\n", "FILE:2: max_errors: must be between 1 and 1000" },
	{ "max_message_size 1023", "[server]\nmax_message_size = 1023\n",
	  "FILE:2: max_message_size: must be between 1024 and 4294967296 bytes" },
	{ "max_message_size 5G", "[server]\nmax_message_size = 5G\n",
	  "FILE:2: max_message_size: must be between 1024 and 4294967296 bytes" },
	{ "connect_timeout 0", "[backend]\nconnect_timeout = 0\n",
	  "FILE:2: connect_timeout: must be between 1s and 300s" },
	{ "connect_timeout 301", "[backend]\nconnect_timeout = 301\n",
	  "FILE:2: connect_timeout: must be between 1s and 300s" },
	{ "backend timeout 2h", "[backend]\ntimeout = 2h\n", "FILE:2: timeout: must be between 1s and 3600s" },
	{ "command timeout 0", "[timeouts]\ncommand = 0\n", "FILE:2: command: must be between 1s and 3600s" },
	{ "data timeout 61m", "[timeouts]\ndata = 61m\n", "FILE:2: data: must be between 1s and 3600s" },
	{ "handshake timeout 11m", "[timeouts]\nhandshake = 11m\n",
	  "FILE:2: handshake: must be between 1s and 600s" },
	{ "tls priority", "[tls]\npriority = NORMAL:+NO-SUCH-THING\n", "FILE:2: priority: *" },
	{ "tls require maybe", "[tls]\nrequire = maybe\n", "FILE:2: require: 'maybe' is not yes or no" },
	/* values of the wrong kind */
	{ "max_recipients 10k", "[server]\nmax_recipients = 10k\n",
	  "FILE:2: max_recipients: '10k' is not a whole number" },
	{ "max_recipients -1", "[server]\nmax_recipients = -1\n",
	  "FILE:2: max_recipients: '-1' is not a whole number" },
	{ "max_errors empty", "[server]\nmax_errors =\n", "FILE:2: max_errors: '' is not a whole number" },
	{ "max_message_size 10x", "[server]\nmax_message_size = 10x\n",
	  "FILE:2: max_message_size: '10x' is not a size (bytes, or with k, M, G)" },
	{ "data 5x", "[timeouts]\ndata = 5x\n",
	  "FILE:2: data: '5x' is not a duration (seconds, or with s, m, h)" },
	{ "timeout 1.5m", "[backend]\ntimeout = 1.5m\n",
	  "FILE:2: timeout: '1.5m' is not a duration (seconds, or with s, m, h)" },
	{ "xclient maybe", "[backend]\nxclient = maybe\n", "FILE:2: xclient: 'maybe' is not yes or no" },
	{ "protocol smtp", "[backend]\naddress = 127.0.0.1:24\nprotocol = smtp\n",
	  "FILE:3: protocol: 'smtp' is not supported (only lmtp)" },
	/* listen and backend addresses */
	{ "listen without port", "[server]\nlisten = 1.2.3.4\n",
	  "FILE:2: listen: '1.2.3.4' is not host:port (use [addr]:port for IPv6)" },
	{ "listen [::1]25", "[server]\nlisten = [::1]25\n", "FILE:2: listen: '[::1]25' is not [ipv6]:port" },
	{ "listen port 70000", "[server]\nlisten = 127.0.0.1:70000\n",
	  "FILE:2: listen: '127.0.0.1:70000': port must be 0 to 65535" },
	{ "listen second address bad", "[server]\nlisten = 127.0.0.1:25, 1.2.3.4\n",
	  "FILE:2: listen: '1.2.3.4' is not host:port (use [addr]:port for IPv6)" },
	{ "listen empty", "[server]\nlisten =\n", "FILE:2: listen: needs at least one address" },
	{ "listen only commas", "[server]\nlisten = , ,\n", "FILE:2: listen: needs at least one address" },
	{ "listen on a unix socket", "[server]\nlisten = unix:/run/x\n",
	  "FILE:2: listen: 'unix:/run/x': port must be 0 to 65535" },
	{ "listen unknown option", "[server]\nlisten = 127.0.0.1:25 proxy_protocol=v2\n",
	  "FILE:2: listen: 'proxy_protocol=v2': unknown listener option (default_cert=NAME, "
	  "proxy=v1|v2|any, session_tickets=yes|no)" },
	{ "listen proxy=v3", "[server]\nlisten = 127.0.0.1:25 proxy=v3\n",
	  "FILE:2: listen: 'proxy=v3': bad value" },
	{ "listen proxy twice", "[server]\nlisten = 127.0.0.1:25 proxy=v1 proxy=v2\n",
	  "FILE:2: listen: 'proxy=v2': option given twice" },
	{ "listen session_tickets=maybe", "[server]\nlisten = 127.0.0.1:25 session_tickets=maybe\n",
	  "FILE:2: listen: 'session_tickets=maybe': bad value" },
	{ "listen default_cert empty", "[server]\nlisten = 127.0.0.1:25 default_cert=\n",
	  "FILE:2: listen: 'default_cert=': bad value" },
	{ "listen proxy without proxy_trusted", "[server]\nhostname = a.example\n"
	  "listen = 127.0.0.1:25, 127.0.0.1:26 proxy=any\n",
	  "FILE:3: listen: 127.0.0.1:26 takes a PROXY header: [server] proxy_trusted must name the "
	  "load balancers that send it" },
	{ "proxy_trusted with a host name", "[server]\nproxy_trusted = lb.example\n",
	  "FILE:2: proxy_trusted: 'lb.example' is not an IPv4 or IPv6 address" },
	{ "proxy_trusted with host bits", "[server]\nproxy_trusted = 10.1.2.3/16\n",
	  "FILE:2: proxy_trusted: '10.1.2.3/16': address has bits set beyond /16" },
	{ "no_tickets_for bad prefix", "[tls]\nno_tickets_for = 2001:db8::/200\n",
	  "FILE:2: no_tickets_for: '2001:db8::/200': prefix length over 128" },
	{ "session_tickets maybe", "[tls]\nsession_tickets = maybe\n",
	  "FILE:2: session_tickets: 'maybe' is not yes or no" },
	{ "proxy_header timeout 0", "[timeouts]\nproxy_header = 0\n",
	  "FILE:2: proxy_header: must be between 1s and 60s" },
	{ "backend empty unix path", "[backend]\naddress = unix:\n", "FILE:2: address: empty unix socket path" },
	{ "backend without port", "[backend]\naddress = 127.0.0.1\n",
	  "FILE:2: address: '127.0.0.1' is not host:port (use [addr]:port for IPv6)" },
	/* names */
	{ "unknown key", "[server]\nmax_clients = 5\nfoo = 1\n", "FILE:3: [server] foo: unknown key" },
	{ "unknown key in backend", "[backend]\nport = 24\n", "FILE:2: [backend] port: unknown key" },
	{ "key names are case-sensitive", "[server]\nMax_Errors = 5\n",
	  "FILE:2: [server] Max_Errors: unknown key" },
	{ "unknown section", "[server]\n[bogus]\nfoo = 1\n", "FILE:3: [bogus] foo: unknown section [bogus]" },
	{ "key before any section", "max_errors = 5\n", "FILE:1: [] max_errors: unknown section []" },
	{ "key in the wrong section", "[backend]\nmax_errors = 5\n", "FILE:2: [backend] max_errors: unknown key" },
	{ "duplicate key", "[server]\nmax_errors = 5\nmax_errors = 6\n", "FILE:3: max_errors: given twice" },
	{ "duplicate key in a repeated section",
	  "[server]\nmax_errors = 5\n[backend]\ntimeout = 5m\n[server]\nmax_errors = 5\n",
	  "FILE:6: max_errors: given twice" },
	{ "syntax error", "[server]\nthis is not a key\n",
	  "FILE:2: syntax error (expected [section] or key = value)" },
	{ "unclosed section", "[server\nmax_errors = 5\n",
	  "FILE:1: syntax error (expected [section] or key = value)" },
	/* the first error is the one reported, with its own reason */
	{ "two errors: the first is reported", "[server]\nmax_errors = 0\nfoo = 1\n",
	  "FILE:2: max_errors: must be between 1 and 1000" },
	{ "syntax error before a bad value", "[server]\nnot a key\nmax_errors = 0\n",
	  "FILE:2: syntax error (expected [section] or key = value)" },
	/* validation after parsing: no line */
	{ "bad hostname", "[server]\nhostname = bad_host.example\n",
	  "FILE: hostname: 'bad_host.example' is not a host name" },
	{ "empty hostname", "[server]\nhostname =\n", "FILE: hostname: '' is not a host name" },
};

static void test_load_errors(void)
{
	for (size_t i = 0; i < N_ELEMS(load_err_cases); i++) {
		const struct load_err_case *c = &load_err_cases[i];
		check_case(c->name);
		struct tmpconf tc;
		char err[512], want[512];
		struct config *cfg = load_text(&tc, c->text, err, sizeof err);
		CHECK(cfg == NULL, "loaded, want the error %s", c->want);
		config_unref(cfg);
		expand_file(want, sizeof want, c->want, tc.path);
		size_t n = strlen(want);
		if (n && want[n - 1] == '*')
			CHECK(strncmp(err, want, n - 1) == 0 && strlen(err) > n - 1,
			      "got \"%s\", want \"%s\"", err, want);
		else
			CHECK_STR_EQ(err, want);
		tmpconf_remove(&tc);
	}

	check_case("missing file");
	char err[512];
	struct config *cfg = NULL;
	CHECK(config_load("/nonexistent-mxfront/mxfront.conf", &cfg, err, sizeof err) < 0, "");
	CHECK(cfg == NULL, "");
	CHECK_STR_EQ(err, "/nonexistent-mxfront/mxfront.conf: cannot open: No such file or directory");

	/* inih would cut the line silently: config refuses it, naming the line. */
	check_case("line longer than 198 characters");
	char text[512], line[256];
	memset(line, 'x', 199);
	line[0] = '#';
	line[199] = '\0';
	snprintf(text, sizeof text, "[server]\nmax_errors = 5\n%s\nmax_clients = 5\n", line);
	struct tmpconf tc;
	cfg = load_text(&tc, text, err, sizeof err);
	CHECK(cfg == NULL, "");
	config_unref(cfg);
	char want[512];
	snprintf(want, sizeof want, "%s:3: line longer than 198 characters", tc.path);
	CHECK_STR_EQ(err, want);
	tmpconf_remove(&tc);

	check_case("long value line");
	memset(line, 'a', 200);
	line[200] = '\0';
	snprintf(text, sizeof text, "[server]\nhostname = %s\n", line);
	cfg = load_text(&tc, text, err, sizeof err);
	CHECK(cfg == NULL, "");
	config_unref(cfg);
	snprintf(want, sizeof want, "%s:2: line longer than 198 characters", tc.path);
	CHECK_STR_EQ(err, want);
	tmpconf_remove(&tc);

	check_case("line of exactly 198 characters");
	memset(line, 'x', 198);
	line[0] = '#';
	line[198] = '\0';
	snprintf(text, sizeof text, "[server]\n%s\nmax_errors = 7\n", line);
	cfg = load_text(&tc, text, err, sizeof err);
	CHECK(cfg != NULL, "%s", err);
	if (cfg)
		CHECK_INT_EQ(cfg->max_errors, 7);
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("198-character hostname= line");
	memset(line, 'a', 189);
	line[63] = '.';
	line[127] = '.';
	line[189] = '\0';
	snprintf(text, sizeof text, "[server]\nhostname=%s\n", line);
	cfg = load_text(&tc, text, err, sizeof err);
	CHECK(cfg != NULL, "%s", err);
	if (cfg)
		CHECK_STR_EQ(cfg->hostname, line);
	config_unref(cfg);
	tmpconf_remove(&tc);
}

/* ---- config_load: values ---- */

enum field {
	F_MAX_CLIENTS,
	F_MAX_SIZE,
	F_MAX_RCPT,
	F_MAX_ERRORS,
	F_CONNECT,
	F_TIMEOUT,
	F_XCLIENT,
	F_COMMAND,
	F_DATA,
	F_HANDSHAKE,
	F_SNI_STRICT,
	F_TLS_REQUIRE,
};

static uint64_t field_get(const struct config *cfg, enum field f)
{
	switch (f) {
	case F_MAX_CLIENTS: return cfg->max_clients;
	case F_MAX_SIZE: return cfg->max_message_size;
	case F_MAX_RCPT: return cfg->max_recipients;
	case F_MAX_ERRORS: return cfg->max_errors;
	case F_CONNECT: return cfg->backend_connect_timeout_ms;
	case F_TIMEOUT: return cfg->backend_timeout_ms;
	case F_XCLIENT: return cfg->xclient;
	case F_COMMAND: return cfg->command_timeout_ms;
	case F_DATA: return cfg->data_timeout_ms;
	case F_HANDSHAKE: return cfg->handshake_timeout_ms;
	case F_SNI_STRICT: return cfg->tls_sni_strict;
	case F_TLS_REQUIRE: return cfg->tls_require;
	}
	return 0;
}

struct value_case {
	const char *name;
	const char *text;
	enum field field;
	uint64_t want;
};

static const struct value_case value_cases[] = {
	{ "defaults: max_clients", "[server]\n", F_MAX_CLIENTS, 1000 },
	{ "defaults: max_message_size", "[server]\n", F_MAX_SIZE, 52428800 },
	{ "defaults: max_recipients", "[server]\n", F_MAX_RCPT, 100 },
	{ "defaults: max_errors", "[server]\n", F_MAX_ERRORS, 20 },
	{ "defaults: connect_timeout", "[server]\n", F_CONNECT, 10000 },
	{ "defaults: backend timeout", "[server]\n", F_TIMEOUT, 300000 },
	{ "defaults: xclient", "[server]\n", F_XCLIENT, 1 },
	{ "defaults: command timeout", "[server]\n", F_COMMAND, 300000 },
	{ "defaults: data timeout", "[server]\n", F_DATA, 180000 },
	{ "defaults: handshake timeout", "[server]\n", F_HANDSHAKE, 60000 },
	{ "defaults: tls sni_strict", "[server]\n", F_SNI_STRICT, 0 },
	{ "defaults: tls require", "[server]\n", F_TLS_REQUIRE, 0 },
	{ "defaults in an empty file", "", F_MAX_ERRORS, 20 },
	{ "comments and blank lines", "# c\n; c\n\n[server]\n\n# max_errors = 9\n", F_MAX_ERRORS, 20 },
	{ "inline comment", "[server]\nmax_errors = 5 ; five\n", F_MAX_ERRORS, 5 },
	{ "no spaces around =", "[server]\nmax_errors=6\n", F_MAX_ERRORS, 6 },
	{ "max_recipients 1", "[server]\nmax_recipients = 1\n", F_MAX_RCPT, 1 },
	{ "max_recipients 100000", "[server]\nmax_recipients = 100000\n", F_MAX_RCPT, 100000 },
	{ "max_clients 1000000", "[server]\nmax_clients = 1000000\n", F_MAX_CLIENTS, 1000000 },
	{ "max_errors 1000", "[server]\nmax_errors = 1000\n", F_MAX_ERRORS, 1000 },
	{ "size 1k (the least)", "[server]\nmax_message_size = 1k\n", F_MAX_SIZE, 1024 },
	{ "size 4G (the most)", "[server]\nmax_message_size = 4G\n", F_MAX_SIZE, 4294967296ull },
	{ "size 10k", "[server]\nmax_message_size = 10k\n", F_MAX_SIZE, 10240 },
	{ "size 50M", "[server]\nmax_message_size = 50M\n", F_MAX_SIZE, 52428800 },
	{ "size 1G", "[server]\nmax_message_size = 1G\n", F_MAX_SIZE, 1073741824 },
	{ "size in bytes", "[server]\nmax_message_size = 4096\n", F_MAX_SIZE, 4096 },
	{ "duration 90", "[backend]\nconnect_timeout = 90\n", F_CONNECT, 90000 },
	{ "duration 90s", "[backend]\nconnect_timeout = 90s\n", F_CONNECT, 90000 },
	{ "duration 5m", "[backend]\nconnect_timeout = 5m\n", F_CONNECT, 300000 },
	{ "duration 1h", "[backend]\ntimeout = 1h\n", F_TIMEOUT, 3600000 },
	{ "duration 1s (the least)", "[timeouts]\ncommand = 1s\n", F_COMMAND, 1000 },
	{ "duration 3600 (the most)", "[timeouts]\ndata = 3600\n", F_DATA, 3600000 },
	{ "bool yes", "[backend]\nxclient = yes\n", F_XCLIENT, 1 },
	{ "bool no", "[backend]\nxclient = no\n", F_XCLIENT, 0 },
	{ "bool true", "[backend]\nxclient = true\n", F_XCLIENT, 1 },
	{ "bool false", "[backend]\nxclient = false\n", F_XCLIENT, 0 },
	{ "bool on", "[backend]\nxclient = on\n", F_XCLIENT, 1 },
	{ "bool off", "[backend]\nxclient = off\n", F_XCLIENT, 0 },
	{ "bool 1", "[backend]\nxclient = 1\n", F_XCLIENT, 1 },
	{ "bool 0", "[backend]\nxclient = 0\n", F_XCLIENT, 0 },
	{ "bool YES", "[backend]\nxclient = YES\n", F_XCLIENT, 1 },
	{ "bool Off", "[backend]\nxclient = Off\n", F_XCLIENT, 0 },
	{ "tls require yes", "[tls]\nrequire = yes\n", F_TLS_REQUIRE, 1 },
	{ "tls sni_strict on", "[tls]\nsni_strict = on\n", F_SNI_STRICT, 1 },
	{ "handshake 10m (the most)", "[timeouts]\nhandshake = 10m\n", F_HANDSHAKE, 600000 },
	{ "sections in any order, repeated", "[timeouts]\ndata = 1m\n[server]\nmax_errors = 3\n[timeouts]\ncommand = 2m\n",
	  F_COMMAND, 120000 },
};

static void test_load_values(void)
{
	for (size_t i = 0; i < N_ELEMS(value_cases); i++) {
		const struct value_case *c = &value_cases[i];
		check_case(c->name);
		struct tmpconf tc;
		char err[512];
		struct config *cfg = load_text(&tc, c->text, err, sizeof err);
		if (CHECK(cfg != NULL, "%s", err)) {
			uint64_t got = field_get(cfg, c->field);
			CHECK(got == c->want, "got %llu, want %llu", (unsigned long long)got,
			      (unsigned long long)c->want);
		}
		config_unref(cfg);
		tmpconf_remove(&tc);
	}
}

static void test_load_defaults(void)
{
	check_case("defaults: addresses, names and paths");
	struct tmpconf tc;
	char err[512];
	struct config *cfg = load_text(&tc, "[server]\n", err, sizeof err);
	if (!CHECK(cfg != NULL, "%s", err)) {
		tmpconf_remove(&tc);
		return;
	}
	CHECK_INT_EQ(atomic_load(&cfg->refs), 1);
	CHECK_STR_EQ(cfg->path, tc.path);
	CHECK_STR_EQ(cfg->dir, tc.dir);
	CHECK_INT_EQ(cfg->n_listen, 1);
	if (cfg->n_listen == 1) {
		int family, port;
		char host[INET6_ADDRSTRLEN];
		addr_describe(&cfg->listen[0], &family, host, sizeof host, &port);
		CHECK_STR_EQ(cfg->listen[0].text, "0.0.0.0:25");
		CHECK_INT_EQ(family, AF_INET);
		CHECK_STR_EQ(host, "0.0.0.0");
		CHECK_INT_EQ(port, 25);
	}
	CHECK_STR_EQ(cfg->backend.text, "127.0.0.1:24");
	CHECK(cfg->backend.unix_path == NULL, "");
	CHECK_STR_EQ(cfg->backend_protocol, "lmtp");
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	CHECK_STR_EQ(cfg->hostname, host);
	char want[256];
	snprintf(want, sizeof want, "%s/certs.d", tc.dir);
	CHECK_STR_EQ(cfg->tls_certs_dir, want);
	CHECK_STR_EQ(cfg->tls_default_cert, "");
	CHECK_STR_EQ(cfg->tls_priority, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:%SERVER_PRECEDENCE");
	CHECK(cfg->tls_session_tickets, "session tickets on by default");
	CHECK_INT_EQ(cfg->tls_no_tickets_for.n, 0);
	CHECK(cfg->tls_ticket_key_file == NULL, "");
	CHECK_INT_EQ(cfg->proxy_trusted.n, 0);
	CHECK_INT_EQ(cfg->proxy_timeout_ms, 5000);
	CHECK_INT_EQ(cfg->listen[0].proxy, PROXY_OFF);
	CHECK_INT_EQ(cfg->listen[0].tickets, -1);

	check_case("config_ref / config_unref");
	CHECK(config_ref(cfg) == cfg, "");
	CHECK_INT_EQ(atomic_load(&cfg->refs), 2);
	config_unref(cfg);
	CHECK_INT_EQ(atomic_load(&cfg->refs), 1);
	config_unref(cfg); /* frees: ASan reports a leak or a double free */
	config_unref(NULL);
	tmpconf_remove(&tc);
}

static void test_load_addresses(void)
{
	check_case("listen list");
	struct tmpconf tc;
	char err[512];
	struct config *cfg = load_text(&tc, "[server]\nlisten = 127.0.0.1:25, [::1]:2525\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err) && CHECK_INT_EQ(cfg->n_listen, 2)) {
		int family, port;
		char host[INET6_ADDRSTRLEN];
		addr_describe(&cfg->listen[0], &family, host, sizeof host, &port);
		CHECK_STR_EQ(cfg->listen[0].text, "127.0.0.1:25");
		CHECK_INT_EQ(family, AF_INET);
		CHECK_STR_EQ(host, "127.0.0.1");
		CHECK_INT_EQ(port, 25);
		addr_describe(&cfg->listen[1], &family, host, sizeof host, &port);
		CHECK_STR_EQ(cfg->listen[1].text, "[::1]:2525");
		CHECK_INT_EQ(family, AF_INET6);
		CHECK_STR_EQ(host, "::1");
		CHECK_INT_EQ(port, 2525);
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("listen list with empty items");
	cfg = load_text(&tc, "[server]\nlisten = ,127.0.0.1:0,, \n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err) && CHECK_INT_EQ(cfg->n_listen, 1))
		CHECK_STR_EQ(cfg->listen[0].text, "127.0.0.1:0");
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("backend unix socket relative to the config file");
	cfg = load_text(&tc, "[backend]\naddress = unix:sock\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err)) {
		char want[256];
		snprintf(want, sizeof want, "%s/sock", tc.dir);
		CHECK_STR_EQ(cfg->backend.unix_path, want);
		CHECK_STR_EQ(cfg->backend.text, "unix:sock");
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("backend unix socket, absolute");
	cfg = load_text(&tc, "[backend]\naddress = unix:/run/dovecot/lmtp\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err))
		CHECK_STR_EQ(cfg->backend.unix_path, "/run/dovecot/lmtp");
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("backend unix socket, config loaded by a relative path");
	char cwd[PATH_MAX];
	if (CHECK(getcwd(cwd, sizeof cwd) != NULL, "") &&
	    tmpconf_write(&tc, "[backend]\naddress = unix:sock\n") && CHECK(chdir(tc.dir) == 0, "")) {
		cfg = NULL;
		int rc = config_load("mxfront.conf", &cfg, err, sizeof err);
		CHECK(chdir(cwd) == 0, "");
		if (CHECK(rc == 0, "%s", err)) {
			CHECK_STR_EQ(cfg->dir, ".");
			CHECK_STR_EQ(cfg->backend.unix_path, "./sock");
		}
		config_unref(cfg);
	}
	tmpconf_remove(&tc);

	check_case("backend over IPv6");
	cfg = load_text(&tc, "[backend]\naddress = [::1]:24\nprotocol = lmtp\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err)) {
		int family, port;
		char host[INET6_ADDRSTRLEN];
		addr_describe(&cfg->backend, &family, host, sizeof host, &port);
		CHECK_INT_EQ(family, AF_INET6);
		CHECK_INT_EQ(port, 24);
		CHECK(cfg->backend.unix_path == NULL, "");
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("tls paths and names");
	cfg = load_text(&tc, "[tls]\ncerts_dir = certs\ndefault_cert = mx.example.net\npriority = NORMAL\n",
	                err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err)) {
		char want[256];
		snprintf(want, sizeof want, "%s/certs", tc.dir);
		CHECK_STR_EQ(cfg->tls_certs_dir, want);
		CHECK_STR_EQ(cfg->tls_default_cert, "mx.example.net");
		CHECK_STR_EQ(cfg->tls_priority, "NORMAL");
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("tls certs_dir empty: none, plaintext only on purpose");
	cfg = load_text(&tc, "[tls]\ncerts_dir =\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err))
		CHECK(cfg->tls_certs_dir == NULL, "certs_dir is \"%s\"", cfg->tls_certs_dir);
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("config_key_line: the line that set a key, 0 for a default");
	cfg = load_text(&tc, "# comment\n\n[server]\nuser = nobody\n; more\n[tls]\n\ncerts_dir = x\n",
	                err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err)) {
		CHECK_INT_EQ(config_key_line(cfg, "server", "user"), 4);
		CHECK_INT_EQ(config_key_line(cfg, "tls", "certs_dir"), 8);
		CHECK_INT_EQ(config_key_line(cfg, "server", "group"), 0);
		CHECK_INT_EQ(config_key_line(cfg, "tls", "user"), 0);
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("tls certs_dir absolute");
	cfg = load_text(&tc, "[tls]\ncerts_dir = /etc/mxfront/certs.d\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err))
		CHECK_STR_EQ(cfg->tls_certs_dir, "/etc/mxfront/certs.d");
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("listen options: proxy, session_tickets, default_cert in any order");
	cfg = load_text(&tc, "[server]\nproxy_trusted = 10.0.0.0/8, ::1\nlisten = 127.0.0.1:25 "
	                "proxy=v2 session_tickets=no, [::1]:25 default_cert=mx.a.example proxy=any, "
	                "127.0.0.1:26 proxy=v1 session_tickets=yes, 127.0.0.1:27\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err) && CHECK_INT_EQ(cfg->n_listen, 4)) {
		CHECK_INT_EQ(cfg->listen[0].proxy, PROXY_V2);
		CHECK_INT_EQ(cfg->listen[0].tickets, 0);
		CHECK_INT_EQ(cfg->listen[1].proxy, PROXY_ANY);
		CHECK_INT_EQ(cfg->listen[1].tickets, -1);
		CHECK_STR_EQ(cfg->listen[1].default_cert, "mx.a.example");
		CHECK_INT_EQ(cfg->listen[2].proxy, PROXY_V1);
		CHECK_INT_EQ(cfg->listen[2].tickets, 1);
		CHECK_INT_EQ(cfg->listen[3].proxy, PROXY_OFF);
		CHECK_INT_EQ(cfg->listen[3].tickets, -1);
		CHECK_INT_EQ(cfg->proxy_trusted.n, 2);
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("tickets: session_tickets, no_tickets_for, ticket_key_file");
	cfg = load_text(&tc, "[tls]\nsession_tickets = no\nno_tickets_for = 192.0.2.0/24, "
	                "2001:db8::/32\nticket_key_file = ticket.key\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err)) {
		char want[256];
		snprintf(want, sizeof want, "%s/ticket.key", tc.dir);
		CHECK(!cfg->tls_session_tickets, "");
		CHECK_INT_EQ(cfg->tls_no_tickets_for.n, 2);
		CHECK_STR_EQ(cfg->tls_ticket_key_file, want);
	}
	config_unref(cfg);
	tmpconf_remove(&tc);

	check_case("hostname");
	cfg = load_text(&tc, "[server]\nhostname = mx-1.Example.NET\n", err, sizeof err);
	if (CHECK(cfg != NULL, "%s", err))
		CHECK_STR_EQ(cfg->hostname, "mx-1.Example.NET");
	config_unref(cfg);
	tmpconf_remove(&tc);
}

/* The shipped example must load (it documents every key with its default). */
static void test_shipped_conf(void)
{
	check_case("conf/mxfront.conf");
	char err[512];
	struct config *cfg = NULL;
	int rc = config_load("../../conf/mxfront.conf", &cfg, err, sizeof err);
	if (CHECK(rc == 0, "%s", err)) {
		CHECK_INT_EQ(cfg->max_message_size, 52428800);
		CHECK_INT_EQ(cfg->data_timeout_ms, 180000);
		CHECK_STR_EQ(cfg->dir, "../../conf");
		config_unref(cfg);
	}
}

int main(void)
{
	test_numbers();
	test_addr();
	test_load_errors();
	test_load_values();
	test_load_defaults();
	test_load_addresses();
	test_shipped_conf();
	return check_summary();
}
