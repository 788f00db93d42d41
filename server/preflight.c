/* preflight: the start's own decisions, asked ahead: who the daemon runs
 * as ([server] user/group) and whether each listen address can be bound
 * (privileged ports, addresses held by a running mxfront or another
 * program, found through /proc). Never prints, exits or keeps a socket. */
#include "preflight.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "listener.h"

int preflight_identity(const struct config *cfg, struct preflight_identity *id, const char **key,
                       char *err, size_t errsize)
{
	*id = (struct preflight_identity){ .change = false, .uid = geteuid(), .gid = getegid() };
	*key = "user";
	if (cfg->user[0] == '\0') {
		if (geteuid() == 0) {
			snprintf(err, errsize, "refusing to run as root: set [server] user "
			                       "(user = root to accept the risk)");
			return -1;
		}
		return 0;
	}
	struct passwd *pw = getpwnam(cfg->user);
	if (!pw) {
		snprintf(err, errsize, "no such user '%s'", cfg->user);
		return -1;
	}
	id->gid = pw->pw_gid;
	if (cfg->group[0]) {
		struct group *gr = getgrnam(cfg->group);
		if (!gr) {
			*key = "group";
			snprintf(err, errsize, "no such group '%s'", cfg->group);
			return -1;
		}
		id->gid = gr->gr_gid;
	}
	id->uid = pw->pw_uid;
	if (geteuid() != 0) {
		if (pw->pw_uid == geteuid())
			return 0;
		snprintf(err, errsize, "cannot switch to '%s' without root", cfg->user);
		return -1;
	}
	id->change = pw->pw_uid != 0; /* user = root: told to stay root */
	return 0;
}

gid_t preflight_key_group(const struct config *cfg)
{
	struct preflight_identity id;
	const char *key;
	char err[256];
	if (preflight_identity(cfg, &id, &key, err, sizeof err) == 0)
		return id.gid;
	struct group *gr = cfg->group[0] ? getgrnam(cfg->group) : NULL;
	struct passwd *pw = cfg->user[0] ? getpwnam(cfg->user) : NULL;
	return gr ? gr->gr_gid : pw ? pw->pw_gid : getegid();
}

/* Whether this process holds CAP_NET_BIND_SERVICE in its effective set. */
static bool preflight_can_bind_low(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) != 0)
		return false;
	return (data[CAP_NET_BIND_SERVICE / 32].effective >> (CAP_NET_BIND_SERVICE % 32)) & 1;
}

/* The first port an unprivileged process may bind (the kernel's setting). */
static unsigned preflight_first_free_port(void)
{
	unsigned port = 1024;
	FILE *f = fopen("/proc/sys/net/ipv4/ip_unprivileged_port_start", "r");
	if (f) {
		if (fscanf(f, "%u", &port) != 1)
			port = 1024;
		fclose(f);
	}
	return port;
}

/* A listening TCP socket, as /proc/net/tcp{,6} shows it. */
struct preflight_holder {
	unsigned long inode;
	unsigned uid;
	int pid;       /* 0 when no process of ours (or, for root, none at all) has it */
	char comm[32]; /* the program's name, when PID is known */
};

/* Whether address WANT (LEN bytes) and port PORT conflict with a listening
 * socket on HAVE:HPORT (equal, or either is the wildcard). */
static bool preflight_conflicts(const unsigned char *want, const unsigned char *have, size_t len,
                                unsigned port, unsigned hport)
{
	static const unsigned char any[16];
	return port == hport && (memcmp(want, have, len) == 0 || memcmp(want, any, len) == 0 ||
	                         memcmp(have, any, len) == 0);
}

/* Finds a socket in LISTEN state in /proc/net/FILE that conflicts with
 * WANT (4 or 16 bytes) : PORT. */
