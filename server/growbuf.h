/* growbuf: a byte buffer that grows by doubling, kept as three fields
 * (data, length, capacity) in its owner's struct. */
#ifndef MXFRONT_GROWBUF_H
#define MXFRONT_GROWBUF_H

#include <stddef.h>

/* Appends DATA[0..N) to *BUF, growing it; 0, or -1 when out of memory
 * (the buffer is then unchanged). The owner frees *BUF. */
int growbuf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n);

#endif
