/* log: one line per event, key=value, on stderr.
 * Lines are formatted into one buffer and written with one write(2), so lines
 * from several threads never interleave. Client text goes through log_quote. */
#ifndef MXFRONT_LOG_H
#define MXFRONT_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Once at start: when stderr is the journal ($JOURNAL_STREAM), each line
 * starts with its syslog priority ("<6>info ...") instead of a timestamp. */
void log_init(void);

/* Lines below LEVEL are dropped. */
void log_set_level(enum log_level level);

/* Writes "ts level " (journal: "<prio>level ") + the formatted text + "\n". */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Quotes LEN bytes of untrusted S for a log value into OUT (always
 * NUL-terminated): wrapped in double quotes when needed, control and 8-bit
 * bytes as \xNN, cut with "..." when longer than fits. Returns OUT. */
char *log_quote(char *out, size_t outsize, const char *s, size_t len);

#endif
