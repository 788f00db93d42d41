/* tls: GnuTLS server sessions over memory buffers, and the TLS context of a
 * generation. Owns the GnuTLS objects; the certificate store is only read.
 * GnuTLS error codes are translated to text here and nowhere else. */
#include "tls.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ticketkey.h"

#define TLS_RX_MAX (32 * 1024)

/* The largest handshake message taken, its 4-byte header included: one full
 * record, so a ClientHello of at most 16,380 bytes. Real ClientHellos are
 * 0.2 to 2 KiB (a post-quantum key share adds about 1.2 KiB); GnuTLS's own
 * limit is 128 KiB, which a connection could make it buffer before any
 * other check. A larger one gets a fatal alert as soon as its header is in. */
#define TLS_HELLO_MAX (16 * 1024)
/* Once the ClientHello is in: GnuTLS's own default. */
#define TLS_HANDSHAKE_MAX (128 * 1024)

/* TLS 1.3 tickets sent after each handshake: GnuTLS's and OpenSSL's number,
 * so that a client can resume twice in parallel. */
#define TLS_TICKETS 2

struct tls_context {
	atomic_int refs;
	struct certstore *cs;
	gnutls_priority_t priority;
	const struct certstore_entry *fallback; /* [tls] default_cert, or the one for hostname */
	bool sni_strict;
	bool tickets_ok;          /* the ticket key below is set */
	struct ticketkey ticket;  /* the file's (shared by a fleet) or the process's */
};

struct tls {
	gnutls_session_t session;
	struct tls_context *tc;
	const struct certstore_entry *listener_default;
	const struct tls_io *io;
	void *ctx;
	const char *id;
	const char *error;
	const char *match;
	const char *cert;
	const struct certstore_entry *entry; /* chosen in the hook */
	char sni[256];
	bool done;
	bool want_tickets;         /* this client may get tickets (tls_tickets_wanted) */
	bool tickets;              /* ticket key set for this session */
	unsigned char ticket[64];  /* this name's ticket key */
	size_t rxoff, rxlen;
	char *rx; /* TLS_RX_MAX bytes while ciphertext waits, else NULL (owned) */
};

/* ---- context ---- */

/* The key tickets are encrypted under: [tls] ticket_key_file's, read again
 * for every generation (so a reload picks up a new file), or the process's
 * own, which outlives reloads. Without either, no tickets (full handshakes
 * only). Returns -1 with ERR only for a key file that cannot be used. */
static int tls_context_ticket_key(struct tls_context *tc, const struct config *cfg, char *err,
                                  size_t errsize)
{
	if (!cfg->tls_ticket_key_file) {
		tc->tickets_ok = ticketkey_process(&tc->ticket) == 0;
		return 0;
	}
	char why[400];
	if (ticketkey_load(cfg->tls_ticket_key_file, &tc->ticket, why, sizeof why) < 0) {
		snprintf(err, errsize, "ticket_key_file: %s", why);
		return -1;
	}
	tc->tickets_ok = true;
	log_info("event=ticket_key file=%s id=%s", cfg->tls_ticket_key_file, tc->ticket.id);
	if (tc->ticket.others_can_read)
		log_warn("event=ticket_key_warning file=%s reason=\"readable by everyone: whoever "
		         "reads it can decrypt tickets (mode 0640 or 0600)\"", cfg->tls_ticket_key_file);
	return 0;
}

bool tls_tickets_wanted(const struct config *cfg, const struct config_addr *listen,
                        const struct sockaddr *client)
{
	bool on = listen && listen->tickets >= 0 ? listen->tickets != 0 : cfg->tls_session_tickets;
	return on && !(client && cidr_list_match(&cfg->tls_no_tickets_for, client));
}

