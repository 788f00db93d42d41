/* growbuf: appending to a doubling byte buffer. */
#include "growbuf.h"

#include <stdlib.h>
#include <string.h>

int growbuf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n > *cap) {
		size_t c = *cap ? *cap * 2 : 1024;
		while (c < *len + n)
			c *= 2;
		char *grown = realloc(*buf, c);
		if (!grown)
			return -1;
		*buf = grown;
		*cap = c;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	return 0;
}
