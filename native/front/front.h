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
 * and this program's own COOPY_PLAN_STRICT and COOPY_DEBUG_FRONTEND).  On a miss the hex
 * key goes to the Python CLI in COOPY_PLAN_KEY; Python resolves the run as always and,
 * when the run can be replayed (no network helper, no GPUs, no warning printed, …:
 * coopy/plancache.py), writes the plan to <state>/plans/<key> before it starts the box.
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
 *
 * The files (each includes this header; what is not declared here is static):
 *   main.c     main(): the plan cache for `coopy run`, else the Python CLI
 *   util.c     small things: forwarded signals, say(), strings, writes, a child's fail()
 *   sha256.c   SHA-256 (FIPS 180-4)         key.c     the key, <state>/plans
 *   plan.c     parsing a plan, checking its files, rebasing it on this run's box dir
 *   boxdir.c   the box dir: made from the plan, stale ones swept, removed after the run
 *   idmap.c    id maps (spawn.py step 2)    child.c   A and B, and P's messages to them
 *   mounts.c   the mount plan (mount.py, in C), the sources cloned for boxes of root
 *   net.c      a private network (net.py)   cgroup.c  the box's cgroup (cgroup.py)
 *   relay.c    the box's stdio and signals  start.c   P: run_box()
 */
#ifndef COOPY_FRONT_H
#define COOPY_FRONT_H
#include "../common.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PLAN_MAGIC "coopy-plan 1"
#define MAX_PLAN (16 << 20)
#define MAX_FDS 200
#define MAX_MSG 65536 /* as coopy/spawn.py: the paths of up to MAX_FDS cloned trees */

#define GROW(arr, n) do { \
	if ((n) % 64 == 0) { \
		void *p_ = realloc((arr), ((n) + 64) * sizeof *(arr)); \
		if (!p_) abort(); \
		(arr) = p_; \
	} \
} while (0)

/* ---- small things (util.c) ----------------------------------------------------------- */

extern int debug;              /* COOPY_DEBUG_FRONTEND: say() speaks */
extern sigset_t forwarded;     /* the signals forwarded to the box (util.c says when) */
extern char last_failure[1100];
void forwarded_init(void);
void unblock_forwarded(void);
void say(const char *fmt, ...);
char *xstrcat3(const char *a, const char *b, const char *c);
int write_all(int fd, const void *buf, size_t n);

/* ---- the key (sha256.c, key.c) ------------------------------------------------------- */

struct sha { uint32_t h[8]; uint8_t buf[64]; uint64_t len; };
void sha_init(struct sha *s);
void sha_add(struct sha *s, const void *data, size_t n);
void sha_str(struct sha *s, const char *str);
void sha_hex(struct sha *s, char out[65]);

int command_at(int argc, char **argv);
int compute_key(int argc, char **argv, char out[65]);
char *plans_dir(void);

/* ---- the plan (plan.c) --------------------------------------------------------------- */

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

int parse_plan(char *buf, size_t len, struct plan *pl);
void rebase(struct plan *pl, const char *newbox);

/* ---- the box directory (boxdir.c) and its id maps (idmap.c) -------------------------- */

char *make_box_dir(const struct plan *pl, int *lock_fd);
void remove_box_dir(const struct plan *pl, const char *dir);
int write_maps(const struct plan *pl, pid_t pid);

/* ---- A and B, and the messages between P, A and B (child.c) -------------------------- */

extern int err_fd; /* a child's error pipe: fail() writes there */
_Noreturn void fail(const char *what, const char *detail);
int send_msg(int sock, const void *data, size_t len, const int *fds, int nfds);
ssize_t recv_msg(int sock, char *buf, size_t size, int *fds, int *nfds);
_Noreturn void child_a(const struct plan *pl, int sock, int init_fd, int tty,
		       const int stdio[3], char **envp);

/* ---- the mount plan (mounts.c) ------------------------------------------------------- */

/* The trees cloned by P for a box of root, sent to A with their source paths as keys. */
struct trees { char *keys[MAX_FDS]; int fds[MAX_FDS]; int n; int attached; };
extern struct trees trees;
extern int root_fd; /* the box's root overlay, once mounted */
void apply(const struct plan *pl, const struct op *o);
int clone_sources(const struct plan *pl, pid_t a, int *fds, char *keys, size_t size,
		  size_t *klen);

/* ---- a private network (net.c) ------------------------------------------------------- */

extern char **unreachable; /* the prefixes B makes unreachable (host_addresses) */
extern int nunreachable;
char **host_addresses(const struct plan *pl, int *count);
void block_routes(char **prefixes, int n);

struct helper { pid_t pid; int ready_r, exit_w; };
int start_helper(const struct plan *pl, pid_t b, struct helper *h);
int helper_ready(struct helper *h);
void stop_helper(struct helper *h);

/* ---- the box's cgroup (cgroup.c) ----------------------------------------------------- */

int make_cgroup(const struct plan *pl, const char *box);
void remove_cgroup(void);
pid_t fork_box(int cgfd);

/* ---- P: the relay (relay.c) and the start (start.c) ---------------------------------- */

struct route { int src, dst; char buf[65536]; size_t len, off; int open, box; };
void set_winsize(int from, int master);
void relay(struct route *r, int nr, int sfd, int done_fd, int init_pidfd, int master);
int run_box(struct plan *pl);

#endif
