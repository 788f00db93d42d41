/* session: owns one client connection (socket, timer, input buffer, output
 * queue) and its smtp and relay objects, and moves through its phases
 * (session_enter): the PROXY header first on a proxy= listener, SMTP, and a
 * lingering close after the last reply; session_close() is the only way
 * out. Memory is bounded: input to SESSION_IN_MAX, replies and backend data
 * to their high-water marks, beyond which reading stops (backpressure).
 * Knows no SMTP reply. */
#include "session.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "growbuf.h"
#include "log.h"
#include "metrics.h"
#include "outq.h"
#include "proxy.h"
#include "relay.h"
#include "smtp.h"

#define SESSION_IN_MAX (16 * 1024)
#define SESSION_OUT_HIGH (64 * 1024)
#define SESSION_OUT_LOW (32 * 1024)

/* After the last reply (and the TLS close_notify) the session sends its FIN
 * and reads and drops what the client still sends until the client's FIN,
 * for this long at most (nginx's lingering close): closing a socket with
 * unread bytes makes the kernel send a reset, which can overtake the last
 * reply and destroy it in the client's receive queue. A client that reads
 * its reply closes within a round trip or two; one that neither reads nor
 * closes holds its slot (and a graceful stop) this much longer. */
#define SESSION_LINGER_MS 2000
#define SESSION_DISCARD_SIZE (16 * 1024)

enum session_phase {
	SESSION_PROXY,     /* a proxy= listener waits for the PROXY header */
	SESSION_PREGREET,  /* greeting_delay running: any byte now is an early talker */
	SESSION_PLAIN,     /* SMTP in plaintext */
	SESSION_STARTTLS,  /* STARTTLS accepted: its 220 leaves, then TLS starts */
	SESSION_HANDSHAKE, /* the TLS handshake */
	SESSION_TLS,       /* SMTP over TLS */
	SESSION_DRAINING,  /* the last reply is queued: linger once it is written */
	SESSION_LINGER,    /* FIN sent; the client's bytes are dropped until its FIN */
	SESSION_CLOSING,   /* handles closing; freed after the last one */
};

static const char *const session_phase_names[] = {
	"proxy", "pregreet", "plain", "starttls", "handshake", "tls", "draining", "linger", "closing",
};

struct session {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_loop_t *loop;
	struct generation *gen; /* a reference */
	struct config *cfg;     /* gen's */
	struct session_owner owner;
	struct session_link link;
	struct smtp *smtp;
	struct relay *relay;
	struct backend_pool *pool;
	struct tls_context *tc; /* gen's, or NULL */
	const struct config_addr *listen; /* gen's: the listening address accepted on */
	const struct certstore_entry *listener_default; /* gen's, or NULL */
	struct tls *tls;        /* after STARTTLS */
	struct growbuf cout;    /* ciphertext for the next flush */

	char id[16];
	char client_ip[INET6_ADDRSTRLEN];
	int client_port;
	struct sockaddr_storage client_sa; /* the client: the TCP peer, or the PROXY header's */
	char peer_ip[INET6_ADDRSTRLEN];    /* the TCP peer (the load balancer, when proxied) */
	bool proxied;                      /* the client comes from a PROXY header */
	const char *refuse; /* the listener's refusal, said once the client is known */
	uv_shutdown_t shutdown_req; /* LINGER's FIN */
	uint64_t discarded;         /* LINGER: bytes dropped */
	uint64_t started_ms;
	uint64_t last_line_ms; /* the client's last complete line */
	uint64_t idle_since;   /* the end of the last transaction, or the start */
	int handles;

	enum session_phase phase;
	const char *close_reason; /* DRAINING: why the session ends */
	bool stopping;   /* graceful stop: close as soon as smtp is idle */
	bool reading;    /* the socket is read */
	bool processing; /* inside session_process */
	bool again;      /* session_process goes round once more */
	bool bye_sent;   /* the TLS close_notify is queued */

	struct growbuf out; /* replies for the next flush */
	struct outq outq;   /* bytes the socket has not taken yet */

	struct smtp_framer framer;
	size_t inlen;
	char *in; /* SESSION_IN_MAX bytes while input waits, else NULL (owned) */
};

static void session_process(struct session *s);
static void session_flush(struct session *s);
static void session_arm_timer(struct session *s);
static void session_linger(struct session *s);
static void session_end_relay(struct session *s);
static void session_read_start(struct session *s);
static void session_timer_cb_linger(uv_timer_t *t);