int tls_context_new(const struct config *cfg, struct certstore *cs, struct tls_context **out,
                    char *err, size_t errsize)
{
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
	if (tls_context_ticket_key(tc, cfg, err, errsize) < 0) {
		tls_context_unref(tc);
		return -1;
	}
	if (certstore_ncerts(cs) > 0) {
		const char *name = config_default_cert(cfg);
		enum certstore_match how;
		tc->fallback = certstore_resolve(cs, name, strlen(name), NULL, 0, &how);
		if (!tc->fallback) {
			snprintf(err, errsize, "%s: no certificate serves '%s'",
			         cfg->tls_default_cert[0] ? "default_cert" : "default_cert (unset, so hostname)",
			         name);
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
	gnutls_memset(&tc->ticket, 0, sizeof tc->ticket);
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
	if (t->tickets || !t->want_tickets || !t->tc->tickets_ok)
		return;
	if (gnutls_hmac_fast(GNUTLS_MAC_SHA512, t->tc->ticket.key, sizeof t->tc->ticket.key, t->sni,
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
	/* TLS_HELLO_MAX bounds what a client makes GnuTLS buffer before this
	 * point; GnuTLS applies the same limit to the messages it sends, and a
	 * certificate serving many names makes ours longer than one record. */
	gnutls_handshake_set_max_packet_length(session, TLS_HANDSHAKE_MAX);
	char raw[256], norm[256];
	size_t len = sizeof raw;
	unsigned type;
	const struct certstore_entry *e = NULL;
	enum certstore_match how = CERTSTORE_MATCH_NONE;
	strcpy(t->sni, "none");
	bool sent = gnutls_server_name_get(session, raw, &len, &type, 0) == 0 &&
	            type == GNUTLS_NAME_DNS;
	if (sent) {
		e = certstore_resolve(t->tc->cs, raw, len, norm, sizeof norm, &how);
		snprintf(t->sni, sizeof t->sni, "%s", norm[0] ? norm : "invalid");
	}
	t->match = how == CERTSTORE_MATCH_EXACT ? "exact" : "wildcard";
	if (!e && sent && t->tc->sni_strict) {
		t->match = "refused";
		return GNUTLS_E_UNRECOGNIZED_NAME;
	}
	if (!e && t->listener_default) {
		e = t->listener_default;
		t->match = "listener-default";
	}
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

struct tls *tls_new(struct tls_context *tc, const struct certstore_entry *listener_default,
                    bool tickets, const struct tls_io *io, void *ctx, const char *id)
{
	struct tls *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->tc = tls_context_ref(tc);
	t->listener_default = listener_default;
	t->want_tickets = tickets;
	t->io = io;
	t->ctx = ctx;
	t->id = id;
	t->match = "none";
	t->cert = "none";
	strcpy(t->sni, "none");
	/* GnuTLS 3.7 sends the TLS 1.3 tickets of a full handshake with its
	 * Finished, before the client's Finished ("early start",
	 * lib/handshake-tls13.c STATE109), as Go does: the timing that
	 * golang/go#70232 found Microsoft's senders drop STARTTLS over.
	 * tls_handshake sends them once the client's Finished is in, as
	 * OpenSSL does. */
	unsigned flags = GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL | GNUTLS_NO_AUTO_SEND_TICKET;
	if (!tickets)
		flags |= GNUTLS_NO_TICKETS;
	int rc = gnutls_init(&t->session, flags);
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
	gnutls_handshake_set_max_packet_length(t->session, TLS_HELLO_MAX);
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

/* TLS 1.3: the tickets leave now that the client's Finished is in. A
 * failure costs the client its resumption, not its session. */
static void tls_send_tickets(struct tls *t)
{
	if (!t->tickets || gnutls_protocol_get_version(t->session) != GNUTLS_TLS1_3)
		return;
	int rc = gnutls_session_ticket_send(t->session, TLS_TICKETS, 0);
	if (rc < 0)
		log_debug("sess=%s event=tls_ticket_error reason=\"%s\"", t->id, gnutls_strerror(rc));
}

int tls_handshake(struct tls *t)
{
	if (t->done)
		return 1;
	int rc;
	for (;;) {
		size_t before = t->rxoff;
		rc = gnutls_handshake(t->session);
		/* A handshake message that spans records (a ClientHello over one
		 * record) is taken one record per call: go on while GnuTLS
		 * consumes what is buffered, or the rest would wait for bytes
		 * that already came. */
		if ((rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) && t->rxoff != before &&
		    t->rxoff < t->rxlen)
			continue;
		break;
	}
	if (rc == GNUTLS_E_SUCCESS) {
		t->done = true;
		tls_send_tickets(t);
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
		if (n == GNUTLS_E_REHANDSHAKE) {
			/* A TLS 1.2 client's ClientHello: renegotiation, which
			 * mxfront never does. RFC 5246 7.2.2's no_renegotiation
			 * warning tells it so; GnuTLS keeps the hello buffered as
			 * an unexpected record, so the session ends there. */
			log_info("sess=%s event=tls_renegotiation action=refused", t->id);
			gnutls_alert_send(t->session, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
			t->error = "renegotiation refused";
			return -1;
		}
		if (!gnutls_error_is_fatal((int)n))
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

const struct certstore_entry *tls_entry(const struct tls *t)
{
	return t->entry;
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

bool tls_tickets(const struct tls *t)
{
	return t->tickets;
}

bool tls_resumed(const struct tls *t)
{
	return gnutls_session_is_resumed(t->session) != 0;
}
