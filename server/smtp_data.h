/* smtp_data: the message of the SMTP state machine (smtp_data.c), for
 * smtp.c only: from the backend's answer to DATA to its verdicts after the
 * final dot. */
#ifndef MXFRONT_SMTP_DATA_H
#define MXFRONT_SMTP_DATA_H

#include <stddef.h>

#include "smtp_int.h"

/* The backend's answer to DATA (R borrowed): a 354 starts the message. */
void smtp_data_answered(struct smtp *s, const struct smtp_reply *r);

/* One message line as framed (ending included) with its flags, borrowed. */
void smtp_data_line(struct smtp *s, const char *line, size_t len, unsigned flags);

/* Marks the message as refused with CODE/TEXT (borrowed, copied); the
 * backend's copy is dropped. The client hears it after the final dot. */
void smtp_data_refuse(struct smtp *s, int code, const char *text);

#endif
