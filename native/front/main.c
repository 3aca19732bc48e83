/* coopy front end (front.h): main(), which starts a box from its plan or hands the
 * invocation to the Python CLI. */
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

static char **saved_argv;

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
