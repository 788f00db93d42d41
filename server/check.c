/* check: owns `mxfront check`. A handshake runs in memory between a GnuTLS
 * client and tls.c's own server session over the live TLS context, so the
 * certificate judged is the one a sender gets (no second name lookup);
 * GnuTLS then verifies the chain the client received. Policy files are
 * parsed per RFC 8461 3.2 and matched per 4.1. Prints to stdout, never exits. */
#include "check.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "certstore.h"

#define CHECK_MAX_MX 32
#define CHECK_MAX_POLICY 65536 /* RFC 8461 3.3: senders may limit it to 64 KiB */

/* Ciphertext in flight one way. */
struct check_pipe {
	char buf[65536];
	size_t len, off;
};

/* Both ends of one in-memory handshake. */
struct check_wire {
	struct check_pipe to_server, to_client;
};

/* A domain's input and what is found. */
struct check_domain {
	char name[256];
	char *mx[CHECK_MAX_MX];
	size_t nmx;
	const char *policy_file; /* NULL: none given */
	char *policy;            /* its text */
	char *patterns[CHECK_MAX_MX];
	size_t npatterns;
};

/* What one handshake served. */
struct check_served {
	bool ok;                    /* the handshake completed */
	char error[200];
	char cert[300];             /* tls.c's label of the certificate(s) chosen */
	char match[32];             /* exact, wildcard, listener-default, default */
	gnutls_x509_crt_t chain[16];
	unsigned nchain;
};

static void check_pipe_put(struct check_pipe *p, const void *data, size_t len)
{
	if (p->off > 0) {
		memmove(p->buf, p->buf + p->off, p->len - p->off);
		p->len -= p->off;
		p->off = 0;
	}
	if (len > sizeof p->buf - p->len)
		len = sizeof p->buf - p->len; /* a handshake never fills 64 KiB */
	memcpy(p->buf + p->len, data, len);
	p->len += len;
}

static void check_server_send(void *ctx, const char *buf, size_t len)
{
	struct check_wire *w = ctx;
	check_pipe_put(&w->to_client, buf, len);
}

static ssize_t check_client_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct check_wire *w = ptr;
	check_pipe_put(&w->to_server, data, len);
	return (ssize_t)len;
}

static ssize_t check_client_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct check_wire *w = ptr;
	struct check_pipe *p = &w->to_client;
	if (p->off == p->len) {
		errno = EAGAIN;
		return -1;
	}
	if (len > p->len - p->off)
		len = p->len - p->off;
	memcpy(data, p->buf + p->off, len);
	p->off += len;
	return (ssize_t)len;
}

static void check_served_fini(struct check_served *s)
{
	for (unsigned i = 0; i < s->nchain; i++)
		gnutls_x509_crt_deinit(s->chain[i]);
	s->nchain = 0;
}

/* Runs one handshake between a client offering PRIORITY and SNI (NULL:
 * none) and a tls.c server over TC on a listener whose default is
 * LISTENER_DEFAULT; fills OUT with what was served. */
