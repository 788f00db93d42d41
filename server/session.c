/* session: owns one client connection (socket, timer, input buffer, reply
 * queue) and its smtp and relay objects; session_close() is the only way out.
 * Memory is bounded: input to SESSION_IN_MAX, replies and backend data to
 * their high-water marks, beyond which reading stops (backpressure). */
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
#include "relay.h"
#include "smtp.h"

#define SESSION_IN_MAX (16 * 1024)
#define SESSION_OUT_HIGH (64 * 1024)

struct session {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_loop_t *loop;
	struct config *cfg; /* a reference */
	struct session_owner owner;
	struct session_link link;
	struct smtp *smtp;
	struct relay *relay;
	struct backend_pool *pool;
	struct tls_context *tc; /* a reference, or NULL */
	const char *listener_default;
	struct tls *tls;        /* after STARTTLS */
	bool tls_ready;         /* handshake done */
	bool starttls;          /* STARTTLS accepted, switch after the 220 */
	char *cout;             /* ciphertext not yet handed to uv_write, owned */
	size_t coutlen, coutcap;

	char id[16];
	char client_ip[INET6_ADDRSTRLEN];
	int client_port;
	uint64_t started_ms;
	uint64_t last_line_ms; /* the client's last complete line */
	uint64_t idle_since;   /* the end of the last transaction, or the start */
	int handles;

	bool closing;
	bool close_after_flush;
	const char *close_reason;
	bool reading;
	bool processing;
	bool again;
	bool draining; /* graceful stop: close as soon as smtp is idle */
	bool batching; /* taking a read's worth of backend answers: flush after */
	bool pregreet; /* greeting_delay running: any byte now is an early talker */

	char *out; /* replies not yet handed to uv_write, owned */
	size_t outlen, outcap;
	size_t unsent; /* bytes handed to uv_write, not yet written */

	struct smtp_framer framer;
	size_t inlen;
	char *in; /* SESSION_IN_MAX bytes while input waits, else NULL (owned) */
};

struct session_wbuf {
	uv_write_t req;
	struct session *s;
	size_t len;
	char *data;
};

static void session_process(struct session *s);
static void session_flush(struct session *s);
static void session_arm_timer(struct session *s);

static uint64_t session_now_ms(uv_loop_t *loop)
{
	return uv_now(loop);
}

/* ---- output ---- */

static void session_write_cb(uv_write_t *req, int status)
{
	struct session_wbuf *w = req->data;
	struct session *s = w->s;
	s->unsent -= w->len;
	free(w->data);
	free(w);
	if (s->closing)
		return;
	if (status < 0) {
		session_close(s, "write error");
		return;
	}
	if (s->close_after_flush && s->unsent == 0 && s->outlen == 0) {
		session_close(s, s->close_reason);
		return;
	}
	if (s->unsent < SESSION_OUT_HIGH)
		session_process(s);
}

/* Writes *BUF at once if the socket takes it all (no request, no callback:
 * libuv re-arms epoll after every completed request), else hands it
 * (ownership and all) to uv_write. */
static void session_write(struct session *s, char **buf, size_t *len, size_t *cap)
{
	uv_buf_t b = uv_buf_init(*buf, (unsigned)*len);
	int done = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
	if (done == (int)*len) {
		free(*buf);
		*buf = NULL;
		*len = *cap = 0;
		return;
	}
	size_t skip = done > 0 ? (size_t)done : 0;
	struct session_wbuf *w = malloc(sizeof *w);
	if (!w) {
		session_close(s, "out of memory");
		return;
	}
	w->s = s;
	w->len = *len - skip;
	w->data = *buf;
	w->req.data = w;
	*buf = NULL;
	*len = *cap = 0;
	s->unsent += w->len;
	b = uv_buf_init(w->data + skip, (unsigned)w->len);
	int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, session_write_cb);
	if (rc < 0) {
		s->unsent -= w->len;
		free(w->data);
		free(w);
		session_close(s, uv_strerror(rc));
	}
}

