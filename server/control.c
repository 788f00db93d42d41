/* control: owns the control socket's listening handle and its client
 * connections on the main loop, and the blocking client the CLI commands
 * use. Answers from metrics (health, scoreboard) and reload (verdicts);
 * holds no state of its own beyond the connections. */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "growbuf.h"
#include "log.h"
#include "metrics.h"

#define CONTROL_LINE_MAX 256

struct control_client;

struct control {
	uv_pipe_t server;
	uv_loop_t *loop;
	struct reload *reload;
	char *path;
	struct control_client *clients;
	bool closing;
};

/* One connection: one command, one answer. */
struct control_client {
	uv_pipe_t pipe;
	struct control *c;
	struct control_client *next, *prev;
	char line[CONTROL_LINE_MAX];
	size_t len;
	bool answered;
};

static void control_free_now(struct control *c)
{
	free(c->path);
	free(c);
}

static void control_client_closed_cb(uv_handle_t *h)
{
	struct control_client *cl = h->data;
	struct control *c = cl->c;
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		c->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	free(cl);
	if (c->closing && !c->clients && uv_is_closing((uv_handle_t *)&c->server) &&
	    !c->server.data)
		control_free_now(c);
}

static void control_client_close(struct control_client *cl)
{
	if (uv_is_closing((uv_handle_t *)&cl->pipe))
		return;
	/* A reload it asked for must not answer into a freed client. */
	reload_forget(cl->c->reload, cl);
	uv_close((uv_handle_t *)&cl->pipe, control_client_closed_cb);
}

struct control_write {
	uv_write_t req;
	char *data;
};

static void control_written_cb(uv_write_t *req, int status)
{
	struct control_write *w = (struct control_write *)req;
	struct control_client *cl = req->handle->data;
	free(w->data);
	free(w);
	control_client_close(cl);
}

/* Sends "STATUS TEXT\n" and BODY, then closes. */
static void control_answer(struct control_client *cl, int status, const char *text,
                           const char *body, size_t bodylen)
{
	struct growbuf b = { 0 };
	char head[800];
	int n = snprintf(head, sizeof head, "%d %s\n", status, text);
	struct control_write *w = calloc(1, sizeof *w);
	cl->answered = true;
	if (!w || growbuf_append(&b, head, (size_t)n) < 0 ||
	    (bodylen && growbuf_append(&b, body, bodylen) < 0)) {
		free(w);
		growbuf_free(&b);
		control_client_close(cl);
		return;
	}
	size_t len;
	w->data = growbuf_take(&b, &len);
	uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
	if (uv_write(&w->req, (uv_stream_t *)&cl->pipe, &buf, 1, control_written_cb) < 0) {
		free(w->data);
		free(w);
		control_client_close(cl);
	}
}

static void control_reloaded_cb(void *arg, bool ok, const char *text)
{
	struct control_client *cl = arg;
	control_answer(cl, ok ? 200 : 500, text, NULL, 0);
}

static void control_command(struct control_client *cl, const char *cmd)
{
	if (strcmp(cmd, "health") == 0) {
		char reason[600];
		bool ok = metrics_healthy(reason, sizeof reason);
		control_answer(cl, ok ? 200 : 503, reason, NULL, 0);
	} else if (strcmp(cmd, "senders") == 0) {
		char *table;
		size_t len;
		if (metrics_senders_table(&table, &len) < 0) {
			control_answer(cl, 500, "out of memory", NULL, 0);
			return;
		}
		control_answer(cl, 200, "senders", table, len);
		free(table);
	} else if (strcmp(cmd, "reload") == 0) {
		if (reload_request(cl->c->reload, control_reloaded_cb, cl) < 0)
			control_answer(cl, 500, "reload failed: out of memory", NULL, 0);
	} else {
		control_answer(cl, 400, "unknown command (reload, health, senders)", NULL, 0);
	}
}

static void control_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct control_client *cl = h->data;
	buf->base = cl->line + cl->len;
	buf->len = sizeof cl->line - 1 - cl->len;
}

static void control_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct control_client *cl = s->data;
	if (nread < 0) {
		control_client_close(cl);
		return;
	}
	cl->len += (size_t)nread;
	cl->line[cl->len] = '\0';
	char *nl = strchr(cl->line, '\n');
	if (!nl && cl->len < sizeof cl->line - 1)
		return;
	uv_read_stop(s);
	if (!nl) {
		control_answer(cl, 400, "command line too long", NULL, 0);
		return;
	}
	*nl = '\0';
	if (nl > cl->line && nl[-1] == '\r')
		nl[-1] = '\0';
	control_command(cl, cl->line);
}

