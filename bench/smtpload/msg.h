/* msg: the message every transaction sends, built once at start and shared
 * read-only by all threads, and the recipient address template.
 * Never does I/O; owns the wire buffer and the template copies. */
#ifndef SMTPLOAD_MSG_H
#define SMTPLOAD_MSG_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 5321 4.5.3.1.6: at most 998 octets of text before CRLF. */
#define MSG_LINE_MAX 998
/* Room for "RCPT TO:<...>\r\n" with the longest address RFC 5321 allows. */
#define MSG_ADDR_MAX 256

struct msg {
	char *wire;      /* the dot-stuffed message followed by ".\r\n" */
	size_t wire_len;
	size_t size;     /* the message as the server stores it: no stuffing, no final dot */
};

struct msg_rcpt {
	char *prefix;    /* text before %d (all of it when there is no %d) */
	char *suffix;    /* text after %d */
	bool numbered;
	unsigned count;  /* %d cycles over 0 .. count-1 */
};

/* Builds the message of exactly SIZE octets (headers From/To/Subject/Date/
 * Message-ID when they fit, then 76-octet body lines, every 8th starting with
 * a dot to exercise stuffing) and checks the stuffed form by undoing it.
 * SIZE must not be 1. Returns 0, or -1 with ERR filled. */
int msg_build(struct msg *m, size_t size, const char *from, const char *to, char *err,
              size_t errsize);
/* Frees the wire buffer; M may be zeroed or half-built. */
void msg_fini(struct msg *m);

/* Parses a template such as "user%d@example.com" (at most one %d, "%%" for a
 * percent sign). Copies what it keeps. Returns 0, or -1 with ERR filled. */
int msg_rcpt_init(struct msg_rcpt *r, const char *tmpl, unsigned count, char *err,
                  size_t errsize);
/* Frees the copies; R may be zeroed. */
void msg_rcpt_fini(struct msg_rcpt *r);

/* Writes recipient number K (taken modulo count) into BUF, NUL-terminated;
 * returns its length. BUF must hold MSG_ADDR_MAX octets. */
size_t msg_rcpt_format(const struct msg_rcpt *r, unsigned long long k, char *buf);

#endif