static uint64_t session_now_ms(uv_loop_t *loop)
{
	return uv_now(loop);
}

/* ---- phases and output ---- */

/* Every change of phase goes through here (and is logged at debug level). */
static void session_enter(struct session *s, enum session_phase to)
{
	if (s->phase == to)
		return;
	log_debug("sess=%s event=phase from=%s to=%s", s->id, session_phase_names[s->phase],
	          session_phase_names[to]);
	s->phase = to;
}

/* SMTP may be spoken: not closing, not switching to TLS. */
static bool session_talking(const struct session *s)
{
	return s->phase == SESSION_PLAIN || s->phase == SESSION_TLS;
}

static void session_outq_error_cb(void *owner, int status)
{
	session_close(owner, "write error");
}

static void session_outq_drained_cb(void *owner)
{
	session_process(owner);
}

static void session_outq_empty_cb(void *owner)
{
	struct session *s = owner;
	if (s->phase == SESSION_DRAINING && s->out.len == 0)
		session_linger(s);
}

static const struct outq_cbs session_outq_cbs = {
	.error = session_outq_error_cb,
	.drained = session_outq_drained_cb,
	.empty = session_outq_empty_cb,
};

static void session_write(struct session *s, struct growbuf *b)
{
	size_t len;
	char *data = growbuf_take(b, &len);
	outq_write(&s->outq, data, data, len);
}

/* Writes queued replies (encrypted once TLS is up) and backend data. */
static void session_flush(struct session *s)
{
	if (s->phase >= SESSION_LINGER)
		return;
	if (s->relay)
		relay_flush(s->relay);
	if (s->out.len && s->tls) {
		/* Replies queued after the 220 to STARTTLS wait for the handshake. */
		if (s->phase != SESSION_HANDSHAKE) {
			if (tls_send(s->tls, s->out.data, s->out.len) < 0) {
				session_close(s, tls_error(s->tls));
				return;
			}
			s->out.len = 0;
		}
	} else if (s->out.len) {
		session_write(s, &s->out);
	}
	if (s->cout.len && s->phase != SESSION_CLOSING)
		session_write(s, &s->cout);
	if (s->phase == SESSION_DRAINING && s->outq.pending == 0 && s->out.len == 0)
		session_linger(s);
}

/* The FIN left (or the socket is closing first: UV_ECANCELED, which libuv
 * reports before the close callbacks, so the session is still there). A
 * failure needs nothing: the read that follows fails too. */
static void session_shutdown_cb(uv_shutdown_t *req, int status)
{
}

/* The session's SMTP part is over: a plaintext one counts in the sender
 * scoreboard under its client's name (a TLS one was counted at its
 * handshake). Then its relay goes: the backend is let go at once. */
static void session_end_relay(struct session *s)
{
	if (!s->relay)
		return;
	if (!s->tls)
		metrics_plaintext(relay_helo(s->relay));
	relay_free(s->relay);
	s->relay = NULL;
}

/* The end of a session that said its last word (and of one that says none,
 * PROXY errors): the TLS close_notify, then the FIN once everything queued
 * is written (uv_shutdown waits for it), then the client's bytes are read
 * and dropped until its own FIN, or SESSION_LINGER_MS, and only then is the
 * socket closed. So no reset: every reply is read, and a client that closes
 * TLS first (its close_notify right after our 221) gets ours. The backend
 * is let go at once. */
static void session_linger(struct session *s)
{
	if (s->tls && !s->bye_sent) {
		s->bye_sent = true;
		tls_bye(s->tls);
		if (s->cout.len)
			session_write(s, &s->cout);
		if (s->phase == SESSION_CLOSING) /* the write failed */
			return;
	}
	session_enter(s, SESSION_LINGER);
	session_end_relay(s);
	free(s->in);
	s->in = NULL;
	s->inlen = 0;
	if (uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp, session_shutdown_cb) != 0) {
		session_close(s, s->close_reason);
		return;
	}
	uv_timer_start(&s->timer, session_timer_cb_linger, SESSION_LINGER_MS, 0);
	session_read_start(s);
}

/* ---- smtp ops ---- */

static void session_op_reply(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	if (s->phase == SESSION_CLOSING)
		return;
	if (growbuf_append(&s->out, buf, len) < 0)
		session_close(s, "out of memory");
}

