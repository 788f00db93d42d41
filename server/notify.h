/* notify: tells systemd (Type=notify, through $NOTIFY_SOCKET) where the
 * daemon is: ready, reloading, stopping, and a one-line status. Does
 * nothing when not started by systemd. */
#ifndef MXFRONT_NOTIFY_H
#define MXFRONT_NOTIFY_H

/* READY=1 with STATUS=TEXT: serving (after the start or a reload). */
void notify_ready(const char *status);

/* RELOADING=1: a reload has begun (READY=1 follows when it ends). */
void notify_reloading(void);

/* STOPPING=1: the graceful stop has begun. */
void notify_stopping(void);

/* STATUS=TEXT alone. */
void notify_status(const char *status);

#endif
