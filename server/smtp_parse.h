/* smtp_parse: pure parsers for the SMTP/LMTP wire format: line framing,
 * command verbs, paths with ESMTP parameters, domains and replies.
 * Nothing here allocates or keeps a pointer past the call: results point into
 * the caller's buffer. */
#ifndef MXFRONT_SMTP_PARSE_H
#define MXFRONT_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5321 4.5.3.1.4 and 4.5.3.1.6, both counting the CRLF. */
#define SMTP_COMMAND_LINE_MAX 512
#define SMTP_TEXT_LINE_MAX 1000

/* ---- line framing ---- */

enum {
	SMTP_LINE_BARE_LF = 1 << 0,  /* ended by LF without CR */
	SMTP_LINE_BARE_CR = 1 << 1,  /* a CR not followed by LF inside the line */
	SMTP_LINE_NUL = 1 << 2,      /* contains a NUL byte */
	SMTP_LINE_TOO_LONG = 1 << 3, /* longer than the limit; content was discarded */
};

struct smtp_framer {
	bool discarding; /* inside an over-long line, dropping bytes up to its LF */
	char last;       /* last byte dropped, to tell whether the LF had a CR */
};

/* Takes the next line from BUF[0..LEN) with at most LIMIT bytes including its
 * ending. Returns how many bytes were consumed (0: need more input). When a
 * whole line was consumed, *LINE and *LINELEN point at it (ending included) and
 * *FLAGS says what was wrong with it; *LINE is NULL when bytes were only
 * discarded. Only LF ends a line: "CRLF.CRLF" is the only end of DATA, and a
 * bare LF or CR is reported, never taken as an ending. */
size_t smtp_frame(struct smtp_framer *fr, const char *buf, size_t len, size_t limit,
                  const char **line, size_t *linelen, unsigned *flags);

/* ---- commands ---- */

enum smtp_verb {
	SMTP_VERB_UNKNOWN,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_BDAT,
	SMTP_VERB_AUTH,
};

/* Parses the verb of LINE (without its CRLF). *ARGS points after the verb and
 * any spaces; *HAS_SPACE tells whether the verb was followed by a space. */
enum smtp_verb smtp_parse_verb(const char *line, size_t len, const char **args, bool *has_space);

/* Name of a verb, for logs. */
const char *smtp_verb_name(enum smtp_verb verb);

struct smtp_param {
	const char *key; /* not NUL-terminated */
	size_t keylen;
	const char *value; /* NULL when the parameter has no "=value" */
	size_t valuelen;
};

#define SMTP_MAX_PARAMS 8

struct smtp_path {
	const char *addr; /* mailbox without brackets or source route; "" for <> */
	size_t addrlen;
	struct smtp_param params[SMTP_MAX_PARAMS];
	size_t nparams;
};

enum smtp_path_error {
	SMTP_PATH_OK = 0,
	SMTP_PATH_SYNTAX = -1,    /* "FROM:" / "TO:" missing or path malformed */
	SMTP_PATH_ADDRESS = -2,   /* the mailbox is not a valid address */
	SMTP_PATH_PARAMS = -3,    /* malformed or too many ESMTP parameters */
};

/* Parses "FROM:<path> params" (PREFIX "FROM:") or "TO:<path> params" from
 * ARGS[0..LEN). ALLOW_NULL permits "<>"; ALLOW_BARE permits a mailbox
 * without a domain (RFC 5321 4.1.1.3: "<Postmaster>"); UTF8 permits
 * UTF-8 in the mailbox (RFC 6531). */
enum smtp_path_error smtp_parse_path(const char *args, size_t len, const char *prefix,
                                     bool allow_null, bool allow_bare, bool utf8,
                                     struct smtp_path *out);

/* True if S[0..LEN) is a domain (RFC 5321 Domain, letters/digits/hyphens,
 * UTF-8 labels allowed when UTF8) or an address literal ("[192.0.2.1]",
 * "[IPv6:...]"). */
bool smtp_valid_domain(const char *s, size_t len, bool utf8);

/* Case-insensitive compare of a parameter key with NAME. */
bool smtp_param_is(const struct smtp_param *p, const char *name);

/* True if VALUE[0..LEN) is xtext (RFC 3461 4). */
bool smtp_valid_xtext(const char *value, size_t len);

/* Parses a decimal of at most 19 digits; returns -1 if it is not one. */
int smtp_parse_u64(const char *s, size_t len, uint64_t *out);

/* ---- replies (from the backend) ---- */

/* Parses one reply line (without CRLF): "250-text" or "250 text". Returns 0
 * with *CODE, *LAST (space after the code) and *TEXT and *TEXTLEN, or -1 when it
 * is not a reply line. */
int smtp_parse_reply_line(const char *line, size_t len, int *code, bool *last, const char **text,
                          size_t *textlen);

/* If TEXT starts with an enhanced status code "c.s.d " (RFC 3463) whose
 * class matches CODE's first digit, returns its length (without the space),
 * else 0. */
size_t smtp_enhanced_code_len(const char *text, size_t len, int code);

/* A reply as received from the backend (or made up for it): the code and the
 * text of each line (after "NNN-" / "NNN "), joined by '\n'. */
#define SMTP_REPLY_TEXT_MAX 512
struct smtp_reply {
	int code;
	bool lost;  /* made up by mxfront: the backend connection is gone */
	size_t len; /* of text */
	char text[SMTP_REPLY_TEXT_MAX];
};

/* Sets R to CODE with one line of TEXT. */
void smtp_reply_set(struct smtp_reply *r, int code, const char *text);

/* Appends one line of text to R (cut when full). */
void smtp_reply_add_line(struct smtp_reply *r, const char *text, size_t len);

/* Service extensions a backend may advertise in its LHLO reply. */
enum {
	SMTP_EXT_PIPELINING = 1 << 0,
	SMTP_EXT_SIZE = 1 << 1,
	SMTP_EXT_8BITMIME = 1 << 2,
	SMTP_EXT_ENHANCEDSTATUSCODES = 1 << 3,
	SMTP_EXT_SMTPUTF8 = 1 << 4,
	SMTP_EXT_DSN = 1 << 5,
	SMTP_EXT_XCLIENT = 1 << 6,
};

/* The extension bit named by one LHLO reply line's text ("SIZE 1000"), or 0. */
unsigned smtp_parse_ext(const char *text, size_t len);

#endif
