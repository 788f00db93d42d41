/* notify: the sd_notify(3) messages, through libsystemd. Owns nothing;
 * never fails the caller (a lost notification is logged at debug level). */
#include "notify.h"

#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "log.h"

static void notify_send(const char *msg)
{
	/* 0: not under systemd (no $NOTIFY_SOCKET); negative: not delivered. */
	int rc = sd_notify(0, msg);
	if (rc < 0)
		log_debug("event=notify_error rc=%d", rc);
}

void notify_ready(const char *status)
{
	char msg[600];
	snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
	notify_send(msg);
}

void notify_reloading(void)
{
	notify_send("RELOADING=1\nSTATUS=reloading");
}

void notify_stopping(void)
{
	notify_send("STOPPING=1\nSTATUS=stopping: sessions finish their transactions");
}

void notify_status(const char *status)
{
	char msg[600];
	snprintf(msg, sizeof msg, "STATUS=%s", status);
	notify_send(msg);
}