static void check_handshake(struct tls_context *tc,
                            const struct certstore_entry *listener_default, const char *sni,
                            const char *priority, struct check_served *out)
{
	static const struct tls_io io = { check_server_send };
	struct check_wire *w = calloc(1, sizeof *w);
	gnutls_certificate_credentials_t cred = NULL;
	gnutls_session_t c = NULL;
	struct tls *t = NULL;
	int rc = GNUTLS_E_MEMORY_ERROR;
	memset(out, 0, sizeof *out);
	if (w && (t = tls_new(tc, listener_default, false, &io, w, "check")) &&
	    (rc = gnutls_certificate_allocate_credentials(&cred)) == 0 &&
	    (rc = gnutls_init(&c, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL)) == 0 &&
	    (rc = gnutls_priority_set_direct(c, priority, NULL)) == 0 &&
	    (rc = gnutls_credentials_set(c, GNUTLS_CRD_CERTIFICATE, cred)) == 0 &&
	    (!sni || (rc = gnutls_server_name_set(c, GNUTLS_NAME_DNS, sni, strlen(sni))) == 0)) {
		gnutls_transport_set_ptr(c, w);
		gnutls_transport_set_push_function(c, check_client_push);
		gnutls_transport_set_pull_function(c, check_client_pull);
		bool cdone = false, sdone = false;
		for (int round = 0; round < 50 && !(cdone && sdone) && rc >= 0; round++) {
			if (!cdone) {
				rc = gnutls_handshake(c);
				cdone = rc == 0;
				if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
					rc = 0;
			}
			struct check_pipe *p = &w->to_server;
			while (rc >= 0 && p->off < p->len) {
				char *buf;
				size_t room;
				tls_rx_space(t, &buf, &room);
				size_t n = p->len - p->off < room ? p->len - p->off : room;
				memcpy(buf, p->buf + p->off, n);
				tls_received(t, n);
				p->off += n;
				if (!sdone) {
					int s = tls_handshake(t);
					sdone = s == 1;
					if (s < 0) {
						snprintf(out->error, sizeof out->error, "server: %s", tls_error(t));
						rc = -1;
					}
				}
			}
		}
		if (rc < 0 && !out->error[0])
			snprintf(out->error, sizeof out->error, "%s", gnutls_strerror(rc));
		else if (rc >= 0 && !(cdone && sdone))
			snprintf(out->error, sizeof out->error, "handshake did not finish");
		out->ok = rc >= 0 && cdone && sdone;
	} else if (!out->error[0]) {
		snprintf(out->error, sizeof out->error, "cannot start: %s", gnutls_strerror(rc));
	}
	if (t) {
		snprintf(out->cert, sizeof out->cert, "%s", tls_cert(t));
		snprintf(out->match, sizeof out->match, "%s", tls_match(t));
	}
	unsigned n = 0;
	const gnutls_datum_t *peers = out->ok ? gnutls_certificate_get_peers(c, &n) : NULL;
	for (unsigned i = 0; peers && i < n && i < 16; i++) {
		if (gnutls_x509_crt_init(&out->chain[out->nchain]) < 0)
			break;
		if (gnutls_x509_crt_import(out->chain[out->nchain], &peers[i], GNUTLS_X509_FMT_DER) < 0) {
			gnutls_x509_crt_deinit(out->chain[out->nchain]);
			break;
		}
		out->nchain++;
	}
	if (out->ok && out->nchain == 0) {
		out->ok = false;
		snprintf(out->error, sizeof out->error, "no certificate received");
	}
	if (c)
		gnutls_deinit(c);
	if (cred)
		gnutls_certificate_free_credentials(cred);
	tls_free(t);
	free(w);
}

/* ---- MTA-STS policy (RFC 8461) ---- */

/* Lower-cases S and drops one trailing dot. */
static void check_lower(char *s)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < n; i++)
		if (s[i] >= 'A' && s[i] <= 'Z')
			s[i] = (char)(s[i] - 'A' + 'a');
	if (n > 0 && s[n - 1] == '.')
		s[n - 1] = '\0';
}

/* RFC 8461 4.1: "*.example.com" matches exactly one left-most label more
 * ("mx.example.com", not "example.com" nor "a.b.example.com"); anything
 * else matches itself. Both normalised. */
static bool check_pattern_matches(const char *pattern, const char *name)
{
	if (pattern[0] == '*' && pattern[1] == '.') {
		const char *dot = strchr(name, '.');
		return dot && dot != name && strcmp(dot + 1, pattern + 2) == 0;
	}
	return strcmp(pattern, name) == 0;
}

/* Reads D's policy file and keeps its mx patterns; returns the number of
 * problems printed (version, mode, no mx, unreadable). */
