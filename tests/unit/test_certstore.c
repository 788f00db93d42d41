/* Unit tests for certstore: name normalisation, then a certs.d/ generated at
 * run time (openssl keys, certtool certificates, in a mkdtemp directory) with
 * good, bad and odd certificates: which names are served and how, what is
 * reported for each bad one, the grouped credentials (checked by real TLS
 * handshakes in memory), foreach listing, counts and reference counting;
 * then reloads beside a previous generation: what is shared, what is
 * replaced, what a failing directory keeps, the diff, and releasing the
 * generations in either order and from two threads at once. */
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "certstore.h"
#include "check.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- certstore_normalize ---- */

#define L63 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"

struct normalize_case {
	const char *name;
	const char *input;
	size_t len; /* 0: strlen(input) */
	const char *want; /* NULL: refused */
};

/* Leading or trailing hyphens in a label are refused (RFC 1123 2.1, RFC 5891
 * 4.2.3.1): no CA issues such names, so such an SNI can only be noise. */
static const struct normalize_case normalize_cases[] = {
	{ "plain", "mx.a.example", 0, "mx.a.example" },
	{ "upper case", "MX.A.Example", 0, "mx.a.example" },
	{ "trailing dot", "Mixed.Case.Example.", 0, "mixed.case.example" },
	{ "single label", "localhost", 0, "localhost" },
	{ "digits, hyphen, underscore", "a-1_b.x0.example", 0, "a-1_b.x0.example" },
	{ "punycode", "xn--bcher-kva.example", 0, "xn--bcher-kva.example" },
	{ "63-octet label", L63 ".example", 0, L63 ".example" },
	{ "64-octet label", L63 "x.example", 0, NULL },
	{ "empty", "", 0, NULL },
	{ "only a dot", ".", 0, NULL },
	{ "two trailing dots", "a.example..", 0, NULL },
	{ "empty label", "bad..name", 0, NULL },
	{ "leading dot", ".example", 0, NULL },
	{ "leading hyphen", "-x.example", 0, NULL },
	{ "trailing hyphen", "x-.example", 0, NULL },
	{ "trailing hyphen, last label", "x.example-", 0, NULL },
	{ "space", "a b", 0, NULL },
	{ "wildcard", "*.example", 0, NULL },
	{ "star inside", "a*.example", 0, NULL },
	{ "UTF-8", "b\xc3\xbc" "cher.example", 0, NULL },
	{ "byte 0xff", "a\xff.example", 0, NULL },
	{ "control byte", "a\x01.example", 0, NULL },
	{ "embedded NUL", "a.ex\0ample", 10, NULL },
	{ "slash", "a/b.example", 0, NULL },
	{ "colon", "a.example:25", 0, NULL },
	{ "length bounds the input", "mx.a.example.evil", 12, "mx.a.example" },
};

static void test_normalize(void)
{
	char out[300], name[400];

	for (size_t i = 0; i < N_ELEMS(normalize_cases); i++) {
		const struct normalize_case *c = &normalize_cases[i];
		size_t len = c->len ? c->len : strlen(c->input);
		check_case(c->name);
		int n = certstore_normalize(c->input, len, out, sizeof out);
		if (c->want == NULL) {
			CHECK_INT_EQ(n, -1);
		} else {
			CHECK_INT_EQ(n, strlen(c->want));
			if (n >= 0)
				CHECK_STR_EQ(out, c->want);
		}
	}

	/* 253 octets (RFC 1035 2.3.4 without the root dot) is the most. */
	check_case("253 octets");
	snprintf(name, sizeof name, "%s.%s.%s.%.61s", L63, L63, L63, L63);
	CHECK_INT_EQ(strlen(name), 253);
	CHECK_INT_EQ(certstore_normalize(name, 253, out, sizeof out), 253);
	check_case("253 octets and the trailing dot");
	strcat(name, ".");
	CHECK_INT_EQ(certstore_normalize(name, 254, out, sizeof out), 253);
	check_case("254 octets");
	snprintf(name, sizeof name, "%s.%s.%s.%.62s", L63, L63, L63, L63);
	CHECK_INT_EQ(certstore_normalize(name, 254, out, sizeof out), -1);
	check_case("300 octets");
	memset(name, 'a', 300);
	for (size_t i = 50; i < 300; i += 50)
		name[i] = '.';
	CHECK_INT_EQ(certstore_normalize(name, 300, out, sizeof out), -1);
	check_case("output too small");
	CHECK_INT_EQ(certstore_normalize("mx.a.example", 12, out, 12), -1);
	CHECK_INT_EQ(certstore_normalize("mx.a.example", 12, out, 13), 12);
}

/* ---- fixtures ---- */

/* Keys in each format, a CA, and one directory per case. "leaf DIR KEY
 * TEMPLATE-LINES..." makes DIR/fullchain.pem (leaf + CA) and DIR/privkey.pem.
 * Validity dates are fixed (and the tests load with a fixed NOW) so that the
 * results do not depend on the day the tests run. */
