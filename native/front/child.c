/* coopy front end (front.h): A and B (spawn.py _child_a, _child_b); P's messages to them. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TIOCGPTPEER_ 0x5441

/* ---- messages between P, A and B (SOCK_SEQPACKET, fds by SCM_RIGHTS) ------------------ */

int send_msg(int sock, const void *data, size_t len, const int *fds, int nfds)
{
	struct iovec iov = { (void *)data, len };
	union { char buf[CMSG_SPACE(MAX_FDS * sizeof(int))]; struct cmsghdr align; } u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
	}
	ssize_t n;
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -1 : 0;
}

ssize_t recv_msg(int sock, char *buf, size_t size, int *fds, int *nfds)
{
	struct iovec iov = { buf, size - 1 };
	union { char buf[CMSG_SPACE(MAX_FDS * sizeof(int))]; struct cmsghdr align; } u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof u.buf };
	ssize_t n;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	*nfds = 0;
	if (n < 0)
		return -1;
	buf[n] = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int got = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds, CMSG_DATA(c), (size_t)got * sizeof(int));
			*nfds = got;
		}
	return n;
}

/* ---- A and B (spawn.py _child_a, _child_b) ------------------------------------------- */

static void bring_up_loopback(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		fail("loopback", NULL);
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		fail("loopback", NULL);
	close(s);
}

static char **init_argv(const struct plan *pl, int filter_fd, int tty)
{
	char **argv = calloc((size_t)(pl->ninitargs + pl->nargs + 8), sizeof *argv);
	int n = 0;
	for (int i = 0; i < pl->ninitargs; i++)
		argv[n++] = pl->initargs[i];
	if (filter_fd >= 0) {
		static char num[16];
		snprintf(num, sizeof num, "%d", filter_fd);
		argv[n++] = "-s";
		argv[n++] = num;
	}
	if (tty)
		argv[n++] = "-t";
	argv[n++] = "--";
	for (int i = 0; i < pl->nargs; i++)
		argv[n++] = pl->args[i];
	return argv;
}

static void child_b(const struct plan *pl, int sock, int init_fd, int tty, const int stdio[3],
		    char **envp)
{
	pid_t parent = getppid();
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(125);
	if (sethostname(pl->hostname, strlen(pl->hostname)) < 0)
		fail("sethostname", NULL);
	if (!pl->net_host)
		bring_up_loopback();
	if (pl->nhelper)
		block_routes(unreachable, nunreachable);
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		fail("mount", "/ (slave)");
	for (int i = 0; i < pl->nops; i++)
		apply(pl, &pl->ops[i]);
	if (root_fd >= 0)
		close(root_fd);
	if (chdir(pl->cwd) < 0)
		fail("chdir", pl->cwd);
	int fds[3] = { stdio[0], stdio[1], stdio[2] };
	if (tty) {
		int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC), unlock = 0;
		if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0)
			fail("the box's PTY", NULL);
		int slave = ioctl(master, TIOCGPTPEER_, O_RDWR | O_NOCTTY);
		if (slave < 0 || send_msg(sock, "T", 1, &master, 1) < 0)
			fail("the box's PTY", NULL);
		close(master);
		fds[0] = fds[1] = fds[2] = slave;
	} else if (send_msg(sock, "-", 1, NULL, 0) < 0) {
		fail("telling the front end", NULL);
	}
	char go;
	if (pl->nhelper && (recv(sock, &go, 1, 0) != 1 || go != 'N'))
		_exit(125); /* the network helper failed: P says why */
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], 100 + i) < 0)
			fail("dup2", NULL);
	for (int i = 0; i < 3; i++)
		if (dup2(100 + i, i) < 0 || close(100 + i) < 0)
			fail("dup2", NULL);
	int filter_fd = -1;
	if (pl->seccomp_len) {
		int p[2];
		if (pipe(p) < 0 || write_all(p[1], pl->seccomp, pl->seccomp_len) < 0)
			fail("seccomp pipe", NULL);
		close(p[1]);
		filter_fd = p[0];
	}
	syscall(SYS_execveat, init_fd, "", init_argv(pl, filter_fd, tty), envp, AT_EMPTY_PATH);
	fail("exec", "coopy-init");
}

void child_a(const struct plan *pl, int sock, int init_fd, int tty, const int stdio[3],
	     char **envp)
{
	pid_t parent = getppid();
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(125);
	static char msg[MAX_MSG];
	int fds[MAX_FDS], nfds = 0;
	if (unshare(CLONE_NEWUSER) < 0)
		fail("unshare", "user namespace");
	if (send_msg(sock, "U", 1, NULL, 0) < 0)
		_exit(125);
	ssize_t n = recv_msg(sock, msg, sizeof msg, fds, &nfds);
	if (n < 1 || msg[0] != 'M')
		_exit(125);
	if (nfds > 0) { /* keys: the paths, NUL-separated, in the order of the fds */
		char *k = msg + 1;
		for (int i = 0; i < nfds && k < msg + n; i++) {
			trees.keys[i] = strdup(k);
			trees.fds[i] = fds[i];
			k += strlen(k) + 1;
		}
		trees.n = nfds;
	}
	int mapped = 0;
	for (int i = 0; i < pl->nuids; i++)
		if (pl->uids[i].in == 0)
			mapped = 1;
	if (mapped) {
		if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
			fail("setresuid", NULL);
		/* A change of credentials clears the parent-death signal and dumpability
		 * (spawn.py says why both matter). */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(125);
		prctl(PR_SET_DUMPABLE, 1);
	}
	int flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWCGROUP;
	if (!pl->net_host)
		flags |= CLONE_NEWNET;
	if (unshare(flags) < 0)
		fail("unshare", NULL);
	int gate[2];
	if (pipe2(gate, O_CLOEXEC) < 0)
		fail("pipe", NULL);
	pid_t b = fork();
	if (b < 0)
		fail("fork", NULL);
	if (b == 0) {
		char x;
		close(gate[1]);
		if (read(gate[0], &x, 1) != 1)
			_exit(125);
		close(gate[0]);
		child_b(pl, sock, init_fd, tty, stdio, envp);
	}
	close(gate[0]);
	snprintf(msg, sizeof msg, "B%d", b);
	send_msg(sock, msg, strlen(msg), NULL, 0);
	if (write(gate[1], "x", 1) != 1)
		_exit(125);
	close(gate[1]);
	close(sock);
	close(err_fd);
	for (int i = 0; i < trees.n; i++)
		close(trees.fds[i]);
	signal(SIGINT, SIG_IGN);
	char *wait_argv[] = { "coopy-wait", "-W", NULL };
	char *no_env[] = { NULL };
	syscall(SYS_execveat, init_fd, "", wait_argv, no_env, AT_EMPTY_PATH);
	_exit(125);
}
