/* growbuf: appending to a doubling byte buffer; never reads or writes past
 * len, never keeps a pointer it was given. */
#include "growbuf.h"

#include <stdlib.h>
#include <string.h>

int growbuf_append(struct growbuf *b, const void *data, size_t n)
{
	if (b->len + n > b->cap) {
		size_t c = b->cap ? b->cap * 2 : 1024;
		while (c < b->len + n)
			c *= 2;
		char *grown = realloc(b->data, c);
		if (!grown)
			return -1;
		b->data = grown;
		b->cap = c;
	}
	memcpy(b->data + b->len, data, n);
	b->len += n;
	return 0;
}

char *growbuf_take(struct growbuf *b, size_t *len)
{
	char *data = b->data;
	*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return data;
}

void growbuf_free(struct growbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
