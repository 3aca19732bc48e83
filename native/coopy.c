/*
 * coopy: the native front end of the `coopy` command.
 *
 * Every `coopy` invocation starts here.  Anything but `coopy run` is handed at once to
 * the Python CLI (`coopy-py`, installed next to this program).  For `coopy run` it first
 * looks for a cached, already-resolved plan of the very same invocation and, when it
 * finds a valid one, starts the box itself without starting Python — about a tenth of
 * the time (docs/design.md, "Start-up: the plan cache").
 *
 * The key.  SHA-256 over: this program's own file (device, inode, size, mtime: a
 * reinstall makes new keys), the boot id, the caller's uid/gid, the working directory,
 * the arguments up to `--` (the command after it is taken from this invocation), and
 * the whole environment but for a few variables coopy never reads (_, OLDPWD, SHLVL,
 * and this program's own COOPY_PLAN_STRICT and COOPY_DEBUG_FRONTEND).  On a miss the hex key goes to the Python CLI in COOPY_PLAN_KEY;
 * Python resolves the run as always and, when the run can be replayed (no network
 * helper, no GPUs, no warning printed, …: coopy/plancache.py), writes the plan to
 * <state>/plans/<key> before it starts the box.
 *
 * The plan file (written by coopy/plancache.py): NUL-terminated tokens; a blob is a
 * decimal length token, the bytes, then a NUL.  Records, each a keyword and its fields:
 *   "coopy-plan 1"                            first token
 *   v|vl PATH LSIG SSIG                       lstat/stat signature of a file the plan
 *                                             was made from ("-": absent; vl: a listed
 *                                             directory); any change is a miss
 *   base DIR / box DIR                        where run dirs are made; the box dir the
 *                                             plan was written with (in every path of
 *                                             the plan, this prefix means the new one)
 *   d REL MODE UID GID | f REL MODE UID GID BLOB | c REL MODE UID GID RDEV |
 *   l REL TO UID GID | m REL MODE UID GID     the box dir's content before start (m: a
 *                                             fresh machine-id); REL "." is the dir
 *   uid|gid IN OUT LEN                        the id map; "maps direct|helper";
 *   newuidmap PATH / newgidmap PATH           the setuid helpers (maps helper)
 *   rootbox 0|1  userxattr 0|1  net none|host  hostname H  cwd C  attach REL  init PATH
 *   initarg A (repeated)  seccomp BLOB  tty auto|1|0  env K=V  termdefault  arg A
 *   cmdargv                                   the command is whatever follows `--`
 *   helper A (repeated: a private network's NAT helper, @PID@ @READY@ @EXIT@ in it)
 *   blocked PREFIX (repeated; the host's own addresses are added here)  netlog PATH
 *   cgroup PARENT PREFIX, cglimit FILE VALUE (repeated): the box's cgroup (coopy/cgroup.py),
 *                                             PARENT/PREFIX<run id> with the limits, its
 *                                             processes in …/box, where A is born
 *   op records, as coopy/ops.py: overlay TARGET N LOWER… UPPER WORK | bind SRC TGT FLAGS
 *   | tmpfs TGT MODE SIZE FLAGS | proc TGT | sysfs TGT | devpts TGT GID | mqueue TGT
 *   | devnode NAME | mkdir TGT MODE | symlink TGT TO | mask TGT | readonly TGT | pivot
 *   end
 *
 * The box is started exactly as coopy/spawn.py does (the same three processes, the same
 * steps; see there): P (this process) forks A, A unshares the user namespace, P writes
 * its maps (and clones the id-mapped sources for boxes of root), A unshares the rest and
 * forks B, B applies the plan and execs coopy-init from a sealed memfd.  Any failure
 * before the box's command is exec'd removes what was made, drops the plan, and hands
 * the same invocation to the Python CLI, which does it again and reports properly.
 * COOPY_NO_PLAN_CACHE=1 skips the cache; COOPY_DEBUG_FRONTEND=1 says why it missed;
 * COOPY_PLAN_STRICT=1 (the test suite) makes a failure on this path an error (125)
 * instead of a quiet second try through Python, so that no test passes by fallback.
 */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PLAN_MAGIC "coopy-plan 1"
#define MAX_PLAN (16 << 20)
#define MAX_ITEMS 4096
#define MAX_FDS 200
#define MAX_MSG 65536 /* as coopy/spawn.py: the paths of up to MAX_FDS cloned trees */

/* The new mount API, spelled out: not every libc declares it (glibc 2.36 does). */
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x04
#define MOVE_MOUNT_T_EMPTY_PATH 0x40
#endif
#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 1
#define FSMOUNT_CLOEXEC 1
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x1
#define MOUNT_ATTR_NOSUID 0x2
#define MOUNT_ATTR_NODEV 0x4
#define MOUNT_ATTR_NOEXEC 0x8
#define MOUNT_ATTR_IDMAP 0x100000
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_IN_ROOT_ 0x10
#define TIOCGPTPEER_ 0x5441

struct attr_ { uint64_t set, clr, propagation, userns_fd; };
struct how_ { uint64_t flags, mode, resolve; };

static int sys_open_tree(int dfd, const char *path, unsigned flags)
{ return (int)syscall(SYS_open_tree, dfd, path, flags); }
static int sys_move_mount(int from, const char *fp, int to, const char *tp, unsigned flags)
{ return (int)syscall(SYS_move_mount, from, fp, to, tp, flags); }
static int sys_setattr(int fd, unsigned flags, uint64_t set, int userns)
{
	struct attr_ a = { set, 0, 0, userns >= 0 ? (uint64_t)userns : 0 };
	return (int)syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | flags, &a, sizeof a);
}
static int sys_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* ---- small things -------------------------------------------------------------------- */

static int debug;
static char **saved_argv;

/* The signals forwarded to the box.  Blocked from before the first fork until the box
 * ends, so that one arriving while the box is being set up waits for it (then goes to
 * the box's init) instead of killing this process half-way.  A blocked mask survives
 * exec: the helpers this process runs unblock them first thing; A and B keep them
 * (coopy-init reads them from its signalfd and starts the command with none blocked). */
static sigset_t forwarded;

static void forwarded_init(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH };
	sigemptyset(&forwarded);
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaddset(&forwarded, sigs[i]);
}

static void unblock_forwarded(void) { sigprocmask(SIG_UNBLOCK, &forwarded, NULL); }
static char last_failure[1100] = "unknown";