static bool preflight_find_listener(const char *file, const unsigned char *want, size_t len,
                                    unsigned port, struct preflight_holder *h)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/net/%s", file);
	FILE *f = fopen(path, "r");
	bool found = false;
	if (!f)
		return false;
	while (!found && fgets(line, sizeof line, f)) {
		char addr[33];
		unsigned hport, state, uid;
		unsigned long inode;
		unsigned char have[16];
		if (sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %u %*d %lu", addr, &hport,
		           &state, &uid, &inode) != 5 || state != 0x0A || strlen(addr) != len * 2)
			continue;
		/* The kernel prints each 32-bit word of the address as a host-order number. */
		for (size_t w = 0; w < len / 4; w++) {
			char word[9];
			memcpy(word, addr + w * 8, 8);
			word[8] = '\0';
			uint32_t v = (uint32_t)strtoul(word, NULL, 16);
			memcpy(have + w * 4, &v, 4);
		}
		if (preflight_conflicts(want, have, len, port, hport)) {
			*h = (struct preflight_holder){ .inode = inode, .uid = uid };
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* Fills H's PID and COMM with the process holding socket H->INODE, if this
 * process may see its descriptors (its own user's, or any as root). */
static void preflight_find_process(struct preflight_holder *h)
{
	char want[64];
	snprintf(want, sizeof want, "socket:[%lu]", h->inode);
	DIR *proc = opendir("/proc");
	struct dirent *p;
	while (proc && h->pid == 0 && (p = readdir(proc))) {
		if (p->d_name[0] < '1' || p->d_name[0] > '9')
			continue;
		char path[300];
		snprintf(path, sizeof path, "/proc/%s/fd", p->d_name);
		DIR *fds = opendir(path);
		struct dirent *fd;
		while (fds && h->pid == 0 && (fd = readdir(fds))) {
			char link[600], target[64];
			snprintf(link, sizeof link, "/proc/%s/fd/%s", p->d_name, fd->d_name);
			ssize_t n = readlink(link, target, sizeof target - 1);
			if (n <= 0)
				continue;
			target[n] = '\0';
			if (strcmp(target, want) == 0)
				h->pid = atoi(p->d_name);
		}
		if (fds)
			closedir(fds);
	}
	if (proc)
		closedir(proc);
	if (h->pid == 0)
		return;
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/comm", h->pid);
	FILE *f = fopen(path, "r");
	if (f && fgets(h->comm, sizeof h->comm, f))
		h->comm[strcspn(h->comm, "\n")] = '\0';
	if (f)
		fclose(f);
}

/* Who listens where A would, if anyone: true with H filled. */
static bool preflight_holder(const struct config_addr *a, struct preflight_holder *h)
{
	unsigned char want[16] = { 0 };
	unsigned port;
	bool found;
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->sa;
		memcpy(want, &sin->sin_addr, 4);
		port = ntohs(sin->sin_port);
		found = preflight_find_listener("tcp", want, 4, port, h);
		/* A dual-stack [::] socket takes IPv4 connections too. */
		if (!found && preflight_find_listener("tcp6", (unsigned char[16]){ 0 }, 16, port, h))
			found = true;
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->sa;
		memcpy(want, &sin6->sin6_addr, 16);
		port = ntohs(sin6->sin6_port);
		found = preflight_find_listener("tcp6", want, 16, port, h);
	}
	if (found)
		preflight_find_process(h);
	return found;
}

static unsigned preflight_port(const struct config_addr *a)
{
	if (a->sa.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
}

int preflight_listen(const struct config_addr *a, char *note, size_t notesize, char *err,
                     size_t errsize)
{
	unsigned port = preflight_port(a);
	note[0] = '\0';
	if (port == 0)
		return 0; /* any free port: nothing to check */
	if (port < preflight_first_free_port() && geteuid() != 0 && !preflight_can_bind_low()) {
		snprintf(err, errsize, "port %u is privileged: running as uid %u without root or "
		         "CAP_NET_BIND_SERVICE, mxfront could not bind %s (the systemd unit grants the "
		         "capability)", port, (unsigned)geteuid(), a->text);
		return -1;
	}
	struct preflight_holder h = { 0 };
	bool held = preflight_holder(a, &h);
	bool ours = held && strcmp(h.comm, "mxfront") == 0;
	char why[200];
	int error;
	if (listener_try_bind(a, &error, why, sizeof why) == 0) {
		if (ours)
			snprintf(note, notesize, "in use by mxfront (pid %d, uid %u): a reload keeps its "
			         "socket; another instance would share its connections", h.pid, h.uid);
		else if (held) {
			/* SO_REUSEPORT let us in beside it: it would take part of the connections. */
			snprintf(err, errsize, "%s is in use by %s%s (pid %d, uid %u), which would take part "
			         "of its connections", a->text, h.pid ? "" : "a process of ",
			         h.pid ? h.comm : "another user", h.pid, h.uid);
			return -1;
		}
		return 0;
	}
	if (error == EADDRINUSE && ours) {
		snprintf(note, notesize, "in use by mxfront (pid %d, uid %u): a reload keeps its socket "
		         "(as uid %u, a new instance could not bind it)", h.pid, h.uid,
		         (unsigned)geteuid());
		return 0;
	}
	if (error == EADDRINUSE && held && h.pid)
		snprintf(err, errsize, "cannot bind %s: in use by %s (pid %d, uid %u)", a->text, h.comm,
		         h.pid, h.uid);
	else if (error == EADDRINUSE && held)
		snprintf(err, errsize, "cannot bind %s: in use by a socket of uid %u", a->text, h.uid);
	else
		snprintf(err, errsize, "cannot bind %s: %s", a->text, why);
	return -1;
}
