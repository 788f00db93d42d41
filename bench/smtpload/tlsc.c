/* tlsc: GnuTLS client sessions over memory buffers: ciphertext read from the
 * socket is handed in (tlsc_received), records leave through the owner's push
 * function, so the caller's event loop does all I/O. Owns the GnuTLS objects of
 * a worker; GnuTLS error codes are turned into text here and nowhere else. */
#include "tlsc.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLSC_RX 8192

struct tlsc_ctx {
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;
	bool verify, resume;
	gnutls_datum_t *cache;  /* per SNI name, then one for no SNI */
	size_t ncache;
};

struct tlsc {
	struct tlsc_ctx *ctx;
	gnutls_session_t s;     /* NULL between sessions */
	tlsc_push_fn *push;
	void *arg;
	size_t slot;
	const char *error;
	size_t rxoff, rxlen;
	char rx[TLSC_RX];
};

int tlsc_ctx_new(const struct opts *o, struct tlsc_ctx **out, char *err, size_t errsize)
{
	struct tlsc_ctx *ctx = calloc(1, sizeof *ctx);
	const char *where = NULL;
	int rc;
	if (!ctx || !(ctx->cache = calloc(o->nsni + 1, sizeof *ctx->cache))) {
		free(ctx);
		snprintf(err, errsize, "out of memory");
		return -1;
	}
	ctx->ncache = o->nsni + 1;
	ctx->resume = o->resume;
	rc = gnutls_certificate_allocate_credentials(&ctx->cred);
	if (rc < 0) {
		snprintf(err, errsize, "gnutls credentials: %s", gnutls_strerror(rc));
		goto fail;
	}
	if (o->ca) {
		rc = gnutls_certificate_set_x509_trust_file(ctx->cred, o->ca, GNUTLS_X509_FMT_PEM);
		if (rc <= 0) {
			snprintf(err, errsize, "--ca %s: %s", o->ca,
			         rc == 0 ? "no certificate in the file" : gnutls_strerror(rc));
			goto fail;
		}
		ctx->verify = true;
	}
	rc = gnutls_priority_init(&ctx->prio, o->priority, &where);
	if (rc < 0) {
		snprintf(err, errsize, "--priority: %s near '%s'", gnutls_strerror(rc),
		         where ? where : "");
		goto fail;
	}
	*out = ctx;
	return 0;
fail:
	tlsc_ctx_free(ctx);
	return -1;
}

void tlsc_ctx_free(struct tlsc_ctx *ctx)
{
	if (!ctx)
		return;
	for (size_t i = 0; i < ctx->ncache; i++)
		gnutls_free(ctx->cache[i].data);
	free(ctx->cache);
	if (ctx->prio)
		gnutls_priority_deinit(ctx->prio);
	if (ctx->cred)
		gnutls_certificate_free_credentials(ctx->cred);
	free(ctx);
}

struct tlsc *tlsc_new(struct tlsc_ctx *ctx, tlsc_push_fn *push, void *arg)
{
	struct tlsc *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->ctx = ctx;
	t->push = push;
	t->arg = arg;
	return t;
}

void tlsc_free(struct tlsc *t)
{
	if (!t)
		return;
	tlsc_end(t);
	free(t);
}

static ssize_t tlsc_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tlsc *t = ptr;
	size_t avail = t->rxlen - t->rxoff;
	if (avail == 0) {
		gnutls_transport_set_errno(t->s, EAGAIN);
		return -1;
	}
	if (len > avail)
		len = avail;
	memcpy(data, t->rx + t->rxoff, len);
	t->rxoff += len;
	return (ssize_t)len;
}

static ssize_t tlsc_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tlsc *t = ptr;
	t->push(t->arg, data, len);
	return (ssize_t)len;
}