static const char fixture_script[] =
	"set -e\n"
	"exec 2>fixtures.log\n"
	"CT_ARGS=\n"
	"key() { openssl genpkey -algorithm \"$@\" 2>/dev/null; }\n"
	"key EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key\n"
	"printf 'cn = \"Test CA\"\\nca\\ncert_signing_key\\nexpiration_days = 3650\\n' >ca.tmpl\n"
	"certtool --generate-self-signed --load-privkey ca.key --template ca.tmpl \\\n"
	"  --outfile ca.pem >/dev/null\n"
	"key RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-pkcs8.key\n"
	"key RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.tmp\n"
	"openssl rsa -in rsa.tmp -traditional -out rsa-trad.key\n"
	"key EC -pkeyopt ec_paramgen_curve:P-256 -out ec-pkcs8.key\n"
	"key EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.key\n"
	"openssl ecparam -genkey -name prime256v1 -out ec-sec1.key\n"
	"key ED25519 -out ed.key\n"
	"leaf() {\n"
	"  d=$1; k=$2; shift 2; mkdir -p $d\n"
	"  printf '%s\\n' \"$@\" 'tls_www_server' >$d.tmpl\n"
	"  grep -q activation_date $d.tmpl || echo 'activation_date = \"2020-01-01 00:00:00\"' >>$d.tmpl\n"
	"  grep -q expiration_date $d.tmpl || echo 'expiration_date = \"2035-01-01 00:00:00\"' >>$d.tmpl\n"
	"  certtool --generate-certificate $CT_ARGS --load-privkey $k \\\n"
	"    --load-ca-certificate ca.pem --load-ca-privkey ca.key --template $d.tmpl \\\n"
	"    --outfile $d/leaf.pem >/dev/null\n"
	"  cat $d/leaf.pem ca.pem >$d/fullchain.pem; rm $d/leaf.pem $d.tmpl; cp $k $d/privkey.pem\n"
	"}\n"
	"mkdir certs\n"
	"leaf certs/a rsa-pkcs8.key 'dns_name = \"mx.a.example\"' 'dns_name = \"mx2.a.example\"' "
	"'dns_name = \"MX.A.example\"'\n"
	"leaf certs/b ec-pkcs8.key 'dns_name = \"*.b.example\"'\n"
	"leaf certs/mixed ec-sec1.key 'dns_name = \"Mixed.Case.Example.\"'\n"
	"leaf certs/cnonly ec384.key 'cn = \"CN-Only.Example\"'\n"
	"leaf certs/both-ec ec-pkcs8.key 'dns_name = \"both.example\"' 'dns_name = \"both2.example\"' "
	"'dns_name = \"ec-only.example\"' 'expiration_date = \"2031-01-01 00:00:00\"'\n"
	"leaf certs/both-rsa rsa-trad.key 'dns_name = \"both2.example\"' 'dns_name = \"both.example\"'\n"
	"CT_ARGS='--key-type rsa-pss --hash sha256'\n" /* an RSA-PSS certificate, plain RSA key */
	"leaf certs/pss rsa-pkcs8.key 'dns_name = \"pss.example\"'\n"
	"CT_ARGS=\n"
	"leaf certs/ed ed.key 'dns_name = \"ed.example\"' 'cn = \"ignored-cn.example\"'\n"
	"leaf certs/renew-a ec-pkcs8.key 'dns_name = \"renew.example\"' "
	"'expiration_date = \"2030-01-01 00:00:00\"'\n"
	"leaf certs/renew-b ec-sec1.key 'dns_name = \"renew.example\"' "
	"'expiration_date = \"2034-01-01 00:00:00\"'\n"
	"leaf certs/badsan ec-pkcs8.key 'dns_name = \"good.example\"' 'dns_name = \"bad name!.example\"'\n"
	"leaf certs/expired ec-pkcs8.key 'dns_name = \"expired.example\"' "
	"'activation_date = \"2019-01-01 00:00:00\"' 'expiration_date = \"2020-01-02 00:00:00\"'\n"
	"leaf certs/future ec-pkcs8.key 'dns_name = \"future.example\"' "
	"'activation_date = \"2099-01-01 00:00:00\"' 'expiration_date = \"2100-01-01 00:00:00\"'\n"
	"leaf certs/mismatch ec-pkcs8.key 'dns_name = \"mismatch.example\"'\n"
	"cp ec-sec1.key certs/mismatch/privkey.pem\n"
	"leaf certs/mismatch-rsa rsa-pkcs8.key 'dns_name = \"mismatch-rsa.example\"'\n"
	"cp ec-pkcs8.key certs/mismatch-rsa/privkey.pem\n"
	"leaf certs/garbled ec-pkcs8.key 'dns_name = \"garbled.example\"'\n"
	"sed -i '3s/.*/!!garbage!!/' certs/garbled/fullchain.pem\n"
	"leaf certs/badkey ec-pkcs8.key 'dns_name = \"badkey.example\"'\n"
	"echo 'not a key' >certs/badkey/privkey.pem\n"
	"leaf certs/nokey ec-pkcs8.key 'dns_name = \"nokey.example\"'\n"
	"rm certs/nokey/privkey.pem\n"
	"leaf certs/noname ec-pkcs8.key 'ip_address = \"192.0.2.1\"'\n"
	"mkdir certs/emptydir\n"
	"leaf certs/.staging ec-pkcs8.key 'dns_name = \"staging.example\"'\n"
	"leaf elsewhere ec-pkcs8.key 'dns_name = \"link.example\"'\n"
	"ln -s ../elsewhere certs/link\n"
	"ln -s ../nowhere certs/dangling\n"
	"echo 'not a certificate directory' >certs/README\n"
	"mkdir empty\n"
	/* For reloads: each case copies reload/ (cp -a) and changes the copy. The
	 * files' mtimes are set well in the past, and differently in spare/, so
	 * that a reload can trust an unchanged stamp and sees every change, even
	 * one within a tick of the file system's clock. */
	"mkdir reload spare\n"
	"leaf reload/one ec-pkcs8.key 'dns_name = \"one.example\"'\n"
	"leaf reload/two ec-sec1.key 'dns_name = \"two.example\"' 'dns_name = \"two-b.example\"'\n"
	"leaf reload/trunc ec-pkcs8.key 'dns_name = \"trunc.example\"'\n"
	"leaf reload/mism ec-pkcs8.key 'dns_name = \"mism.example\"'\n"
	"leaf reload/gone ec384.key 'dns_name = \"gone.example\"'\n"
	"leaf reload/dual-ec ec-pkcs8.key 'dns_name = \"dual.example\"'\n"
	"leaf reload/dual-rsa rsa-pkcs8.key 'dns_name = \"dual.example\"'\n"
	"leaf reload/soon ec-pkcs8.key 'dns_name = \"soon.example\"' "
	"'expiration_date = \"2026-01-01 00:00:00\"'\n"
	"leaf spare/one-v2 ec-sec1.key 'dns_name = \"one.example\"' "
	"'expiration_date = \"2034-01-01 00:00:00\"'\n"
	"leaf spare/new ed.key 'dns_name = \"new.example\"'\n"
	"leaf spare/dual-rsa-v2 rsa-trad.key 'dns_name = \"dual.example\"' "
	"'expiration_date = \"2033-01-01 00:00:00\"'\n"
	"leaf spare/dual-ec-v2 ec-sec1.key 'dns_name = \"dual.example\"' "
	"'expiration_date = \"2032-01-01 00:00:00\"'\n"
	"find reload -type f -exec touch -d '2024-01-01 00:00:00' {} +\n"
	"find spare -type f -exec touch -d '2024-06-01 00:00:00' {} +\n";