static void say(const char *fmt, ...)
{
	if (!debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	dprintf(2, "coopy front end: ");
	vdprintf(2, fmt, ap);
	dprintf(2, "\n");
	va_end(ap);
}

static char *xstrcat3(const char *a, const char *b, const char *c)
{
	size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
	char *s = malloc(la + lb + lc + 1);
	if (!s)
		abort();
	memcpy(s, a, la);
	memcpy(s + la, b, lb);
	memcpy(s + la + lb, c, lc + 1);
	return s;
}

static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

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

/* ---- SHA-256 (FIPS 180-4), for the key ------------------------------------------------ */

struct sha { uint32_t h[8]; uint8_t buf[64]; uint64_t len; };
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(struct sha *s, const uint8_t *p)
{
	uint32_t w[64], v[8];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
		       | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, s->h, sizeof v);
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = v[7] + (ROR(v[4], 6) ^ ROR(v[4], 11) ^ ROR(v[4], 25))
			      + ((v[4] & v[5]) ^ (~v[4] & v[6])) + K[i] + w[i];
		uint32_t t2 = (ROR(v[0], 2) ^ ROR(v[0], 13) ^ ROR(v[0], 22))
			      + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
		memmove(v + 1, v, 7 * sizeof v[0]);
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		s->h[i] += v[i];
}

static void sha_init(struct sha *s)
{
	static const uint32_t h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, h0, sizeof h0);
	s->len = 0;
}

static void sha_add(struct sha *s, const void *data, size_t n)
{
	const uint8_t *p = data;
	while (n > 0) {
		size_t at = s->len % 64, take = 64 - at < n ? 64 - at : n;
		memcpy(s->buf + at, p, take);
		s->len += take;
		p += take;
		n -= take;
		if (s->len % 64 == 0)
			sha_block(s, s->buf);
	}
}

/* Add a string and its terminating NUL: fields cannot run into each other. */
static void sha_str(struct sha *s, const char *str) { sha_add(s, str, strlen(str) + 1); }