static int check_policy(struct check_domain *d)
{
	FILE *f = fopen(d->policy_file, "r");
	if (!f) {
		printf("  FAIL policy %s: cannot read: %s\n", d->policy_file, strerror(errno));
		return 1;
	}
	d->policy = calloc(1, CHECK_MAX_POLICY + 1);
	size_t len = d->policy ? fread(d->policy, 1, CHECK_MAX_POLICY, f) : 0;
	fclose(f);
	if (!d->policy)
		return 1;
	d->policy[len] = '\0';
	const char *version = NULL, *mode = NULL, *max_age = NULL;
	int problems = 0;
	char *save = NULL;
	for (char *line = strtok_r(d->policy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line[strcspn(line, "\r")] = '\0';
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = '\0';
		char *value = colon + 1;
		value += strspn(value, " \t");
		value[strcspn(value, " \t")] = '\0';
		if (strcmp(line, "version") == 0)
			version = value;
		else if (strcmp(line, "mode") == 0)
			mode = value;
		else if (strcmp(line, "max_age") == 0)
			max_age = value;
		else if (strcmp(line, "mx") == 0 && d->npatterns < CHECK_MAX_MX) {
			check_lower(value);
			d->patterns[d->npatterns++] = value;
		}
	}
	printf("  policy %s: version=%s mode=%s max_age=%s mx=%zu pattern(s)\n", d->policy_file,
	       version ? version : "(none)", mode ? mode : "(none)", max_age ? max_age : "(none)",
	       d->npatterns);
	if (!version || strcmp(version, "STSv1") != 0) {
		printf("  FAIL policy: version must be STSv1 (RFC 8461 3.2)\n");
		problems++;
	}
	if (!mode || (strcmp(mode, "enforce") && strcmp(mode, "testing") && strcmp(mode, "none"))) {
		printf("  FAIL policy: mode must be enforce, testing or none\n");
		problems++;
	}
	if (d->npatterns == 0 && !(mode && strcmp(mode, "none") == 0)) {
		printf("  FAIL policy: no mx pattern\n");
		problems++;
	}
	return problems;
}

/* Each MX name must match a pattern (else a sender under the policy refuses
 * that MX); a pattern matching no MX name is stale. */
static int check_patterns(const struct check_domain *d)
{
	int problems = 0;
	for (size_t i = 0; i < d->nmx; i++) {
		const char *by = NULL;
		for (size_t j = 0; j < d->npatterns && !by; j++)
			if (check_pattern_matches(d->patterns[j], d->mx[i]))
				by = d->patterns[j];
		if (by) {
			printf("  ok   mx %s matches policy pattern %s\n", d->mx[i], by);
		} else {
			printf("  FAIL mx %s matches no mx pattern of the policy: senders that enforce "
			       "it will not deliver to it\n", d->mx[i]);
			problems++;
		}
	}
	for (size_t j = 0; j < d->npatterns; j++) {
		bool used = false;
		for (size_t i = 0; i < d->nmx && !used; i++)
			used = check_pattern_matches(d->patterns[j], d->mx[i]);
		if (!used) {
			printf("  FAIL policy pattern %s matches none of the MX names\n", d->patterns[j]);
			problems++;
		}
	}
	return problems;
}

/* ---- certificates ---- */

/* Verifies S's chain for NAME against TL and its expiry against DAYS;
 * prints one line; returns 1 if it failed. */
static int check_verify(gnutls_x509_trust_list_t tl, const struct check_served *s,
                        const char *name, const char *what, unsigned days)
{
	gnutls_typed_vdata_st data[2] = {
		{ GNUTLS_DT_DNS_HOSTNAME, (unsigned char *)name, 0 },
		{ GNUTLS_DT_KEY_PURPOSE_OID, (unsigned char *)GNUTLS_KP_TLS_WWW_SERVER, 0 },
	};
	unsigned status = 0;
	gnutls_datum_t why = { NULL, 0 };
	char buf[1024], keytype[32] = "?", date[16] = "?";
	int rc = gnutls_x509_trust_list_verify_crt2(tl, (gnutls_x509_crt_t *)s->chain, s->nchain,
	                                            data, 2, 0, &status, NULL);
	if (rc == 0 && status != 0 &&
	    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0) == 0)
		snprintf(buf, sizeof buf, "%s", (char *)why.data);
	else
		snprintf(buf, sizeof buf, "%s", rc < 0 ? gnutls_strerror(rc) : "");
	gnutls_free(why.data);
	unsigned bits = 0;
	int pk = gnutls_x509_crt_get_pk_algorithm(s->chain[0], &bits);
	if (pk > 0)
		snprintf(keytype, sizeof keytype, "%s-%u",
		         pk == GNUTLS_PK_ECDSA ? "ECDSA" : gnutls_pk_get_name(pk), bits);
	time_t after = gnutls_x509_crt_get_expiration_time(s->chain[0]);
	long left = (long)((after - time(NULL)) / 86400);
	struct tm tm;
	if (gmtime_r(&after, &tm))
		strftime(date, sizeof date, "%Y-%m-%d", &tm);
	bool ok = rc == 0 && status == 0;
	bool soon = left < (long)days;
	printf("  %s %s %s: certificate %s (%s, %s), %s, expires %s (%ld days)%s\n",
	       ok && !soon ? "ok  " : "FAIL", what, name, s->cert, keytype, s->match,
	       ok ? "chain verifies" : "chain does NOT verify", date, left,
	       soon ? ", within the --days limit" : "");
	if (!ok)
		printf("       %s\n", buf);
	return ok && !soon ? 0 : 1;
}

/* Client priorities: whatever the server prefers, then a client that takes
 * only RSA signatures, which gets the RSA certificate if the name has one. */
static const char *const check_priorities[] = {
	"NORMAL",
	"NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-PSS-RSAE-SHA384:+SIGN-RSA-SHA256:"
	"+SIGN-RSA-SHA384",
};