/* Writes queued replies (encrypted once TLS is up) and backend data. */
static void session_flush(struct session *s)
{
	if (s->closing || s->batching)
		return;
	if (s->relay)
		relay_flush(s->relay);
	if (s->outlen && s->tls) {
		/* Replies queued after the 220 to STARTTLS wait for the handshake. */
		if (s->tls_ready) {
			if (tls_send(s->tls, s->out, s->outlen) < 0) {
				session_close(s, tls_error(s->tls));
				return;
			}
			s->outlen = 0;
		}
	} else if (s->outlen) {
		session_write(s, &s->out, &s->outlen, &s->outcap);
	}
	if (s->coutlen && !s->closing)
		session_write(s, &s->cout, &s->coutlen, &s->coutcap);
	if (!s->closing && s->close_after_flush && s->unsent == 0 && s->outlen == 0)
		session_close(s, s->close_reason);
}

/* ---- smtp ops ---- */

static void session_op_reply(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	if (s->closing)
		return;
	if (growbuf_append(&s->out, &s->outlen, &s->outcap, buf, len) < 0)
		session_close(s, "out of memory");
}

/* tls_io: ciphertext from GnuTLS, written at the next session_flush. */
static void session_tls_send(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	if (growbuf_append(&s->cout, &s->coutlen, &s->coutcap, buf, len) < 0)
		session_close(s, "out of memory");
}

static const struct tls_io session_tls_io = { .send = session_tls_send };

static void session_op_starttls(void *ctx)
{
	struct session *s = ctx;
	s->starttls = true;
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
	s->close_after_flush = true;
	s->close_reason = reason;
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

/* ---- relay callbacks: each may free nothing, only continue processing ---- */

static void session_relay_hello(void *ctx, const struct smtp_reply *r, unsigned caps)
{
	struct session *s = ctx;
	smtp_backend_hello(s->smtp, r, caps);
	session_process(s);
}

static void session_relay_reply(void *ctx, const struct smtp_reply *r)
{
	struct session *s = ctx;
	smtp_backend_reply(s->smtp, r);
	session_process(s);
}

static void session_relay_data_done(void *ctx, const struct smtp_reply *r, unsigned n)
{
	struct session *s = ctx;
	smtp_backend_data_done(s->smtp, r, n);
	session_process(s);
}

static void session_relay_failed(void *ctx)
{
	struct session *s = ctx;
	smtp_backend_failed(s->smtp);
	session_process(s);
}

static void session_relay_drained(void *ctx)
{
	session_process(ctx);
}

static void session_relay_batch(void *ctx, bool begin)
{
	struct session *s = ctx;
	s->batching = begin;
	if (!begin)
		session_flush(s);
}

static const struct relay_cbs session_relay_cbs = {
	.hello = session_relay_hello,
	.reply = session_relay_reply,
	.data_done = session_relay_data_done,
	.failed = session_relay_failed,
	.drained = session_relay_drained,
	.batch = session_relay_batch,
};

/* ---- input ---- */

static void session_timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (s->tls && !s->tls_ready) {
		log_info("sess=%s event=tls_error reason=\"handshake timeout\"", s->id);
		session_close(s, "tls handshake timeout");
		return;
	}
	if (s->close_after_flush) {
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
	if (s->tls && !s->tls_ready) {
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
	if (s->outlen == 0) { /* over TLS, replies are copied out by tls_send */
		free(s->out);
		s->out = NULL;
		s->outcap = 0;
	}
	if (s->tls)
		tls_rx_trim(s->tls);
}

static void session_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct session *s = h->data;
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
		session_flush(s); /* the alert */
		session_close(s, "tls handshake failed");
		return -1;
	}
	s->tls_ready = true;
	char info[160];
	snprintf(info, sizeof info, "%s %s sni=%s", tls_version(s->tls), tls_cipher(s->tls),
	         tls_sni(s->tls));
	log_info("sess=%s event=tls sni=%s cert=%s match=%s version=%s cipher=%s resumed=%s", s->id,
	         tls_sni(s->tls), tls_cert(s->tls), tls_match(s->tls), tls_version(s->tls),
	         tls_cipher(s->tls), tls_resumed(s->tls) ? "yes" : "no");
	smtp_tls_started(s->smtp, info);
	session_client_line(s);
	return 0;
}