static void sha_hex(struct sha *s, char out[65])
{
	uint64_t bits = s->len * 8;
	uint8_t pad = 0x80, zero = 0, len[8];
	sha_add(s, &pad, 1);
	while (s->len % 64 != 56)
		sha_add(s, &zero, 1);
	for (int i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha_add(s, len, 8);
	for (int i = 0; i < 8; i++)
		snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

/* ---- the key -------------------------------------------------------------------------- */

static int by_string(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ignored_var(const char *kv)
{
	static const char *const names[] = { "_=", "OLDPWD=", "SHLVL=", "COOPY_PLAN_KEY=",
					     "COOPY_PLAN_STRICT=", "COOPY_DEBUG_FRONTEND=" };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strncmp(kv, names[i], strlen(names[i])) == 0)
			return 1;
	return 0;
}

/* Where the box's command starts: after the first `--`; 0 without one. */
static int command_at(int argc, char **argv)
{
	for (int i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--"))
			return i + 1 < argc ? i + 1 : 0;
	return 0;
}

static int compute_key(int argc, char **argv, char out[65])
{
	struct sha s;
	struct stat st;
	char buf[PATH_MAX + 64];
	sha_init(&s);
	sha_str(&s, PLAN_MAGIC);
	if (stat("/proc/self/exe", &st) < 0)
		return -1;
	snprintf(buf, sizeof buf, "%lu:%lu:%lld:%ld.%09ld", (unsigned long)st.st_dev,
		 (unsigned long)st.st_ino, (long long)st.st_size, (long)st.st_mtim.tv_sec,
		 st.st_mtim.tv_nsec);
	sha_str(&s, buf);
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, 64) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	sha_str(&s, buf);
	snprintf(buf, sizeof buf, "%u:%u", getuid(), getgid());
	sha_str(&s, buf);
	if (!getcwd(buf, sizeof buf))
		return -1;
	sha_str(&s, buf);
	/* The command after `--` is not part of the key: one plan serves every command
	 * run with the same options (Python writes such a plan only when the command it
	 * resolved is exactly what follows `--`). */
	int upto = command_at(argc, argv) ? command_at(argc, argv) : argc;
	snprintf(buf, sizeof buf, "%d%s", upto, upto < argc ? " --" : "");
	sha_str(&s, buf);
	for (int i = 1; i < upto; i++)
		sha_str(&s, argv[i]);
	extern char **environ;
	size_t count = 0;
	while (environ[count])
		count++;
	char **vars = malloc((count + 1) * sizeof *vars);
	if (!vars)
		return -1;
	size_t kept = 0;
	for (size_t i = 0; i < count; i++)
		if (!ignored_var(environ[i]))
			vars[kept++] = environ[i];
	qsort(vars, kept, sizeof *vars, by_string);
	for (size_t i = 0; i < kept; i++)
		sha_str(&s, vars[i]);
	free(vars);
	sha_hex(&s, out);
	return 0;
}

/* <state>/plans, as coopy/paths.py state_dir() finds <state>. */
static char *plans_dir(void)
{
	const char *home = getenv("COOPY_HOME");
	if (home && *home)
		return xstrcat3(home, "/state", "/plans");
	const char *xdg = getenv("XDG_STATE_HOME");
	if (xdg && xdg[0] == '/')
		return xstrcat3(xdg, "/coopy", "/plans");
	home = getenv("HOME");
	if (!home || home[0] != '/')
		return NULL;
	return xstrcat3(home, "/.local/state/coopy", "/plans");
}

/* ---- the plan ------------------------------------------------------------------------- */

enum op_kind { OP_OVERLAY, OP_BIND, OP_TMPFS, OP_PROC, OP_SYSFS, OP_DEVPTS, OP_MQUEUE,
	       OP_DEVNODE, OP_MKDIR, OP_SYMLINK, OP_MASK, OP_READONLY, OP_PIVOT };
enum { B_RO = 1, B_DIR = 2, B_IDMAP = 4, B_NODEV = 8, B_NOEXEC = 16 };

struct op {
	enum op_kind kind;
	char *a, *b;           /* target/source, to/upper */
	char *work;
	char **lowers;
	int nlowers;
	long mode, size, flags, gid;
};

struct entry { char kind; char *rel, *to; long mode, uid, gid, rdev; const char *data; size_t len; };
struct range { unsigned long in, out, len; };

struct plan {
	char *base, *box;
	struct entry *tmpl; int ntmpl;
	struct range uids[64], gids[64]; int nuids, ngids;
	int helper_maps;
	char *newuidmap, *newgidmap;
	int rootbox, userxattr, net_host;
	char *hostname, *cwd, *attach, *init;
	char **initargs; int ninitargs;
	const char *seccomp; size_t seccomp_len;
	int tty; /* -1 auto */
	char **env; int nenv; int termdefault;
	int cmdargv; /* the command is what follows `--` in this invocation */
	char **args; int nargs;
	struct op *ops; int nops;
	char **helper; int nhelper;   /* private network: the NAT helper's argv */
	char **blocked; int nblocked; /* prefixes made unreachable in the box */
	char *netlog;
	char *cg_parent, *cg_prefix;  /* the box's cgroup: <parent>/<prefix><run id> */
	char **cg_files; int ncg;     /* its limits: file, value, file, value… */
};

struct reader { char *p, *end; int bad; };

static char *tok(struct reader *r)
{
	if (r->bad || r->p >= r->end) {
		r->bad = 1;
		return (char *)"";
	}
	char *s = r->p, *z = memchr(s, 0, (size_t)(r->end - s));
	if (!z) {
		r->bad = 1;
		return (char *)"";
	}
	r->p = z + 1;
	return s;
}

static long num(struct reader *r)
{
	char *s = tok(r), *e;
	errno = 0;
	long v = strtol(s, &e, 10);
	if (*s == 0 || *e || errno)
		r->bad = 1;
	return v;
}

static const char *blob(struct reader *r, size_t *len)
{
	long n = num(r);
	if (r->bad || n < 0 || n + 1 > r->end - r->p || r->p[n] != 0) {
		r->bad = 1;
		return NULL;
	}
	const char *data = r->p;
	*len = (size_t)n;
	r->p += n + 1;
	return data;
}

/* A file's signature as coopy/plancache.py writes it: "-" when absent; a directory that
 * was not listed only by identity. */
static void signature(const struct stat *st, int rc, int err, int listed, char *out, size_t n)
{
	if (rc < 0)
		snprintf(out, n, (err == ENOENT || err == ENOTDIR) ? "-" : "E%d", err);
	else if (S_ISDIR(st->st_mode) && !listed)
		snprintf(out, n, "d:%lu:%lu:%o:%u:%u", (unsigned long)st->st_dev,
			 (unsigned long)st->st_ino, st->st_mode, st->st_uid, st->st_gid);
	else
		snprintf(out, n, "%lu:%lu:%lld:%lld:%lld:%o:%u:%u", (unsigned long)st->st_dev,
			 (unsigned long)st->st_ino, (long long)st->st_size,
			 (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
			 (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec,
			 st->st_mode, st->st_uid, st->st_gid);
}

static int unchanged(const char *path, int listed, const char *lsig, const char *ssig)
{
	struct stat st;
	char sig[200];
	int rc = lstat(path, &st);
	signature(&st, rc, errno, listed, sig, sizeof sig);
	if (strcmp(sig, lsig) != 0)
		return 0;
	if (rc == 0 && S_ISLNK(st.st_mode)) {
		rc = stat(path, &st);
		signature(&st, rc, errno, listed, sig, sizeof sig);
	}
	return strcmp(sig, ssig) == 0;
}

#define GROW(arr, n) do { \
	if ((n) % 64 == 0) { \
		void *p_ = realloc((arr), ((n) + 64) * sizeof *(arr)); \
		if (!p_) abort(); \
		(arr) = p_; \
	} \
} while (0)

/* Parse a plan; 0 when it is complete and every file it was made from is unchanged. */
static int parse_plan(char *buf, size_t len, struct plan *pl)
{
	struct reader r = { buf, buf + len, 0 };
	memset(pl, 0, sizeof *pl);
	pl->tty = -1;
	if (strcmp(tok(&r), PLAN_MAGIC) != 0) {
		say("not a plan of this version");
		return -1;
	}
	for (;;) {
		char *k = tok(&r);
		if (r.bad)
			break;
		if (!strcmp(k, "end"))
			return (pl->base && pl->box && pl->init && pl->cwd && pl->nargs) ? 0 : -1;
		if (!strcmp(k, "v") || !strcmp(k, "vl")) {
			char *path = tok(&r), *lsig = tok(&r), *ssig = tok(&r);
			if (!r.bad && !unchanged(path, k[1] == 'l', lsig, ssig)) {
				say("%s changed since the plan was made", path);
				return -1;
			}
		} else if (!strcmp(k, "base")) {
			pl->base = tok(&r);
		} else if (!strcmp(k, "box")) {
			pl->box = tok(&r);
		} else if (strchr("dfclm", k[0]) && k[1] == 0) {
			GROW(pl->tmpl, pl->ntmpl);
			struct entry *e = &pl->tmpl[pl->ntmpl++];
			memset(e, 0, sizeof *e);
			e->kind = k[0];
			e->rel = tok(&r);
			if (e->kind == 'l')
				e->to = tok(&r);
			else
				e->mode = num(&r);
			e->uid = num(&r);
			e->gid = num(&r);
			if (e->kind == 'f')
				e->data = blob(&r, &e->len);
			if (e->kind == 'c')
				e->rdev = num(&r);
		} else if (!strcmp(k, "uid") || !strcmp(k, "gid")) {
			int *n = k[0] == 'u' ? &pl->nuids : &pl->ngids;
			struct range *ra = k[0] == 'u' ? pl->uids : pl->gids;
			if (*n >= 64)
				return -1;
			ra[*n].in = (unsigned long)num(&r);
			ra[*n].out = (unsigned long)num(&r);
			ra[*n].len = (unsigned long)num(&r);
			(*n)++;
		} else if (!strcmp(k, "maps")) {
			pl->helper_maps = !strcmp(tok(&r), "helper");
		} else if (!strcmp(k, "newuidmap")) {
			pl->newuidmap = tok(&r);
		} else if (!strcmp(k, "newgidmap")) {
			pl->newgidmap = tok(&r);
		} else if (!strcmp(k, "rootbox")) {
			pl->rootbox = (int)num(&r);
		} else if (!strcmp(k, "userxattr")) {
			pl->userxattr = (int)num(&r);
		} else if (!strcmp(k, "net")) {
			pl->net_host = !strcmp(tok(&r), "host");
		} else if (!strcmp(k, "hostname")) {
			pl->hostname = tok(&r);
		} else if (!strcmp(k, "cwd")) {
			pl->cwd = tok(&r);
		} else if (!strcmp(k, "attach")) {
			pl->attach = tok(&r);
		} else if (!strcmp(k, "init")) {
			pl->init = tok(&r);
		} else if (!strcmp(k, "initarg")) {
			GROW(pl->initargs, pl->ninitargs);
			pl->initargs[pl->ninitargs++] = tok(&r);
		} else if (!strcmp(k, "seccomp")) {
			pl->seccomp = blob(&r, &pl->seccomp_len);
		} else if (!strcmp(k, "tty")) {
			char *t = tok(&r);
			pl->tty = !strcmp(t, "auto") ? -1 : atoi(t);
		} else if (!strcmp(k, "env")) {
			GROW(pl->env, pl->nenv);
			pl->env[pl->nenv++] = tok(&r);
		} else if (!strcmp(k, "cmdargv")) {
			pl->cmdargv = 1;
		} else if (!strcmp(k, "termdefault")) {
			pl->termdefault = 1;
		} else if (!strcmp(k, "helper")) {
			GROW(pl->helper, pl->nhelper);
			pl->helper[pl->nhelper++] = tok(&r);
		} else if (!strcmp(k, "blocked")) {
			GROW(pl->blocked, pl->nblocked);
			pl->blocked[pl->nblocked++] = tok(&r);
		} else if (!strcmp(k, "cgroup")) {
			pl->cg_parent = tok(&r);
			pl->cg_prefix = tok(&r);
		} else if (!strcmp(k, "cglimit")) {
			GROW(pl->cg_files, pl->ncg);
			pl->cg_files[pl->ncg++] = tok(&r);
			GROW(pl->cg_files, pl->ncg);
			pl->cg_files[pl->ncg++] = tok(&r);
		} else if (!strcmp(k, "netlog")) {
			pl->netlog = tok(&r);
		} else if (!strcmp(k, "arg")) {
			GROW(pl->args, pl->nargs);
			pl->args[pl->nargs++] = tok(&r);
		} else {
			static const char *const kinds[] = {
				"overlay", "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue",
				"devnode", "mkdir", "symlink", "mask", "readonly", "pivot" };
			int kind = -1;
			for (int i = 0; i < (int)(sizeof kinds / sizeof kinds[0]); i++)
				if (!strcmp(k, kinds[i]))
					kind = i;
			if (kind < 0) {
				say("unknown record %s", k);
				return -1;
			}
			GROW(pl->ops, pl->nops);
			struct op *o = &pl->ops[pl->nops++];
			memset(o, 0, sizeof *o);
			o->kind = (enum op_kind)kind;
			switch (o->kind) {
			case OP_OVERLAY:
				o->a = tok(&r);
				o->nlowers = (int)num(&r);
				if (r.bad || o->nlowers < 1 || o->nlowers > 500)
					return -1;
				o->lowers = calloc((size_t)o->nlowers, sizeof *o->lowers);
				for (int i = 0; i < o->nlowers; i++)
					o->lowers[i] = tok(&r);
				o->b = tok(&r);
				o->work = tok(&r);
				break;
			case OP_BIND:
				o->a = tok(&r);
				o->b = tok(&r);
				o->flags = num(&r);
				break;
			case OP_TMPFS:
				o->a = tok(&r);
				o->mode = num(&r);
				o->size = num(&r);
				o->flags = num(&r);
				break;
			case OP_DEVPTS:
				o->a = tok(&r);
				o->gid = num(&r);
				break;
			case OP_MKDIR:
				o->a = tok(&r);
				o->mode = num(&r);
				break;
			case OP_SYMLINK:
				o->a = tok(&r);
				o->b = tok(&r);
				break;
			case OP_PIVOT:
				break;
			default:
				o->a = tok(&r);
			}
		}
	}
	say("the plan is cut short");
	return -1;
}

/* The plan's box dir prefix replaced by this run's. */
static char *in_box(const struct plan *pl, const char *newbox, char *s)
{
	size_t n = strlen(pl->box);
	if (s && strncmp(s, pl->box, n) == 0 && (s[n] == 0 || s[n] == '/'))
		return xstrcat3(newbox, s + n, "");
	return s;
}

static void rebase(struct plan *pl, const char *newbox)
{
	for (int i = 0; i < pl->nops; i++) {
		struct op *o = &pl->ops[i];
		o->a = in_box(pl, newbox, o->a);
		if (o->kind == OP_OVERLAY || o->kind == OP_BIND)
			o->b = in_box(pl, newbox, o->b);
		o->work = in_box(pl, newbox, o->work);
		for (int j = 0; j < o->nlowers; j++)
			o->lowers[j] = in_box(pl, newbox, o->lowers[j]);
	}
	pl->netlog = in_box(pl, newbox, pl->netlog);
	pl->box = (char *)newbox;
}

/* ---- the box directory ---------------------------------------------------------------- */

static int rm_at(int dirfd, const char *name);

static int rm_children(int fd)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (rm_at(dirfd(d), de->d_name) < 0)
			rc = -1;
	}
	closedir(d);
	return rc;
}

/* rm -rf NAME under DIRFD; directories overlay left without permissions are opened up. */
static int rm_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -1;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == EACCES && fchmodat(dirfd, name, 0700, 0) == 0)
		fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = rm_children(fd);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rc = -1;
	return rc;
}

