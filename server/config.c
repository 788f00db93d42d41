/* config: inih handler driven by one table of keys, value parsers and the
 * immutable reference-counted struct config. Never exits, never prints: every
 * problem becomes "FILE:LINE: key: reason" for the caller (main or reload). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <ini.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

#include "proxy.h"

/* Debian's inih cuts longer lines silently; we refuse them instead. */
#define CONFIG_MAX_LINE 199

enum config_type {
	CONFIG_UINT,
	CONFIG_SIZE,
	CONFIG_DURATION,
	CONFIG_BOOL,
	CONFIG_STRING,
	CONFIG_PATH,
	CONFIG_PRIORITY,
	CONFIG_LISTEN,
	CONFIG_BACKEND,
	CONFIG_PROTOCOL,
	CONFIG_BARE_NEWLINE,
	CONFIG_ADDR_OPTIONAL,
	CONFIG_CIDR,
};

struct config_key {
	const char *section;
	const char *key;
	enum config_type type;
	size_t offset;
	uint64_t min, max;
	const char *def;
};

#define OFF(field) offsetof(struct config, field)
#define KIB 1024ull

static const struct config_key config_keys[] = {
	{ "server", "listen", CONFIG_LISTEN, OFF(listen), 0, 0, "0.0.0.0:25" },
	{ "server", "hostname", CONFIG_STRING, OFF(hostname), 0, 0, "" },
	{ "server", "max_clients", CONFIG_UINT, OFF(max_clients), 1, 1000000, "1000" },
	{ "server", "max_message_size", CONFIG_SIZE, OFF(max_message_size), KIB, 4 * KIB * KIB * KIB,
	  "50M" },
	{ "server", "max_recipients", CONFIG_UINT, OFF(max_recipients), 1, 100000, "100" },
	{ "server", "max_errors", CONFIG_UINT, OFF(max_errors), 1, 1000, "20" },
	{ "server", "shutdown_timeout", CONFIG_DURATION, OFF(shutdown_timeout_ms), 1000, 3600000,
	  "30s" },
	{ "server", "max_clients_per_ip", CONFIG_UINT, OFF(max_clients_per_ip), 0, 1000000, "50" },
	{ "server", "max_connection_rate", CONFIG_UINT, OFF(max_connection_rate), 0, 1000000, "0" },
	{ "server", "max_junk_commands", CONFIG_UINT, OFF(max_junk_commands), 1, 100000, "100" },
	{ "server", "greeting_delay", CONFIG_DURATION, OFF(greeting_delay_ms), 0, 60000, "0" },
	{ "server", "workers", CONFIG_UINT, OFF(workers), 0, 256, "0" },
	{ "server", "user", CONFIG_STRING, OFF(user), 0, 0, "" },
	{ "server", "group", CONFIG_STRING, OFF(group), 0, 0, "" },
	{ "server", "control_socket", CONFIG_PATH, OFF(control_socket), 0, 0, "" },
	{ "server", "proxy_trusted", CONFIG_CIDR, OFF(proxy_trusted), 0, 0, "" },
	{ "backend", "address", CONFIG_BACKEND, OFF(backend), 0, 0, "127.0.0.1:24" },
	{ "backend", "protocol", CONFIG_PROTOCOL, OFF(backend_protocol), 0, 0, "lmtp" },
	{ "backend", "connect_timeout", CONFIG_DURATION, OFF(backend_connect_timeout_ms), 1000,
	  300000, "10s" },
	{ "backend", "timeout", CONFIG_DURATION, OFF(backend_timeout_ms), 1000, 3600000, "5m" },
	{ "backend", "xclient", CONFIG_BOOL, OFF(xclient), 0, 0, "yes" },
	{ "backend", "max_connections", CONFIG_UINT, OFF(backend_max_connections), 1, 100000, "50" },
	{ "backend", "idle_timeout", CONFIG_DURATION, OFF(backend_idle_timeout_ms), 1000, 3600000,
	  "10s" },
	{ "backend", "queue_timeout", CONFIG_DURATION, OFF(backend_queue_timeout_ms), 1000, 600000,
	  "30s" },
	{ "smtp", "bare_newline", CONFIG_BARE_NEWLINE, OFF(bare_newline_normalize), 0, 0, "reject" },
	{ "tls", "certs_dir", CONFIG_PATH, OFF(tls_certs_dir), 0, 0, "certs.d" },
	{ "tls", "default_cert", CONFIG_STRING, OFF(tls_default_cert), 0, 0, "" },
	{ "tls", "sni_strict", CONFIG_BOOL, OFF(tls_sni_strict), 0, 0, "no" },
	{ "tls", "priority", CONFIG_PRIORITY, OFF(tls_priority), 0, 0,
	  "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:%SERVER_PRECEDENCE" },
	{ "tls", "require", CONFIG_BOOL, OFF(tls_require), 0, 0, "no" },
	{ "tls", "session_tickets", CONFIG_BOOL, OFF(tls_session_tickets), 0, 0, "yes" },
	{ "tls", "no_tickets_for", CONFIG_CIDR, OFF(tls_no_tickets_for), 0, 0, "" },
	{ "tls", "ticket_key_file", CONFIG_PATH, OFF(tls_ticket_key_file), 0, 0, "" },
	{ "timeouts", "command", CONFIG_DURATION, OFF(command_timeout_ms), 1000, 3600000, "5m" },
	{ "timeouts", "data", CONFIG_DURATION, OFF(data_timeout_ms), 1000, 3600000, "3m" },
	{ "timeouts", "handshake", CONFIG_DURATION, OFF(handshake_timeout_ms), 1000, 600000, "1m" },
	{ "timeouts", "idle", CONFIG_DURATION, OFF(idle_timeout_ms), 1000, 3600000, "3m" },
	{ "metrics", "listen", CONFIG_ADDR_OPTIONAL, OFF(metrics_listen), 0, 0, "" },
	{ "metrics", "senders", CONFIG_UINT, OFF(metrics_senders), 1, 1000, "20" },
	{ "timeouts", "proxy_header", CONFIG_DURATION, OFF(proxy_timeout_ms), 1000, 60000, "5s" },
};

