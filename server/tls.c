/* tls: GnuTLS server sessions over memory buffers, and the TLS context of a
 * generation. Owns the GnuTLS objects; the certificate store is only read.
 * GnuTLS error codes are translated to text here and nowhere else. */
#include "tls.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define TLS_RX_MAX (32 * 1024)

struct tls_context {
	atomic_int refs;
	struct certstore *cs;
	gnutls_priority_t priority;
	const struct certstore_entry *fallback; /* [tls] default_cert, or the one for hostname */
	bool sni_strict;
};

struct tls {
	gnutls_session_t session;
	struct tls_context *tc;
	const char *listener_default;
	const struct tls_io *io;
	void *ctx;
	const char *id;
	const char *error;
	const char *match;
	const char *cert;
	const struct certstore_entry *entry; /* chosen in the hook */
	char sni[256];
	bool done;
	bool tickets;              /* ticket key set for this session */
	unsigned char ticket[64];  /* this name's ticket key */
	size_t rxoff, rxlen;
	char *rx; /* TLS_RX_MAX bytes while ciphertext waits, else NULL (owned) */
};

/* One ticket master key per process, so that tickets survive a reload.
 * GnuTLS (>= 3.6.13) derives rotating keys from it by itself. */
static gnutls_datum_t tls_ticket_key;
static pthread_once_t tls_ticket_once = PTHREAD_ONCE_INIT;

static void tls_ticket_init(void)
{
	if (gnutls_session_ticket_key_generate(&tls_ticket_key) < 0)
		tls_ticket_key.data = NULL;
}

/* ---- context ---- */

int tls_context_new(const struct config *cfg, struct certstore *cs, struct tls_context **out,
                    char *err, size_t errsize)
{
	pthread_once(&tls_ticket_once, tls_ticket_init);
	struct tls_context *tc = calloc(1, sizeof *tc);
	if (!tc) {
		snprintf(err, errsize, "out of memory");
		return -1;
	}
	atomic_init(&tc->refs, 1);
	tc->sni_strict = cfg->tls_sni_strict;
	const char *where = NULL;
	int rc = gnutls_priority_init2(&tc->priority, cfg->tls_priority, &where, 0);
	if (rc < 0) {
		snprintf(err, errsize, "priority: %s near '%s'", gnutls_strerror(rc), where ? where : "");
		free(tc);
		return -1;
	}
	tc->cs = certstore_ref(cs);
	if (certstore_ncerts(cs) > 0) {
		const char *name = cfg->tls_default_cert[0] ? cfg->tls_default_cert : cfg->hostname;
		char norm[256];
		enum certstore_match how;
		if (certstore_normalize(name, strlen(name), norm, sizeof norm) >= 0)
			tc->fallback = certstore_lookup(cs, norm, &how);
		if (!tc->fallback) {
			snprintf(err, errsize, "%s: no certificate serves '%s'",
			         cfg->tls_default_cert[0] ? "default_cert" : "default_cert (unset, so hostname)",
			         name);
			tls_context_unref(tc);
			return -1;
		}
	}
	for (size_t i = 0; i < cfg->n_listen; i++) {
		const char *d = cfg->listen[i].default_cert;
		char norm[256];
		enum certstore_match how;
		if (!d || certstore_ncerts(cs) == 0)
			continue;
		if (certstore_normalize(d, strlen(d), norm, sizeof norm) < 0 ||
		    !certstore_lookup(cs, norm, &how)) {
			snprintf(err, errsize, "listen %s: default_cert: no certificate serves '%s'",
			         cfg->listen[i].text, d);
			tls_context_unref(tc);
			return -1;
		}
	}
	*out = tc;
	return 0;
}

struct tls_context *tls_context_ref(struct tls_context *tc)
{
	atomic_fetch_add(&tc->refs, 1);
	return tc;
}

void tls_context_unref(struct tls_context *tc)
{
	if (!tc || atomic_fetch_sub(&tc->refs, 1) != 1)
		return;
	gnutls_priority_deinit(tc->priority);
	certstore_unref(tc->cs);
	free(tc);
}

bool tls_context_usable(const struct tls_context *tc)
{
	return tc && tc->fallback;
}