static int make_entry(int dirfd, const struct entry *e)
{
	int rc = 0;
	switch (e->kind) {
	case 'd':
		if (strcmp(e->rel, ".") != 0)
			rc = mkdirat(dirfd, e->rel, (mode_t)e->mode);
		if (rc == 0)
			rc = fchmodat(dirfd, e->rel, (mode_t)e->mode, 0);
		break;
	case 'c':
		rc = mknodat(dirfd, e->rel, S_IFCHR | (mode_t)e->mode, (dev_t)e->rdev);
		break;
	case 'l':
		rc = symlinkat(e->to, dirfd, e->rel);
		break;
	default: {
		int fd = openat(dirfd, e->rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
				(mode_t)e->mode);
		if (fd < 0)
			return -1;
		char id[33];
		const char *data = e->data;
		size_t len = e->len;
		if (e->kind == 'm') { /* a fresh machine-id per box */
			uint8_t raw[16];
			if (getrandom(raw, sizeof raw, 0) != sizeof raw) {
				close(fd);
				return -1;
			}
			for (int i = 0; i < 16; i++)
				snprintf(id + 2 * i, 3, "%02x", raw[i]);
			id[32] = '\n';
			data = id;
			len = 33;
		}
		rc = write_all(fd, data, len);
		if (rc == 0)
			rc = fchmod(fd, (mode_t)e->mode);
		close(fd);
	}
	}
	if (rc == 0 && ((uid_t)e->uid != geteuid() || (gid_t)e->gid != getegid()))
		rc = fchownat(dirfd, e->rel, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW);
	return rc;
}

