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
 *     -W      wait mode, used by the process between the keeper and PID 1 (it exec's
 *             this program so that it holds no Python interpreter while the box
 *             lives): wait for the one child, exit with its status (128+N: signal N).
 *     -k      fd of a SOCK_SEQPACKET control socket to the keeper: it asks for more
 *             processes in the box (shells, `coopy exec`), started exactly like the
 *             command (same ids, limits, capabilities, filter).  Messages, fields
 *             separated by NUL:
 *               keeper → init  "S" ID TTY(0|1) ARGV...   start; TTY=0 comes with 3 fds
 *                              "K" ID SIGNAL              signal a started process
 *                                                         (ID -1: every process)
 *                              "Q" STATUS                 end the box with STATUS
 *                              "W" STATUS                 the same once every other
 *                                                         process has exited (`coopy
 *                                                         kill`: their SIGTERM grace)
 *             With -k, COMMAND is process 0 and its exit does not end the box: init
 *             reports it ("X" 0 STATUS) and the keeper answers "Q" (end) or "S" 0 …
 *             (restart the agent).
 *               init → keeper  "P" ID   started (TTY=1: with the PTY master's fd)
 *                              "E" ID STAGE ERRNO         could not start it
 *                              "X" ID STATUS              it exited (128+N: signal N)
 *   environ   is COMMAND's environment, already built by coopy (an allowlist);
 *             PATH in it is used to find COMMAND, as execvp does.
 *   fds       0, 1, 2 are COMMAND's stdio; every other fd is closed here.
 *
 * What it does: (1) reads the filter, closes inherited fds, sets limits, drops
 * capabilities from the bounding set and sets no_new_privs, (2) blocks all signals,
 * (3) forks COMMAND in its own session, (4) learns through a CLOEXEC pipe whether exec
 * worked (EOF means it did; otherwise the child wrote its stage and errno), (5) forwards
 * the signals it receives to COMMAND, reaps every orphan (it is the box's reaper), and
 * (6) exits with COMMAND's status: its exit code, or 128+N when signal N killed it.  Exec
 * failures exit 127 (not found) or 126 (cannot execute), as shells and Docker do.
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
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <poll.h>
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

/* Close fds from..to; close_range(2) is 5.9+, coopy needs 5.12 (mount_setattr). */
static void close_fds(unsigned from, unsigned to)
{
	if (from <= to)
		syscall(SYS_close_range, from, to, 0U);
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
	ssize_t n = 1;
	while (n != 0 && got < sizeof filter) {
		n = read(fd, (char *)filter + got, sizeof filter - got);
		if (n < 0 && errno != EINTR)
			die("reading the seccomp filter");
		got += n > 0 ? (size_t)n : 0;
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
	if (value < 0) /* not asked for */
		return;
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

/* Set once in main, read by start_process (no allocation after fork). */
static long g_uid = -1, g_gid = -1;
static struct sock_fprog g_prog = { 0, filter };

/* Start CMD like the box's command: own session, (with tty) a controlling terminal,
 * the box user's ids, the filter, exec.  fds[3] become its stdio (or -1: keep ours).
 * Returns its pid, or -1 with report = { stage, errno }. */
static pid_t start_process(char **cmd, int tty, const int fds[3], int report[2])
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		report[0] = ST_EXEC;
		report[1] = errno;
		return -1;
	}
	pid_t child = fork();
	if (child < 0) {
		report[0] = ST_EXEC;
		report[1] = errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return -1;
	}
	if (child == 0) {
		close(pipefd[0]);
		sigset_t none; /* nothing blocked, whatever init inherited (see front/util.c) */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		int stage = ST_SESSION;
		for (int i = 0; i < 3; i++)
			if (fds[i] >= 0 && dup2(fds[i], i) < 0)
				goto fail;
		if (setsid() < 0)
			goto fail;
		stage = ST_TTY;
		if (tty && ioctl(0, TIOCSCTTY, 0) < 0)
			goto fail;
		stage = ST_IDS;
		if (g_gid >= 0 && setresgid((gid_t)g_gid, (gid_t)g_gid, (gid_t)g_gid) < 0)
			goto fail;
		if (g_uid >= 0 && setresuid((uid_t)g_uid, (uid_t)g_uid, (uid_t)g_uid) < 0)
			goto fail;
		/* seccomp last, immediately before exec (as bubblewrap and nsjail do). */
		stage = ST_SECCOMP;
		if (g_prog.len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &g_prog, 0, 0) < 0)
			goto fail;
		stage = ST_EXEC;
		execvp(cmd[0], cmd);
fail:;
		int rep[2] = { stage, errno };
		(void)!write(pipefd[1], rep, sizeof rep);
		_exit(127);
	}
	close(pipefd[1]);
	ssize_t n;
	do
		n = read(pipefd[0], report, 2 * sizeof(int));
	while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == (ssize_t)(2 * sizeof(int))) {
		waitpid(child, NULL, 0);
		return -1;
	}
	return child;
}

