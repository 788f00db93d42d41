/* ticketkey: owns the process's random ticket key (static, made once) and
 * reads key files. The key of a file is the SHA-512 of its bytes, so any
 * random file of 32 bytes or more serves, whatever tool wrote it. */
#include "ticketkey.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct ticketkey ticketkey_own;
static int ticketkey_own_rc = -1;
static pthread_once_t ticketkey_once = PTHREAD_ONCE_INIT;

/* The id: the start of a SHA-256 of the key, which says nothing of it. */
static void ticketkey_set_id(struct ticketkey *k)
{
	unsigned char digest[32];
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, k->key, sizeof k->key, digest) < 0) {
		strcpy(k->id, "unknown");
		return;
	}
	for (int i = 0; i < 8; i++)
		snprintf(k->id + 2 * i, 3, "%02x", digest[i]);
}

static void ticketkey_own_init(void)
{
	if (gnutls_rnd(GNUTLS_RND_KEY, ticketkey_own.key, sizeof ticketkey_own.key) == 0) {
		ticketkey_set_id(&ticketkey_own);
		ticketkey_own_rc = 0;
	}
}

int ticketkey_process(struct ticketkey *out)
{
	pthread_once(&ticketkey_once, ticketkey_own_init);
	if (ticketkey_own_rc < 0)
		return -1;
	*out = ticketkey_own;
	return 0;
}

int ticketkey_load(const char *path, struct ticketkey *out, char *err, size_t errsize)
{
	unsigned char buf[TICKETKEY_FILE_MAX + 1];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, errsize, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errsize, "%s: not a regular file", path);
		close(fd);
		return -1;
	}
	size_t len = 0;
	ssize_t n;
	while (len < sizeof buf && (n = read(fd, buf + len, sizeof buf - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			snprintf(err, errsize, "%s: %s", path, strerror(errno));
			close(fd);
			return -1;
		}
		len += (size_t)n;
	}
	close(fd);
	int rc = 0;
	if (len < TICKETKEY_FILE_MIN || len > TICKETKEY_FILE_MAX) {
		snprintf(err, errsize, "%s: %zu%s bytes; a ticket key file holds %d to %d random bytes "
		         "(head -c 64 /dev/urandom)", path, len, len > TICKETKEY_FILE_MAX ? " or more" : "",
		         TICKETKEY_FILE_MIN, TICKETKEY_FILE_MAX);
		rc = -1;
	} else if (gnutls_hash_fast(GNUTLS_DIG_SHA512, buf, len, out->key) < 0) {
		snprintf(err, errsize, "%s: cannot hash the key", path);
		rc = -1;
	} else {
		ticketkey_set_id(out);
		out->others_can_read = (st.st_mode & S_IROTH) != 0;
	}
	gnutls_memset(buf, 0, sizeof buf);
	return rc;
}