/* tls_io: ciphertext from GnuTLS, written at the next session_flush. */
static void session_tls_send(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	if (growbuf_append(&s->cout, buf, len) < 0)
		session_close(s, "out of memory");
}

static const struct tls_io session_tls_io = { .send = session_tls_send };

static void session_op_starttls(void *ctx)
{
	session_enter(ctx, SESSION_STARTTLS);
}

static void session_op_backend_hello(void *ctx, const char *helo)
{
	struct session *s = ctx;
	relay_hello(s->relay, helo);
}

static void session_op_backend_command(void *ctx, const char *line, size_t len)
{
	struct session *s = ctx;
	relay_command(s->relay, line, len);
}

static void session_op_backend_data(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	relay_data(s->relay, buf, len);
}

static void session_op_backend_data_end(void *ctx, unsigned nrcpt)
{
	struct session *s = ctx;
	relay_data_end(s->relay, nrcpt);
}

static void session_op_backend_abort(void *ctx)
{
	struct session *s = ctx;
	relay_abort(s->relay);
}

static void session_op_close(void *ctx, const char *reason)
{
	struct session *s = ctx;
	if (s->phase >= SESSION_DRAINING)
		return;
	metrics_close_reason(reason);
	s->close_reason = reason;
	session_enter(s, SESSION_DRAINING);
}

/* Ends a session that has not greeted, without a word (PROXY errors). */
static void session_quiet_close(struct session *s, const char *reason)
{
	session_op_close(s, reason);
	session_flush(s);
}

static const struct smtp_ops session_smtp_ops = {
	.reply = session_op_reply,
	.backend_hello = session_op_backend_hello,
	.backend_command = session_op_backend_command,
	.backend_data = session_op_backend_data,
	.backend_data_end = session_op_backend_data_end,
	.backend_abort = session_op_backend_abort,
	.close = session_op_close,
	.starttls = session_op_starttls,
};

/* ---- relay callbacks: answers go to smtp; the session goes on when the
 * relay says it has settled (once per backend read) ---- */

static void session_relay_hello(void *ctx, const struct smtp_reply *r, unsigned caps)
{
	struct session *s = ctx;
	smtp_backend_hello(s->smtp, r, caps);
}

static void session_relay_reply(void *ctx, const struct smtp_reply *r)
{
	struct session *s = ctx;
	smtp_backend_reply(s->smtp, r);
}

static void session_relay_data_done(void *ctx, const struct smtp_reply *r, unsigned n)
{
	struct session *s = ctx;
	smtp_backend_data_done(s->smtp, r, n);
}

static void session_relay_failed(void *ctx)
{
	struct session *s = ctx;
	smtp_backend_failed(s->smtp);
}

static void session_relay_go_on(void *ctx)
{
	session_process(ctx);
}

static const struct relay_cbs session_relay_cbs = {
	.hello = session_relay_hello,
	.reply = session_relay_reply,
	.data_done = session_relay_data_done,
	.failed = session_relay_failed,
	.drained = session_relay_go_on,
	.settled = session_relay_go_on,
};

/* ---- input ---- */

static void session_proxy_error(struct session *s, const char *reason);

/* LINGER's bound: the client never sent its FIN. */
static void session_timer_cb_linger(uv_timer_t *t)
{
	struct session *s = t->data;
	log_debug("sess=%s event=linger_timeout discarded=%llu", s->id,
	          (unsigned long long)s->discarded);
	session_close(s, s->close_reason);
}

