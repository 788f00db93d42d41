/* iplimit: per-client-address connection counting: concurrent connections
 * and connections per minute. Pure bookkeeping, no I/O and no lock: the
 * listener asks before it starts a session and tells when it ends, holding
 * the lock of the table its loops share. */
#ifndef MXFRONT_IPLIMIT_H
#define MXFRONT_IPLIMIT_H

#include <stdint.h>
#include <sys/socket.h>

struct iplimit;

enum iplimit_verdict {
	IPLIMIT_OK,
	IPLIMIT_TOO_MANY, /* concurrent connections from this address */
	IPLIMIT_TOO_FAST, /* connections per minute from this address */
};

struct iplimit *iplimit_new(void);
void iplimit_free(struct iplimit *t);

/* Counts a new connection from SA at NOW_MS against MAX_CONCURRENT and
 * MAX_PER_MINUTE (0: no limit). On IPLIMIT_OK the caller must call
 * iplimit_release() for SA when the connection ends; otherwise not. */
enum iplimit_verdict iplimit_acquire(struct iplimit *t, const struct sockaddr *sa, uint64_t now_ms,
                                     unsigned max_concurrent, unsigned max_per_minute);
void iplimit_release(struct iplimit *t, const struct sockaddr *sa);

/* Addresses currently tracked (for tests). */
unsigned iplimit_size(const struct iplimit *t);

#endif