static void control_connection_cb(uv_stream_t *server, int status)
{
	struct control *c = server->data;
	if (status < 0)
		return;
	struct control_client *cl = calloc(1, sizeof *cl);
	if (!cl)
		return;
	cl->c = c;
	uv_pipe_init(c->loop, &cl->pipe, 0);
	cl->pipe.data = cl;
	cl->next = c->clients;
	if (c->clients)
		c->clients->prev = cl;
	c->clients = cl;
	if (uv_accept(server, (uv_stream_t *)&cl->pipe) < 0) {
		control_client_close(cl);
		return;
	}
	/* The stop must not wait for a client. */
	uv_unref((uv_handle_t *)&cl->pipe);
	uv_read_start((uv_stream_t *)&cl->pipe, control_alloc_cb, control_read_cb);
}

const char *control_path(const struct config *cfg, bool client, char *buf, size_t size)
{
	const char *rt = getenv("RUNTIME_DIRECTORY");
	if (cfg->control_socket) {
		snprintf(buf, size, "%s", cfg->control_socket);
	} else if (rt && rt[0]) {
		/* Several directories are separated by ':': the first is ours. */
		size_t n = strcspn(rt, ":");
		snprintf(buf, size, "%.*s/control", (int)n, rt);
	} else if (client) {
		snprintf(buf, size, "/run/mxfront/control");
	} else {
		return NULL;
	}
	return buf;
}

/* Whether something answers on the unix socket PATH. */
static bool control_alive(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	bool alive = connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0;
	close(fd);
	return alive;
}

static void control_server_closed_cb(uv_handle_t *h)
{
	struct control *c = h->data;
	c->server.data = NULL;
	if (!c->clients)
		control_free_now(c);
}

struct control *control_new(uv_loop_t *loop, struct reload *r, const char *path, char *err,
                            size_t errsize)
{
	struct control *c = calloc(1, sizeof *c);
	struct stat st;
	if (!c || !(c->path = strdup(path))) {
		free(c);
		snprintf(err, errsize, "control socket %s: out of memory", path);
		return NULL;
	}
	c->loop = loop;
	c->reload = r;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode) || control_alive(path)) {
			snprintf(err, errsize, "control socket %s: %s", path,
			         S_ISSOCK(st.st_mode) ? "in use by a running mxfront" : "not a socket");
			control_free_now(c);
			return NULL;
		}
		unlink(path); /* left by a daemon that did not stop cleanly */
	}
	uv_pipe_init(loop, &c->server, 0);
	c->server.data = c;
	int rc = uv_pipe_bind(&c->server, path);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&c->server, 16, control_connection_cb);
	if (rc < 0) {
		snprintf(err, errsize, "control socket %s: %s", path, uv_strerror(rc));
		c->closing = true;
		uv_close((uv_handle_t *)&c->server, control_server_closed_cb);
		return NULL;
	}
	/* Owner and group (mxfront's) may talk to it; the unit's umask may say less. */
	chmod(path, 0660);
	uv_unref((uv_handle_t *)&c->server);
	log_info("event=control_listen path=%s", path);
	return c;
}

void control_free(struct control *c)
{
	if (!c)
		return;
	c->closing = true;
	unlink(c->path);
	for (struct control_client *cl = c->clients; cl; cl = cl->next)
		control_client_close(cl);
	uv_close((uv_handle_t *)&c->server, control_server_closed_cb);
}

/* ---- the client ---- */

static long control_ms_left(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

int control_ask(const char *path, const char *command, int timeout_ms, int *status, char **body,
                char *err, size_t errsize)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct growbuf b = { 0 };
	struct timespec deadline;
	char line[CONTROL_LINE_MAX];
	if (strlen(path) >= sizeof sun.sun_path) {
		snprintf(err, errsize, "%s: path too long", path);
		return -1;
	}
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		snprintf(err, errsize, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	int n = snprintf(line, sizeof line, "%s\n", command);
	if (write(fd, line, (size_t)n) != n) {
		snprintf(err, errsize, "%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	for (;;) {
		char chunk[4096];
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long left = control_ms_left(&deadline);
		if (left <= 0 || poll(&p, 1, (int)left) == 0) {
			snprintf(err, errsize, "%s: no answer within %d s", path, timeout_ms / 1000);
			break;
		}
		ssize_t got = read(fd, chunk, sizeof chunk);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			snprintf(err, errsize, "%s: %s", path, strerror(errno));
			break;
		}
		if (got == 0) {
			close(fd);
			if (growbuf_append(&b, "", 1) < 0 || b.len < 5 || b.data[3] != ' ') {
				snprintf(err, errsize, "%s: no answer (mxfront closed the connection)", path);
				growbuf_free(&b);
				return -1;
			}
			size_t len;
			char *all = growbuf_take(&b, &len);
			*status = atoi(all);
			memmove(all, all + 4, len - 4);
			*body = all;
			return 0;
		}
		if (growbuf_append(&b, chunk, (size_t)got) < 0) {
			snprintf(err, errsize, "out of memory");
			break;
		}
	}
	close(fd);
	growbuf_free(&b);
	return -1;
}