static void session_timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (s->phase == SESSION_PROXY) {
		session_proxy_error(s, "no PROXY header in time");
		return;
	}
	if (s->phase == SESSION_HANDSHAKE) {
		log_info("sess=%s event=tls_error reason=\"handshake timeout\"", s->id);
		metrics_close_reason("tls handshake timeout");
		session_close(s, "tls handshake timeout");
		return;
	}
	if (s->phase == SESSION_DRAINING) {
		/* Our last reply could not even be sent: the client reads nothing. */
		session_close(s, s->close_reason ? s->close_reason : "timeout");
		return;
	}
	if (smtp_waiting(s->smtp)) {
		/* The relay times the backend; the client is not at fault. */
		uv_timer_again(t);
		return;
	}
	uint64_t now = session_now_ms(s->loop);
	unsigned wait = smtp_in_data(s->smtp) ? s->cfg->data_timeout_ms : s->cfg->command_timeout_ms;
	if (smtp_idle(s->smtp) && now - s->idle_since >= s->cfg->idle_timeout_ms) {
		/* Talking without ever sending mail (NOOPs, EHLOs) holds a slot. */
		log_info("sess=%s event=timeout state=idle client=%s", s->id, s->client_ip);
		smtp_goodbye(s->smtp, "4.4.2", "Idle too long without mail, closing connection",
		             "idle_timeout");
	} else if (now - s->last_line_ms >= wait) {
		log_info("sess=%s event=timeout state=%s", s->id,
		         smtp_in_data(s->smtp) ? "data" : "command");
		smtp_goodbye(s->smtp, "4.4.2", "Timeout, closing connection", "timeout");
	} else {
		session_arm_timer(s); /* an earlier deadline was due: the next one */
		return;
	}
	session_flush(s);
}

/* Times the client from its last line: the command or data timeout, or
 * the handshake's; between transactions also [timeouts] idle since the last
 * one ended, whichever comes first. */
static void session_arm_timer(struct session *s)
{
	uint64_t now = session_now_ms(s->loop);
	if (!smtp_idle(s->smtp))
		s->idle_since = now;
	unsigned ms = smtp_in_data(s->smtp) ? s->cfg->data_timeout_ms : s->cfg->command_timeout_ms;
	if (s->phase == SESSION_HANDSHAKE) {
		ms = s->cfg->handshake_timeout_ms;
	} else if (smtp_idle(s->smtp)) {
		uint64_t due = s->idle_since + s->cfg->idle_timeout_ms;
		uint64_t left = due > now ? due - now : 0;
		if (left < ms)
			ms = (unsigned)left;
	}
	uv_timer_start(&s->timer, session_timer_cb, ms, ms ? ms : 1);
}

/* A complete line from the client: its timeouts start again. */
static void session_client_line(struct session *s)
{
	s->last_line_ms = session_now_ms(s->loop);
	session_arm_timer(s);
}

/* The input buffer exists only while input waits in it: an idle session
 * keeps neither it nor TLS's (session_trim). Returns -1 when out of memory. */
static int session_in_alloc(struct session *s)
{
	if (!s->in && !(s->in = malloc(SESSION_IN_MAX)))
		return -1;
	return 0;
}

static void session_trim(struct session *s)
{
	if (s->inlen == 0) {
		free(s->in);
		s->in = NULL;
	}
	if (s->out.len == 0) /* over TLS, replies are copied out by tls_send */
		growbuf_free(&s->out);
	if (s->tls)
		tls_rx_trim(s->tls);
}

static void session_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	/* LINGER drops what it reads: one buffer per thread serves every
	 * lingering session (read_cb is done with it before the next read). */
	static _Thread_local char discard[SESSION_DISCARD_SIZE];
	struct session *s = h->data;
	if (s->phase == SESSION_LINGER) {
		*buf = uv_buf_init(discard, sizeof discard);
		return;
	}
	if (s->tls) {
		size_t len;
		tls_rx_space(s->tls, &buf->base, &len);
		buf->len = len;
		return;
	}
	if (session_in_alloc(s) < 0) {
		*buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
		return;
	}
	buf->base = s->in + s->inlen;
	buf->len = SESSION_IN_MAX - s->inlen;
}

/* Drives the handshake; once done, tells smtp and logs what was chosen.
 * Returns -1 if the session was closed. */
