/*
 * coopy-init: PID 1 of a box.
 *
 * Contract (mirrored in coopy/spawn.py, build_init_argv):
 *   coopy-init [-u UID] [-g GID] [-t] [-n NAME] [-c CAPS] [-s FD] [-p N] [-f N]
 *              -- COMMAND [ARG...]
 *     -u/-g   run COMMAND as this uid/gid inside the box (default: as is);
 *             supplementary groups are kept on purpose (video/render for GPUs).
 *     -t      fd 0 is the box's PTY slave: COMMAND gets it as controlling terminal.
 *     -n      the name shown in error messages (default: COMMAND).
 *     -c      hex mask of the capabilities kept in the bounding set (coopy/caps.py).
 *     -s      fd to read a seccomp BPF program from (coopy/seccomp.py), installed in
 *             COMMAND's process right before exec; no_new_privs is always set.
 *     -p/-f   RLIMIT_NPROC / RLIMIT_NOFILE.  NPROC is set inside the box's user
 *             namespace, where (since 5.14) it counts the box's processes only.
 *     -m      RLIMIT_DATA in bytes: the per-process memory limit used where no cgroup
 *             can be had (RLIMIT_AS would count CUDA's and the JVM's reservations).
 *   environ   is COMMAND's environment, already built by coopy (an allowlist);
 *             PATH in it is used to find COMMAND, as execvp does.
 *   fds       0, 1, 2 are COMMAND's stdio; every other fd is closed here.
 *
 * What it does: (1) reads the filter, closes inherited fds, sets limits, drops
 * capabilities from the bounding set and sets no_new_privs, (2) blocks all signals,
 * (3) forks COMMAND in its own session, (4) learns through a CLOEXEC pipe whether exec
 * worked (EOF means it did; otherwise the child wrote its stage and errno), (5) forwards
 * the signals it receives
 * to COMMAND, reaps every orphan (it is the box's reaper), and (6) exits with COMMAND's
 * status: its exit code, or 128+N when signal N killed it.  Exec failures exit 127 (not
 * found) or 126 (cannot execute), as shells and Docker do.
 *
 * The kernel ignores signals without a handler sent to a pid namespace's init, so a
 * plain program as PID 1 would ignore SIGTERM; tini and dumb-init exist for that reason.
 * Nothing is allocated after fork.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static void die(const char *what)
{
	dprintf(2, "coopy: box init: %s: %s\n", what, strerror(errno));
	_exit(125);
}

static void close_inherited(void)
{
	/* close_range(2) is 5.9+; fall back to a loop over the usual limit. */
	if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
		return;
	for (int fd = 3; fd < 65536; fd++)
		close(fd);
}

#define MAX_FILTER 4096 /* BPF_MAXINSNS */
static struct sock_filter filter[MAX_FILTER];

/* Stages of the child, as written to the error pipe. */
enum { ST_SESSION = 1, ST_TTY, ST_IDS, ST_SECCOMP, ST_EXEC };
static const char *const stage_names[] = {
	[ST_SESSION] = "setsid", [ST_TTY] = "controlling terminal",
	[ST_IDS] = "switching user", [ST_SECCOMP] = "seccomp filter", [ST_EXEC] = "exec",
};

