/* Unit tests for outq, the output queue of a stream, over a socketpair in
 * a real libuv loop (no network): bytes written at once when the socket
 * takes them, queued in order when it does not, the high-water mark set
 * and the drained callback once the peer reads below the low one, the empty
 * callback, errors when the peer is gone, silence after outq_close. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "outq.h"

struct t {
	uv_loop_t loop;
	uv_pipe_t pipe;
	int peer;
	struct outq q;
	unsigned drained, empty, errors;
	int last_error;
};

static void t_error_cb(void *owner, int status)
{
	struct t *t = owner;
	t->errors++;
	t->last_error = status;
}

static void t_drained_cb(void *owner)
{
	((struct t *)owner)->drained++;
}

static void t_empty_cb(void *owner)
{
	((struct t *)owner)->empty++;
}

static const struct outq_cbs t_cbs = { t_error_cb, t_drained_cb, t_empty_cb };

static int t_init(struct t *t, size_t high, size_t low)
{
	int sv[2];
	memset(t, 0, sizeof *t);
	if (!CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0, "socketpair"))
		return -1;
	/* A small send buffer, so that the queue fills quickly. */
	int small = 4096;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
	uv_loop_init(&t->loop);
	uv_pipe_init(&t->loop, &t->pipe, 0);
	uv_pipe_open(&t->pipe, sv[0]);
	t->peer = sv[1];
	outq_init(&t->q, (uv_stream_t *)&t->pipe, high, low, &t_cbs, t);
	return 0;
}

static void t_fini(struct t *t)
{
	outq_close(&t->q);
	uv_close((uv_handle_t *)&t->pipe, NULL);
	uv_run(&t->loop, UV_RUN_DEFAULT);
	uv_loop_close(&t->loop);
	if (t->peer >= 0)
		close(t->peer);
}

static void t_write(struct t *t, char fill, size_t len)
{
	char *b = malloc(len);
	memset(b, fill, len);
	outq_write(&t->q, b, b, len);
}

/* Reads what the peer has, up to MAX bytes, into OUT (may be NULL). */
static size_t t_read(struct t *t, char *out, size_t max)
{
	char buf[65536];
	size_t got = 0;
	for (;;) {
		uv_run(&t->loop, UV_RUN_NOWAIT);
		ssize_t n = read(t->peer, buf, sizeof buf < max - got ? sizeof buf : max - got);
		if (n <= 0)
			break;
		if (out)
			memcpy(out + got, buf, (size_t)n);
		got += (size_t)n;
		if (got == max)
			break;
	}
	uv_run(&t->loop, UV_RUN_NOWAIT);
	return got;
}

static void test_at_once(void)
{
	struct t t;
	check_case("small write leaves at once");
	if (t_init(&t, 1024, 512) < 0)
		return;
	t_write(&t, 'a', 100);
	CHECK_INT_EQ(t.q.pending, 0);
	CHECK_INT_EQ(t.q.written, 100);
	CHECK(!t.q.above_high, "");
	char got[100];
	CHECK_INT_EQ(t_read(&t, got, sizeof got), 100);
	CHECK(got[0] == 'a' && got[99] == 'a', "bytes");
	CHECK_INT_EQ(t.errors, 0);
	t_fini(&t);
}

static void test_backpressure(void)
{
	struct t t;
	check_case("high water, in order, drained below low, then empty");
	if (t_init(&t, 64 * 1024, 32 * 1024) < 0)
		return;
	size_t total = 0;
	char fill = 'a';
	while (!t.q.above_high && total < 8 * 1024 * 1024) {
		t_write(&t, fill, 16 * 1024);
		total += 16 * 1024;
		fill = fill == 'z' ? 'a' : (char)(fill + 1);
	}
	CHECK(t.q.above_high, "above high after %zu bytes", total);
	CHECK(t.q.pending > 64 * 1024, "pending %zu", t.q.pending);
	CHECK_INT_EQ(t.drained, 0);
	CHECK_INT_EQ(t.empty, 0);
	char *got = malloc(total);
	size_t n = 0;
	while (n < total) {
		size_t r = t_read(&t, got + n, total - n);
		if (r == 0)
			break;
		n += r;
	}
	CHECK_INT_EQ(n, total);
	bool ordered = true;
	fill = 'a';
	for (size_t i = 0; i < total; i += 16 * 1024) {
		ordered = ordered && got[i] == fill && got[i + 16 * 1024 - 1] == fill;
		fill = fill == 'z' ? 'a' : (char)(fill + 1);
	}
	CHECK(ordered, "bytes arrive in the order written");
	CHECK_INT_EQ(t.drained, 1);
	CHECK(t.empty >= 1, "empty after everything was written");
	CHECK_INT_EQ(t.q.pending, 0);
	CHECK_INT_EQ(t.q.written, total);
	CHECK(!t.q.above_high, "");
	free(got);
	t_fini(&t);
}

static void test_peer_gone(void)
{
	struct t t;
	check_case("peer gone: error, once per failed write");
	if (t_init(&t, 64 * 1024, 32 * 1024) < 0)
		return;
	close(t.peer);
	t.peer = -1;
	t_write(&t, 'x', 100);
	uv_run(&t.loop, UV_RUN_NOWAIT);
	CHECK(t.errors >= 1, "error reported");
	CHECK(t.last_error == UV_EPIPE || t.last_error == UV_ECONNRESET, "error %d", t.last_error);
	CHECK_INT_EQ(t.q.pending, 0);
	t_fini(&t);
}

static void test_closed_is_silent(void)
{
	struct t t;
	check_case("outq_close: no callback afterwards");
	if (t_init(&t, 4096, 2048) < 0)
		return;
	for (int i = 0; i < 64 && !t.q.above_high; i++)
		t_write(&t, 'c', 16 * 1024);
	CHECK(t.q.above_high, "");
	outq_close(&t.q);
	t_write(&t, 'd', 10); /* freed, not written */
	t_read(&t, NULL, 16 * 1024 * 64);
	CHECK_INT_EQ(t.drained, 0);
	CHECK_INT_EQ(t.empty, 0);
	CHECK_INT_EQ(t.errors, 0);
	t_fini(&t);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN); /* as the daemon does */
	test_at_once();
	test_backpressure();
	test_peer_gone();
	test_closed_is_silent();
	return check_summary();
}