/* Remove the run directories whose owner is gone (their lock is free), as
 * coopy/state.py sweep_stale does on the Python path. */
static void sweep_stale(const char *base)
{
	DIR *d = opendir(base);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *lock = xstrcat3(de->d_name, "/", "lock");
		int fd = openat(dirfd(d), lock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		free(lock);
		if (fd < 0)
			continue; /* a skeleton, or being created right now */
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			rm_at(dirfd(d), de->d_name); /* files of subordinate ids: `system prune` */
		close(fd);
	}
	if (d)
		closedir(d);
}

/* Make <base>/<random> and fill it from the plan; its lock is held while the box lives. */
static char *make_box_dir(const struct plan *pl, int *lock_fd)
{
	uint8_t raw[6];
	char name[13];
	if (getrandom(raw, sizeof raw, 0) != sizeof raw)
		return NULL;
	for (int i = 0; i < 6; i++)
		snprintf(name + 2 * i, 3, "%02x", raw[i]);
	sweep_stale(pl->base);
	char *dir = xstrcat3(pl->base, "/", name);
	if (mkdir(dir, 0700) < 0) {
		say("mkdir %s: %s", dir, strerror(errno));
		return NULL;
	}
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	*lock_fd = dfd < 0 ? -1 : openat(dfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX) < 0)
		goto fail;
	for (int i = 0; i < pl->ntmpl; i++) {
		if (make_entry(dfd, &pl->tmpl[i]) < 0) {
			say("%s/%s: %s", dir, pl->tmpl[i].rel, strerror(errno));
			goto fail;
		}
	}
	close(dfd);
	return dir;
fail:
	if (dfd >= 0)
		close(dfd);
	rm_at(AT_FDCWD, dir);
	return NULL;
}

/* ---- id maps (spawn.py step 2, userns.py write_maps) ---------------------------------- */

static int write_proc(pid_t pid, const char *what, const char *text)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/%s", pid, what);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, text, strlen(text));
	close(fd);
	return rc;
}

/* Start newuidmap/newgidmap PID RANGES... (both run at once; see wait_map_tool). */
static pid_t start_map_tool(const char *tool, pid_t pid, const struct range *r, int n)
{
	char *args[3 + 3 * 64 + 1];
	char nums[64 * 3 + 1][24];
	int a = 0, k = 0;
	args[a++] = (char *)tool;
	snprintf(nums[k], sizeof nums[k], "%d", pid);
	args[a++] = nums[k++];
	for (int i = 0; i < n; i++) {
		snprintf(nums[k], 24, "%lu", r[i].in);
		args[a++] = nums[k++];
		snprintf(nums[k], 24, "%lu", r[i].out);
		args[a++] = nums[k++];
		snprintf(nums[k], 24, "%lu", r[i].len);
		args[a++] = nums[k++];
	}
	args[a] = NULL;
	pid_t child = fork();
	if (child == 0) {
		unblock_forwarded();
		char *env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL };
		if (!debug) {
			int null = open("/dev/null", O_WRONLY);
			dup2(null, 1);
			dup2(null, 2);
		}
		execve(tool, args, env);
		_exit(127);
	}
	return child;
}