int tlsc_begin(struct tlsc *t, const char *sni, size_t slot)
{
	struct tlsc_ctx *ctx = t->ctx;
	tlsc_end(t);
	t->slot = slot < ctx->ncache ? slot : ctx->ncache - 1;
	t->error = NULL;
	int rc = gnutls_init(&t->s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
	if (rc < 0) {
		t->s = NULL;
		t->error = gnutls_strerror(rc);
		return -1;
	}
	rc = gnutls_priority_set(t->s, ctx->prio);
	if (rc == 0)
		rc = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, ctx->cred);
	if (rc == 0 && sni)
		rc = gnutls_server_name_set(t->s, GNUTLS_NAME_DNS, sni, strlen(sni));
	if (rc == 0 && ctx->resume && ctx->cache[t->slot].data)
		rc = gnutls_session_set_data(t->s, ctx->cache[t->slot].data, ctx->cache[t->slot].size);
	if (rc < 0) {
		t->error = gnutls_strerror(rc);
		tlsc_end(t);
		return -1;
	}
	if (ctx->verify)
		gnutls_session_set_verify_cert(t->s, sni, 0); /* no SNI: the chain only */
	gnutls_transport_set_ptr(t->s, t);
	gnutls_transport_set_pull_function(t->s, tlsc_pull);
	gnutls_transport_set_push_function(t->s, tlsc_push);
	/* The connection's own deadline bounds the handshake. */
	gnutls_handshake_set_timeout(t->s, 0);
	return 0;
}

void tlsc_end(struct tlsc *t)
{
	if (t->s)
		gnutls_deinit(t->s);
	t->s = NULL;
	t->rxoff = t->rxlen = 0;
}

void tlsc_rx_space(struct tlsc *t, char **buf, size_t *len)
{
	if (t->rxoff > 0) {
		memmove(t->rx, t->rx + t->rxoff, t->rxlen - t->rxoff);
		t->rxlen -= t->rxoff;
		t->rxoff = 0;
	}
	*buf = t->rx + t->rxlen;
	*len = sizeof t->rx - t->rxlen;
}

void tlsc_received(struct tlsc *t, size_t n)
{
	t->rxlen += n;
}

int tlsc_handshake(struct tlsc *t)
{
	int rc = gnutls_handshake(t->s);
	if (rc == GNUTLS_E_SUCCESS)
		return 1;
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc))
		return 0;
	t->error = gnutls_strerror(rc);
	return -1;
}

ssize_t tlsc_recv(struct tlsc *t, char *buf, size_t len)
{
	/* GnuTLS also answers AGAIN after a post-handshake message (a TLS 1.3
	 * NewSessionTicket) while more records wait in rx: go on until our pull
	 * runs dry. Each round consumes input; the count is only a backstop. */
	for (unsigned round = 0; round < 10000; round++) {
		ssize_t n = gnutls_record_recv(t->s, buf, len);
		if (n >= 0)
			return n;
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			if (t->rxoff < t->rxlen || gnutls_record_check_pending(t->s) > 0)
				continue;
			return TLSC_AGAIN;
		}
		if (gnutls_error_is_fatal((int)n)) {
			t->error = gnutls_strerror((int)n);
			return TLSC_ERROR;
		}
	}
	t->error = "no progress decrypting records";
	return TLSC_ERROR;
}

int tlsc_send(struct tlsc *t, const void *buf, size_t len)
{
	const char *p = buf;
	unsigned again = 0;
	while (len > 0) {
		ssize_t n = gnutls_record_send(t->s, p, len);
		/* The push never blocks, so GnuTLS asks to retry only exceptionally. */
		if ((n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) && ++again < 100)
			continue;
		if (n < 0) {
			t->error = gnutls_strerror((int)n);
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void tlsc_bye(struct tlsc *t)
{
	if (t->s)
		gnutls_bye(t->s, GNUTLS_SHUT_WR);
}

bool tlsc_resumed(const struct tlsc *t)
{
	return t->s && gnutls_session_is_resumed(t->s);
}

void tlsc_save(struct tlsc *t)
{
	gnutls_datum_t d = {0};
	if (!t->s || !t->ctx->resume)
		return;
	/* TLS 1.3: valid once the server's NewSessionTicket was read, which
	 * happens before the reply to the post-STARTTLS EHLO. */
	if (gnutls_session_get_data2(t->s, &d) < 0)
		return;
	gnutls_free(t->ctx->cache[t->slot].data);
	t->ctx->cache[t->slot] = d;
}

const char *tlsc_error(const struct tlsc *t)
{
	return t->error ? t->error : "unknown";
}
