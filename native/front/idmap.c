/* coopy front end (front.h): id maps (spawn.py step 2, userns.py write_maps). */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

int write_maps(const struct plan *pl, pid_t pid)
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