static int wait_map_tool(pid_t child)
{
	int status;
	if (child < 0)
		return -1;
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void map_text(const struct range *r, int n, char *out, size_t size)
{
	size_t at = 0;
	out[0] = 0;
	for (int i = 0; i < n && at < size; i++)
		at += (size_t)snprintf(out + at, size - at, "%lu %lu %lu\n", r[i].in, r[i].out,
				       r[i].len);
}

static int write_maps(const struct plan *pl, pid_t pid)
{
	if (pl->helper_maps) {
		if (!pl->newuidmap || !pl->newgidmap)
			return -1;
		pid_t u = start_map_tool(pl->newuidmap, pid, pl->uids, pl->nuids);
		pid_t g = start_map_tool(pl->newgidmap, pid, pl->gids, pl->ngids);
		int ok_u = wait_map_tool(u), ok_g = wait_map_tool(g);
		return ok_u < 0 || ok_g < 0 ? -1 : 0;
	}
	char text[64 * 72];
	if (getuid() != 0 && write_proc(pid, "setgroups", "deny") < 0)
		return -1;
	map_text(pl->uids, pl->nuids, text, sizeof text);
	if (write_proc(pid, "uid_map", text) < 0)
		return -1;
	map_text(pl->gids, pl->ngids, text, sizeof text);
	return write_proc(pid, "gid_map", text);
}

/* ---- messages between P, A and B (SOCK_SEQPACKET, fds by SCM_RIGHTS) ------------------ */

static int send_msg(int sock, const void *data, size_t len, const int *fds, int nfds)
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

static ssize_t recv_msg(int sock, char *buf, size_t size, int *fds, int *nfds)
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

/* A child's failure: said on the error pipe (P reads it), then exit 125. */
static int err_fd = -1;
static void fail(const char *what, const char *detail)
{
	dprintf(err_fd, "%s%s%s: %s", what, detail ? " " : "", detail ? detail : "",
		strerror(errno));
	_exit(125);
}

/* ---- the mount plan (mount.py, in C) ------------------------------------------------- */

struct trees { char *keys[MAX_FDS]; int fds[MAX_FDS]; int n; int attached; };
static struct trees trees;
static int root_fd = -1;

static int take_tree(const char *key)
{
	for (int i = 0; i < trees.n; i++)
		if (trees.keys[i] && !strcmp(trees.keys[i], key)) {
			trees.keys[i] = NULL;
			return trees.fds[i];
		}
	return -1;
}

static int in_root(const char *path, int flags)
{
	while (*path == '/')
		path++;
	struct how_ how = { (uint64_t)(flags | O_CLOEXEC), 0,
			    RESOLVE_IN_ROOT_ | RESOLVE_NO_MAGICLINKS_ };
	return (int)syscall(SYS_openat2, root_fd, *path ? path : ".", &how, sizeof how);
}

static void mkdirs(const char *path, mode_t mode)
{
	char cur[PATH_MAX], name[NAME_MAX + 1];
	size_t n = strlen(path), i = 0;
	if (n >= sizeof cur) {
		errno = ENAMETOOLONG;
		fail("mkdir", path);
	}
	while (i < n) {
		while (i < n && path[i] == '/')
			i++;
		size_t start = i;
		while (i < n && path[i] != '/')
			i++;
		if (i == start || i - start > NAME_MAX)
			break;
		memcpy(cur, path, i);
		cur[i] = 0;
		int fd = in_root(cur, O_PATH | O_DIRECTORY);
		if (fd >= 0) {
			close(fd);
			continue;
		}
		if (errno != ENOENT)
			fail("open", cur);
		memcpy(name, path + start, i - start);
		name[i - start] = 0;
		cur[start] = 0;
		int parent = in_root(cur, O_PATH | O_DIRECTORY);
		if (parent < 0)
			fail("open", cur);
		if (mkdirat(parent, name, mode) < 0)
			fail("mkdir", path); /* EEXIST: a dangling symlink, never followed */
		close(parent);
	}
}

static int target(const char *path, int directory)
{
	if (directory) {
		mkdirs(path, 0755);
		int fd = in_root(path, O_PATH | O_DIRECTORY);
		if (fd < 0)
			fail("open", path);
		return fd;
	}
	int fd = in_root(path, O_PATH);
	if (fd >= 0)
		return fd;
	if (errno != ENOENT)
		fail("open", path);
	char parent[PATH_MAX];
	snprintf(parent, sizeof parent, "%s", path);
	char *slash = strrchr(parent, '/');
	*slash = 0;
	mkdirs(*parent ? parent : "/", 0755);
	int pfd = in_root(*parent ? parent : "/", O_PATH | O_DIRECTORY);
	if (pfd < 0)
		fail("open", parent);
	int f = openat(pfd, slash + 1, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
	if (f < 0)
		fail("create", path);
	close(f);
	close(pfd);
	fd = in_root(path, O_PATH);
	if (fd < 0)
		fail("open", path);
	return fd;
}

static void attach(int tree, int to, const char *what)
{
	if (sys_move_mount(tree, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
		fail("move_mount", what);
	close(tree);
	close(to);
}

static void mount_at(const char *src, int fd, const char *type, unsigned long flags,
		     const char *data)
{
	char at[64];
	snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
	if (mount(src, at, type, flags, data) < 0)
		fail("mount", type);
	close(fd);
}

/* Where overlay should find a layer: a parent's clone attached on lower/N, else relative
 * to the box dir when next to it (box root of a box of root cannot search /root). */
static const char *layer(const char *box, const char *path, char *buf, size_t size)
{
	int fd = take_tree(path);
	if (fd >= 0) {
		snprintf(buf, size, "lower/%d", trees.attached++);
		int mp = open(buf, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (mp < 0)
			fail("open", buf);
		attach(fd, mp, path);
		return buf;
	}
	size_t n = strlen(box);
	if (!strncmp(path, box, n) && path[n] == '/')
		return path + n + 1;
	const char *slash = strrchr(box, '/');
	size_t parent = (size_t)(slash - box);
	if (!strncmp(path, box, parent) && path[parent] == '/') {
		snprintf(buf, size, "..%s", path + parent);
		return buf;
	}
	return path;
}

static int overlay(const struct plan *pl, const struct op *o)
{
	int fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
	if (fs < 0)
		fail("fsopen", "overlay");
	char buf[PATH_MAX];
	int plus = o->nlowers > 2;
	size_t cap = (size_t)o->nlowers * PATH_MAX, at = 0;
	char *joined = plus ? NULL : malloc(cap);
	for (int i = 0; i < o->nlowers; i++) {
		const char *l = layer(pl->box, o->lowers[i], buf, sizeof buf);
		if (plus) {
			if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "lowerdir+", l, 0) < 0)
				fail("fsconfig lowerdir+", l);
		} else {
			at += (size_t)snprintf(joined + at, cap - at, "%s%s", i ? ":" : "", l);
		}
	}
	if (!plus && syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "lowerdir", joined, 0) < 0)
		fail("fsconfig lowerdir", joined);
	free(joined);
	if (*o->b) {
		if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "upperdir",
			    layer(pl->box, o->b, buf, sizeof buf), 0) < 0)
			fail("fsconfig upperdir", o->b);
		if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "workdir",
			    layer(pl->box, o->work, buf, sizeof buf), 0) < 0)
			fail("fsconfig workdir", o->work);
	}
	if (pl->userxattr && syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0) < 0)
		fail("fsconfig userxattr", NULL);
	if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		fail("overlay", o->a);
	unsigned attr = MOUNT_ATTR_NOSUID;
	if (!*o->b)
		attr |= MOUNT_ATTR_NODEV | MOUNT_ATTR_RDONLY;
	int mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attr);
	if (mnt < 0)
		fail("fsmount", o->a);
	close(fs);
	return mnt;
}

