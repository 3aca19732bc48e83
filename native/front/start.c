/* coopy front end (front.h): P, the process that starts the box (spawn.py). */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int sys_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* coopy-init copied into a sealed memfd: the box can never write to the host's file. */
static int sealed_init(const char *path)
{
	int src = open(path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return -1;
	struct stat st;
	int fd = memfd_create("coopy-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || fstat(src, &st) < 0)
		goto fail;
	for (off_t left = st.st_size; left > 0;) {
		ssize_t n = sendfile(fd, src, NULL, (size_t)left);
		if (n <= 0)
			goto fail;
		left -= n;
	}
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
		goto fail;
	close(src);
	return fd;
fail:
	close(src);
	if (fd >= 0)
		close(fd);
	return -1;
}


int run_box(struct plan *pl)
{
	forwarded_init();
	sigprocmask(SIG_BLOCK, &forwarded, NULL);
	int lock_fd = -1;
	char *dir = make_box_dir(pl, &lock_fd);
	if (!dir) {
		unblock_forwarded();
		return -1;
	}
	rebase(pl, dir);
	int tty = pl->tty >= 0 ? pl->tty : isatty(0);
	int stdio[3] = { 0, 1, 2 };
	struct route routes[3];
	int nr = 0;
	memset(routes, 0, sizeof routes);
	if (!tty) { /* pipes stand in for any of stdout/stderr that is a terminal */
		for (int fd = 1; fd <= 2; fd++) {
			int p[2];
			if (isatty(fd) && pipe2(p, O_CLOEXEC) == 0) {
				routes[nr].src = p[0];
				routes[nr].dst = fd;
				routes[nr].open = routes[nr].box = 1;
				nr++;
				stdio[fd] = p[1];
			}
		}
		if (isatty(0))
			stdio[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	/* The box's environment: TERM as build_env sets it when the caller has none. */
	char **envp = calloc((size_t)pl->nenv + 2, sizeof *envp);
	for (int i = 0; i < pl->nenv; i++)
		envp[i] = pl->env[i];
	if (pl->termdefault)
		envp[pl->nenv] = isatty(0) ? "TERM=xterm-256color" : "TERM=dumb";

	struct helper helper = { -1, -1, -1 };
	if (pl->nhelper)
		unreachable = host_addresses(pl, &nunreachable);
	int init_fd = sealed_init(pl->init), sv[2], errp[2];
	pid_t a = -1;
	int init_pidfd = -1, master = -1, a_pidfd = -1, status = -1;
	if (init_fd < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0
	    || pipe2(errp, O_CLOEXEC) < 0)
		goto fail;
	int cgfd = -1;
	if (pl->cg_parent && (cgfd = make_cgroup(pl, dir)) < 0)
		goto fail;
	int here = open(".", O_PATH | O_CLOEXEC);
	if (chdir(dir) < 0)
		goto fail;
	a = fork_box(cgfd);
	if (a == 0) {
		/* A and B keep the forwarded signals blocked: one sent to B before coopy-init
		 * reads its signalfd stays pending (a pid namespace's init would drop it). */
		close(sv[0]);
		close(errp[0]);
		err_fd = errp[1];
		child_a(pl, sv[1], init_fd, tty, stdio, envp);
	}
	if (fchdir(here) < 0 && chdir("/") < 0)
		say("chdir: %s", strerror(errno));
	close(here);
	if (cgfd >= 0)
		close(cgfd);
	close(sv[1]);
	close(errp[1]);
	for (int fd = 0; fd < 3; fd++)
		if (stdio[fd] != fd)
			close(stdio[fd]);
	if (a < 0)
		goto fail;
	static char msg[MAX_MSG];
	int fds[MAX_FDS], nfds;
	if (recv_msg(sv[0], msg, sizeof msg, fds, &nfds) != 1 || msg[0] != 'U'
	    || write_maps(pl, a) < 0)
		goto fail;
	nfds = 0;
	size_t klen = 0;
	msg[0] = 'M';
	if (pl->rootbox) {
		nfds = clone_sources(pl, a, fds, msg + 1, sizeof msg - 1, &klen);
		if (nfds < 0)
			goto fail;
	}
	int sent = send_msg(sv[0], msg, 1 + klen, fds, nfds);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (sent < 0 || recv_msg(sv[0], msg, sizeof msg, fds, &nfds) < 2 || msg[0] != 'B')
		goto fail;
	init_pidfd = sys_pidfd_open((pid_t)atoi(msg + 1));
	if (pl->nhelper && start_helper(pl, (pid_t)atoi(msg + 1), &helper) < 0)
		goto fail; /* 4a: in parallel with B's plan */
	ssize_t n = recv_msg(sv[0], msg, sizeof msg, fds, &nfds);
	if (n == 1 && msg[0] == 'T' && nfds == 1)
		master = fds[0];
	else if (n != 1 || msg[0] != '-')
		goto fail;
	if (pl->nhelper && (helper_ready(&helper) < 0 || send_msg(sv[0], "N", 1, NULL, 0) < 0))
		goto fail; /* 4b */
	char err[1024];
	size_t got = 0;
	for (;;) { /* EOF: coopy-init was exec'd in both A and B */
		ssize_t r = read(errp[0], err + got, sizeof err - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == sizeof err - 1)
			break;
	}
	err[got] = 0;
	if (got > 0 || init_pidfd < 0) {
		snprintf(last_failure, sizeof last_failure, "%s", got ? err : "no word from it");
		say("setting up the box: %s", last_failure);
		goto fail;
	}
	close(errp[0]);
	close(sv[0]);

	/* The box runs.  From here on its status is the one we exit with; a signal that
	 * came during the set-up is read from the signalfd now and forwarded. */
	int sfd = signalfd(-1, &forwarded, SFD_CLOEXEC | SFD_NONBLOCK);
	a_pidfd = sys_pidfd_open(a);
	struct termios saved;
	int raw = 0;
	if (master >= 0) {
		set_winsize(0, master);
		if (tcgetattr(0, &saved) == 0) {
			struct termios t = saved;
			cfmakeraw(&t);
			raw = tcsetattr(0, TCSANOW, &t) == 0;
		}
		routes[0] = (struct route){ .src = 0, .dst = master, .open = 1 };
		routes[1] = (struct route){ .src = master, .dst = 1, .open = 1, .box = 1 };
		nr = 2;
	}
	int flags[3];
	for (int i = 0; i < nr; i++)
		flags[i] = fcntl(routes[i].dst, F_GETFL);
	relay(routes, nr, sfd, a_pidfd, init_pidfd, master);
	for (int i = 0; i < nr; i++)
		fcntl(routes[i].dst, F_SETFL, flags[i]);
	if (raw)
		tcsetattr(0, TCSAFLUSH, &saved);
	int ws;
	while (waitpid(a, &ws, 0) < 0 && errno == EINTR)
		;
	status = WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws);
	stop_helper(&helper);
	remove_cgroup();
	remove_box_dir(pl, dir);
	close(lock_fd);
	return status;
fail:
	if (!strcmp(last_failure, "unknown"))
		snprintf(last_failure, sizeof last_failure, "%s", strerror(errno));
	say("starting the box failed: %s", last_failure);
	if (a > 0) {
		kill(a, SIGKILL);
		waitpid(a, NULL, 0);
	}
	stop_helper(&helper);
	remove_cgroup();
	remove_box_dir(pl, dir);
	if (lock_fd >= 0)
		close(lock_fd);
	unblock_forwarded(); /* cleaned up: a pending signal now acts as on Python */
	return -1;
}
