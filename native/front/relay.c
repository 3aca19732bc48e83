/* coopy front end (front.h): the relay: the box's stdio copied, signals forwarded. */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

void set_winsize(int from, int master)
{
	struct winsize ws;
	if (ioctl(from, TIOCGWINSZ, &ws) == 0 && (ws.ws_row || ws.ws_col))
		ioctl(master, TIOCSWINSZ, &ws);
}

/* Copy bytes until the box has ended and its outputs are at EOF; forward signals.  A
 * route reads only when its buffer is empty (a box that does not read its input never
 * stalls its output), as coopy/term.py's Relay. */
void relay(struct route *r, int nr, int sfd, int done_fd, int init_pidfd, int master)
{
	int done = 0;
	for (int i = 0; i < nr; i++)
		fcntl(r[i].dst, F_SETFL, fcntl(r[i].dst, F_GETFL) | O_NONBLOCK);
	for (;;) {
		int box_open = 0;
		for (int i = 0; i < nr; i++)
			box_open |= r[i].box && r[i].open;
		if (done && !box_open)
			break;
		struct pollfd p[8];
		int np = 0, map[8];
		p[np] = (struct pollfd){ sfd, POLLIN, 0 };
		map[np++] = -1;
		if (!done) {
			p[np] = (struct pollfd){ done_fd, POLLIN, 0 };
			map[np++] = -2;
		}
		for (int i = 0; i < nr; i++) {
			if (r[i].len > r[i].off) {
				p[np] = (struct pollfd){ r[i].dst, POLLOUT, 0 };
				map[np++] = 100 + i;
			} else if (r[i].open) {
				p[np] = (struct pollfd){ r[i].src, POLLIN, 0 };
				map[np++] = i;
			}
		}
		if (poll(p, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int j = 0; j < np; j++) {
			if (!p[j].revents)
				continue;
			if (map[j] == -1) {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof si) == sizeof si) {
					if (si.ssi_signo == SIGWINCH)
						set_winsize(0, master);
					else if (si.ssi_signo != SIGCHLD)
						syscall(SYS_pidfd_send_signal, init_pidfd, si.ssi_signo,
							NULL, 0);
				}
			} else if (map[j] == -2) {
				done = 1;
			} else if (map[j] >= 100) {
				struct route *x = &r[map[j] - 100];
				ssize_t n = write(x->dst, x->buf + x->off, x->len - x->off);
				if (n > 0)
					x->off += (size_t)n;
				else if (n < 0 && errno != EAGAIN && errno != EINTR)
					x->off = x->len; /* the reader is gone */
				if (x->off == x->len)
					x->off = x->len = 0;
			} else {
				struct route *x = &r[map[j]];
				ssize_t n = read(x->src, x->buf, sizeof x->buf);
				if (n < 0 && (errno == EAGAIN || errno == EINTR))
					continue;
				if (n <= 0) { /* EOF, or EIO: the PTY's last slave closed */
					x->open = 0;
					continue;
				}
				x->len = (size_t)n;
				x->off = 0;
			}
		}
	}
	for (int i = 0; i < nr; i++) { /* what is still buffered goes out, blocking */
		fcntl(r[i].dst, F_SETFL, fcntl(r[i].dst, F_GETFL) & ~O_NONBLOCK);
		if (r[i].len > r[i].off)
			write_all(r[i].dst, r[i].buf + r[i].off, r[i].len - r[i].off);
	}
}

