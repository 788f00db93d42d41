/* config: the immutable, reference-counted configuration of one generation.
 * config_load() parses an INI file into a new struct config and never exits or
 * prints: errors come back as "FILE:LINE: key: reason" in the caller's buffer. */
#ifndef MXFRONT_CONFIG_H
#define MXFRONT_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"

struct config_addr {
	struct sockaddr_storage sa; /* unused when unix_path is set */
	socklen_t salen;
	char *unix_path;            /* owned; set for "unix:/path" */
	char *text;                 /* owned; as written, for logs */
	char *default_cert;         /* owned; listen only: this listener's default certificate name */
	unsigned proxy;             /* listen only: enum proxy_accept, PROXY_OFF (0) without proxy= */
	int tickets;                /* listen only: session_tickets=yes (1), =no (0), unset (-1) */
};

struct config {
	atomic_int refs;
	char *path; /* owned: the file this came from */
	char *dir;  /* owned: its directory, base of relative paths */
	int *lines; /* owned: the line each key of config.c's table was set on, 0 if not */

	/* [server] */
	struct config_addr *listen; /* owned array */
	size_t n_listen;
	char *hostname;
	unsigned max_clients;
	uint64_t max_message_size;
	unsigned max_recipients;
	unsigned max_errors;
	unsigned shutdown_timeout_ms;
	unsigned workers; /* event loops (threads); 0: one per CPU */
	unsigned max_clients_per_ip;   /* 0: no limit */
	unsigned max_connection_rate;  /* per client address per minute; 0: no limit */
	unsigned max_junk_commands;    /* NOOP, VRFY, HELP, RSET, unknown */
	unsigned greeting_delay_ms;    /* 0: greet at once, no early-talker check */
	char *user;  /* switch to this user after binding; "" = stay */
	char *group; /* and this group; "" = the user's primary group */
	char *control_socket; /* the control socket's path, or NULL: see control.h */
	struct cidr_list proxy_trusted; /* who may send a PROXY header (proxy= listeners) */

	/* [backend] */
	struct config_addr backend;
	char *backend_protocol;
	unsigned backend_connect_timeout_ms;
	unsigned backend_timeout_ms;
	bool xclient;
	unsigned backend_max_connections; /* total over all workers */
	unsigned backend_idle_timeout_ms; /* a pooled connection unused this long is closed */
	unsigned backend_queue_timeout_ms; /* longest wait for a free connection */

	/* [smtp] */
	bool bare_newline_normalize; /* else reject */

	/* [tls] */
	char *tls_certs_dir; /* absolute, or made so from the config file's directory; NULL
	                      * when set empty: plaintext only, on purpose */
	char *tls_default_cert;
	bool tls_sni_strict;
	char *tls_priority;
	bool tls_require;
	bool tls_session_tickets;       /* the default; a listener may say otherwise */
	struct cidr_list tls_no_tickets_for; /* clients never given a ticket */
	char *tls_ticket_key_file;      /* absolute, or NULL: a random key per process */

	/* [timeouts] */
	unsigned command_timeout_ms;
	unsigned data_timeout_ms;
	unsigned handshake_timeout_ms;
	unsigned idle_timeout_ms; /* a session without a transaction this long is closed */

	/* [metrics] */
	struct config_addr metrics_listen; /* text NULL: no HTTP listener */
	unsigned metrics_senders;          /* rows of the SNI scoreboard before "other" */
	unsigned proxy_timeout_ms; /* a proxy= listener waits this long for the PROXY header */
};

/* Loads PATH into a new config with one reference (the caller's). On error
 * returns a negative value, *out untouched, and ERR holds "FILE:LINE: key: reason". */
int config_load(const char *path, struct config **out, char *err, size_t errsize);

/* The line of CFG's file that set [SECTION] KEY, or 0 if it kept its default. */
int config_key_line(const struct config *cfg, const char *section, const char *key);

/* The name of the default certificate: [tls] default_cert, else [server]
 * hostname. */
const char *config_default_cert(const struct config *cfg);

/* Takes another reference; returns CFG. */
struct config *config_ref(struct config *cfg);

/* Drops a reference; frees on the last one. NULL is ignored. */
void config_unref(struct config *cfg);

/* Parses "host:port", "[v6]:port" or (if ALLOW_UNIX) "unix:/path" into ADDR,
 * resolving a relative unix path against DIR. Returns 0 or -1 with a reason in ERR. */
int config_parse_addr(const char *text, const char *dir, bool allow_unix, struct config_addr *addr,
                      char *err, size_t errsize);

/* Parses "90", "90s", "5m", "1h" into milliseconds. Returns 0 or -1. */
int config_parse_duration(const char *text, uint64_t *ms);

/* Parses "1024", "10k", "50M", "1G" into bytes. Returns 0 or -1. */
int config_parse_size(const char *text, uint64_t *bytes);

#endif
