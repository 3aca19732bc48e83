/*
 * The thinnest terminal relay, the floor bench/boxes compares coopy's keeper with: `sh` on a
 * PTY of its own, that PTY's output copied to our stdout (a terminal), our input to it,
 * Ctrl+] ends it.  No log, no scrollback, no socket, no second process: what any relay
 * between two PTYs costs on this machine.  bench/boxes compiles it with cc (skipped
 * without one).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

int main(void)
{
	struct termios saved, raw;
	if (tcgetattr(0, &saved) < 0)
		return 2;
	raw = saved;
	cfmakeraw(&raw);
	tcsetattr(0, TCSANOW, &raw);
	int m;
	pid_t pid = forkpty(&m, NULL, &saved, NULL);
	if (pid == 0) {
		execl("/bin/sh", "sh", (char *)0);
		_exit(127);
	}
	static char buf[65536];
	struct pollfd p[2] = { { 0, POLLIN, 0 }, { m, POLLIN, 0 } };
	for (;;) {
		if (poll(p, 2, -1) < 0)
			continue;
		if (p[0].revents & (POLLIN | POLLHUP)) {
			ssize_t r = read(0, buf, sizeof buf);
			if (r <= 0 || memchr(buf, 0x1d, (size_t)r))
				break;
			if (write(m, buf, (size_t)r) < 0)
				break;
		}
		if (p[1].revents & (POLLIN | POLLHUP)) {
			ssize_t r = read(m, buf, sizeof buf);
			if (r <= 0)
				break;
			for (ssize_t o = 0; o < r;) {
				ssize_t w = write(1, buf + o, (size_t)(r - o));
				if (w < 0)
					goto out;
				o += w;
			}
		}
	}
out:
	tcsetattr(0, TCSANOW, &saved);
	kill(pid, SIGKILL);
	return 0;
}