static int session_tls_handshake(struct session *s)
{
	int rc = tls_handshake(s->tls);
	if (rc == 0)
		return 0;
	if (rc < 0) {
		log_info("sess=%s event=tls_error client=%s sni=%s reason=\"%s\"", s->id, s->client_ip,
		         tls_sni(s->tls), tls_error(s->tls));
		metrics_tls(tls_version(s->tls), tls_match(s->tls), tls_sni(s->tls), NULL, "", false);
		/* The alert leaves, then the lingering close: a client still
		 * sending its hello must read the alert, not a reset. Replies
		 * queued behind STARTTLS's 220 are not owed any more. */
		s->out.len = 0;
		session_quiet_close(s, "tls handshake failed");
		return -1;
	}
	session_enter(s, SESSION_TLS);
	char info[160];
	snprintf(info, sizeof info, "%s %s sni=%s", tls_version(s->tls), tls_cipher(s->tls),
	         tls_sni(s->tls));
	log_info("sess=%s event=tls sni=%s cert=%s match=%s version=%s cipher=%s resumed=%s "
	         "tickets=%s", s->id, tls_sni(s->tls), tls_cert(s->tls), tls_match(s->tls),
	         tls_version(s->tls), tls_cipher(s->tls), tls_resumed(s->tls) ? "yes" : "no",
	         tls_tickets(s->tls) ? "yes" : "no");
	metrics_tls(tls_version(s->tls), tls_match(s->tls), tls_sni(s->tls), tls_entry(s->tls),
	            relay_helo(s->relay), true);
	smtp_tls_started(s->smtp, info);
	session_client_line(s);
	return 0;
}

/* Moves decrypted bytes into the input buffer while there is room.
 * Returns -1 if the session was closed. */
static int session_tls_fill(struct session *s)
{
	if (s->phase == SESSION_HANDSHAKE && session_tls_handshake(s) < 0)
		return -1;
	while (s->phase != SESSION_HANDSHAKE && s->inlen < SESSION_IN_MAX && tls_has_input(s->tls)) {
		if (session_in_alloc(s) < 0) {
			session_close(s, "out of memory");
			return -1;
		}
		ssize_t n = tls_recv(s->tls, s->in + s->inlen, SESSION_IN_MAX - s->inlen);
		if (n == 0)
			break;
		if (n < 0) {
			/* The client's close_notify gets ours; an alert of ours
			 * (no_renegotiation) leaves before the FIN. */
			session_quiet_close(s, tls_error(s->tls));
			return -1;
		}
		s->inlen += (size_t)n;
	}
	return 0;
}

static void session_proxy_input(struct session *s);

/* RFC 5321 3.1: the client waits for the greeting; this one sent BYTES
 * before it. */
static void session_early_talker(struct session *s, size_t bytes)
{
	session_enter(s, SESSION_PLAIN);
	log_info("sess=%s event=early_talker client=%s bytes=%zu", s->id, s->client_ip, bytes);
	smtp_early_talker(s->smtp);
	session_flush(s);
}

static void session_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct session *s = stream->data;
	if (nread == 0)
		return;
	if (s->phase == SESSION_LINGER) {
		if (nread < 0) /* the client's FIN (or its reset): nothing left to lose */
			session_close(s, s->close_reason);
		else
			s->discarded += (uint64_t)nread;
		return;
	}
	if (nread == UV_ENOBUFS) {
		session_close(s, "out of memory");
		return;
	}
	if (nread < 0) {
		if (s->phase == SESSION_PROXY)
			log_info("sess=%s event=proxy_error client=%s reason=\"closed before its PROXY "
			         "header\"", s->id, s->peer_ip);
		session_close(s, nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
		return;
	}
	if (s->phase == SESSION_PROXY) {
		s->inlen += (size_t)nread;
		session_proxy_input(s);
		return;
	}
	if (s->phase == SESSION_PREGREET) {
		session_early_talker(s, (size_t)nread);
		return;
	}
	if (s->tls)
		tls_received(s->tls, (size_t)nread);
	else
		s->inlen += (size_t)nread;
	/* The timer restarts per complete line (session_process), not per
	 * read: a client dribbling a byte at a time is still timed out. */
	session_process(s);
}

static bool session_backlogged(const struct session *s)
{
	return s->outq.above_high || s->out.len >= SESSION_OUT_HIGH ||
	       (s->relay && relay_pending(s->relay) > RELAY_HIGH_WATER);
}

/* STARTTLS was accepted: the 220 leaves in plaintext, every byte the client
 * pipelined after the command is dropped (RFC 3207 4.2; CVE-2011-0411), and
 * from now on the socket carries TLS. */
static void session_start_tls(struct session *s)
{
	if (s->inlen)
		log_info("sess=%s event=starttls_discard bytes=%zu", s->id, s->inlen);
	s->inlen = 0;
	session_flush(s);
	if (s->phase != SESSION_STARTTLS)
		return;
	session_enter(s, SESSION_HANDSHAKE);
	bool tickets = tls_tickets_wanted(s->cfg, s->listen, s->client_sa.ss_family
	                                  ? (const struct sockaddr *)&s->client_sa : NULL);
	s->tls = tls_new(s->tc, s->listener_default, tickets, &session_tls_io, s, s->id);
	if (!s->tls) {
		session_close(s, "tls setup failed");
		return;
	}
	session_client_line(s);
}