/* ---- transport ---- */

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tls *t = ptr;
	size_t avail = t->rxlen - t->rxoff;
	if (avail == 0) {
		gnutls_transport_set_errno(t->session, EAGAIN);
		return -1;
	}
	if (len > avail)
		len = avail;
	memcpy(data, t->rx + t->rxoff, len);
	t->rxoff += len;
	return (ssize_t)len;
}

static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tls *t = ptr;
	t->io->send(t->ctx, data, len);
	return (ssize_t)len;
}

void tls_rx_space(struct tls *t, char **buf, size_t *len)
{
	if (!t->rx && !(t->rx = malloc(TLS_RX_MAX))) {
		*buf = NULL;
		*len = 0;
		return;
	}
	if (t->rxoff > 0) {
		memmove(t->rx, t->rx + t->rxoff, t->rxlen - t->rxoff);
		t->rxlen -= t->rxoff;
		t->rxoff = 0;
	}
	*buf = t->rx + t->rxlen;
	*len = TLS_RX_MAX - t->rxlen;
}

void tls_rx_trim(struct tls *t)
{
	if (t->rx && t->rxoff == t->rxlen) {
		free(t->rx);
		t->rx = NULL;
		t->rxoff = t->rxlen = 0;
	}
}

bool tls_rx_room(const struct tls *t)
{
	return !t->rx || t->rxlen - t->rxoff < TLS_RX_MAX;
}

void tls_received(struct tls *t, size_t n)
{
	t->rxlen += n;
}

/* ---- certificate choice ---- */

/* Session tickets are encrypted with a key derived from the process's master
 * key and the SNI name (as normalised; "none" without SNI), so a ticket
 * issued under one name can never resume a session under another: the
 * server would otherwise skip the certificate the new name needs. GnuTLS
 * parses the pre_shared_key and session_ticket extensions after this hook.
 * It rotates keys derived from ours by itself. */
static void tls_enable_tickets(struct tls *t)
{
	if (t->tickets || !tls_ticket_key.data)
		return;
	if (gnutls_hmac_fast(GNUTLS_MAC_SHA512, tls_ticket_key.data, tls_ticket_key.size, t->sni,
	                     strlen(t->sni), t->ticket) < 0)
		return;
	gnutls_datum_t key = { t->ticket, sizeof t->ticket };
	if (gnutls_session_ticket_enable_server(t->session, &key) == 0)
		t->tickets = true;
}

/* Runs after the ClientHello is parsed, before a certificate is chosen; twice
 * after a TLS 1.3 HelloRetryRequest, so it only ever recomputes the same. */
static int tls_post_client_hello_cb(gnutls_session_t session)
{
	struct tls *t = gnutls_session_get_ptr(session);
	char raw[256], norm[256];
	size_t len = sizeof raw;
	unsigned type;
	const struct certstore_entry *e = NULL;
	enum certstore_match how = CERTSTORE_MATCH_NONE;
	strcpy(t->sni, "none");
	bool sent = gnutls_server_name_get(session, raw, &len, &type, 0) == 0 &&
	            type == GNUTLS_NAME_DNS;
	if (sent) {
		if (certstore_normalize(raw, len, norm, sizeof norm) >= 0) {
			snprintf(t->sni, sizeof t->sni, "%s", norm);
			e = certstore_lookup(t->tc->cs, norm, &how);
		} else {
			strcpy(t->sni, "invalid");
		}
	}
	t->match = how == CERTSTORE_MATCH_EXACT ? "exact" : "wildcard";
	if (!e && sent && t->tc->sni_strict) {
		t->match = "refused";
		return GNUTLS_E_UNRECOGNIZED_NAME;
	}
	if (!e && t->listener_default &&
	    certstore_normalize(t->listener_default, strlen(t->listener_default), norm, sizeof norm) >= 0 &&
	    (e = certstore_lookup(t->tc->cs, norm, &how)))
		t->match = "listener-default";
	if (!e) {
		e = t->tc->fallback;
		t->match = "default";
	}
	if (!e)
		return GNUTLS_E_NO_CERTIFICATE_FOUND;
	t->cert = e->label;
	t->entry = e;
	tls_enable_tickets(t);
	return gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, e->cred);
}