/* Moves decrypted bytes into the input buffer while there is room.
 * Returns -1 if the session was closed. */
static int session_tls_fill(struct session *s)
{
	if (!s->tls_ready && session_tls_handshake(s) < 0)
		return -1;
	while (s->tls_ready && s->inlen < SESSION_IN_MAX && tls_has_input(s->tls)) {
		if (session_in_alloc(s) < 0) {
			session_close(s, "out of memory");
			return -1;
		}
		ssize_t n = tls_recv(s->tls, s->in + s->inlen, SESSION_IN_MAX - s->inlen);
		if (n == 0)
			break;
		if (n < 0) {
			session_close(s, tls_error(s->tls));
			return -1;
		}
		s->inlen += (size_t)n;
	}
	return 0;
}

static void session_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct session *s = stream->data;
	if (nread == 0)
		return;
	if (nread == UV_ENOBUFS) {
		session_close(s, "out of memory");
		return;
	}
	if (nread < 0) {
		session_close(s, nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
		return;
	}
	if (s->pregreet) {
		/* RFC 5321 3.1: the client waits for the greeting. */
		s->pregreet = false;
		log_info("sess=%s event=early_talker client=%s bytes=%zd", s->id, s->client_ip, nread);
		char reply[300];
		int n = snprintf(reply, sizeof reply,
		                 "554 5.5.0 %s SMTP synchronization error: talked before the greeting\r\n",
		                 s->cfg->hostname);
		session_op_reply(s, reply, (size_t)n);
		session_op_close(s, "early_talker");
		session_flush(s);
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
	return s->unsent + s->outlen >= SESSION_OUT_HIGH ||
	       (s->relay && relay_pending(s->relay) > RELAY_HIGH_WATER);
}

/* STARTTLS was accepted: the 220 leaves in plaintext, every byte the client
 * pipelined after the command is dropped (RFC 3207 4.2; CVE-2011-0411), and
 * from now on the socket carries TLS. */
static void session_start_tls(struct session *s)
{
	s->starttls = false;
	if (s->inlen)
		log_info("sess=%s event=starttls_discard bytes=%zu", s->id, s->inlen);
	s->inlen = 0;
	session_flush(s);
	if (s->closing)
		return;
	s->tls = tls_new(s->tc, s->listener_default, &session_tls_io, s, s->id);
	if (!s->tls) {
		session_close(s, "tls setup failed");
		return;
	}
	session_client_line(s);
}

static bool session_can_read(const struct session *s)
{
	if (s->close_after_flush || session_backlogged(s))
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
		while (s->in && !s->closing && !s->close_after_flush && !smtp_busy(s->smtp) &&
		       !session_backlogged(s)) {
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
				if (!s->closing)
					session_client_line(s);
			}
		}
		if (off) {
			memmove(s->in, s->in + off, s->inlen - off);
			s->inlen -= off;
		}
		if (s->starttls && !s->closing)
			session_start_tls(s);
		/* Room was made: TLS may hold more decrypted input. */
		if (s->tls && s->tls_ready && off && tls_has_input(s->tls))
			s->again = true;
	} while (s->again && !s->closing);
	s->processing = false;
	if (s->draining && !s->closing && !s->close_after_flush && !s->starttls &&
	    (!s->tls || s->tls_ready) && smtp_idle(s->smtp))
		smtp_goodbye(s->smtp, "4.3.2", "Service shutting down, try again later", "shutdown");
	session_flush(s);
	if (s->closing)
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

struct session *session_new(uv_loop_t *loop, struct config *cfg, struct tls_context *tc,
                            const char *listener_default, struct backend_pool *pool,
                            const struct session_owner *owner)
{
	struct session *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->loop = loop;
	s->cfg = config_ref(cfg);
	s->tc = tc ? tls_context_ref(tc) : NULL;
	s->listener_default = listener_default;
	s->pool = pool;
	s->owner = *owner;
	s->link.session = s;
	session_make_id(s->id, sizeof s->id);
	uv_tcp_init(loop, &s->tcp);
	uv_timer_init(loop, &s->timer);
	s->tcp.data = s;
	s->timer.data = s;
	s->handles = 2;
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

static void session_peer(struct session *s)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	strcpy(s->client_ip, "unknown");
	if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, s->client_ip, sizeof s->client_ip);
		s->client_port = ntohs(sin->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], s->client_ip, sizeof s->client_ip);
		else
			inet_ntop(AF_INET6, &sin6->sin6_addr, s->client_ip, sizeof s->client_ip);
		s->client_port = ntohs(sin6->sin6_port);
	}
}