static bool session_can_read(const struct session *s)
{
	if (s->phase >= SESSION_DRAINING || session_backlogged(s))
		return false;
	if (s->tls)
		return tls_rx_room(s->tls); /* tls_rx_space would allocate it again */
	return s->inlen < SESSION_IN_MAX;
}

/* Feeds complete lines to smtp while it can take them, then decides whether
 * to read more. Reentrant calls (from callbacks it triggers) only ask the
 * running loop to go round again. */
static void session_process(struct session *s)
{
	if (s->phase == SESSION_PROXY || s->phase >= SESSION_LINGER)
		return;
	if (s->processing) {
		s->again = true;
		return;
	}
	s->processing = true;
	do {
		s->again = false;
		if (s->tls && session_tls_fill(s) < 0)
			break;
		size_t off = 0;
		while (s->in && session_talking(s) && !smtp_busy(s->smtp) && !session_backlogged(s)) {
			size_t limit = smtp_in_data(s->smtp) ? SMTP_TEXT_LINE_MAX : SMTP_COMMAND_LINE_MAX;
			const char *line;
			size_t len;
			unsigned flags;
			size_t n = smtp_frame(&s->framer, s->in + off, s->inlen - off, limit, &line, &len,
			                      &flags);
			if (n == 0)
				break;
			off += n;
			if (line) {
				smtp_line(s->smtp, line, len, flags);
				if (s->phase != SESSION_CLOSING)
					session_client_line(s);
			}
		}
		if (off) {
			memmove(s->in, s->in + off, s->inlen - off);
			s->inlen -= off;
		}
		if (s->phase == SESSION_STARTTLS)
			session_start_tls(s);
		/* Room was made: TLS may hold more decrypted input. */
		if (s->phase == SESSION_TLS && off && tls_has_input(s->tls))
			s->again = true;
	} while (s->again && s->phase != SESSION_CLOSING);
	s->processing = false;
	if (s->stopping && session_talking(s) && smtp_idle(s->smtp))
		smtp_goodbye(s->smtp, "4.3.2", "Service shutting down, try again later", "shutdown");
	session_flush(s);
	if (s->phase >= SESSION_LINGER)
		return;
	session_trim(s);
	bool want = session_can_read(s);
	if (want && !s->reading) {
		if (uv_read_start((uv_stream_t *)&s->tcp, session_alloc_cb, session_read_cb) == 0)
			s->reading = true;
	} else if (!want && s->reading) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->reading = false;
	}
}

/* ---- lifecycle ---- */

static atomic_uint_fast64_t session_counter;
static uint64_t session_seed;
static pthread_once_t session_seed_once = PTHREAD_ONCE_INIT;

static void session_seed_init(void)
{
	uint64_t r = 0;
	if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
		r = (uint64_t)time(NULL);
	session_seed = (r & 0xffffff) << 24 | 1;
}

/* 12 hex digits: random per process, then counting; unique across workers. */
static void session_make_id(char *out, size_t size)
{
	pthread_once(&session_seed_once, session_seed_init);
	uint64_t n = atomic_fetch_add(&session_counter, 1);
	snprintf(out, size, "%012llx", (unsigned long long)((session_seed + n) & 0xffffffffffffull));
}

struct session *session_new(uv_loop_t *loop, struct generation *gen, size_t listen,
                            struct backend_pool *pool, const struct session_owner *owner)
{
	struct session *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->loop = loop;
	s->gen = generation_ref(gen);
	s->cfg = gen->cfg;
	s->tc = gen->tc;
	s->listen = &gen->cfg->listen[listen];
	s->listener_default = gen->listen_default[listen];
	s->pool = pool;
	s->owner = *owner;
	s->link.session = s;
	session_make_id(s->id, sizeof s->id);
	uv_tcp_init(loop, &s->tcp);
	uv_timer_init(loop, &s->timer);
	s->tcp.data = s;
	s->timer.data = s;
	s->handles = 2;
	s->phase = SESSION_PLAIN;
	outq_init(&s->outq, (uv_stream_t *)&s->tcp, SESSION_OUT_HIGH, SESSION_OUT_LOW,
	          &session_outq_cbs, s);
	return s;
}