#define CONFIG_NKEYS (sizeof config_keys / sizeof config_keys[0])

struct config_loader {
	struct config *cfg;
	FILE *f;
	bool seen[CONFIG_NKEYS];
	int reading;          /* the line inih is handling now (lines read so far) */
	int line;             /* line of the first error, 0 if none */
	char reason[256];     /* "key: reason" of the first error */
};

int config_parse_duration(const char *text, uint64_t *ms)
{
	char *end;
	if (text[0] < '0' || text[0] > '9')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno)
		return -1;
	uint64_t mult = 1000;
	if (*end == 's')
		end++;
	else if (*end == 'm')
		mult = 60000, end++;
	else if (*end == 'h')
		mult = 3600000, end++;
	if (*end != '\0' || v > UINT64_MAX / mult)
		return -1;
	*ms = v * mult;
	return 0;
}

int config_parse_size(const char *text, uint64_t *bytes)
{
	char *end;
	if (text[0] < '0' || text[0] > '9')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno)
		return -1;
	uint64_t mult = 1;
	switch (*end) {
	case 'k': case 'K': mult = KIB; end++; break;
	case 'm': case 'M': mult = KIB * KIB; end++; break;
	case 'g': case 'G': mult = KIB * KIB * KIB; end++; break;
	default: break;
	}
	if (*end != '\0' || v > UINT64_MAX / mult)
		return -1;
	*bytes = v * mult;
	return 0;
}

static char *config_join_path(const char *dir, const char *path)
{
	if (path[0] == '/')
		return strdup(path);
	size_t n = strlen(dir) + strlen(path) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, path);
	return p;
}

