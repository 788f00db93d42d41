/* check: the unit tests' assertion helper. Each CHECK records a pass or a
 * failure (file:line, the current case name, what was expected and got, with
 * control bytes escaped); check_summary() prints "N passed, N failed" and
 * returns the exit status. Header-only: include it from one .c file. */
#ifndef MXFRONT_CHECK_H
#define MXFRONT_CHECK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* CHECK(cond, "") is the usual way to say nothing more. */
#pragma GCC diagnostic ignored "-Wformat-zero-length"

static unsigned check_passed, check_failed;
static const char *check_case_name = "";

/* Names the case the following checks belong to (borrowed: a literal or a
 * table entry that outlives the checks). */
static inline void check_case(const char *name)
{
	check_case_name = name ? name : "";
}

/* Writes LEN bytes of S to F in C-string notation ("a\r\n" shows as a\r\n). */
static inline void check_put_escaped(FILE *f, const char *s, size_t len)
{
	if (!s) {
		fputs("(null)", f);
		return;
	}
	fputc('"', f);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '\r': fputs("\\r", f); break;
		case '\n': fputs("\\n", f); break;
		case '\t': fputs("\\t", f); break;
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		default:
			if (c < 32 || c >= 127)
				fprintf(f, "\\x%02x", c);
			else
				fputc(c, f);
		}
	}
	fputc('"', f);
}

static inline void check_fail_head(const char *file, int line)
{
	check_failed++;
	fprintf(stderr, "%s:%d: FAIL [%s] ", file, line, check_case_name);
}

static inline bool check_report(bool ok, const char *file, int line, const char *expr,
                                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static inline bool check_report(bool ok, const char *file, int line, const char *expr,
                                const char *fmt, ...)
{
	if (ok) {
		check_passed++;
		return true;
	}
	check_fail_head(file, line);
	fputs(expr, stderr);
	if (fmt && fmt[0]) {
		va_list ap;
		va_start(ap, fmt);
		fputs(": ", stderr);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
	}
	fputc('\n', stderr);
	return false;
}

static inline bool check_mem_eq(const char *file, int line, const char *what, const char *got,
                                size_t gotlen, const char *want, size_t wantlen)
{
	bool ok = got && want ? gotlen == wantlen && memcmp(got, want, gotlen) == 0 : got == want;
	if (ok) {
		check_passed++;
		return true;
	}
	check_fail_head(file, line);
	fprintf(stderr, "%s\n     got: ", what);
	check_put_escaped(stderr, got, gotlen);
	fputs("\n    want: ", stderr);
	check_put_escaped(stderr, want, wantlen);
	fputc('\n', stderr);
	return false;
}

static inline bool check_int_eq(const char *file, int line, const char *what, long long got,
                                long long want)
{
	if (got == want) {
		check_passed++;
		return true;
	}
	check_fail_head(file, line);
	fprintf(stderr, "%s: got %lld, want %lld\n", what, got, want);
	return false;
}

/* CHECK(cond, fmt, ...): FMT explains the failure ("" for nothing more). */
#define CHECK(cond, ...) check_report(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)

/* Like CHECK, but a pass is not counted (for checks run on every line of
 * something that is counted once). */
#define CHECK_SILENT(cond, ...)                                                              \
	((cond) ? true : check_report(false, __FILE__, __LINE__, #cond, __VA_ARGS__))

/* NUL-terminated strings; NULL equals only NULL. */
#define CHECK_STR_EQ(got, want)                                                              \
	do {                                                                                 \
		const char *check_g_ = (got), *check_w_ = (want);                            \
		check_mem_eq(__FILE__, __LINE__, #got, check_g_, check_g_ ? strlen(check_g_) : 0, \
		             check_w_, check_w_ ? strlen(check_w_) : 0);                     \
	} while (0)

/* GOT[0..GOTLEN) against the NUL-terminated WANT. */
#define CHECK_MEM_EQ(got, gotlen, want)                                                      \
	do {                                                                                 \
		const char *check_w_ = (want);                                               \
		check_mem_eq(__FILE__, __LINE__, #got, (got), (gotlen), check_w_,            \
		             check_w_ ? strlen(check_w_) : 0);                                \
	} while (0)

#define CHECK_INT_EQ(got, want) check_int_eq(__FILE__, __LINE__, #got, (long long)(got), (long long)(want))

/* Prints the totals; returns the exit status (non-zero if any check failed). */
static inline int check_summary(void)
{
	printf("%u passed, %u failed\n", check_passed, check_failed);
	fflush(stdout);
	return check_failed ? 1 : 0;
}

#endif