uv_tcp_t *session_tcp(struct session *s)
{
	return &s->tcp;
}

struct session_link *session_link(struct session *s)
{
	return &s->link;
}

/* CLIENT_IP and CLIENT_PORT from SA (an IPv4-mapped IPv6 address as IPv4). */
static void session_set_client(struct session *s, const struct sockaddr_storage *sa)
{
	s->client_sa = *sa;
	if (sa->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, s->client_ip, sizeof s->client_ip);
		s->client_port = ntohs(sin->sin_port);
	} else if (sa->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], s->client_ip, sizeof s->client_ip);
		else
			inet_ntop(AF_INET6, &sin6->sin6_addr, s->client_ip, sizeof s->client_ip);
		s->client_port = ntohs(sin6->sin6_port);
	}
}

/* The TCP peer: the client, until a PROXY header names another. */
static void session_peer(struct session *s)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	strcpy(s->client_ip, "unknown");
	strcpy(s->peer_ip, "unknown");
	if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) != 0)
		return;
	session_set_client(s, &ss);
	snprintf(s->peer_ip, sizeof s->peer_ip, "%s", s->client_ip);
}

static void session_read_start(struct session *s)
{
	if (!s->reading &&
	    uv_read_start((uv_stream_t *)&s->tcp, session_alloc_cb, session_read_cb) == 0)
		s->reading = true;
}

static void session_greet_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (s->phase != SESSION_PREGREET)
		return;
	session_enter(s, SESSION_PLAIN);
	smtp_greet(s->smtp);
	session_client_line(s);
	session_process(s);
}

/* The client is known (the TCP peer, or the PROXY header's): the
 * listener's limits for its address, then the greeting (or the refusal). */
static void session_begin(struct session *s)
{
	const char *refuse = s->refuse;
	if (!refuse && s->client_sa.ss_family && s->owner.admit)
		refuse = s->owner.admit(s->owner.arg, s, (const struct sockaddr *)&s->client_sa);
	if (s->proxied)
		log_info("sess=%s event=connect client=%s port=%d proxy=%s", s->id, s->client_ip,
		         s->client_port, s->peer_ip);
	else
		log_info("sess=%s event=connect client=%s port=%d", s->id, s->client_ip,
		         s->client_port);
	s->smtp = smtp_new(s->cfg, &session_smtp_ops, s, s->id, s->client_ip);
	s->relay = relay_new(s->loop, s->pool, s->cfg, &session_relay_cbs, s, s->id, s->client_ip,
	                     s->client_port);
	if (!s->smtp || !s->relay) {
		session_close(s, "out of memory");
		return;
	}
	smtp_set_tls_available(s->smtp, tls_context_usable(s->tc));
	if (refuse) {
		smtp_refuse(s->smtp, refuse);
		session_flush(s);
		return;
	}
	if (s->cfg->greeting_delay_ms) {
		session_enter(s, SESSION_PREGREET);
		if (s->inlen) {
			/* Bytes that followed the PROXY header came before the greeting. */
			size_t early = s->inlen;
			s->inlen = 0;
			session_early_talker(s, early);
			return;
		}
		uv_timer_start(&s->timer, session_greet_cb, s->cfg->greeting_delay_ms, 0);
		session_read_start(s);
		return;
	}
	session_enter(s, SESSION_PLAIN);
	smtp_greet(s->smtp);
	session_client_line(s);
	session_process(s);
}

/* PROXY errors: logged, and the connection closed without a greeting
 * (lingering, so that a load balancer still sending gets no reset). */
static void session_proxy_error(struct session *s, const char *reason)
{
	log_info("sess=%s event=proxy_error client=%s reason=\"%s\"", s->id, s->peer_ip, reason);
	uv_timer_stop(&s->timer);
	session_quiet_close(s, "proxy error");
}

/* Bytes arrived on a proxy= listener: once the header is whole, the client
 * it names is the client for everything after it (limits, logs, the
 * Received header, XCLIENT); what follows it is the client's first input. */
