/* smtp_cmd: the commands of the SMTP state machine (smtp_cmd.c), for
 * smtp.c's command table and answer routing only. A command runs once the
 * table's rules let it (arguments, state, TLS): it checks only what is its
 * own. ARGS[0..LEN) is the argument without trailing spaces, borrowed for
 * the call. */
#ifndef MXFRONT_SMTP_CMD_H
#define MXFRONT_SMTP_CMD_H

#include <stddef.h>

#include "smtp_int.h"

void smtp_cmd_ehlo(struct smtp *s, const char *args, size_t len);
void smtp_cmd_helo(struct smtp *s, const char *args, size_t len);
void smtp_cmd_mail(struct smtp *s, const char *args, size_t len);
/* RCPT and DATA are taken while answers are awaited (pipelined): they call
 * smtp_defer() before any reply of their own. */
void smtp_cmd_rcpt(struct smtp *s, const char *args, size_t len);
void smtp_cmd_data(struct smtp *s, const char *args, size_t len);
void smtp_cmd_rset(struct smtp *s, const char *args, size_t len);
void smtp_cmd_starttls(struct smtp *s, const char *args, size_t len);
void smtp_cmd_noop(struct smtp *s, const char *args, size_t len);
void smtp_cmd_quit(struct smtp *s, const char *args, size_t len);
void smtp_cmd_vrfy(struct smtp *s, const char *args, size_t len);
void smtp_cmd_help(struct smtp *s, const char *args, size_t len);
void smtp_cmd_unimplemented(struct smtp *s, const char *args, size_t len);
void smtp_cmd_unknown(struct smtp *s, const char *args, size_t len);

/* The backend's answers to what the commands asked (R borrowed). */
void smtp_cmd_mail_answered(struct smtp *s, const struct smtp_reply *r);
/* Takes over A's address when the recipient was accepted. */
void smtp_cmd_rcpt_answered(struct smtp *s, const struct smtp_reply *r, struct smtp_await *a);
void smtp_cmd_rset_answered(struct smtp *s);
/* The backend RSET before an EHLO/HELO is in: the hello goes on. */
void smtp_cmd_hello_continue(struct smtp *s);

#endif
