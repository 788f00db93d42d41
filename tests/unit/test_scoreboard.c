/* Unit tests for scoreboard: the organisation of an EHLO name (table of
 * names and their registrable domain through the public suffix list), and
 * tables of two workers merged, cut to the top N and an "other" row, and
 * formatted as `mxfront stats senders` prints them. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "scoreboard.h"

static const struct {
	const char *name, *helo, *want;
} org_cases[] = {
	{ "google", "mail-ed1-f41.google.com", "google.com" },
	{ "outlook", "EUR05-VI1-obe.outbound.protection.outlook.com", "outlook.com" },
	{ "upper case and trailing dot", "MX.Example.ORG.", "example.org" },
	{ "public suffix with two labels", "smtp.small.co.uk", "small.co.uk" },
	{ "unknown top-level name", "mta1.client.example", "client.example" },
	{ "the registrable domain itself", "client.example", "client.example" },
	{ "address literal", "[192.0.2.1]", "[address]" },
	{ "IPv6 literal", "[IPv6:2001:db8::1]", "[address]" },
	{ "bare address", "192.0.2.1", "[address]" },
	{ "no dot", "localhost", "[none]" },
	{ "a public suffix alone", "co.uk", "[none]" },
	{ "not a host name", "a\"b.example", "[none]" },
	{ "empty", "", "[none]" },
};

static void test_org(void)
{
	char out[SCOREBOARD_ORG_MAX];
	for (size_t i = 0; i < sizeof org_cases / sizeof org_cases[0]; i++) {
		check_case(org_cases[i].name);
		scoreboard_org(org_cases[i].helo, out, sizeof out);
		CHECK_STR_EQ(out, org_cases[i].want);
	}
}

static void test_merge_top_and_other(void)
{
	struct scoreboard *a = scoreboard_new(), *b = scoreboard_new();
	struct scoreboard_row *rows;
	size_t n;
	check_case("merge");
	for (int i = 0; i < 3; i++)
		scoreboard_count(a, "x.big.example", SCOREBOARD_SNI_SERVED, SCOREBOARD_TLS13);
	scoreboard_count(b, "y.big.example", SCOREBOARD_NO_SNI, SCOREBOARD_TLS12);
	scoreboard_count(a, "mail.mid.example", SCOREBOARD_NO_SNI, SCOREBOARD_TLS13);
	scoreboard_count(b, "mail.mid.example", SCOREBOARD_NO_SNI, SCOREBOARD_TLS13);
	scoreboard_count(b, "tiny.example", SCOREBOARD_PLAINTEXT, SCOREBOARD_NONE);
	scoreboard_count(a, "localhost", SCOREBOARD_SNI_UNKNOWN, SCOREBOARD_TLS13);
	struct scoreboard *both[] = { a, b };
	if (!CHECK(scoreboard_merge(both, 2, 2, &rows, &n) == 0, ""))
		return;
	if (CHECK(n == 3, "rows: %zu", n)) {
		CHECK_STR_EQ(rows[0].org, "big.example");
		CHECK(rows[0].total == 4, "%llu", (unsigned long long)rows[0].total);
		CHECK(rows[0].n[SCOREBOARD_SNI_SERVED][SCOREBOARD_TLS13] == 3, "");
		CHECK(rows[0].n[SCOREBOARD_NO_SNI][SCOREBOARD_TLS12] == 1, "");
		CHECK_STR_EQ(rows[1].org, "mid.example");
		CHECK(rows[1].total == 2, "");
		/* tiny.example and [none] */
		CHECK_STR_EQ(rows[2].org, "other");
		CHECK(rows[2].total == 2, "");
		CHECK(rows[2].n[SCOREBOARD_PLAINTEXT][SCOREBOARD_NONE] == 1, "");
	}
	check_case("table");
	char *text;
	size_t len;
	if (CHECK(scoreboard_table(rows, n, &text, &len) == 0, "")) {
		const char *want =
			"ORGANISATION                      SESSIONS    SNI-OK  SNI-UNKN    NO-SNI     PLAIN    TLS1.2    TLS1.3 NOSNI%\n"
			"big.example                              4         3         0         1         0         1         3   25.0\n"
			"mid.example                              2         0         0         2         0         0         2  100.0\n"
			"other                                    2         0         1         0         1         0         1    0.0\n";
		CHECK_STR_EQ(text, want);
		free(text);
	}
	free(rows);
	scoreboard_free(a);
	scoreboard_free(b);
}

static void test_capacity_overflow_goes_to_other(void)
{
	struct scoreboard *a = scoreboard_new();
	struct scoreboard_row *rows;
	size_t n;
	char helo[64];
	check_case("overflow");
	for (int i = 0; i < SCOREBOARD_CAPACITY; i++) {
		snprintf(helo, sizeof helo, "mx.org%d.example", i);
		scoreboard_count(a, helo, SCOREBOARD_NO_SNI, SCOREBOARD_TLS13);
	}
	if (!CHECK(scoreboard_merge(&a, 1, 100000, &rows, &n) == 0, ""))
		return;
	/* 3/4 of the slots are kept apart, the rest is "other". */
	CHECK(n == SCOREBOARD_CAPACITY / 4 * 3 + 1, "rows: %zu", n);
	CHECK_STR_EQ(rows[n - 1].org, "other");
	CHECK(rows[n - 1].total == SCOREBOARD_CAPACITY / 4, "%llu", (unsigned long long)rows[n - 1].total);
	free(rows);
	scoreboard_free(a);
}

int main(void)
{
	test_org();
	test_merge_top_and_other();
	test_capacity_overflow_goes_to_other();
	return check_summary();
}