/* Checks what a sender asking for MX by SNI gets; returns the failures. */
static int check_mx(struct tls_context *tc, gnutls_x509_trust_list_t tl, const char *mx,
                    unsigned days)
{
	struct check_served first, s;
	int problems = 0;
	check_handshake(tc, NULL, mx, check_priorities[0], &first);
	if (!first.ok) {
		printf("  FAIL mx %s: handshake failed: %s\n", mx, first.error);
		return 1;
	}
	problems += check_verify(tl, &first, mx, "mx", days);
	check_handshake(tc, NULL, mx, check_priorities[1], &s);
	if (s.ok && strcmp(s.cert, first.cert) == 0 && s.nchain && first.nchain &&
	    gnutls_x509_crt_equals(s.chain[0], first.chain[0]))
		; /* the same certificate */
	else if (s.ok)
		problems += check_verify(tl, &s, mx, "mx (RSA client)", days);
	check_served_fini(&s);
	check_served_fini(&first);
	return problems;
}

/* Parses "DOMAIN:MX1,MX2[:POLICYFILE]" (SPEC is modified); 0 or -1. */
static int check_parse_spec(char *spec, struct check_domain *d)
{
	char *mx = strchr(spec, ':');
	if (!mx || mx == spec || (size_t)(mx - spec) >= sizeof d->name)
		return -1;
	*mx++ = '\0';
	snprintf(d->name, sizeof d->name, "%s", spec);
	check_lower(d->name);
	char *policy = strchr(mx, ':');
	if (policy) {
		*policy++ = '\0';
		d->policy_file = *policy ? policy : NULL;
	}
	char *save = NULL;
	for (char *m = strtok_r(mx, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
		if (d->nmx == CHECK_MAX_MX || !*m)
			return -1;
		check_lower(m);
		d->mx[d->nmx++] = m;
	}
	return d->nmx ? 0 : -1;
}

int check_run(const struct generation *gen, const struct check_options *opt, char **specs, int n)
{
	const struct config *cfg = gen->cfg;
	struct tls_context *tc = gen->tc;
	gnutls_x509_trust_list_t tl;
	int problems = 0, rc;
	if (gnutls_x509_trust_list_init(&tl, 0) < 0)
		return 1;
	if (opt->ca_file)
		rc = gnutls_x509_trust_list_add_trust_file(tl, opt->ca_file, NULL, GNUTLS_X509_FMT_PEM,
		                                           0, 0);
	else
		rc = gnutls_x509_trust_list_add_system_trust(tl, 0, 0);
	if (rc <= 0) {
		fprintf(stderr, "mxfront: check: no CA certificate in %s\n",
		        opt->ca_file ? opt->ca_file : "the system's store");
		gnutls_x509_trust_list_deinit(tl, 1);
		return 1;
	}
	for (int i = 0; i < n; i++) {
		struct check_domain d = { .nmx = 0 };
		char *spec = strdup(specs[i]);
		if (!spec || check_parse_spec(spec, &d) < 0) {
			fprintf(stderr, "mxfront: check: '%s' is not DOMAIN:MX[,MX...][:POLICYFILE]\n",
			        specs[i]);
			free(spec);
			gnutls_x509_trust_list_deinit(tl, 1);
			return 1;
		}
		printf("%s\n", d.name);
		if (d.policy_file) {
			int p = check_policy(&d);
			problems += p;
			if (p == 0 || d.npatterns)
				problems += check_patterns(&d);
		} else {
			printf("  (no MTA-STS policy given)\n");
		}
		for (size_t m = 0; m < d.nmx; m++)
			problems += check_mx(tc, tl, d.mx[m], opt->days);
		free(d.policy);
		free(spec);
	}
	/* Senders without SNI (stock Postfix) get a listener's default. */
	for (size_t l = 0; l < cfg->n_listen; l++) {
		struct check_served s;
		check_handshake(tc, gen->listen_default[l], NULL, check_priorities[0], &s);
		if (!s.ok) {
			printf("listener %s without SNI: handshake failed: %s\n", cfg->listen[l].text,
			       s.error);
			problems++;
			continue;
		}
		printf("listener %s without SNI: certificate %s (%s), valid for:", cfg->listen[l].text,
		       s.cert, s.match);
		int valid = 0;
		for (int i = 0; i < n; i++) {
			struct check_domain d = { .nmx = 0 };
			char *spec = strdup(specs[i]);
			if (spec && check_parse_spec(spec, &d) == 0)
				for (size_t m = 0; m < d.nmx; m++)
					if (gnutls_x509_crt_check_hostname2(s.chain[0], d.mx[m], 0)) {
						printf(" %s", d.mx[m]);
						valid++;
					}
			free(spec);
		}
		printf("%s\n", valid ? "" : " none of the MX names given");
		check_served_fini(&s);
	}
	gnutls_x509_trust_list_deinit(tl, 1);
	return problems ? 3 : 0;
}
