/* coopy front end (front.h): the mount plan (mount.py, in C). */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

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

struct trees trees;
int root_fd = -1;

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

void apply(const struct plan *pl, const struct op *o)
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

/* Boxes of root: clone the id-mapped binds and the pulled layers with root's credentials
 * (mount.py clone_sources); returns how many fds, keys NUL-separated in keys. */
int clone_sources(const struct plan *pl, pid_t a, int *fds, char *keys, size_t size,
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
