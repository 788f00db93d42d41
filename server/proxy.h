/* proxy: the PROXY protocol header (HAProxy's doc/proxy-protocol.txt,
 * versions 1 and 2) that a TCP load balancer sends before the client's
 * first byte, naming the real client. A pure parser over the bytes received
 * so far: it says "need more", "bad (why)" or "done: N bytes, this client".
 * Never allocates, never reads a socket, never decides who is trusted. */
#ifndef MXFRONT_PROXY_H
#define MXFRONT_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Which versions a listener takes (config: proxy=v1|v2|any). */
enum proxy_accept {
	PROXY_OFF = 0,
	PROXY_V1 = 1,
	PROXY_V2 = 2,
	PROXY_ANY = PROXY_V1 | PROXY_V2,
};

/* The v1 line may be 107 bytes with its CRLF (the spec's limit). The v2
 * header is 16 bytes plus its length field, which may say up to 65535: the
 * address block (at most 216 bytes, AF_UNIX) and TLVs. Nothing a load
 * balancer sends about a TCP client needs more than 1 KiB (HAProxy's TLVs,
 * ALPN, authority, unique-id, SSL, fit several times over), so a longer
 * header is refused as soon as its length field is read. */
#define PROXY_V1_MAX 107
#define PROXY_V2_MAX_LEN 1024
#define PROXY_MAX (16 + PROXY_V2_MAX_LEN)

enum proxy_status {
	PROXY_MORE,  /* a valid beginning: read more */
	PROXY_DONE,  /* a complete header: see the result */
	PROXY_ERROR, /* not a valid header: result.error says why */
};

struct proxy_result {
	size_t len;   /* DONE: bytes the header took; what follows is the client's */
	int version;  /* 1 or 2, once known */
	/* DONE: the header names no client (v2 LOCAL, v2 UNSPEC or AF_UNIX,
	 * v1 UNKNOWN): the connection's own endpoints apply (the spec says so;
	 * HAProxy's health checks send LOCAL). */
	bool local;
	bool health;  /* DONE: it was a v2 LOCAL command */
	struct sockaddr_storage src, dst; /* DONE and !local: client and original destination */
	const char *error; /* ERROR: a static text for the log */
};

/* Parses the header at the start of BUF[0..LEN), accepting the versions in
 * ACCEPT (enum proxy_accept). Decides as early as the bytes allow: a first
 * byte that starts neither version is an error at once. Fills R. */
enum proxy_status proxy_parse(const unsigned char *buf, size_t len, unsigned accept,
                              struct proxy_result *r);

#endif