int config_parse_addr(const char *text, const char *dir, bool allow_unix, struct config_addr *addr,
                      char *err, size_t errsize)
{
	memset(addr, 0, sizeof *addr);
	if (allow_unix && strncmp(text, "unix:", 5) == 0) {
		if (text[5] == '\0') {
			snprintf(err, errsize, "empty unix socket path");
			return -1;
		}
		addr->unix_path = config_join_path(dir, text + 5);
		if (!addr->unix_path || strlen(addr->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
			snprintf(err, errsize, "unix socket path too long");
			free(addr->unix_path);
			addr->unix_path = NULL;
			return -1;
		}
		addr->text = strdup(text);
		return 0;
	}
	char host[256];
	const char *port;
	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host) {
			snprintf(err, errsize, "'%s' is not [ipv6]:port", text);
			return -1;
		}
		memcpy(host, text + 1, (size_t)(close - text - 1));
		host[close - text - 1] = '\0';
		port = close + 2;
	} else {
		const char *colon = strrchr(text, ':');
		if (!colon || colon == text || (size_t)(colon - text) >= sizeof host ||
		    memchr(text, ':', (size_t)(colon - text))) {
			snprintf(err, errsize, "'%s' is not host:port (use [addr]:port for IPv6)", text);
			return -1;
		}
		memcpy(host, text, (size_t)(colon - text));
		host[colon - text] = '\0';
		port = colon + 1;
	}
	char *end;
	long p = strtol(port, &end, 10);
	if (*port == '\0' || *end != '\0' || p < 0 || p > 65535) {
		snprintf(err, errsize, "'%s': port must be 0 to 65535", text);
		return -1;
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                          .ai_flags = AI_NUMERICSERV }, *res;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errsize, "'%s': %s", host, gai_strerror(rc));
		return -1;
	}
	memcpy(&addr->sa, res->ai_addr, res->ai_addrlen);
	addr->salen = res->ai_addrlen;
	freeaddrinfo(res);
	addr->text = strdup(text);
	return 0;
}

static void config_addr_fini(struct config_addr *addr)
{
	free(addr->unix_path);
	free(addr->text);
	free(addr->default_cert);
}

static char *config_trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

static int config_set_bool(const char *value, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(value, yes[i]) == 0)
			return *out = true, 0;
		if (strcasecmp(value, no[i]) == 0)
			return *out = false, 0;
	}
	return -1;
}

/* One option of a listen item into A: default_cert=NAME, proxy=v1|v2|any,
 * session_tickets=yes|no, each at most once. */
static int config_parse_listen_option(const char *opt, struct config_addr *a, char *why,
                                      size_t whysize)
{
	const char *eq = strchr(opt, '=');
	size_t klen = eq ? (size_t)(eq - opt) : strlen(opt);
	const char *v = eq ? eq + 1 : "";
	bool given = false, bad = *v == '\0';
	if (klen == 12 && strncmp(opt, "default_cert", klen) == 0) {
		given = a->default_cert != NULL;
		if (!bad && !given && !(a->default_cert = strdup(v))) {
			snprintf(why, whysize, "out of memory");
			return -1;
		}
	} else if (klen == 5 && strncmp(opt, "proxy", klen) == 0) {
		given = a->proxy != PROXY_OFF;
		a->proxy = strcmp(v, "v1") == 0 ? PROXY_V1 : strcmp(v, "v2") == 0 ? PROXY_V2
		         : strcmp(v, "any") == 0 ? PROXY_ANY : PROXY_OFF;
		bad = a->proxy == PROXY_OFF;
	} else if (klen == 15 && strncmp(opt, "session_tickets", klen) == 0) {
		bool on = false;
		given = a->tickets >= 0;
		bad = config_set_bool(v, &on) < 0;
		a->tickets = on;
	} else {
		snprintf(why, whysize, "'%s': unknown listener option (default_cert=NAME, "
		         "proxy=v1|v2|any, session_tickets=yes|no)", opt);
		return -1;
	}
	if (given)
		snprintf(why, whysize, "'%s': option given twice", opt);
	else if (bad)
		snprintf(why, whysize, "'%s': bad value", opt);
	return given || bad ? -1 : 0;
}

/* One listen item: "ADDR" and options (config_parse_listen_option). */
static int config_parse_listen_item(char *item, const char *dir, struct config_addr *a, char *why,
                                    size_t whysize)
{
	char *save = NULL;
	char *addr = strtok_r(item, " \t", &save);
	if (config_parse_addr(addr, dir, false, a, why, whysize) < 0)
		return -1;
	a->tickets = -1;
	for (char *opt = strtok_r(NULL, " \t", &save); opt; opt = strtok_r(NULL, " \t", &save)) {
		if (config_parse_listen_option(opt, a, why, whysize) < 0) {
			config_addr_fini(a);
			return -1;
		}
	}
	return 0;
}