/* ---- the keeper's control channel ------------------------------------------------ */

#define MAX_STARTED 256
static pid_t agent = -1; /* process 0: the box's command, the target of signals */
static int ending = -1;  /* "W": the status to end with once no process is left */

static void end_if_alone(void)
{
	if (ending >= 0 && waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
		_exit(ending);
}
#define MAX_ARGS 256
static struct { long id; pid_t pid; } started[MAX_STARTED];
static char msg[65536];
static char *margv[MAX_ARGS + 1];

/* Send a message of NUL-separated fields (the last one NUL-terminated too), with fd
 * attached when fd >= 0.  A gone keeper is not our problem: PDEATHSIG ends us with it. */
static void send_fields(int ctl, int fd, const char *kind, long id, const char *f3,
			const char *f4)
{
	char out[160];
	int len = snprintf(out, sizeof out, "%s%c%ld%c", kind, 0, id, 0);
	if (f3)
		len += snprintf(out + len, sizeof out - (size_t)len, "%s%c", f3, 0);
	if (f4)
		len += snprintf(out + len, sizeof out - (size_t)len, "%s%c", f4, 0);
	struct iovec iov = { out, (size_t)len };
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof u.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	(void)sendmsg(ctl, &mh, MSG_NOSIGNAL);
}

static int open_pty(int *slave)
{
	int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		return -1;
	int unlock = 0;
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
	    (*slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY)) < 0) {
		int err = errno;
		close(master);
		errno = err;
		return -1;
	}
	return master;
}

static void handle_control(int ctl)
{
	union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } u;
	struct iovec iov = { msg, sizeof msg - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = u.buf, .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return;
	msg[n] = '\0';
	int fds[3] = { -1, -1, -1 }, nfds = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds, CMSG_DATA(c), (size_t)(nfds > 3 ? 3 : nfds) * sizeof(int));
		}
	int argc = 0; /* split "X\0ID\0..." into fields */
	for (char *p = msg; p < msg + n && argc < MAX_ARGS; p += strlen(p) + 1)
		margv[argc++] = p;
	margv[argc] = NULL;
	if (argc >= 2 && (strcmp(margv[0], "Q") == 0 || strcmp(margv[0], "W") == 0)) {
		ending = (int)strtol(margv[1], NULL, 10);
		if (margv[0][0] == 'Q')
			_exit(ending);
		end_if_alone();
	} else if (argc >= 3 && strcmp(margv[0], "K") == 0) {
		long id = strtol(margv[1], NULL, 10);
		int sig = (int)strtol(margv[2], NULL, 10);
		if (id == -1) /* every process of the box but init (kill(2): pid -1) */
			kill(-1, sig);
		for (int i = 0; i < MAX_STARTED; i++)
			if (started[i].pid > 0 && started[i].id == id)
				kill(started[i].pid, sig);
	} else if (argc >= 4 && strcmp(margv[0], "S") == 0) {
		long id = strtol(margv[1], NULL, 10);
		int tty = margv[2][0] == '1', slave = -1, master = -1, slot = -1;
		int report[2] = { ST_EXEC, EINVAL }; /* without a PTY, 3 fds must come along */
		for (int i = 0; i < MAX_STARTED && slot < 0; i++)
			if (started[i].pid <= 0)
				slot = i;
		pid_t pid = -1;
		if (slot < 0) {
			report[1] = EAGAIN;
		} else if (tty && (master = open_pty(&slave)) < 0) {
			report[0] = ST_TTY;
			report[1] = errno;
		} else if (tty) {
			int sfds[3] = { slave, slave, slave };
			pid = start_process(margv + 3, 1, sfds, report);
			close(slave);
		} else if (nfds == 3) {
			pid = start_process(margv + 3, 0, fds, report);
		}
		if (pid > 0) {
			started[slot].id = id;
			started[slot].pid = pid;
			if (id == 0)
				agent = pid; /* a restarted agent: signals go to it now */
			send_fields(ctl, master, "P", id, NULL, NULL);
		} else {
			char err[16];
			snprintf(err, sizeof err, "%d", report[1]);
			send_fields(ctl, -1, "E", id, stage_names[report[0]], err);
		}
		if (master >= 0)
			close(master);
	}
	for (int i = 0; i < nfds && i < 3; i++)
		close(fds[i]);
}