static void apply(const struct plan *pl, const struct op *o)
{
	int fd, tree;
	switch (o->kind) {
	case OP_OVERLAY:
		if (!strcmp(o->a, "/")) {
			root_fd = overlay(pl, o);
			int mp = open(pl->attach, O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (mp < 0)
				fail("open", pl->attach);
			if (sys_move_mount(root_fd, "", mp, "",
					   MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
				fail("move_mount", "/");
			close(mp);
			struct statvfs sv;
			if (*o->b && fstatvfs(root_fd, &sv) == 0 && (sv.f_flag & ST_RDONLY)) {
				errno = EROFS;
				fail("the root overlay", "came up read-only");
			}
		} else {
			tree = overlay(pl, o);
			attach(tree, target(o->a, 1), o->a);
		}
		break;
	case OP_BIND: {
		tree = take_tree(o->a);
		if (tree < 0)
			tree = sys_open_tree(AT_FDCWD, o->a,
					     OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
		if (tree < 0)
			fail("open_tree", o->a);
		uint64_t set = MOUNT_ATTR_NOSUID;
		set |= (o->flags & B_RO) ? MOUNT_ATTR_RDONLY : 0;
		set |= (o->flags & B_NODEV) ? MOUNT_ATTR_NODEV : 0;
		set |= (o->flags & B_NOEXEC) ? MOUNT_ATTR_NOEXEC : 0;
		if (sys_setattr(tree, AT_RECURSIVE, set, -1) < 0)
			fail("mount_setattr", o->a);
		attach(tree, target(o->b, (o->flags & B_DIR) != 0), o->b);
		break;
	}
	case OP_TMPFS: {
		char data[64];
		int n = snprintf(data, sizeof data, "mode=%lo", o->mode);
		if (o->size > 0)
			snprintf(data + n, sizeof data - (size_t)n, ",size=%ld", o->size);
		unsigned long flags = MS_NOSUID;
		flags |= (o->flags & B_NODEV) ? MS_NODEV : 0;
		flags |= (o->flags & B_NOEXEC) ? MS_NOEXEC : 0;
		flags |= (o->flags & B_RO) ? MS_RDONLY : 0;
		mount_at("tmpfs", target(o->a, 1), "tmpfs", flags, data);
		break;
	}
	case OP_PROC:
		mount_at("proc", target(o->a, 1), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
		break;
	case OP_SYSFS:
		mount_at("sysfs", target(o->a, 1), "sysfs",
			 MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
		break;
	case OP_DEVPTS: {
		char data[96];
		int n = snprintf(data, sizeof data, "newinstance,ptmxmode=0666,mode=0620");
		if (o->gid > 0)
			snprintf(data + n, sizeof data - (size_t)n, ",gid=%ld", o->gid);
		mount_at("devpts", target(o->a, 1), "devpts", MS_NOSUID | MS_NOEXEC, data);
		break;
	}
	case OP_MQUEUE:
		mount_at("mqueue", target(o->a, 1), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
		break;
	case OP_DEVNODE: {
		char host[PATH_MAX];
		snprintf(host, sizeof host, "/dev/%s", o->a);
		tree = sys_open_tree(AT_FDCWD, host, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (tree < 0 || sys_setattr(tree, 0, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, -1) < 0)
			fail("device", host);
		attach(tree, target(host, 0), host);
		break;
	}
	case OP_MKDIR:
		mkdirs(o->a, (mode_t)o->mode);
		break;
	case OP_SYMLINK: {
		char parent[PATH_MAX];
		snprintf(parent, sizeof parent, "%s", o->a);
		char *slash = strrchr(parent, '/');
		*slash = 0;
		mkdirs(*parent ? parent : "/", 0755);
		fd = in_root(*parent ? parent : "/", O_PATH | O_DIRECTORY);
		if (fd < 0 || symlinkat(o->b, fd, slash + 1) < 0)
			fail("symlink", o->a);
		close(fd);
		break;
	}
	case OP_MASK: {
		fd = in_root(o->a, O_PATH);
		if (fd < 0) {
			if (errno == ENOENT)
				break;
			fail("mask", o->a);
		}
		struct stat st;
		if (fstat(fd, &st) < 0)
			fail("mask", o->a);
		if (S_ISDIR(st.st_mode)) {
			mount_at("tmpfs", fd, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
				 "size=0,mode=000");
			break;
		}
		int null = in_root("/dev/null", O_PATH);
		tree = null < 0 ? -1 : sys_open_tree(null, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
								   | AT_EMPTY_PATH);
		if (tree < 0 || sys_setattr(tree, 0, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
					   | MOUNT_ATTR_NOEXEC, -1) < 0)
			fail("mask", o->a);
		close(null);
		attach(tree, fd, o->a);
		break;
	}
	case OP_READONLY:
		fd = in_root(o->a, O_PATH);
		if (fd < 0) {
			if (errno == ENOENT)
				break; /* nothing to protect (e.g. no /proc/bus on this kernel) */
			fail("read-only", o->a);
		}
		tree = sys_open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH
						| AT_RECURSIVE);
		if (tree < 0 || sys_setattr(tree, AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
					   | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, -1) < 0)
			fail("read-only", o->a);
		attach(tree, fd, o->a);
		break;
	case OP_PIVOT:
		/* pivot_root(".", ".") stacks the old root on the new one; detaching "."
		 * removes it (pivot_root(2)); private first, so nothing reaches the host. */
		if (fchdir(root_fd) < 0 || syscall(SYS_pivot_root, ".", ".") < 0
		    || mount(NULL, ".", NULL, MS_REC | MS_PRIVATE, NULL) < 0
		    || umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
			fail("pivot_root", NULL);
		break;
	}
}

/* ---- a private network (coopy/net.py) ------------------------------------------------ */

/* The host's own non-loopback addresses (net.py host_addresses), read now, not when the
 * plan was made: a box must not reach services on 0.0.0.0 through the NAT helper. */
static char **host_addresses(const struct plan *pl, int *count)
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
static void block_routes(char **prefixes, int n)
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
static char **unreachable;
static int nunreachable;

struct helper { pid_t pid; int ready_r, exit_w; };

/* Start the NAT helper for the box whose PID 1 is B (net.py start_helper). */
static int start_helper(const struct plan *pl, pid_t b, struct helper *h)
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
static int helper_ready(struct helper *h)
{
	struct pollfd p = { h->ready_r, POLLIN, 0 };
	char buf[64];
	int rc = poll(&p, 1, 10000) == 1 && read(h->ready_r, buf, sizeof buf) > 0 ? 0 : -1;
	close(h->ready_r);
	h->ready_r = -1;
	return rc;
}

static void stop_helper(struct helper *h)
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

static void child_a(const struct plan *pl, int sock, int init_fd, int tty, const int stdio[3],
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

/* ---- the box's cgroup (coopy/cgroup.py) --------------------------------------------- */

static char *cg_path;

/* Make <parent>/<prefix><id> with its limits and the leaf the box's processes go in;
 * returns an fd of the leaf for clone3(CLONE_INTO_CGROUP), or -1. */
static int make_cgroup(const struct plan *pl, const char *box)
{
	const char *id = strrchr(box, '/') + 1;
	char name[PATH_MAX];
	snprintf(name, sizeof name, "%s%s", pl->cg_prefix, id);
	/* The cgroups of this state dir's boxes whose run dir is gone (a SIGKILL). */
	DIR *d = opendir(pl->cg_parent);
	struct dirent *de;
	size_t plen = strlen(pl->cg_prefix);
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, pl->cg_prefix, plen) != 0)
			continue;
		char *run = xstrcat3(pl->base, "/", de->d_name + plen);
		if (access(run, F_OK) < 0 && errno == ENOENT) {
			char *leaf = xstrcat3(de->d_name, "/", "box");
			unlinkat(dirfd(d), leaf, AT_REMOVEDIR);
			unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR);
			free(leaf);
		}
		free(run);
	}
	if (d)
		closedir(d);
	cg_path = xstrcat3(pl->cg_parent, "/", name);
	if (mkdir(cg_path, 0755) < 0)
		return -1;
	for (int i = 0; i + 1 < pl->ncg; i += 2) {
		char *file = xstrcat3(cg_path, "/", pl->cg_files[i]);
		int fd = open(file, O_WRONLY | O_CLOEXEC);
		int rc = fd < 0 ? -1 : write_all(fd, pl->cg_files[i + 1], strlen(pl->cg_files[i + 1]));
		if (fd >= 0)
			close(fd);
		free(file);
		if (rc < 0)
			return -1;
	}
	char *leaf = xstrcat3(cg_path, "/", "box");
	int fd = mkdir(leaf, 0755) < 0 ? -1 : open(leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(leaf);
	return fd;
}

/* Remove the box's cgroup once its processes are gone (EBUSY while any is exiting). */
static void remove_cgroup(void)
{
	if (!cg_path)
		return;
	char *leaf = xstrcat3(cg_path, "/", "box");
	const char *paths[] = { leaf, cg_path };
	for (int i = 0; i < 2; i++)
		for (int tries = 0; tries < 200; tries++) {
			if (rmdir(paths[i]) == 0 || errno != EBUSY)
				break;
			usleep(10000);
		}
	free(leaf);
	cg_path = NULL;
}

/* fork(), but the child starts in the cgroup CGFD (clone3, Linux 5.7); without a cgroup,
 * or where clone3 is refused, a plain fork whose child joins through cgroup.procs. */
static pid_t fork_box(int cgfd)
{
	if (cgfd < 0)
		return fork();
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)cgfd;
	pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
	if (pid >= 0 || (errno != ENOSYS && errno != EPERM))
		return pid;
	int procs = openat(cgfd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
	pid = fork();
	if (pid == 0 && (procs < 0 || write(procs, "0", 1) != 1))
		_exit(125);
	if (procs >= 0)
		close(procs);
	return pid;
}

/* ---- P ---------------------------------------------------------------------------------- */

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

/* Boxes of root: clone the id-mapped binds and the pulled layers with root's credentials
 * (mount.py clone_sources); returns how many fds, keys NUL-separated in keys. */
static int clone_sources(const struct plan *pl, pid_t a, int *fds, char *keys, size_t size,
			 size_t *klen)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/ns/user", a);
	int userns = open(path, O_RDONLY | O_CLOEXEC), n = 0;
	if (userns < 0)
		return -1;
	const char *slash = strrchr(pl->box, '/');
	size_t near = (size_t)(slash - pl->box) + 1;
	*klen = 0;
	for (int i = 0; i < pl->nops && n >= 0; i++) {
		const struct op *o = &pl->ops[i];
		for (int j = 0; o->kind == OP_OVERLAY && !strcmp(o->a, "/") && j < o->nlowers; j++) {
			if (!strncmp(o->lowers[j], pl->box, near))
				continue;
			if (n >= MAX_FDS || *klen + strlen(o->lowers[j]) + 1 > size)
				goto fail;
			fds[n] = sys_open_tree(AT_FDCWD, o->lowers[j], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
			if (fds[n] < 0)
				goto fail;
			*klen += (size_t)sprintf(keys + *klen, "%s", o->lowers[j]) + 1;
			n++;
		}
		if (o->kind != OP_BIND || !(o->flags & B_IDMAP))
			continue;
		if (n >= MAX_FDS || *klen + strlen(o->a) + 1 > size)
			goto fail;
		fds[n] = sys_open_tree(AT_FDCWD, o->a, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
						       | ((o->flags & B_DIR) ? AT_RECURSIVE : 0));
		if (fds[n] < 0 || sys_setattr(fds[n], AT_RECURSIVE, MOUNT_ATTR_IDMAP, userns) < 0)
			goto fail;
		*klen += (size_t)sprintf(keys + *klen, "%s", o->a) + 1;
		n++;
	}
	close(userns);
	return n;
fail:
	say("cloning %s: %s", pl->box, strerror(errno));
	while (n-- > 0)
		if (fds[n] >= 0)
			close(fds[n]);
	close(userns);
	return -1;
}

struct route { int src, dst; char buf[65536]; size_t len, off; int open, box; };

static void set_winsize(int from, int master)
{
	struct winsize ws;
	if (ioctl(from, TIOCGWINSZ, &ws) == 0 && (ws.ws_row || ws.ws_col))
		ioctl(master, TIOCSWINSZ, &ws);
}

/* Copy bytes until the box has ended and its outputs are at EOF; forward signals.  A
 * route reads only when its buffer is empty (a box that does not read its input never
 * stalls its output), as coopy/term.py's Relay. */
static void relay(struct route *r, int nr, int sfd, int done_fd, int init_pidfd, int master)
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

/* Remove the box dir; files of subordinate ids (rootless) as root of a user namespace
 * with the box's map, as coopy/userns.py run_in_userns. */
static void remove_box_dir(const struct plan *pl, const char *dir)
{
	if (rm_at(AT_FDCWD, dir) == 0 || getuid() == 0 || !pl->helper_maps)
		return;
	int go[2];
	if (pipe2(go, O_CLOEXEC) < 0)
		return;
	pid_t child = fork();
	if (child == 0) {
		char x;
		unblock_forwarded();
		close(go[1]);
		if (unshare(CLONE_NEWUSER) < 0 || read(go[0], &x, 1) != 1)
			_exit(1);
		if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
			_exit(1);
		_exit(rm_at(AT_FDCWD, dir) == 0 ? 0 : 1);
	}
	close(go[0]);
	if (child > 0) {
		/* The child's namespace exists once its /proc/PID/ns/user differs from ours. */
		char path[64], a[64] = "", b[64] = "";
		snprintf(path, sizeof path, "/proc/%d/ns/user", child);
		for (int i = 0; i < 10000 && !strcmp(a, b); i++) {
			ssize_t n = readlink(path, a, sizeof a - 1);
			a[n > 0 ? n : 0] = 0;
			n = readlink("/proc/self/ns/user", b, sizeof b - 1);
			b[n > 0 ? n : 0] = 0;
			if (!strcmp(a, b))
				usleep(100);
		}
		if (write_maps(pl, child) == 0 && write(go[1], "x", 1) == 1)
			waitpid(child, NULL, 0);
		else {
			kill(child, SIGKILL);
			waitpid(child, NULL, 0);
		}
	}
	close(go[1]);
}

static int run_box(struct plan *pl)
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
