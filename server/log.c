/* log: formats key=value event lines and writes each with a single write(2).
 * Owns nothing but the level and whether stderr is the journal; never
 * blocks on anything but stderr itself. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = LOG_LEVEL_INFO;

static const char *const log_level_names[] = { "debug", "info", "warn", "error" };
/* syslog priorities (sd-daemon(3) prefixes): debug 7, info 6, warning 4, err 3. */
static const int log_level_prio[] = { 7, 6, 4, 3 };
static bool log_journal;

void log_init(void)
{
	/* systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected to
	 * the journal; stderr may have been redirected since. */
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	log_journal = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
	              fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
	              (unsigned long long)st.st_ino == ino;
}

void log_set_level(enum log_level level)
{
	atomic_store(&log_level, level);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if ((int)level < atomic_load(&log_level))
		return;
	char line[2048];
	size_t n;
	if (log_journal) {
		/* The journal stamps each line itself and reads the priority. */
		n = (size_t)snprintf(line, sizeof line, "<%d>%s ", log_level_prio[level],
		                     log_level_names[level]);
	} else {
		struct timespec now;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &now);
		gmtime_r(&now.tv_sec, &tm);
		n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s ", now.tv_nsec / 1000000,
		                      log_level_names[level]);
	}
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += (size_t)m;
	if (n > sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	/* A short write to stderr loses part of a log line, never more. */
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

static int log_needs_quotes(const char *s, size_t len)
{
	if (len == 0)
		return 1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\')
			return 1;
	}
	return 0;
}

char *log_quote(char *out, size_t outsize, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	int quoted = log_needs_quotes(s, len);
	size_t o = 0, limit = outsize - 1;
	if (outsize < 8) {
		out[0] = '\0';
		return out;
	}
	if (quoted)
		out[o++] = '"';
	/* Leave room for `..."` plus the NUL. */
	size_t room = limit - 5;
	size_t i;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char tmp[4];
		size_t k = 0;
		if (c < ' ' || c >= 0x7f) {
			tmp[k++] = '\\';
			tmp[k++] = 'x';
			tmp[k++] = hex[c >> 4];
			tmp[k++] = hex[c & 15];
		} else if (c == '"' || c == '\\') {
			tmp[k++] = '\\';
			tmp[k++] = (char)c;
		} else {
			tmp[k++] = (char)c;
		}
		if (o + k > room)
			break;
		memcpy(out + o, tmp, k);
		o += k;
	}
	if (i < len) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	if (quoted)
		out[o++] = '"';
	out[o] = '\0';
	return out;
}
