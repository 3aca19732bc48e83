/* coopy front end (front.h): the small things every file uses — the forwarded signals,
 * messages, strings, writes, and a child's failure report. */
#include "front.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int debug;

/* The signals forwarded to the box.  Blocked from before the first fork until the box
 * ends, so that one arriving while the box is being set up waits for it (then goes to
 * the box's init) instead of killing this process half-way.  A blocked mask survives
 * exec: the helpers this process runs unblock them first thing; A and B keep them
 * (coopy-init reads them from its signalfd and starts the command with none blocked). */
sigset_t forwarded;

void forwarded_init(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH };
	sigemptyset(&forwarded);
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaddset(&forwarded, sigs[i]);
}

void unblock_forwarded(void) { sigprocmask(SIG_UNBLOCK, &forwarded, NULL); }
char last_failure[1100] = "unknown";

void say(const char *fmt, ...)
{
	if (!debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	dprintf(2, "coopy front end: ");
	vdprintf(2, fmt, ap);
	dprintf(2, "\n");
	va_end(ap);
}

char *xstrcat3(const char *a, const char *b, const char *c)
{
	size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
	char *s = malloc(la + lb + lc + 1);
	if (!s)
		abort();
	memcpy(s, a, la);
	memcpy(s + la, b, lb);
	memcpy(s + la + lb, c, lc + 1);
	return s;
}

int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* A child's failure: said on the error pipe (P reads it), then exit 125. */
int err_fd = -1;
void fail(const char *what, const char *detail)
{
	dprintf(err_fd, "%s%s%s: %s", what, detail ? " " : "", detail ? detail : "",
		strerror(errno));
	_exit(125);
}