/* "listen": replaces the list with the comma-separated addresses in VALUE. */
static int config_set_listen(struct config *cfg, const char *value, char *why, size_t whysize)
{
	char *copy = strdup(value), *save = NULL;
	struct config_addr *list = NULL;
	size_t n = 0;
	int rc = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		tok = config_trim(tok);
		if (*tok == '\0')
			continue;
		struct config_addr *grown = realloc(list, (n + 1) * sizeof *list);
		if (!grown) {
			rc = -1;
			snprintf(why, whysize, "out of memory");
			break;
		}
		list = grown;
		if (config_parse_listen_item(tok, cfg->dir, &list[n], why, whysize) < 0) {
			rc = -1;
			break;
		}
		n++;
	}
	if (rc == 0 && n == 0) {
		snprintf(why, whysize, "needs at least one address");
		rc = -1;
	}
	free(copy);
	if (rc < 0) {
		for (size_t i = 0; i < n; i++)
			config_addr_fini(&list[i]);
		free(list);
		return -1;
	}
	for (size_t i = 0; i < cfg->n_listen; i++)
		config_addr_fini(&cfg->listen[i]);
	free(cfg->listen);
	cfg->listen = list;
	cfg->n_listen = n;
	return 0;
}

static int config_check_range(const struct config_key *k, uint64_t v, const char *unit, char *why,
                              size_t whysize)
{
	if (v >= k->min && v <= k->max)
		return 0;
	if (strcmp(unit, "ms") == 0)
		snprintf(why, whysize, "must be between %llus and %llus", (unsigned long long)k->min / 1000,
		         (unsigned long long)k->max / 1000);
	else
		snprintf(why, whysize, "must be between %llu and %llu%s", (unsigned long long)k->min,
		         (unsigned long long)k->max, unit);
	return -1;
}

/* Applies VALUE to the field KEY names. Returns 0, or -1 with WHY filled. */
static int config_set(struct config *cfg, const struct config_key *k, const char *value, char *why,
                      size_t whysize)
{
	char *field = (char *)cfg + k->offset;
	uint64_t v;
	switch (k->type) {
	case CONFIG_UINT:
		if (config_parse_size(value, &v) < 0 || strpbrk(value, "kKmMgG")) {
			snprintf(why, whysize, "'%s' is not a whole number", value);
			return -1;
		}
		if (config_check_range(k, v, "", why, whysize) < 0)
			return -1;
		*(unsigned *)field = (unsigned)v;
		return 0;
	case CONFIG_SIZE:
		if (config_parse_size(value, &v) < 0) {
			snprintf(why, whysize, "'%s' is not a size (bytes, or with k, M, G)", value);
			return -1;
		}
		if (config_check_range(k, v, " bytes", why, whysize) < 0)
			return -1;
		*(uint64_t *)field = v;
		return 0;
	case CONFIG_DURATION:
		if (config_parse_duration(value, &v) < 0) {
			snprintf(why, whysize, "'%s' is not a duration (seconds, or with s, m, h)", value);
			return -1;
		}
		if (config_check_range(k, v, "ms", why, whysize) < 0)
			return -1;
		*(unsigned *)field = (unsigned)v;
		return 0;
	case CONFIG_BOOL:
		if (config_set_bool(value, (bool *)field) < 0) {
			snprintf(why, whysize, "'%s' is not yes or no", value);
			return -1;
		}
		return 0;
	case CONFIG_STRING: {
		char *copy = strdup(value);
		if (!copy) {
			snprintf(why, whysize, "out of memory");
			return -1;
		}
		free(*(char **)field);
		*(char **)field = copy;
		return 0;
	}
	case CONFIG_PATH: {
		/* Empty: none (certs_dir: plaintext only, on purpose). */
		char *path = value[0] ? config_join_path(cfg->dir, value) : NULL;
		if (!path && value[0]) {
			snprintf(why, whysize, "out of memory");
			return -1;
		}
		free(*(char **)field);
		*(char **)field = path;
		return 0;
	}
	case CONFIG_PRIORITY: {
		gnutls_priority_t prio;
		const char *where = NULL;
		int rc = gnutls_priority_init2(&prio, value, &where, 0);
		if (rc < 0) {
			snprintf(why, whysize, "%s near '%.40s'", gnutls_strerror(rc), where ? where : "");
			return -1;
		}
		gnutls_priority_deinit(prio);
		return config_set(cfg, &(struct config_key){ .type = CONFIG_STRING, .offset = k->offset },
		                  value, why, whysize);
	}
	case CONFIG_BARE_NEWLINE:
		if (strcmp(value, "reject") != 0 && strcmp(value, "normalize") != 0) {
			snprintf(why, whysize, "'%s' is not reject or normalize", value);
			return -1;
		}
		*(bool *)field = strcmp(value, "normalize") == 0;
		return 0;
	case CONFIG_PROTOCOL:
		if (strcmp(value, "lmtp") != 0) {
			snprintf(why, whysize, "'%s' is not supported (only lmtp)", value);
			return -1;
		}
		return config_set(cfg, &(struct config_key){ .type = CONFIG_STRING, .offset = k->offset },
		                  value, why, whysize);
	case CONFIG_LISTEN:
		return config_set_listen(cfg, value, why, whysize);
	case CONFIG_ADDR_OPTIONAL: {
		/* Empty: off. */
		struct config_addr addr = { 0 };
		if (value[0] && config_parse_addr(value, cfg->dir, false, &addr, why, whysize) < 0)
			return -1;
		config_addr_fini((struct config_addr *)field);
		*(struct config_addr *)field = addr;
		return 0;
	}
	case CONFIG_CIDR: {
		struct cidr_list l = { 0 };
		if (cidr_parse_list(value, &l, why, whysize) < 0)
			return -1;
		cidr_list_fini((struct cidr_list *)field);
		*(struct cidr_list *)field = l;
		return 0;
	}
	case CONFIG_BACKEND: {
		struct config_addr addr;
		if (config_parse_addr(value, cfg->dir, true, &addr, why, whysize) < 0)
			return -1;
		config_addr_fini(&cfg->backend);
		cfg->backend = addr;
		return 0;
	}
	}
	return -1;
}