static char fixture_dir[64];

/* The NOW the tests load with: every fixture is valid then, but the expired
 * and not-yet-valid ones. */
static time_t test_now(void)
{
	struct tm tm = { .tm_year = 2025 - 1900, .tm_mon = 5, .tm_mday = 1 };

	return timegm(&tm);
}

/* Generates the fixtures into a new temporary directory; false on failure. */
static bool fixtures_make(void)
{
	char cmd[256];

	snprintf(fixture_dir, sizeof fixture_dir, "/tmp/test_certstore.XXXXXX");
	if (mkdtemp(fixture_dir) == NULL)
		return false;
	if (chdir(fixture_dir) != 0)
		return false;
	FILE *f = fopen("make.sh", "w");
	if (f == NULL)
		return false;
	fputs(fixture_script, f);
	fclose(f);
	if (system("sh make.sh") != 0) {
		fprintf(stderr, "fixture generation failed; the end of its log:\n");
		snprintf(cmd, sizeof cmd, "tail -n 20 %s/fixtures.log >&2", fixture_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "(no log)\n");
		return false;
	}
	return true;
}

static void fixtures_remove(void)
{
	char cmd[128];

	if (fixture_dir[0] == '\0' || chdir("/") != 0)
		return;
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", fixture_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", fixture_dir);
}

/* ---- loading ---- */

struct reports {
	char lines[32][512];
	size_t n;
};

static void reports_add(void *arg, const char *path, const char *reason)
{
	struct reports *r = arg;

	if (r->n < N_ELEMS(r->lines))
		snprintf(r->lines[r->n], sizeof r->lines[0], "%s: %s", path, reason);
	r->n++;
}