static size_t read_filter(int fd)
{
	size_t got = 0;
	for (;;) {
		ssize_t n = read(fd, (char *)filter + got, sizeof filter - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("reading the seccomp filter");
		if (n == 0)
			break;
		got += (size_t)n;
		if (got == sizeof filter)
			break;
	}
	close(fd);
	if (got == 0 || got % sizeof filter[0]) {
		errno = EINVAL;
		die("reading the seccomp filter");
	}
	return got / sizeof filter[0];
}

static void set_limit(int resource, long value, const char *what)
{
	struct rlimit rl = { (rlim_t)value, (rlim_t)value };
	if (setrlimit(resource, &rl) < 0)
		die(what);
}

static void drop_bounding_set(unsigned long long keep)
{
	for (int cap = 0; cap < 64; cap++) {
		if (keep & (1ULL << cap))
			continue;
		/* EINVAL: beyond this kernel's last capability.  EPERM: we are not root of
		 * the box (a single-id box run as a named user): the command gets no
		 * capabilities at exec anyway, and no_new_privs stops setuid programs. */
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
			die("dropping capabilities");
	}
}

static void report_exec_failure(const char *name, int err)
{
	int code = (err == ENOENT || err == ENOTDIR) ? 127 : 126;
	if (code == 127)
		dprintf(2, "coopy: cannot run \"%s\" in the box: not found\n"
			   "hint: is it installed in the box's image and on its PATH?\n", name);
	else
		dprintf(2, "coopy: cannot run \"%s\" in the box: %s\n"
			   "hint: check that it is an executable file for this machine\n",
			name, strerror(err));
	_exit(code);
}

int main(int argc, char **argv)
{
	long uid = -1, gid = -1, nproc = -1, nofile = -1, data = -1;
	int tty = 0, opt, filter_fd = -1, have_caps = 0;
	unsigned long long keep_caps = 0;
	const char *name = NULL;

	while ((opt = getopt(argc, argv, "+u:g:tn:c:s:p:f:m:")) != -1) {
		switch (opt) {
		case 'u': uid = strtol(optarg, NULL, 10); break;
		case 'g': gid = strtol(optarg, NULL, 10); break;
		case 't': tty = 1; break;
		case 'n': name = optarg; break;
		case 'c': keep_caps = strtoull(optarg, NULL, 16); have_caps = 1; break;
		case 's': filter_fd = (int)strtol(optarg, NULL, 10); break;
		case 'p': nproc = strtol(optarg, NULL, 10); break;
		case 'f': nofile = strtol(optarg, NULL, 10); break;
		case 'm': data = strtol(optarg, NULL, 10); break;
		default:
			dprintf(2, "usage: coopy-init [-u UID] [-g GID] [-t] [-n NAME] [-c CAPS] "
				   "[-s FD] [-p N] [-f N] [-m BYTES] -- CMD...\n");
			return 125;
		}
	}
	if (optind >= argc) {
		dprintf(2, "coopy: box init: no command\n");
		return 125;
	}
	char **cmd = argv + optind;
	if (!name)
		name = cmd[0];

	/* Exec'd from a memfd, the kernel named us after the fd ("3"); `ps` should say. */
	prctl(PR_SET_NAME, "coopy-init", 0, 0, 0);

	/* (1) Nothing of the host survives past this point but fds 0-2. */
	struct sock_fprog prog = { 0, filter };
	if (filter_fd >= 0)
		prog.len = (unsigned short)read_filter(filter_fd);
	close_inherited();
	if (nproc >= 0)
		set_limit(RLIMIT_NPROC, nproc, "setting the process limit");
	if (nofile >= 0)
		set_limit(RLIMIT_NOFILE, nofile, "setting the open files limit");
	if (data >= 0)
		set_limit(RLIMIT_DATA, data, "setting the memory limit");
	if (have_caps)
		drop_bounding_set(keep_caps);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die("no_new_privs");

	/* (2) Every signal is handled synchronously by sigwaitinfo below. */
	sigset_t all, old;
	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, &old) < 0)
		die("sigprocmask");

	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		die("pipe");

	/* (3) The command, in its own session and (with -t) with the PTY as its terminal. */
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(pipefd[0]);
		sigprocmask(SIG_SETMASK, &old, NULL);
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		int stage = ST_SESSION;
		if (setsid() < 0)
			goto fail;
		stage = ST_TTY;
		if (tty && ioctl(0, TIOCSCTTY, 0) < 0)
			goto fail;
		stage = ST_IDS;
		if (gid >= 0 && setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0)
			goto fail;
		if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0)
			goto fail;
		/* seccomp last, immediately before exec (as bubblewrap and nsjail do). */
		stage = ST_SECCOMP;
		if (prog.len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
			goto fail;
		stage = ST_EXEC;
		execvp(cmd[0], cmd);
fail:;
		int report[2] = { stage, errno };
		/* (4) Tell the parent why; it prints the message. */
		(void)!write(pipefd[1], report, sizeof report);
		_exit(127);
	}
	close(pipefd[1]);
	int report[2] = { 0, 0 };
	ssize_t n;
	do
		n = read(pipefd[0], report, sizeof report);
	while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == (ssize_t)sizeof report) {
		waitpid(child, NULL, 0);
		if (report[0] == ST_EXEC)
			report_exec_failure(name, report[1]);
		dprintf(2, "coopy: box init: %s: %s\n", stage_names[report[0]],
			strerror(report[1]));
		_exit(125);
	}

	/* (5) Forward, reap, and (6) leave with the command's status. */
	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(&all, &info);
		if (sig < 0)
			continue;
		if (sig != SIGCHLD) {
			kill(child, sig);
			continue;
		}
		for (;;) {
			int status;
			pid_t pid = waitpid(-1, &status, WNOHANG);
			if (pid <= 0)
				break;
			if (pid != child)
				continue;
			if (WIFSIGNALED(status))
				_exit(128 + WTERMSIG(status));
			_exit(WEXITSTATUS(status));
		}
	}
}
