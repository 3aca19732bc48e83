/*
 * coopy-init: PID 1 of a box.
 *
 * Contract (mirrored in coopy/spawn.py, build_init_argv):
 *   coopy-init [-u UID] [-g GID] [-t] [-n NAME] -- COMMAND [ARG...]
 *     -u/-g   run COMMAND as this uid/gid inside the box (default: as is);
 *             supplementary groups are kept on purpose (video/render for GPUs).
 *     -t      fd 0 is the box's PTY slave: COMMAND gets it as controlling terminal.
 *     -n      the name shown in error messages (default: COMMAND).
 *   environ   is COMMAND's environment, already built by coopy (an allowlist);
 *             PATH in it is used to find COMMAND, as execvp does.
 *   fds       0, 1, 2 are COMMAND's stdio; every other fd is closed here.
 *
 * What it does: (1) closes inherited fds, (2) blocks all signals, (3) forks COMMAND in
 * its own session, (4) learns through a CLOEXEC pipe whether exec worked (EOF means it
 * did; otherwise the child wrote "exec:<errno>"), (5) forwards the signals it receives
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
#include <sys/prctl.h>
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
	long uid = -1, gid = -1;
	int tty = 0, opt;
	const char *name = NULL;

	while ((opt = getopt(argc, argv, "+u:g:tn:")) != -1) {
		switch (opt) {
		case 'u': uid = strtol(optarg, NULL, 10); break;
		case 'g': gid = strtol(optarg, NULL, 10); break;
		case 't': tty = 1; break;
		case 'n': name = optarg; break;
		default:
			dprintf(2, "usage: coopy-init [-u UID] [-g GID] [-t] [-n NAME] -- CMD...\n");
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
	close_inherited();

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
		if (setsid() < 0)
			goto fail;
		if (tty && ioctl(0, TIOCSCTTY, 0) < 0)
			goto fail;
		if (gid >= 0 && setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0)
			goto fail;
		if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0)
			goto fail;
		execvp(cmd[0], cmd);
fail:;
		int err = errno;
		/* (4) Tell the parent why; it prints the message. */
		(void)!write(pipefd[1], &err, sizeof err);
		_exit(127);
	}
	close(pipefd[1]);
	int err = 0;
	ssize_t n;
	do
		n = read(pipefd[0], &err, sizeof err);
	while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == (ssize_t)sizeof err) {
		waitpid(child, NULL, 0);
		report_exec_failure(name, err);
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
