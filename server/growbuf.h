/* growbuf: a byte buffer that grows by doubling, embedded in its owner. */
#ifndef MXFRONT_GROWBUF_H
#define MXFRONT_GROWBUF_H

#include <stddef.h>

struct growbuf {
	char *data; /* owned; NULL until the first append */
	size_t len;
	size_t cap;
};

/* Appends DATA[0..N) to B, growing it; 0, or -1 when out of memory (B is
 * then unchanged). */
int growbuf_append(struct growbuf *b, const void *data, size_t n);

/* Hands the bytes over: returns B's allocation (the caller frees it) and
 * leaves B empty. *LEN gets the length. */
char *growbuf_take(struct growbuf *b, size_t *len);

/* Frees B's allocation and leaves it empty. */
void growbuf_free(struct growbuf *b);

#endif
