/* session: owns one client connection (socket, timer, input buffer, reply
 * queue) and its smtp and relay objects; session_close() is the only way out.
 * Memory is bounded: input to SESSION_IN_MAX, replies and backend data to
 * their high-water marks, beyond which reading stops (backpressure). */
#include "session.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

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

	char id[16];
	char client_ip[INET6_ADDRSTRLEN];
	int client_port;
	uint64_t started_ms;
	int handles;

	bool closing;
	bool close_after_flush;
	const char *close_reason;
	bool reading;
	bool processing;
	bool again;

	char *out; /* replies not yet handed to uv_write, owned */
	size_t outlen, outcap;
	size_t unsent; /* bytes handed to uv_write, not yet written */

	struct smtp_framer framer;
	size_t inlen;
	char in[SESSION_IN_MAX];
};

struct session_wbuf {
	uv_write_t req;
	struct session *s;
	size_t len;
	char *data;
};

static void session_process(struct session *s);
static void session_flush(struct session *s);

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

static void session_flush(struct session *s)
{
	if (s->closing)
		return;
	if (s->relay)
		relay_flush(s->relay);
	if (s->outlen == 0) {
		if (s->close_after_flush && s->unsent == 0)
			session_close(s, s->close_reason);
		return;
	}
	struct session_wbuf *w = malloc(sizeof *w);
	if (!w) {
		session_close(s, "out of memory");
		return;
	}
	w->s = s;
	w->len = s->outlen;
	w->data = s->out;
	w->req.data = w;
	s->out = NULL;
	s->outlen = s->outcap = 0;
	s->unsent += w->len;
	uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
	int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, session_write_cb);
	if (rc < 0) {
		s->unsent -= w->len;
		free(w->data);
		free(w);
		session_close(s, uv_strerror(rc));
	}
}

/* ---- smtp ops ---- */

static void session_op_reply(void *ctx, const char *buf, size_t len)
{
	struct session *s = ctx;
	if (s->closing)
		return;
	if (s->outlen + len > s->outcap) {
		size_t cap = s->outcap ? s->outcap * 2 : 1024;
		while (cap < s->outlen + len)
			cap *= 2;
		char *grown = realloc(s->out, cap);
		if (!grown) {
			session_close(s, "out of memory");
			return;
		}
		s->out = grown;
		s->outcap = cap;
	}
	memcpy(s->out + s->outlen, buf, len);
	s->outlen += len;
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

static const struct relay_cbs session_relay_cbs = {
	.hello = session_relay_hello,
	.reply = session_relay_reply,
	.data_done = session_relay_data_done,
	.failed = session_relay_failed,
	.drained = session_relay_drained,
};

/* ---- input ---- */

static void session_timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (smtp_busy(s->smtp)) {
		/* The relay times the backend; the client is not at fault. */
		uv_timer_again(t);
		return;
	}
	log_info("sess=%s event=timeout state=%s", s->id, smtp_in_data(s->smtp) ? "data" : "command");
	smtp_goodbye(s->smtp, "4.4.2", "Timeout, closing connection", "timeout");
	session_flush(s);
}

static void session_arm_timer(struct session *s)
{
	unsigned ms = smtp_in_data(s->smtp) ? s->cfg->data_timeout_ms : s->cfg->command_timeout_ms;
	uv_timer_start(&s->timer, session_timer_cb, ms, ms);
}

static void session_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct session *s = h->data;
	buf->base = s->in + s->inlen;
	buf->len = sizeof s->in - s->inlen;
}

static void session_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct session *s = stream->data;
	if (nread == 0 || nread == UV_ENOBUFS)
		return;
	if (nread < 0) {
		session_close(s, nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
		return;
	}
	s->inlen += (size_t)nread;
	session_arm_timer(s);
	session_process(s);
}

static bool session_backlogged(const struct session *s)
{
	return s->unsent + s->outlen >= SESSION_OUT_HIGH ||
	       (s->relay && relay_pending(s->relay) > RELAY_HIGH_WATER);
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
		size_t off = 0;
		while (!s->closing && !s->close_after_flush && !smtp_busy(s->smtp) &&
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
			if (line)
				smtp_line(s->smtp, line, len, flags);
		}
		memmove(s->in, s->in + off, s->inlen - off);
		s->inlen -= off;
	} while (s->again && !s->closing);
	s->processing = false;
	session_flush(s);
	if (s->closing)
		return;
	bool want = !s->close_after_flush && s->inlen < sizeof s->in && !session_backlogged(s);
	if (want && !s->reading) {
		if (uv_read_start((uv_stream_t *)&s->tcp, session_alloc_cb, session_read_cb) == 0)
			s->reading = true;
	} else if (!want && s->reading) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->reading = false;
	}
}

/* ---- lifecycle ---- */

static uint64_t session_now_ms(uv_loop_t *loop)
{
	return uv_now(loop);
}

static void session_make_id(char *out, size_t size)
{
	static atomic_uint_fast64_t counter;
	static uint64_t seed;
	if (!seed) {
		uint64_t r = 0;
		if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
			r = (uint64_t)time(NULL);
		seed = (r & 0xffffff) << 24 | 1;
	}
	uint64_t n = atomic_fetch_add(&counter, 1);
	snprintf(out, size, "%012llx", (unsigned long long)((seed + n) & 0xffffffffffffull));
}

struct session *session_new(uv_loop_t *loop, struct config *cfg, const struct session_owner *owner)
{
	struct session *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->loop = loop;
	s->cfg = config_ref(cfg);
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

void session_start(struct session *s, bool busy)
{
	s->started_ms = session_now_ms(s->loop);
	session_peer(s);
	uv_tcp_nodelay(&s->tcp, 1);
	log_info("sess=%s event=connect client=%s port=%d", s->id, s->client_ip, s->client_port);
	s->smtp = smtp_new(s->cfg, &session_smtp_ops, s, s->id, s->client_ip);
	s->relay = relay_new(s->loop, s->cfg, &session_relay_cbs, s, s->id, s->client_ip,
	                     s->client_port);
	if (!s->smtp || !s->relay) {
		session_close(s, "out of memory");
		return;
	}
	if (busy) {
		char reply[300];
		int n = snprintf(reply, sizeof reply, "421 4.7.0 %s Too many connections, try again later\r\n",
		                 s->cfg->hostname);
		session_op_reply(s, reply, (size_t)n);
		session_op_close(s, "too_many_clients");
		session_flush(s);
		return;
	}
	smtp_greet(s->smtp);
	session_arm_timer(s);
	session_process(s);
}

void session_shutdown(struct session *s)
{
	if (s->closing || !s->smtp)
		return;
	smtp_goodbye(s->smtp, "4.3.2", "Service shutting down, try again later", "shutdown");
	session_flush(s);
}

static void session_handle_closed_cb(uv_handle_t *h)
{
	struct session *s = h->data;
	if (--s->handles > 0)
		return;
	smtp_free(s->smtp);
	free(s->out);
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
