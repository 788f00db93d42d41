/* fuzz_proxy: the PROXY protocol header parser (proxy.c), which reads bytes
 * from whoever connects to a proxy= listener before anything else does.
 *
 * Input: byte 0 = which versions the listener accepts (bits 0-1: 0 is taken
 * as both), then the bytes the connection sends. The invariants checked are
 * listed in tests/fuzz/README. */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "fuzz.h"
#include "proxy.h"

/* Prefixes longer than this are not re-parsed one by one (quadratic). */
#define FUZZ_PREFIX_MAX 1200

static void fuzz_same_result(const struct proxy_result *a, const struct proxy_result *b)
{
	FUZZ_CHECK(a->len == b->len && a->local == b->local && a->health == b->health &&
	                   a->version == b->version,
	           "a complete header parses the same whatever follows it");
	if (!a->local)
		FUZZ_CHECK(memcmp(&a->src, &b->src, sizeof a->src) == 0 &&
		                   memcmp(&a->dst, &b->dst, sizeof a->dst) == 0,
		           "the same addresses whatever follows the header");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned accept = data[0] & 3;
	if (accept == 0)
		accept = PROXY_ANY;
	const unsigned char *in = data + 1;
	size_t n = size - 1;
	struct proxy_result r;
	enum proxy_status st = proxy_parse(in, n, accept, &r);
	FUZZ_CHECK(st == PROXY_MORE || st == PROXY_DONE || st == PROXY_ERROR, "a known status");
	if (st == PROXY_MORE)
		FUZZ_CHECK(n < PROXY_MAX, "never asks for more than PROXY_MAX bytes");
	if (st == PROXY_ERROR)
		FUZZ_CHECK(r.error && r.error[0], "an error has a reason");
	if (st == PROXY_DONE) {
		FUZZ_CHECK(r.len > 0 && r.len <= n && r.len <= PROXY_MAX, "length within the input");
		FUZZ_CHECK(r.version == 1 || r.version == 2, "a version");
		FUZZ_CHECK(accept & (r.version == 1 ? PROXY_V1 : PROXY_V2),
		           "only an accepted version");
		if (r.version == 1) {
			FUZZ_CHECK(r.len <= PROXY_V1_MAX && r.len >= 8, "v1 within 107 bytes");
			FUZZ_CHECK(memcmp(in, "PROXY ", 6) == 0, "v1 starts with PROXY and a space");
			FUZZ_CHECK(in[r.len - 2] == '\r' && in[r.len - 1] == '\n', "v1 ends in CRLF");
			FUZZ_CHECK(memchr(in, '\n', r.len - 1) == NULL, "one line");
			FUZZ_CHECK(!r.health, "v1 has no LOCAL command");
		} else {
			FUZZ_CHECK(r.len >= 16 && r.len == 16 + ((size_t)in[14] << 8 | in[15]),
			           "v2 length from its header");
			FUZZ_CHECK(r.health == ((in[12] & 0x0f) == 0), "LOCAL is the health check");
		}
		if (!r.local) {
			int fam = r.src.ss_family;
			FUZZ_CHECK((fam == AF_INET || fam == AF_INET6) && r.dst.ss_family == fam,
			           "a client address of one IP family");
		}
	}
	/* Errors are final and a complete header is stable: the answer for
	 * every longer prefix is the same; every shorter prefix of a complete
	 * header asks for more. */
	size_t limit = n < FUZZ_PREFIX_MAX ? n : FUZZ_PREFIX_MAX;
	bool erred = false;
	for (size_t k = 0; k <= limit; k++) {
		struct proxy_result p;
		enum proxy_status pst = proxy_parse(in, k, accept, &p);
		if (erred) {
			FUZZ_CHECK(pst == PROXY_ERROR, "an error stays an error with more bytes");
			continue;
		}
		if (pst == PROXY_ERROR) {
			FUZZ_CHECK(st == PROXY_ERROR, "a prefix failed but the whole did not");
			erred = true;
		} else if (st == PROXY_DONE && k < r.len) {
			FUZZ_CHECK(pst == PROXY_MORE, "a prefix of a header asks for more");
		} else if (pst == PROXY_DONE) {
			FUZZ_CHECK(st == PROXY_DONE, "a complete prefix but not the whole");
			fuzz_same_result(&p, &r);
		}
	}
	return 0;
}