static const struct config_key *config_find(const char *section, const char *key, bool *section_known)
{
	*section_known = false;
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		if (strcmp(config_keys[i].section, section) != 0)
			continue;
		*section_known = true;
		if (strcmp(config_keys[i].key, key) == 0)
			return &config_keys[i];
	}
	return NULL;
}

/* inih handler: returns 0 on an error, which makes ini_parse report the line. */
static int config_ini_cb(void *user, const char *section, const char *name, const char *value)
{
	struct config_loader *ld = user;
	char why[200];
	if (ld->reason[0])
		return 0; /* keep the first error: its line is the one ini_parse reports */
	bool section_known;
	const struct config_key *k = config_find(section, name, &section_known);
	if (!k) {
		if (!section_known)
			snprintf(ld->reason, sizeof ld->reason, "[%s] %s: unknown section [%s]", section,
			         name, section);
		else
			snprintf(ld->reason, sizeof ld->reason, "[%s] %s: unknown key", section, name);
		return 0;
	}
	size_t idx = (size_t)(k - config_keys);
	if (ld->seen[idx]) {
		snprintf(ld->reason, sizeof ld->reason, "%s: given twice", name);
		return 0;
	}
	ld->seen[idx] = true;
	ld->cfg->lines[idx] = ld->reading;
	if (config_set(ld->cfg, k, value, why, sizeof why) < 0) {
		snprintf(ld->reason, sizeof ld->reason, "%s: %s", name, why);
		return 0;
	}
	return 1;
}

static void config_free(struct config *cfg)
{
	free(cfg->path);
	free(cfg->dir);
	for (size_t i = 0; i < cfg->n_listen; i++)
		config_addr_fini(&cfg->listen[i]);
	free(cfg->listen);
	free(cfg->hostname);
	free(cfg->user);
	free(cfg->group);
	cidr_list_fini(&cfg->proxy_trusted);
	config_addr_fini(&cfg->backend);
	free(cfg->backend_protocol);
	free(cfg->tls_certs_dir);
	free(cfg->tls_default_cert);
	free(cfg->tls_priority);
	free(cfg->control_socket);
	config_addr_fini(&cfg->metrics_listen);
	cidr_list_fini(&cfg->tls_no_tickets_for);
	free(cfg->tls_ticket_key_file);
	free(cfg->lines);
	free(cfg);
}

const char *config_default_cert(const struct config *cfg)
{
	return cfg->tls_default_cert[0] ? cfg->tls_default_cert : cfg->hostname;
}

struct config *config_ref(struct config *cfg)
{
	atomic_fetch_add(&cfg->refs, 1);
	return cfg;
}

void config_unref(struct config *cfg)
{
	if (cfg && atomic_fetch_sub(&cfg->refs, 1) == 1)
		config_free(cfg);
}

/* Refuses lines inih would cut; returns the first such line number or 0. */
static int config_long_line(FILE *f)
{
	int line = 1, c;
	size_t len = 0;
	while ((c = getc(f)) != EOF) {
		if (c == '\n') {
			line++;
			len = 0;
		} else if (++len > CONFIG_MAX_LINE - 1) {
			return line;
		}
	}
	rewind(f);
	return 0;
}