static void session_proxy_input(struct session *s)
{
	struct proxy_result r;
	switch (proxy_parse((const unsigned char *)s->in, s->inlen, s->listen->proxy, &r)) {
	case PROXY_MORE:
		return;
	case PROXY_ERROR:
		session_proxy_error(s, r.error);
		return;
	case PROXY_DONE:
		break;
	}
	uv_timer_stop(&s->timer);
	memmove(s->in, s->in + r.len, s->inlen - r.len);
	s->inlen -= r.len;
	if (r.local) {
		/* v2 LOCAL (HAProxy's health checks with check-send-proxy), v1
		 * UNKNOWN: the load balancer's own connection, served as such
		 * (the spec says use the real endpoints; `option smtpchk` wants
		 * a greeting). */
		log_info("sess=%s event=proxy_local client=%s version=%d command=%s", s->id, s->peer_ip,
		         r.version, r.health ? "local" : "unknown");
	} else {
		session_set_client(s, &r.src);
		s->proxied = true;
	}
	session_begin(s);
}

void session_start(struct session *s, const char *refuse)
{
	s->started_ms = session_now_ms(s->loop);
	s->idle_since = s->started_ms;
	s->refuse = refuse;
	session_peer(s);
	uv_tcp_nodelay(&s->tcp, 1);
	if (s->listen->proxy == PROXY_OFF) {
		session_begin(s);
		return;
	}
	session_enter(s, SESSION_PROXY);
	if (!s->client_sa.ss_family) {
		/* No peer address: the connection is already gone (a health
		 * check that connects and closes at once). Nobody to tell. */
		session_close(s, "client gone");
		return;
	}
	if (!cidr_list_match(&s->cfg->proxy_trusted, (const struct sockaddr *)&s->client_sa)) {
		session_proxy_error(s, "not in [server] proxy_trusted");
		return;
	}
	if (session_in_alloc(s) < 0) {
		session_close(s, "out of memory");
		return;
	}
	uv_timer_start(&s->timer, session_timer_cb, s->cfg->proxy_timeout_ms, 0);
	session_read_start(s);
}

void session_shutdown(struct session *s)
{
	if (s->phase == SESSION_CLOSING)
		return;
	s->stopping = true; /* one still reading its PROXY header says 421 after its greeting */
	if (s->smtp)
		session_process(s);
}

void session_shutdown_now(struct session *s)
{
	if (s->phase == SESSION_CLOSING)
		return;
	if (s->phase == SESSION_PROXY || s->phase == SESSION_LINGER || !s->smtp) {
		session_close(s, s->close_reason ? s->close_reason : "shutdown");
		return;
	}
	s->stopping = true;
	if (s->phase == SESSION_HANDSHAKE) {
		session_close(s, "shutdown during tls handshake");
		return;
	}
	if (smtp_delivering(s->smtp))
		return; /* closes once the verdict is in */
	log_info("sess=%s event=shutdown_cut", s->id);
	smtp_goodbye(s->smtp, "4.3.2", "Service shutting down, try again later", "shutdown");
	session_flush(s);
	/* A client that reads nothing must not hold the stop up. */
	if (s->phase != SESSION_CLOSING && s->outq.pending)
		session_close(s, "shutdown");
}

static void session_handle_closed_cb(uv_handle_t *h)
{
	struct session *s = h->data;
	if (--s->handles > 0)
		return;
	smtp_free(s->smtp);
	free(s->in);
	growbuf_free(&s->out);
	growbuf_free(&s->cout);
	/* GnuTLS holds pointers to the credentials until gnutls_deinit. */
	tls_free(s->tls);
	generation_unref(s->gen);
	s->owner.gone(s->owner.arg, s);
	free(s);
}

void session_close(struct session *s, const char *reason)
{
	if (s->phase == SESSION_CLOSING)
		return;
	session_enter(s, SESSION_CLOSING);
	outq_close(&s->outq);
	uint64_t ms = session_now_ms(s->loop) - s->started_ms;
	log_info("sess=%s event=disconnect client=%s reason=\"%s\" duration=%llu.%03llus commands=%u",
	         s->id, s->client_ip, reason ? reason : "", (unsigned long long)(ms / 1000),
	         (unsigned long long)(ms % 1000), s->smtp ? smtp_commands(s->smtp) : 0);
	/* The backend connection goes first: a message in flight loses its
	 * final dot, so nothing half-received is delivered. */
	session_end_relay(s);
	uv_close((uv_handle_t *)&s->tcp, session_handle_closed_cb);
	uv_close((uv_handle_t *)&s->timer, session_handle_closed_cb);
}