static void session_greet_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (!s->pregreet)
		return;
	s->pregreet = false;
	smtp_greet(s->smtp);
	session_client_line(s);
	session_process(s);
}

void session_start(struct session *s, const char *refuse)
{
	s->started_ms = session_now_ms(s->loop);
	s->idle_since = s->started_ms;
	session_peer(s);
	uv_tcp_nodelay(&s->tcp, 1);
	log_info("sess=%s event=connect client=%s port=%d", s->id, s->client_ip, s->client_port);
	s->smtp = smtp_new(s->cfg, &session_smtp_ops, s, s->id, s->client_ip);
	s->relay = relay_new(s->loop, s->pool, s->cfg, &session_relay_cbs, s, s->id, s->client_ip,
	                     s->client_port);
	if (!s->smtp || !s->relay) {
		session_close(s, "out of memory");
		return;
	}
	smtp_set_tls_available(s->smtp, tls_context_usable(s->tc));
	if (refuse) {
		char reply[300];
		int n = snprintf(reply, sizeof reply, "421 4.7.0 %s %s\r\n", s->cfg->hostname, refuse);
		session_op_reply(s, reply, (size_t)n);
		session_op_close(s, "refused");
		session_flush(s);
		return;
	}
	if (s->cfg->greeting_delay_ms) {
		s->pregreet = true;
		uv_timer_start(&s->timer, session_greet_cb, s->cfg->greeting_delay_ms, 0);
		if (uv_read_start((uv_stream_t *)&s->tcp, session_alloc_cb, session_read_cb) == 0)
			s->reading = true;
		return;
	}
	smtp_greet(s->smtp);
	session_client_line(s);
	session_process(s);
}

void session_shutdown(struct session *s)
{
	if (s->closing || !s->smtp)
		return;
	s->draining = true;
	session_process(s);
}

void session_shutdown_now(struct session *s)
{
	if (s->closing || !s->smtp)
		return;
	s->draining = true;
	if (s->tls && !s->tls_ready) {
		session_close(s, "shutdown during tls handshake");
		return;
	}
	if (smtp_delivering(s->smtp))
		return; /* closes once the verdict is in */
	log_info("sess=%s event=shutdown_cut", s->id);
	smtp_goodbye(s->smtp, "4.3.2", "Service shutting down, try again later", "shutdown");
	session_flush(s);
	/* A client that reads nothing must not hold the stop up. */
	if (!s->closing && s->unsent)
		session_close(s, "shutdown");
}

static void session_handle_closed_cb(uv_handle_t *h)
{
	struct session *s = h->data;
	if (--s->handles > 0)
		return;
	smtp_free(s->smtp);
	free(s->in);
	free(s->out);
	free(s->cout);
	/* GnuTLS holds pointers to the credentials until gnutls_deinit. */
	tls_free(s->tls);
	tls_context_unref(s->tc);
	config_unref(s->cfg);
	s->owner.gone(s->owner.arg, s);
	free(s);
}

void session_close(struct session *s, const char *reason)
{
	if (s->closing)
		return;
	s->closing = true;
	uint64_t ms = session_now_ms(s->loop) - s->started_ms;
	log_info("sess=%s event=disconnect client=%s reason=\"%s\" duration=%llu.%03llus commands=%u",
	         s->id, s->client_ip, reason ? reason : "", (unsigned long long)(ms / 1000),
	         (unsigned long long)(ms % 1000), s->smtp ? smtp_commands(s->smtp) : 0);
	/* The backend connection goes first: a message in flight loses its
	 * final dot, so nothing half-received is delivered. */
	relay_free(s->relay);
	s->relay = NULL;
	uv_close((uv_handle_t *)&s->tcp, session_handle_closed_cb);
	uv_close((uv_handle_t *)&s->timer, session_handle_closed_cb);
}