static int config_defaults(struct config *cfg, char *err, size_t errsize)
{
	char why[200];
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		if (config_set(cfg, &config_keys[i], config_keys[i].def, why, sizeof why) < 0) {
			snprintf(err, errsize, "built-in default for %s: %s", config_keys[i].key, why);
			return -1;
		}
	}
	if (cfg->hostname[0] == '\0') {
		char host[256] = "localhost";
		gethostname(host, sizeof host - 1);
		free(cfg->hostname);
		cfg->hostname = strdup(host);
	}
	return 0;
}

/* Checks that span keys; on failure *LINE is the line to name, or 0. */
static int config_validate(struct config *cfg, char *reason, size_t size, int *line)
{
	const char *h = cfg->hostname;
	*line = 0;
	if (*h == '\0' || strlen(h) > 253 || strspn(h, "abcdefghijklmnopqrstuvwxyz"
	                                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != strlen(h)) {
		snprintf(reason, size, "hostname: '%s' is not a host name", h);
		return -1;
	}
	for (size_t i = 0; i < cfg->n_listen; i++) {
		if (cfg->listen[i].proxy != PROXY_OFF && cfg->proxy_trusted.n == 0) {
			/* Nobody could connect: every header would come from an
			 * untrusted address. */
			*line = config_key_line(cfg, "server", "listen");
			snprintf(reason, size, "listen: %s takes a PROXY header: [server] proxy_trusted "
			         "must name the load balancers that send it", cfg->listen[i].text);
			return -1;
		}
	}
	return 0;
}

static struct config *config_alloc(const char *path)
{
	struct config *cfg = calloc(1, sizeof *cfg);
	if (!cfg)
		return NULL;
	atomic_init(&cfg->refs, 1);
	cfg->path = strdup(path);
	const char *slash = strrchr(path, '/');
	cfg->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
	cfg->lines = calloc(CONFIG_NKEYS, sizeof *cfg->lines);
	if (!cfg->path || !cfg->dir || !cfg->lines) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

/* inih's reader: fgets, counting lines so that the handler knows its line. */
static char *config_read_line(char *str, int num, void *stream)
{
	struct config_loader *ld = stream;
	char *s = fgets(str, num, ld->f);
	if (s)
		ld->reading++;
	return s;
}

int config_key_line(const struct config *cfg, const char *section, const char *key)
{
	for (size_t i = 0; i < CONFIG_NKEYS; i++)
		if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0)
			return cfg->lines[i];
	return 0;
}

int config_load(const char *path, struct config **out, char *err, size_t errsize)
{
	struct config_loader ld = { 0 };
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errsize, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	ld.cfg = config_alloc(path);
	if (!ld.cfg) {
		fclose(f);
		snprintf(err, errsize, "%s: out of memory", path);
		return -1;
	}
	int rc = config_defaults(ld.cfg, err, errsize);
	if (rc == 0 && (ld.line = config_long_line(f)) != 0) {
		snprintf(err, errsize, "%s:%d: line longer than %d characters", path, ld.line,
		         CONFIG_MAX_LINE - 1);
		rc = -1;
	}
#ifdef HAVE_INI_STOP_ON_FIRST_ERROR
	/* Debian's inih: stop at the first error, so a later one can't hide it. */
	ini_stop_on_first_error = true;
#endif
	ld.f = f;
	if (rc == 0 && (ld.line = ini_parse_stream(config_read_line, &ld, config_ini_cb, &ld)) != 0) {
		if (ld.reason[0])
			snprintf(err, errsize, "%s:%d: %s", path, ld.line, ld.reason);
		else
			snprintf(err, errsize, "%s:%d: syntax error (expected [section] or key = value)",
			         path, ld.line);
		rc = -1;
	}
	if (rc == 0 && config_validate(ld.cfg, ld.reason, sizeof ld.reason, &ld.line) < 0) {
		if (ld.line > 0)
			snprintf(err, errsize, "%s:%d: %s", path, ld.line, ld.reason);
		else
			snprintf(err, errsize, "%s: %s", path, ld.reason);
		rc = -1;
	}
	fclose(f);
	if (rc < 0) {
		config_free(ld.cfg);
		return -1;
	}
	*out = ld.cfg;
	return 0;
}
