/* opts: the command line of smtpload, parsed once into an immutable struct
 * opts (owned by main) and the --help text. Never starts anything; returns
 * an error text instead of exiting. */
#ifndef SMTPLOAD_OPTS_H
#define SMTPLOAD_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>

struct opts {
	char target[300];               /* as given to -s, for the report */
	struct sockaddr_storage addr;   /* the one address ever connected to */
	unsigned conns;                 /* -c */
	unsigned threads;               /* -T */
	long long count;                /* -n; -1: none */
	double duration;                /* -d seconds; 0: none */
	unsigned per_conn;              /* -m; 0: unlimited */
	size_t size;                    /* -S */
	unsigned rcpts;                 /* -r */
	const char *rcpt_template;      /* -t */
	unsigned rcpt_count;            /* -R */
	const char *from;               /* -f */
	const char *ehlo;               /* --ehlo */
	bool starttls;
	char **sni;                     /* --sni-list names, owned */
	size_t nsni;
	unsigned no_sni_pct;            /* --no-sni-share */
	const char *ca;                 /* --ca; NULL: no verification */
	const char *priority;           /* --priority */
	bool resume;
	unsigned idle;                  /* --idle N; 0: load mode */
	double timeout;                 /* --timeout seconds */
	bool json;
	bool pipelining;                /* off with --no-pipelining */
	bool pipeline_dot;              /* --pipeline-dot */
	unsigned max_pending;           /* --max-pending, per thread */
};

/* Fills O from ARGV. Returns 0 to run, 1 when --help was printed to OUT,
 * -1 with ERR filled on a usage error. Borrowed argv strings stay borrowed. */
int opts_parse(struct opts *o, int argc, char **argv, FILE *out, char *err, size_t errsize);
/* Frees the SNI names. */
void opts_fini(struct opts *o);
/* Prints --help to OUT. */
void opts_usage(FILE *out);

#endif