/* ---- session ---- */

struct tls *tls_new(struct tls_context *tc, const char *listener_default, const struct tls_io *io,
                    void *ctx, const char *id)
{
	struct tls *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->tc = tls_context_ref(tc);
	t->listener_default = listener_default;
	t->io = io;
	t->ctx = ctx;
	t->id = id;
	t->match = "none";
	t->cert = "none";
	strcpy(t->sni, "none");
	int rc = gnutls_init(&t->session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
	if (rc == 0)
		rc = gnutls_priority_set(t->session, tc->priority);
	if (rc == 0 && tc->fallback)
		rc = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, tc->fallback->cred);
	if (rc < 0) {
		log_error("sess=%s event=tls_error reason=\"%s\"", id, gnutls_strerror(rc));
		tls_free(t);
		return NULL;
	}
	gnutls_session_set_ptr(t->session, t);
	gnutls_transport_set_ptr(t->session, t);
	gnutls_transport_set_pull_function(t->session, tls_pull);
	gnutls_transport_set_push_function(t->session, tls_push);
	gnutls_handshake_set_post_client_hello_function(t->session, tls_post_client_hello_cb);
	/* The session's own timer bounds the handshake. */
	gnutls_handshake_set_timeout(t->session, 0);
	return t;
}

void tls_free(struct tls *t)
{
	if (!t)
		return;
	if (t->session)
		gnutls_deinit(t->session);
	free(t->rx);
	tls_context_unref(t->tc);
	free(t);
}

int tls_handshake(struct tls *t)
{
	if (t->done)
		return 1;
	int rc = gnutls_handshake(t->session);
	if (rc == GNUTLS_E_SUCCESS) {
		t->done = true;
		return 1;
	}
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
		return 0;
	if (!gnutls_error_is_fatal(rc))
		return 0;
	t->error = gnutls_strerror(rc);
	gnutls_alert_send_appropriate(t->session, rc);
	return -1;
}

ssize_t tls_recv(struct tls *t, char *buf, size_t len)
{
	for (;;) {
		ssize_t n = gnutls_record_recv(t->session, buf, len);
		if (n > 0)
			return n;
		if (n == 0) {
			t->error = "client sent close_notify";
			return -1;
		}
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			return 0;
		if (!gnutls_error_is_fatal((int)n) && n != GNUTLS_E_REHANDSHAKE)
			continue;
		t->error = gnutls_strerror((int)n);
		return -1;
	}
}

bool tls_has_input(const struct tls *t)
{
	return t->rxlen > t->rxoff || gnutls_record_check_pending(t->session) > 0;
}

int tls_send(struct tls *t, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = gnutls_record_send(t->session, buf, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue; /* our push never blocks; GnuTLS retries the record */
		if (n < 0) {
			t->error = gnutls_strerror((int)n);
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

void tls_bye(struct tls *t)
{
	if (t->done)
		gnutls_bye(t->session, GNUTLS_SHUT_WR);
}

const char *tls_error(const struct tls *t)
{
	return t->error ? t->error : "unknown";
}

const char *tls_sni(const struct tls *t)
{
	return t->sni;
}

const char *tls_cert(const struct tls *t)
{
	if (t->done && t->entry && strchr(t->cert, ','))
		return certstore_served_label(t->tc->cs, t->entry,
		                              gnutls_certificate_get_ours(t->session));
	return t->cert;
}

const char *tls_match(const struct tls *t)
{
	return t->match;
}

const char *tls_version(const struct tls *t)
{
	const char *v = gnutls_protocol_get_name(gnutls_protocol_get_version(t->session));
	if (!v)
		return "unknown";
	/* "TLS1.3" as GnuTLS names it */
	return v;
}

const char *tls_cipher(const struct tls *t)
{
	const char *c = gnutls_cipher_get_name(gnutls_cipher_get(t->session));
	return c ? c : "unknown";
}

bool tls_resumed(const struct tls *t)
{
	return gnutls_session_is_resumed(t->session) != 0;
}