/* A wait status as a shell reports it: the exit code, or 128+N for signal N. */
static int shell_status(int status)
{
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static void report_exit(int ctl, pid_t pid, int status)
{
	for (int i = 0; i < MAX_STARTED; i++) {
		if (started[i].pid != pid)
			continue;
		char code[16];
		snprintf(code, sizeof code, "%d", shell_status(status));
		send_fields(ctl, -1, "X", started[i].id, code, NULL);
		started[i].pid = 0;
	}
}

int main(int argc, char **argv)
{
	long nproc = -1, nofile = -1, data = -1;
	int tty = 0, opt, filter_fd = -1, have_caps = 0, ctl = -1;
	unsigned long long keep_caps = 0;
	const char *name = NULL;

	if (argc == 2 && strcmp(argv[1], "-W") == 0) {
		prctl(PR_SET_NAME, "coopy-wait", 0, 0, 0);
		close_fds(3, ~0U);
		for (;;) {
			int status;
			if (wait(&status) < 0) {
				if (errno == EINTR)
					continue;
				_exit(125);
			}
			_exit(shell_status(status));
		}
	}
	while ((opt = getopt(argc, argv, "+u:g:tn:c:s:p:f:m:k:")) != -1) {
		switch (opt) {
		case 'u': g_uid = strtol(optarg, NULL, 10); break;
		case 'g': g_gid = strtol(optarg, NULL, 10); break;
		case 't': tty = 1; break;
		case 'n': name = optarg; break;
		case 'c': keep_caps = strtoull(optarg, NULL, 16); have_caps = 1; break;
		case 's': filter_fd = (int)strtol(optarg, NULL, 10); break;
		case 'p': nproc = strtol(optarg, NULL, 10); break;
		case 'f': nofile = strtol(optarg, NULL, 10); break;
		case 'm': data = strtol(optarg, NULL, 10); break;
		case 'k': ctl = (int)strtol(optarg, NULL, 10); break;
		default:
			dprintf(2, "usage: coopy-init [-u UID] [-g GID] [-t] [-n NAME] [-c CAPS] "
				   "[-s FD] [-p N] [-f N] [-m BYTES] [-k FD] -- CMD...\n");
			return 125;
		}
	}
	if (optind >= argc) {
		dprintf(2, "coopy: box init: no command\n");
		return 125;
	}
	char **cmd = argv + optind;

	/* Exec'd from a memfd, the kernel named us after the fd ("3"); `ps` should say. */
	prctl(PR_SET_NAME, "coopy-init", 0, 0, 0);

	/* (1) Nothing of the host survives past this point but fds 0-2 (and the keeper's
	 * control socket, made CLOEXEC so that no started process inherits it). */
	if (filter_fd >= 0)
		g_prog.len = (unsigned short)read_filter(filter_fd);
	if (ctl >= 0) {
		if (ctl < 3 || fcntl(ctl, F_SETFD, FD_CLOEXEC) < 0)
			die("control socket");
		close_fds(3, (unsigned)ctl - 1);
		close_fds((unsigned)ctl + 1, ~0U);
	} else {
		close_fds(3, ~0U);
	}
	set_limit(RLIMIT_NPROC, nproc, "setting the process limit");
	set_limit(RLIMIT_NOFILE, nofile, "setting the open files limit");
	set_limit(RLIMIT_DATA, data, "setting the memory limit");
	if (have_caps)
		drop_bounding_set(keep_caps);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die("no_new_privs");

	/* (2) Every signal is read from a signalfd in the loop below. */
	sigset_t all;
	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, NULL) < 0)
		die("sigprocmask");
	int sfd = signalfd(-1, &all, SFD_CLOEXEC);
	if (sfd < 0)
		die("signalfd");

	/* (3) The command, in its own session and (with -t) with the PTY as its terminal;
	 * (4) a failure to start it is reported with its stage and errno. */
	int report[2] = { 0, 0 };
	const int keep[3] = { -1, -1, -1 };
	pid_t child = start_process(cmd, tty, keep, report);
	agent = child;
	if (child > 0 && ctl >= 0) {
		started[0].id = 0;
		started[0].pid = child;
	}
	if (child < 0) {
		if (report[0] == ST_EXEC)
			report_exec_failure(name ? name : cmd[0], report[1]);
		dprintf(2, "coopy: box init: %s: %s\n", stage_names[report[0]],
			strerror(report[1]));
		_exit(125);
	}

	/* (5) Forward signals, start what the keeper asks for, reap, and (6) leave with
	 * the command's status. */
	struct pollfd pfd[2] = { { sfd, POLLIN, 0 }, { ctl, POLLIN, 0 } };
	for (;;) {
		if (poll(pfd, ctl >= 0 ? 2 : 1, -1) < 0)
			continue;
		if (ctl >= 0 && pfd[1].revents & (POLLHUP | POLLERR))
			pfd[1].fd = -1; /* the keeper closed its end: stop listening */
		else if (ctl >= 0 && pfd[1].revents & POLLIN)
			handle_control(ctl);
		if (!(pfd[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si)
			continue;
		if (si.ssi_signo != SIGCHLD) {
			if (agent > 0)
				kill(agent, (int)si.ssi_signo);
			continue;
		}
		for (;;) {
			int status;
			pid_t pid = waitpid(-1, &status, WNOHANG);
			if (pid <= 0)
				break;
			if (pid == agent)
				agent = -1;
			if (pid == child && (ctl < 0 || pfd[1].fd < 0)) {
				/* without a keeper to ask, the box ends with its command */
				_exit(shell_status(status));
			}
			if (ctl >= 0)
				report_exit(ctl, pid, status);
		}
		end_if_alone();
	}
}
