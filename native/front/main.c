/* coopy front end (front.h): main(), and the small things every file uses. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int debug;
static char **saved_argv;

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

/* Hand the invocation to the Python CLI next to this program (never returns). */
static void exec_python(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n < 0) {
		dprintf(2, "coopy: cannot find the coopy program itself: %s\n", strerror(errno));
		_exit(125);
	}
	self[n] = 0;
	char *slash = strrchr(self, '/');
	*slash = 0;
	char *py = xstrcat3(self, "/", "coopy-py");
	execv(py, saved_argv);
	dprintf(2, "coopy: cannot start %s: %s\nhint: reinstall coopy (pip install)\n", py,
		strerror(errno));
	_exit(125);
}

/* ---- main ------------------------------------------------------------------------------- */

static void try_plan(int argc, char **argv)
{
	char key[65];
	if (compute_key(argc, argv, key) < 0)
		return;
	setenv("COOPY_PLAN_KEY", key, 1); /* on a miss: Python writes the plan under it */
	char *dir = plans_dir();
	if (!dir)
		return;
	char *path = xstrcat3(dir, "/", key);
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_uid != getuid() || (st.st_mode & 022)
	    || st.st_size > MAX_PLAN) {
		say("no plan for this invocation (%s)", key);
		if (fd >= 0)
			close(fd);
		return;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	struct plan pl;
	if (!buf || got != (size_t)st.st_size || parse_plan(buf, got, &pl) < 0) {
		say("the plan %s cannot be used", key);
		unlink(path);
		return;
	}
	int at = command_at(argc, argv);
	if (at && !pl.cmdargv) {
		say("the plan %s was not made for any command", key);
		return;
	}
	if (at) {
		pl.args = argv + at;
		pl.nargs = argc - at;
	}
	say("starting the box from the plan %s", key);
	int status = run_box(&pl);
	if (status >= 0)
		exit(status);
	const char *strict = getenv("COOPY_PLAN_STRICT");
	if (strict && *strict && strcmp(strict, "0")) { /* the test suite: no silent fallback */
		dprintf(2, "coopy: the box could not be started from its plan %s (%s)\n", key,
			last_failure);
		unlink(path);
		exit(125);
	}
	unlink(path); /* it failed before the command ran: Python does it again, and says why */
}

int main(int argc, char **argv)
{
	saved_argv = argv;
	debug = getenv("COOPY_DEBUG_FRONTEND") != NULL;
	const char *off = getenv("COOPY_NO_PLAN_CACHE");
	if (argc > 1 && !strcmp(argv[1], "run") && !(off && *off && strcmp(off, "0")))
		try_plan(argc, argv);
	exec_python();
}
