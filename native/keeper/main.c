/* coopy-keeper: its state, the loop and its timers, the end of the box.  The contract is
 * at the top of keeper.h. */
#include "keeper.h"

/* ---- the keeper's state (keeper.h) ------------------------------------------------ */

struct pty ptys[MAX_PTYS];
struct client clients[MAX_CLIENTS];
int ptys_in_use, clients_in_use;
int ep, listen_fd, control = -1, link_fd, init_pidfd = -1;
size_t scrollback;
off_t log_max;
int auto_restart, next_id = 1, stopping, ending = -1;
int64_t restart_delay, stall, restart_at = -1, kill_at = -1;
int64_t exits[CRASH_COUNT];
int nexits;
int restart_pending; /* `coopy restart`: start the agent again when it exits */
struct argv restart_with, agent_command;
const char *box_dir, *box_name;

/* ---- timers and the loop ------------------------------------------------------------- */

static int timeout_ms(void)
{
	int64_t soonest = -1, now = now_ms();
	int64_t times[2] = { restart_at, kill_at };
	for (int i = 0; i < 2; i++)
		if (times[i] >= 0 && (soonest < 0 || times[i] < soonest))
			soonest = times[i];
	for (int i = 0; i < ptys_in_use; i++)
		if (ptys[i].used && ptys[i].log.len) {
			int64_t t = ptys[i].log_since + LOG_DELAY_MS;
			if (soonest < 0 || t < soonest)
				soonest = t;
		}
	for (int i = 0; i < clients_in_use; i++)
		if (clients[i].used && queued(&clients[i]) >= HIGH_WATER) {
			int64_t t = clients[i].since + stall;
			if (soonest < 0 || t < soonest)
				soonest = t;
		}
	if (soonest < 0)
		return -1;
	return soonest <= now ? 0 : (int)(soonest - now);
}

static void timers(void)
{
	int64_t now = now_ms();
	for (int i = 0; i < clients_in_use; i++) {
		struct client *c = &clients[i];
		if (c->used && queued(c) >= HIGH_WATER && now - c->since >= stall) {
			/* It has taken nothing for that long while its PTY waited on it (a frozen
			 * terminal, a suspended ssh): the box goes on without it. */
			say("a client of PTY %d took nothing for %g s while the box waited on it: "
			    "detached it", c->pty, (double)stall / 1000);
			client_drop(c);
		}
	}
	for (int i = 0; i < ptys_in_use; i++)
		if (ptys[i].used && ptys[i].log.len && now - ptys[i].log_since >= LOG_DELAY_MS)
			log_flush(&ptys[i]);
	if (restart_at >= 0 && now >= restart_at) {
		restart_at = -1;
		start_agent(&agent_command);
	}
	if (kill_at >= 0 && now >= kill_at) {
		kill_at = -1;
		ask_init2("K", 0, SIGKILL);
	}
}

static void from_link(void)
{
	char msg[256];
	ssize_t n = recv(link_fd, msg, sizeof msg - 1, 0);
	if (n < 0 && errno == EINTR)
		return;
	if (n <= 0)
		exit(1); /* the parent is gone: so is the box */
	msg[n] = 0;
	if (!strcmp(msg, "end") && (size_t)n > 4)
		ending = atoi(msg + 4);
}

/* The box has ended: what its terminals still hold, then EXIT to every client. */
static void finish(void)
{
	for (int i = 0; i < ptys_in_use; i++) {
		struct pty *p = &ptys[i];
		drain_master(p);
		if (p->used)
			log_flush(p);
	}
	for (int i = 0; i < clients_in_use; i++) {
		struct client *c = &clients[i];
		if (!c->used)
			continue;
		if (c->greeted)
			send_int(c, T_EXIT, ending);
		client_final(c);
	}
}

static double stall_seconds(const char *s)
{
	char *end;
	double v = s ? strtod(s, &end) : NAN;
	if (!s || end == s || *end || isnan(v))
		return 10.0;
	return v < 0.1 ? 0.1 : v > 600 ? 600 : v;
}

int main(int argc, char **argv)
{
	if (argc < 13 || strcmp(argv[12], "--")) {
		fprintf(stderr, "usage: coopy-keeper LISTEN CONTROL LINK MASTER INIT_PIDFD "
				"SCROLLBACK LOG_MAX AUTO_RESTART RESTART_DELAY_MS BOX_DIR NAME -- "
				"AGENT...\n(started by coopy's keeper, not by hand)\n");
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Big queues come from mmap and go back to the system when freed (glibc's threshold
	 * would otherwise rise after the first such free, keeping bursts in the heap). */
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
	signal(SIGPIPE, SIG_IGN);
	listen_fd = atoi(argv[1]);
	control = atoi(argv[2]);
	link_fd = atoi(argv[3]);
	int master = atoi(argv[4]);
	init_pidfd = atoi(argv[5]);
	scrollback = strtoul(argv[6], NULL, 10);
	scrollback = scrollback < 4096 ? 4096 : scrollback;
	log_max = (off_t)strtoll(argv[7], NULL, 10);
	log_max = log_max < 4096 ? 4096 : log_max; /* [session] log_max may say 0 */
	auto_restart = atoi(argv[8]);
	restart_delay = strtoll(argv[9], NULL, 10);
	box_dir = argv[10];
	box_name = argv[11];
	stall = (int64_t)(stall_seconds(getenv("COOPY_CLIENT_STALL_S")) * 1000);
	argv_set(&agent_command, argv + 13, argc - 13);
	if (getppid() == 1) /* the parent died before PDEATHSIG was set */
		return 1;
	ep = epoll_create1(EPOLL_CLOEXEC);
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	watch(listen_fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_LISTEN, 0));
	watch(link_fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_LINK, 0));
	if (control >= 0)
		watch(control, EPOLL_CTL_ADD, EPOLLIN, TAG(K_CONTROL, 0));
	struct pty *agent = pty_new(0, master, 0, "log");
	if (agent)
		argv_set(&agent->command, agent_command.v, agent_command.n);
	while (ending < 0) {
		struct epoll_event ev[64];
		int n = epoll_wait(ep, ev, 64, timeout_ms());
		for (int i = 0; i < n && ending < 0; i++) {
			int kind = (int)(ev[i].data.u64 >> 32), at = (int)(uint32_t)ev[i].data.u64;
			if (kind == K_LISTEN) {
				accept_client();
			} else if (kind == K_CONTROL) {
				if (control >= 0)
					from_init();
			} else if (kind == K_LINK) {
				from_link();
			} else if (kind == K_PTY) {
				struct pty *p = &ptys[at];
				if (!p->used)
					continue;
				if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
					from_master(p);
				if (p->used && ev[i].events & EPOLLOUT)
					flush_master(p);
			} else if (kind == K_CLIENT && clients[at].used) {
				from_client(&clients[at], ev[i].events);
			} else if (kind == K_TTY && clients[at].used) {
				if (ev[i].events & (EPOLLERR | EPOLLHUP))
					client_drop(&clients[at]); /* its terminal is gone */
				else
					client_flush(&clients[at]);
			}
		}
		timers();
	}
	finish();
	return 0;
}
