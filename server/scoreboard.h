/* scoreboard: who sends SNI. Per sending organisation -- the registrable
 * part of the client's EHLO name, through the public suffix list (libpsl) --
 * sessions that sent SNI for a name served here, SNI for an unknown name,
 * no SNI, or stayed in plaintext, by TLS version. One table per worker,
 * written by that worker only, with a fixed capacity (no allocation when
 * counting); merged, cut to the top N and an "other" row when read. */
#ifndef MXFRONT_SCOREBOARD_H
#define MXFRONT_SCOREBOARD_H

#include <stddef.h>
#include <stdint.h>

enum scoreboard_tls {
	SCOREBOARD_SNI_SERVED,  /* SNI named a host a certificate here serves */
	SCOREBOARD_SNI_UNKNOWN, /* SNI named a host nothing here serves */
	SCOREBOARD_NO_SNI,      /* TLS without SNI */
	SCOREBOARD_PLAINTEXT,   /* no TLS at all */
	SCOREBOARD_NTLS
};

enum scoreboard_version {
	SCOREBOARD_TLS12,
	SCOREBOARD_TLS13,
	SCOREBOARD_TLS_OTHER,
	SCOREBOARD_NONE, /* plaintext */
	SCOREBOARD_NVERSIONS
};

#define SCOREBOARD_ORG_MAX 96
/* Organisations one worker keeps apart; later new ones count as "other". */
#define SCOREBOARD_CAPACITY 4096

extern const char *const scoreboard_tls_names[SCOREBOARD_NTLS];
extern const char *const scoreboard_version_names[SCOREBOARD_NVERSIONS];

struct scoreboard;

/* An empty table (owned by the caller); NULL when out of memory. */
struct scoreboard *scoreboard_new(void);
void scoreboard_free(struct scoreboard *sb);

/* The organisation of HELO into OUT: its registrable domain in lower case
 * ("mail-ed1-f41.google.com" -> "google.com"), "[address]" for an address
 * literal, "[none]" when it has none ("localhost"). Pure. */
void scoreboard_org(const char *helo, char *out, size_t size);

/* Counts one session of HELO's organisation. Only SB's own worker calls it. */
void scoreboard_count(struct scoreboard *sb, const char *helo, enum scoreboard_tls tls,
                      enum scoreboard_version v);

struct scoreboard_row {
	char org[SCOREBOARD_ORG_MAX];
	uint64_t n[SCOREBOARD_NTLS][SCOREBOARD_NVERSIONS];
	uint64_t total;
};

/* Sums the NSB tables (any thread, while their workers count on) into
 * *ROWS (owned by the caller): the TOP organisations with the most sessions,
 * most first, then one row "other" for all the rest when there is any.
 * Returns 0 or -1 when out of memory. */
int scoreboard_merge(struct scoreboard *const *sbs, unsigned nsb, unsigned top,
                     struct scoreboard_row **rows, size_t *nrows);

/* ROWS as the table `mxfront stats senders` prints, into a new
 * NUL-terminated buffer (*OUT, owned by the caller) of *LEN bytes. */
int scoreboard_table(const struct scoreboard_row *rows, size_t nrows, char **out, size_t *len);

#endif
