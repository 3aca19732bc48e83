/* coopy front end (front.h): a private network (coopy/net.py). */
#include "front.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The host's own non-loopback addresses (net.py host_addresses), read now, not when the
 * plan was made: a box must not reach services on 0.0.0.0 through the NAT helper. */
char **host_addresses(const struct plan *pl, int *count)
{
	char **out = NULL, line[512], last[64] = "";
	int n = 0;
	for (int i = 0; i < pl->nblocked; i++) {
		GROW(out, n);
		out[n++] = pl->blocked[i];
	}
	FILE *f = fopen("/proc/net/fib_trie", "re");
	while (f && fgets(line, sizeof line, f)) {
		char a[64], b[64], c[64];
		int words = sscanf(line, "%63s %63s %63s", a, b, c);
		if (words == 2 && !strcmp(a, "|--"))
			snprintf(last, sizeof last, "%s", b);
		else if (words == 3 && !strcmp(a, "/32") && !strcmp(b, "host") && !strcmp(c, "LOCAL")
			 && *last && strncmp(last, "127.", 4)) {
			char *prefix = xstrcat3(last, "/32", "");
			int dup = 0;
			for (int i = 0; i < n; i++)
				dup |= !strcmp(out[i], prefix);
			if (!dup) {
				GROW(out, n);
				out[n++] = prefix;
			}
		}
	}
	if (f)
		fclose(f);
	f = fopen("/proc/net/if_inet6", "re");
	while (f && fgets(line, sizeof line, f)) {
		char hex[33], scope[8], text[INET6_ADDRSTRLEN];
		unsigned char raw[16];
		if (sscanf(line, "%32s %*s %*s %7s", hex, scope) != 2 || strcmp(scope, "00"))
			continue;
		for (int i = 0; i < 16; i++)
			sscanf(hex + 2 * i, "%2hhx", &raw[i]);
		inet_ntop(AF_INET6, raw, text, sizeof text);
		GROW(out, n);
		out[n++] = xstrcat3(text, "/128", "");
	}
	if (f)
		fclose(f);
	*count = n;
	return out;
}

/* An unreachable route for each prefix, by hand-built rtnetlink messages (net.py). */
void block_routes(char **prefixes, int n)
{
	int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (s < 0)
		fail("netlink", NULL);
	for (int i = 0; i < n; i++) {
		char addr[64];
		snprintf(addr, sizeof addr, "%s", prefixes[i]);
		char *slash = strchr(addr, '/');
		if (!slash)
			continue;
		*slash = 0;
		int len = atoi(slash + 1), v6 = strchr(addr, ':') != NULL;
		unsigned char dst[16];
		if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, dst) != 1)
			continue;
		struct {
			struct nlmsghdr h;
			struct rtmsg r;
			struct rtattr a;
			unsigned char dst[16];
		} req;
		size_t alen = v6 ? 16 : 4;
		memset(&req, 0, sizeof req);
		req.h.nlmsg_len = (unsigned)(NLMSG_LENGTH(sizeof req.r) + RTA_LENGTH(alen));
		req.h.nlmsg_type = RTM_NEWROUTE;
		req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
		req.h.nlmsg_seq = (unsigned)i + 1;
		req.r.rtm_family = v6 ? AF_INET6 : AF_INET;
		req.r.rtm_dst_len = (unsigned char)len;
		req.r.rtm_table = RT_TABLE_MAIN;
		req.r.rtm_protocol = RTPROT_STATIC;
		req.r.rtm_type = RTN_UNREACHABLE;
		req.a.rta_len = (unsigned short)RTA_LENGTH(alen);
		req.a.rta_type = RTA_DST;
		memcpy(req.dst, dst, alen);
		char reply[4096];
		if (send(s, &req, req.h.nlmsg_len, 0) < 0 || recv(s, reply, sizeof reply, 0) < 0)
			fail("netlink", prefixes[i]);
		struct nlmsghdr *h = (struct nlmsghdr *)reply;
		if (h->nlmsg_type == NLMSG_ERROR) {
			int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
			if (err && err != EEXIST && !(v6 && err == EAFNOSUPPORT)) {
				errno = err;
				fail("unreachable route", prefixes[i]);
			}
		}
	}
	close(s);
}

/* Computed by P in the host's network namespace (/proc/net follows the reader's). */
char **unreachable;
int nunreachable;

/* Start the NAT helper for the box whose PID 1 is B (net.py start_helper). */
int start_helper(const struct plan *pl, pid_t b, struct helper *h)
{
	int ready[2], ex[2];
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(ex, O_CLOEXEC) < 0)
		return -1;
	int log = open(pl->netlog ? pl->netlog : "/dev/null",
		       O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	pid_t parent = getpid();
	h->pid = fork();
	if (h->pid == 0) {
		unblock_forwarded();
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
			_exit(1);
		int null = open("/dev/null", O_RDWR);
		int r = fcntl(ready[1], F_DUPFD, 10), e = fcntl(ex[0], F_DUPFD, 10);
		if (null < 0 || r < 0 || e < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0
		    || dup2(log, 2) < 0 || dup2(r, 3) < 0 || dup2(e, 4) < 0)
			_exit(127);
		char pid[16], **argv = calloc((size_t)pl->nhelper + 1, sizeof *argv);
		snprintf(pid, sizeof pid, "%d", b);
		for (int i = 0; i < pl->nhelper; i++) {
			const char *marks[][2] = { { "@PID@", pid }, { "@READY@", "3" },
						   { "@EXIT@", "4" } };
			char *arg = strdup(pl->helper[i]);
			for (int m = 0; m < 3; m++) {
				char *at;
				while ((at = strstr(arg, marks[m][0]))) {
					*at = 0;
					char *next = xstrcat3(arg, marks[m][1], at + strlen(marks[m][0]));
					free(arg);
					arg = next;
				}
			}
			argv[i] = arg;
		}
		char *env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL };
		execve(argv[0], argv, env);
		_exit(127);
	}
	if (log >= 0)
		close(log);
	close(ready[1]);
	close(ex[0]);
	h->ready_r = ready[0];
	h->exit_w = ex[1];
	return h->pid < 0 ? -1 : 0;
}

/* pasta writes its pid (-P), slirp4netns "1" (--ready-fd); EOF: it died. */
int helper_ready(struct helper *h)
{
	struct pollfd p = { h->ready_r, POLLIN, 0 };
	char buf[64];
	int rc = poll(&p, 1, 10000) == 1 && read(h->ready_r, buf, sizeof buf) > 0 ? 0 : -1;
	close(h->ready_r);
	h->ready_r = -1;
	return rc;
}

void stop_helper(struct helper *h)
{
	if (h->pid <= 0)
		return;
	if (h->ready_r >= 0)
		close(h->ready_r);
	close(h->exit_w);
	kill(h->pid, SIGTERM);
	waitpid(h->pid, NULL, 0);
	h->pid = -1;
}