static int cmp_line(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Each bad certificate: one report, naming its file, with this prefix. */
static const char *const want_reports[] = {
	"certs/badkey/privkey.pem: not a usable private key: ",
	"certs/badsan/fullchain.pem: ignoring 1 name that is not a host name: \"bad\\x20name!.example\"",
	"certs/dangling: cannot read: No such file or directory",
	"certs/emptydir/fullchain.pem: cannot read: No such file or directory",
	"certs/expired/fullchain.pem: expired on 2020-01-02",
	"certs/future/fullchain.pem: not valid before 2099-01-01",
	"certs/garbled/fullchain.pem: not a PEM certificate chain: ",
	"certs/mismatch-rsa/privkey.pem: key does not match certificate",
	"certs/mismatch/privkey.pem: key does not match certificate",
	"certs/nokey/privkey.pem: cannot read: No such file or directory",
	"certs/noname/fullchain.pem: no usable name (no DNS subjectAltName nor CN)",
};

static void test_reports(const struct reports *r)
{
	check_case("reports");
	CHECK_INT_EQ(r->n, N_ELEMS(want_reports));
	for (size_t i = 0; i < r->n && i < N_ELEMS(want_reports); i++) {
		const char *want = want_reports[i];
		CHECK(strncmp(r->lines[i], want, strlen(want)) == 0, "report %zu is \"%s\", want \"%s...\"",
		      i, r->lines[i], want);
	}
}

struct lookup_case {
	const char *name; /* already normalised */
	enum certstore_match want_how;
	const char *want_name, *want_label;
};

static const struct lookup_case lookup_cases[] = {
	{ "mx.a.example", CERTSTORE_MATCH_EXACT, "mx.a.example", "a" },
	{ "mx2.a.example", CERTSTORE_MATCH_EXACT, "mx2.a.example", "a" },
	{ "x.b.example", CERTSTORE_MATCH_WILDCARD, "*.b.example", "b" },
	{ "mx-1.b.example", CERTSTORE_MATCH_WILDCARD, "*.b.example", "b" },
	{ "a.b.b.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "b.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "*.b.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "mixed.case.example", CERTSTORE_MATCH_EXACT, "mixed.case.example", "mixed" },
	{ "cn-only.example", CERTSTORE_MATCH_EXACT, "cn-only.example", "cnonly" },
	{ "both.example", CERTSTORE_MATCH_EXACT, "both.example", "both-ec,both-rsa" },
	{ "both2.example", CERTSTORE_MATCH_EXACT, "both2.example", "both-ec,both-rsa" },
	{ "ec-only.example", CERTSTORE_MATCH_EXACT, "ec-only.example", "both-ec" },
	{ "ed.example", CERTSTORE_MATCH_EXACT, "ed.example", "ed" },
	{ "pss.example", CERTSTORE_MATCH_EXACT, "pss.example", "pss" },
	{ "ignored-cn.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "renew.example", CERTSTORE_MATCH_EXACT, "renew.example", "renew-a,renew-b" },
	{ "good.example", CERTSTORE_MATCH_EXACT, "good.example", "badsan" },
	{ "link.example", CERTSTORE_MATCH_EXACT, "link.example", "link" },
	{ "staging.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "expired.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "future.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "mismatch.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "garbled.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "nokey.example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "example", CERTSTORE_MATCH_NONE, NULL, NULL },
	{ "unknown.example", CERTSTORE_MATCH_NONE, NULL, NULL },
};

static void test_lookup(const struct certstore *cs)
{
	for (size_t i = 0; i < N_ELEMS(lookup_cases); i++) {
		const struct lookup_case *c = &lookup_cases[i];
		enum certstore_match how = 99;
		check_case(c->name);
		const struct certstore_entry *e = certstore_lookup(cs, c->name, &how);
		CHECK_INT_EQ(how, c->want_how);
		CHECK((e != NULL) == (c->want_name != NULL), "found %s", e ? e->name : "nothing");
		if (e == NULL || c->want_name == NULL)
			continue;
		CHECK_STR_EQ(e->name, c->want_name);
		CHECK_STR_EQ(e->label, c->want_label);
		CHECK(e->cred != NULL, "has a credential");
	}
	check_case("lookup of a normalised SNI");
	char norm[256];
	int n = certstore_normalize("MIXED.case.EXAMPLE.", 19, norm, sizeof norm);
	CHECK_INT_EQ(n, 18);
	const struct certstore_entry *e = certstore_lookup(cs, norm, NULL);
	CHECK(e != NULL && strcmp(e->label, "mixed") == 0, "served by mixed");
}

/* Number of certificates in CRED, and the key type of the first GnuTLS offers. */
static unsigned cred_count(gnutls_certificate_credentials_t cred, int *first_pk,
                           time_t *first_expiry)
{
	gnutls_datum_t der;
	gnutls_x509_crt_t crt;
	unsigned n = 0;

	while (gnutls_certificate_get_crt_raw(cred, n, 0, &der) == 0) {
		if (n == 0 && gnutls_x509_crt_init(&crt) == 0) {
			if (gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) == 0) {
				*first_pk = gnutls_x509_crt_get_pk_algorithm(crt, NULL);
				*first_expiry = gnutls_x509_crt_get_expiration_time(crt);
			}
			gnutls_x509_crt_deinit(crt);
		}
		n++;
	}
	return n;
}

static void test_credentials(const struct certstore *cs)
{
	const struct certstore_entry *both = certstore_lookup(cs, "both.example", NULL);
	const struct certstore_entry *both2 = certstore_lookup(cs, "both2.example", NULL);
	const struct certstore_entry *ec = certstore_lookup(cs, "ec-only.example", NULL);
	const struct certstore_entry *mx = certstore_lookup(cs, "mx.a.example", NULL);
	const struct certstore_entry *mx2 = certstore_lookup(cs, "mx2.a.example", NULL);
	const struct certstore_entry *renew = certstore_lookup(cs, "renew.example", NULL);
	int pk = -1;
	time_t expiry = 0;

	if (!CHECK(both && both2 && ec && mx && mx2 && renew, "all found"))
		return;
	check_case("both.example: one credential with RSA and ECDSA, ECDSA offered first");
	CHECK_INT_EQ(cred_count(both->cred, &pk, &expiry), 2);
	CHECK_INT_EQ(pk, GNUTLS_PK_ECDSA);
	check_case("names with the same certificates share a credential");
	CHECK(both->cred == both2->cred, "both and both2");
	CHECK(mx->cred == mx2->cred, "mx and mx2");
	check_case("ec-only.example: its certificate alone");
	CHECK(ec->cred != both->cred, "not the group's credential");
	CHECK_INT_EQ(cred_count(ec->cred, &pk, &expiry), 1);
	check_case("renew.example: the later expiry offered first");
	CHECK_INT_EQ(cred_count(renew->cred, &pk, &expiry), 2);
	struct tm tm = { .tm_year = 2034 - 1900, .tm_mon = 0, .tm_mday = 1 };
	CHECK_INT_EQ(expiry, timegm(&tm));
}

/* Handshakes in memory: server with CRED, client limited to PRIORITY. Returns
 * the public-key algorithm of the certificate the server sent, or an error. */
static int handshake_pk(gnutls_certificate_credentials_t cred, const char *priority)
{
	gnutls_session_t s = NULL, c = NULL;
	gnutls_certificate_credentials_t ccred = NULL;
	gnutls_x509_crt_t crt = NULL;
	int sv[2], rs = GNUTLS_E_AGAIN, rc = GNUTLS_E_AGAIN, ret = -1;
	unsigned n = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
		return -1;
	gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
	gnutls_set_default_priority(s);
	gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
	gnutls_transport_set_int(s, sv[0]);
	gnutls_init(&c, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
	gnutls_priority_set_direct(c, priority, NULL);
	gnutls_certificate_allocate_credentials(&ccred);
	gnutls_credentials_set(c, GNUTLS_CRD_CERTIFICATE, ccred);
	gnutls_server_name_set(c, GNUTLS_NAME_DNS, "both.example", 12);
	gnutls_transport_set_int(c, sv[1]);
	for (int i = 0; i < 1000 && (rs != 0 || rc != 0); i++) {
		if (rc != 0 && (rc = gnutls_handshake(c)) < 0 && gnutls_error_is_fatal(rc))
			break;
		if (rs != 0 && (rs = gnutls_handshake(s)) < 0 && gnutls_error_is_fatal(rs))
			break;
	}
	const gnutls_datum_t *peer = rs == 0 && rc == 0 ? gnutls_certificate_get_peers(c, &n) : NULL;
	if (peer != NULL && n > 0 && gnutls_x509_crt_init(&crt) == 0 &&
	    gnutls_x509_crt_import(crt, &peer[0], GNUTLS_X509_FMT_DER) == 0)
		ret = gnutls_x509_crt_get_pk_algorithm(crt, NULL);
	else if (rc < 0 || rs < 0)
		fprintf(stderr, "handshake: client %s, server %s\n", gnutls_strerror(rc),
		        gnutls_strerror(rs));
	gnutls_x509_crt_deinit(crt);
	gnutls_deinit(c);
	gnutls_deinit(s);
	gnutls_certificate_free_credentials(ccred);
	close(sv[0]);
	close(sv[1]);
	return ret;
}

static void test_handshakes(const struct certstore *cs)
{
	static const struct {
		const char *name, *priority;
		int want;
	} cases[] = {
		{ "any client: ECDSA", "NORMAL", GNUTLS_PK_ECDSA },
		{ "RSA-only client: RSA", "NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-SHA256",
		  GNUTLS_PK_RSA },
		{ "RSA-only TLS 1.2 client: RSA",
		  "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+ECDHE-RSA", GNUTLS_PK_RSA },
		{ "ECDSA-only client: ECDSA", "NORMAL:-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256",
		  GNUTLS_PK_ECDSA },
	};
	const struct certstore_entry *e = certstore_lookup(cs, "both.example", NULL);

	for (size_t i = 0; e != NULL && i < N_ELEMS(cases); i++) {
		check_case(cases[i].name);
		CHECK_INT_EQ(handshake_pk(e->cred, cases[i].priority), cases[i].want);
	}
}

struct listing {
	char text[4096];
	size_t len;
};

static void listing_add(void *arg, const struct certstore_row *row)
{
	struct listing *l = arg;
	char date[16];
	struct tm tm;

	gmtime_r(&row->not_after, &tm);
	strftime(date, sizeof date, "%Y-%m-%d", &tm);
	l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len, "%s %s %s %s\n",
	                           row->name, row->label, row->keytype, date);
}

static void test_foreach(const struct certstore *cs)
{
	struct listing l = { .len = 0 };

	check_case("foreach: one row per (name, certificate), names sorted");
	certstore_foreach(cs, listing_add, &l);
	CHECK_STR_EQ(l.text, "*.b.example b ECDSA-P256 2035-01-01\n"
	                     "both.example both-ec ECDSA-P256 2031-01-01\n"
	                     "both.example both-rsa RSA-2048 2035-01-01\n"
	                     "both2.example both-ec ECDSA-P256 2031-01-01\n"
	                     "both2.example both-rsa RSA-2048 2035-01-01\n"
	                     "cn-only.example cnonly ECDSA-P384 2035-01-01\n"
	                     "ec-only.example both-ec ECDSA-P256 2031-01-01\n"
	                     "ed.example ed Ed25519 2035-01-01\n"
	                     "good.example badsan ECDSA-P256 2035-01-01\n"
	                     "link.example link ECDSA-P256 2035-01-01\n"
	                     "mixed.case.example mixed ECDSA-P256 2035-01-01\n"
	                     "mx.a.example a RSA-2048 2035-01-01\n"
	                     "mx2.a.example a RSA-2048 2035-01-01\n"
	                     "pss.example pss RSA-PSS-2048 2035-01-01\n"
	                     "renew.example renew-a ECDSA-P256 2030-01-01\n"
	                     "renew.example renew-b ECDSA-P256 2034-01-01\n");
	check_case("counts");
	CHECK_INT_EQ(certstore_ncerts(cs), 12);
	CHECK_INT_EQ(certstore_nnames(cs), 13);
}

static void test_load(void)
{
	struct reports r = { .n = 0 };
	struct certstore *cs = NULL;

	check_case("load certs");
	CHECK_INT_EQ(certstore_load("certs", test_now(), NULL, NULL, reports_add, &r, &cs), 0);
	if (!CHECK(cs != NULL, "a certstore"))
		return;
	qsort(r.lines, r.n < N_ELEMS(r.lines) ? r.n : N_ELEMS(r.lines), sizeof r.lines[0], cmp_line);
	test_reports(&r);
	test_lookup(cs);
	test_credentials(cs);
	test_handshakes(cs);
	test_foreach(cs);

	check_case("ref and unref");
	CHECK(certstore_ref(cs) == cs, "ref returns the certstore");
	certstore_unref(cs);
	CHECK(certstore_lookup(cs, "mx.a.example", NULL) != NULL, "still usable after one unref");
	certstore_unref(cs);
	certstore_ref(NULL);
	certstore_unref(NULL);
}

static void test_load_edges(void)
{
	struct reports r = { .n = 0 };
	struct certstore *cs = (struct certstore *)&r;

	check_case("missing directory");
	CHECK_INT_EQ(certstore_load("no-such-dir", test_now(), NULL, NULL, reports_add, &r, &cs), -1);
	CHECK(cs == NULL, "no certstore");
	CHECK_INT_EQ(r.n, 1);
	CHECK_STR_EQ(r.lines[0], "no-such-dir: cannot read: No such file or directory");

	check_case("a file instead of a directory");
	r.n = 0;
	CHECK_INT_EQ(certstore_load("certs/README", test_now(), NULL, NULL, reports_add, &r, &cs), -1);
	CHECK_INT_EQ(r.n, 1);
	CHECK_STR_EQ(r.lines[0], "certs/README: cannot read: Not a directory");

	check_case("empty directory");
	r.n = 0;
	CHECK_INT_EQ(certstore_load("empty", test_now(), NULL, NULL, reports_add, &r, &cs), 0);
	CHECK_INT_EQ(r.n, 0);
	if (CHECK(cs != NULL, "a certstore")) {
		CHECK_INT_EQ(certstore_ncerts(cs), 0);
		CHECK_INT_EQ(certstore_nnames(cs), 0);
		CHECK(certstore_lookup(cs, "mx.a.example", NULL) == NULL, "nothing served");
		certstore_unref(cs);
	}

	check_case("no report callback");
	CHECK_INT_EQ(certstore_load("certs", test_now(), NULL, NULL, NULL, NULL, &cs), 0);
	certstore_unref(cs);

	check_case("expiry judged against NOW");
	struct tm tm = { .tm_year = 2032 - 1900, .tm_mon = 5, .tm_mday = 1 };
	r.n = 0;
	CHECK_INT_EQ(certstore_load("certs", timegm(&tm), NULL, NULL, reports_add, &r, &cs), 0);
	if (CHECK(cs != NULL, "a certstore")) {
		CHECK(certstore_lookup(cs, "ec-only.example", NULL) == NULL, "expired in 2031");
		const struct certstore_entry *e = certstore_lookup(cs, "both.example", NULL);
		CHECK(e != NULL && strcmp(e->label, "both-rsa") == 0, "both.example by RSA alone");
		certstore_unref(cs);
	}
}

/* ---- reloading ---- */

static time_t test_date(int year)
{
	struct tm tm = { .tm_year = year - 1900, .tm_mon = 5, .tm_mday = 1 };

	return timegm(&tm);
}

/* Runs CMD (sh) in the fixture directory; false if it failed. */
static bool sh(const char *cmd)
{
	return cmd[0] == '\0' || system(cmd) == 0;
}

/* Describes the certificates CRED holds, in the order GnuTLS tries them:
 * "EC-2035,RSA-2033" (leaf key type, expiry year). */
static void cred_describe(gnutls_certificate_credentials_t cred, char *out, size_t size)
{
	gnutls_datum_t der;
	size_t len = 0;

	out[0] = '\0';
	for (unsigned i = 0; gnutls_certificate_get_crt_raw(cred, i, 0, &der) == 0; i++) {
		gnutls_x509_crt_t crt;
		int pk = -1;
		time_t after = 0;
		struct tm tm = { .tm_year = -1900 };
		if (gnutls_x509_crt_init(&crt) == 0) {
			if (gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) == 0) {
				pk = gnutls_x509_crt_get_pk_algorithm(crt, NULL);
				after = gnutls_x509_crt_get_expiration_time(crt);
			}
			gnutls_x509_crt_deinit(crt);
		}
		gmtime_r(&after, &tm);
		len += (size_t)snprintf(out + len, size - len, "%s%s-%d", i ? "," : "",
		                        pk == GNUTLS_PK_ECDSA             ? "EC"
		                        : pk == GNUTLS_PK_RSA             ? "RSA"
		                        : pk == GNUTLS_PK_EDDSA_ED25519   ? "Ed25519"
		                                                          : "?",
		                        tm.tm_year + 1900);
		if (len >= size)
			break;
	}
}

/* Whether S matches PAT, in which '*' stands for any run of bytes but ';'. */
static bool glob_match(const char *pat, const char *s)
{
	if (*pat == '\0')
		return *s == '\0';
	if (*pat == '*') {
		for (;; s++) {
			if (glob_match(pat + 1, s))
				return true;
			if (*s == '\0' || *s == ';')
				return false;
		}
	}
	return *pat == *s && glob_match(pat + 1, s + 1);
}

/* A name after the reload: served by LABEL ("a,b" for several, NULL: not
 * served) with a credential holding CERTS (see cred_describe), the same
 * credential object as before the reload or a new one. */
enum cred_want { CRED_ANY, CRED_SAME, CRED_NEW };

struct reload_lookup {
	const char *name, *label, *certs;
	enum cred_want cred;
};

/* Each case: copy reload/ to work/, load it, run CHANGE, reload beside the
 * first generation (at NOW in June of YEAR, 0 for test_now()), then check the
 * reports (sorted; patterns for glob_match), the diff and some names. */
struct reload_case {
	const char *name;
	const char *change;
	int year;
	const char *reports[3];
	struct certstore_diff diff;
	struct reload_lookup lookups[4];
};

#define KEEPING "; keeping the previous certificate"

static const struct reload_case reload_cases[] = {
	{ "unchanged: shared, not read, no report", "", 0, { NULL }, { .reused = 8 },
	  { { "one.example", "one", "EC-2035", CRED_SAME },
	    { "two-b.example", "two", "EC-2035", CRED_SAME },
	    { "dual.example", "dual-ec,dual-rsa", "EC-2035,RSA-2035", CRED_SAME } } },
	{ "renewed: the new certificate replaces the old", "cp spare/one-v2/*.pem work/one/", 0,
	  { NULL }, { .changed = 1, .loaded = 1, .reused = 7 },
	  { { "one.example", "one", "EC-2034", CRED_NEW },
	    { "two.example", "two", "EC-2035", CRED_SAME } } },
	{ "touched: read again", "touch work/one/fullchain.pem", 0, { NULL },
	  { .changed = 1, .loaded = 1, .reused = 7 },
	  { { "one.example", "one", "EC-2035", CRED_NEW } } },
	{ "fullchain.pem cut short mid-copy: reported, the last good kept",
	  "head -c 300 spare/one-v2/fullchain.pem >work/trunc/fullchain.pem", 0,
	  { "work/trunc/fullchain.pem: not a PEM certificate chain: *" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "trunc.example", "trunc", "EC-2035", CRED_SAME },
	    { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "key does not match: reported, the last good kept", "cp ec-sec1.key work/mism/privkey.pem", 0,
	  { "work/mism/privkey.pem: key does not match certificate" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "mism.example", "mism", "EC-2035", CRED_SAME } } },
	{ "privkey.pem missing: reported, the last good kept", "rm work/one/privkey.pem", 0,
	  { "work/one/privkey.pem: cannot read: No such file or directory" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "expired files: reported, the last good kept", "cp certs/expired/*.pem work/one/", 0,
	  { "work/one/fullchain.pem: expired on 2020-01-02" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "directory now a dangling link: reported, the last good kept",
	  "rm -r work/one && ln -s ../nowhere work/one", 0,
	  { "work/one: cannot read: No such file or directory" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "directory removed: its names are gone", "rm -r work/gone", 0, { NULL },
	  { .removed = 1, .reused = 7 },
	  { { "gone.example", NULL, NULL, CRED_ANY },
	    { "two.example", "two", "EC-2035", CRED_SAME } } },
	{ "directory added: its names are served", "cp -a spare/new work/new", 0, { NULL },
	  { .added = 1, .loaded = 1, .reused = 8 },
	  { { "new.example", "new", "Ed25519-2035", CRED_ANY },
	    { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "new directory that fails: reported, nothing kept", "cp -a certs/garbled work/garbled", 0,
	  { "work/garbled/fullchain.pem: not a PEM certificate chain: *" }, { .reused = 8 },
	  { { "garbled.example", NULL, NULL, CRED_ANY } } },
	{ "RSA of an RSA+ECDSA pair renewed: new RSA, old ECDSA",
	  "cp -p spare/dual-rsa-v2/*.pem work/dual-rsa/", 0, { NULL },
	  { .changed = 1, .loaded = 1, .reused = 7 },
	  { { "dual.example", "dual-ec,dual-rsa", "EC-2035,RSA-2033", CRED_NEW } } },
	{ "ECDSA of the pair removed: RSA alone", "rm -r work/dual-ec", 0, { NULL },
	  { .changed = 1, .reused = 7 },
	  { { "dual.example", "dual-rsa", "RSA-2035", CRED_NEW } } },
	{ "a third certificate for the pair's name", "cp -a spare/dual-ec-v2 work/dual-ec2", 0,
	  { NULL }, { .changed = 1, .loaded = 1, .reused = 8 },
	  { { "dual.example", "dual-ec,dual-ec2,dual-rsa", "EC-2035,EC-2032,RSA-2035", CRED_NEW } } },
	{ "RSA of the pair broken: the pair kept", "cp ec-sec1.key work/dual-rsa/privkey.pem", 0,
	  { "work/dual-rsa/privkey.pem: key does not match certificate" KEEPING },
	  { .reused = 7, .kept_last_good = 1 },
	  { { "dual.example", "dual-ec,dual-rsa", "EC-2035,RSA-2035", CRED_SAME } } },
	{ "expired since the last load: reported, dropped", "", 2026,
	  { "work/soon/fullchain.pem: expired on 2026-01-01" }, { .removed = 1, .reused = 7 },
	  { { "soon.example", NULL, NULL, CRED_ANY },
	    { "one.example", "one", "EC-2035", CRED_SAME } } },
	{ "expired since and now failing: nothing to keep", "cp ec-sec1.key work/soon/privkey.pem",
	  2026, { "work/soon/fullchain.pem: expired on 2026-01-01" }, { .removed = 1, .reused = 7 },
	  { { "soon.example", NULL, NULL, CRED_ANY } } },
};

static void check_diff(const struct certstore_diff *got, const struct certstore_diff *want)
{
	CHECK_INT_EQ(got->added, want->added);
	CHECK_INT_EQ(got->removed, want->removed);
	CHECK_INT_EQ(got->changed, want->changed);
	CHECK_INT_EQ(got->loaded, want->loaded);
	CHECK_INT_EQ(got->reused, want->reused);
	CHECK_INT_EQ(got->kept_last_good, want->kept_last_good);
}

/* Checks that CRED, described as CERTS, serves: a client that takes
 * anything gets the first certificate's key type, an RSA-only client RSA. */
static void check_serves(gnutls_certificate_credentials_t cred, const char *certs)
{
	int first = strncmp(certs, "EC-", 3) == 0    ? GNUTLS_PK_ECDSA
	            : strncmp(certs, "RSA-", 4) == 0 ? GNUTLS_PK_RSA
	                                             : GNUTLS_PK_EDDSA_ED25519;

	CHECK_INT_EQ(handshake_pk(cred, "NORMAL"), first);
	if (strstr(certs, "RSA") != NULL)
		CHECK_INT_EQ(handshake_pk(cred, "NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-SHA256"),
		             GNUTLS_PK_RSA);
}

/* Loads work/ (fresh from reload/) into *CS; false if that failed. */
static bool reload_base(struct certstore **cs)
{
	struct reports r = { .n = 0 };

	*cs = NULL;
	if (!CHECK(sh("rm -rf work && cp -a reload work"), "copy reload/"))
		return false;
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, NULL, reports_add, &r, cs), 0);
	CHECK_INT_EQ(r.n, 0);
	return *cs != NULL;
}

/* One case; PREV_FIRST releases the first generation before the second is
 * used, else the second is released first and the first must still serve. */
static void test_reload_case(const struct reload_case *c, bool prev_first)
{
	gnutls_certificate_credentials_t before[N_ELEMS(c->lookups)] = { NULL };
	struct reports r = { .n = 0 };
	struct certstore *a, *b = NULL;
	struct certstore_diff d;
	char desc[128];
	size_t i, nwant = 0;

	check_case(c->name);
	if (!reload_base(&a))
		return;
	for (i = 0; i < N_ELEMS(c->lookups) && c->lookups[i].name != NULL; i++) {
		const struct certstore_entry *e = certstore_lookup(a, c->lookups[i].name, NULL);
		before[i] = e ? e->cred : NULL;
	}
	if (!CHECK(sh(c->change), "%s", c->change) ||
	    !CHECK_INT_EQ(certstore_load("work", c->year ? test_date(c->year) : test_now(), NULL, a,
	                                 reports_add, &r, &b), 0)) {
		certstore_unref(a);
		return;
	}
	qsort(r.lines, r.n < N_ELEMS(r.lines) ? r.n : N_ELEMS(r.lines), sizeof r.lines[0], cmp_line);
	while (nwant < N_ELEMS(c->reports) && c->reports[nwant] != NULL)
		nwant++;
	CHECK_INT_EQ(r.n, nwant);
	for (i = 0; i < r.n && i < nwant; i++)
		CHECK(glob_match(c->reports[i], r.lines[i]), "report \"%s\", want \"%s\"", r.lines[i],
		      c->reports[i]);
	certstore_diff(a, b, &d);
	check_diff(&d, &c->diff);
	if (prev_first) {
		certstore_unref(a);
		a = NULL;
	}
	for (i = 0; i < N_ELEMS(c->lookups) && c->lookups[i].name != NULL; i++) {
		const struct reload_lookup *l = &c->lookups[i];
		const struct certstore_entry *e = certstore_lookup(b, l->name, NULL);
		if (!CHECK((e != NULL) == (l->label != NULL), "%s: found %s", l->name,
		           e ? e->label : "nothing") ||
		    e == NULL)
			continue;
		CHECK_STR_EQ(e->label, l->label);
		cred_describe(e->cred, desc, sizeof desc);
		CHECK_STR_EQ(desc, l->certs);
		if (l->cred != CRED_ANY)
			CHECK((e->cred == before[i]) == (l->cred == CRED_SAME), "%s: %s credential",
			      l->name, l->cred == CRED_SAME ? "the same" : "a new");
		check_serves(e->cred, l->certs);
	}
	certstore_unref(b);
	if (a != NULL) {
		/* The first generation, alone now, still serves what it did. */
		for (i = 0; i < N_ELEMS(c->lookups) && c->lookups[i].name != NULL; i++) {
			const struct certstore_entry *e = certstore_lookup(a, c->lookups[i].name, NULL);
			if (e != NULL)
				CHECK_INT_EQ(handshake_pk(e->cred, "NORMAL") > 0, 1);
		}
		certstore_unref(a);
	}
}

/* Credentials rebuilt in one reload are shared by the next; a certificate
 * left alone after living only in a pair's credential still serves. */
static void test_reload_chain(void)
{
	struct certstore *g[5] = { NULL };
	const struct certstore_entry *e[5] = { NULL };
	struct certstore_diff d;
	char desc[128];

	check_case("chain of reloads");
	if (!reload_base(&g[0]))
		return;
	CHECK(sh("cp -p spare/dual-rsa-v2/*.pem work/dual-rsa/"), "renew dual-rsa");
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, g[0], NULL, NULL, &g[1]), 0);
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, g[1], NULL, NULL, &g[2]), 0);
	CHECK(sh("rm -r work/dual-ec"), "remove dual-ec");
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, g[2], NULL, NULL, &g[3]), 0);
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, g[3], NULL, NULL, &g[4]), 0);
	for (size_t i = 0; i < 5; i++)
		if (!CHECK(g[i] != NULL && (e[i] = certstore_lookup(g[i], "dual.example", NULL)) != NULL,
		           "generation %zu serves dual.example", i))
			goto out;
	check_case("chain: a rebuilt pair is shared by the next reload");
	CHECK(e[2]->cred == e[1]->cred, "same credential");
	certstore_diff(g[1], g[2], &d);
	check_diff(&d, &(struct certstore_diff){ .reused = 8 });
	check_case("chain: the renewed RSA certificate alone");
	cred_describe(e[3]->cred, desc, sizeof desc);
	CHECK_STR_EQ(desc, "RSA-2033");
	CHECK(e[4]->cred == e[3]->cred, "shared by the next reload");
	check_case("chain: released out of order, the last still serves");
	certstore_unref(g[1]);
	certstore_unref(g[3]);
	certstore_unref(g[0]);
	certstore_unref(g[2]);
	g[0] = g[1] = g[2] = g[3] = NULL;
	check_serves(e[4]->cred, "RSA-2033");
out:
	for (size_t i = 0; i < 5; i++)
		certstore_unref(g[i]);
}

static void *unref_thread(void *arg)
{
	certstore_unref(arg);
	return NULL;
}

/* Two generations sharing most of their objects, released at once from two
 * threads (ASan/valgrind find what goes wrong). */
static void test_reload_threads(void)
{
	struct certstore *base, *a = NULL, *b = NULL;
	pthread_t t1, t2;

	check_case("generations released concurrently");
	if (!reload_base(&base))
		return;
	CHECK(sh("cp -p spare/dual-rsa-v2/*.pem work/dual-rsa/"), "renew dual-rsa");
	for (int i = 0; i < 8; i++) {
		if (certstore_load("work", test_now(), NULL, base, NULL, NULL, &a) != 0 ||
		    certstore_load("work", test_now(), NULL, a, NULL, NULL, &b) != 0) {
			CHECK(false, "loads");
			certstore_unref(a);
			break;
		}
		CHECK(certstore_lookup(a, "dual.example", NULL)->cred ==
		              certstore_lookup(b, "dual.example", NULL)->cred,
		      "shared");
		CHECK_INT_EQ(pthread_create(&t1, NULL, unref_thread, i % 2 ? a : b), 0);
		CHECK_INT_EQ(pthread_create(&t2, NULL, unref_thread, i % 2 ? b : a), 0);
		pthread_join(t1, NULL);
		pthread_join(t2, NULL);
	}
	certstore_unref(base);
}

static void test_reload_edges(void)
{
	struct certstore *a, *b = NULL;
	struct certstore_diff d;
	struct reports r = { .n = 0 };

	if (!reload_base(&a))
		return;
	check_case("diff against nothing: a first load");
	certstore_diff(NULL, a, &d);
	check_diff(&d, &(struct certstore_diff){ .added = 8, .loaded = 8 });
	check_case("another directory: nothing shared, nothing kept");
	CHECK(sh("cp -a work work2 && rm work2/one/privkey.pem"), "copy");
	CHECK_INT_EQ(certstore_load("work2", test_now(), NULL, a, reports_add, &r, &b), 0);
	CHECK_INT_EQ(r.n, 1);
	CHECK_STR_EQ(r.lines[0], "work2/one/privkey.pem: cannot read: No such file or directory");
	if (b != NULL) {
		certstore_diff(a, b, &d);
		check_diff(&d, &(struct certstore_diff){ .removed = 1, .changed = 7, .loaded = 7 });
		certstore_unref(b);
	}
	check_case("directory gone on reload: -1, nothing built");
	r.n = 0;
	CHECK(sh("mv work work.old"), "move");
	CHECK_INT_EQ(certstore_load("work", test_now(), NULL, a, reports_add, &r, &b), -1);
	CHECK(b == NULL, "no certstore");
	CHECK_INT_EQ(r.n, 1);
	CHECK(certstore_lookup(a, "one.example", NULL) != NULL, "the old one still serves");
	certstore_unref(a);
	CHECK(sh("rm -rf work.old work2"), "clean up");
}

static void test_reload(void)
{
	for (size_t i = 0; i < N_ELEMS(reload_cases); i++)
		test_reload_case(&reload_cases[i], i % 2 == 0);
	test_reload_chain();
	test_reload_threads();
	test_reload_edges();
}

int main(void)
{
	test_normalize();
	check_case("fixtures");
	if (!CHECK(fixtures_make(), "fixtures generated in %s", fixture_dir)) {
		fixtures_remove();
		return check_summary();
	}
	test_load();
	test_load_edges();
	test_reload();
	fixtures_remove();
	return check_summary();
}
