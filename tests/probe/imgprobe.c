/* A static program for test images (no libc in the image): prints what a test asks.
 *   imgprobe cat FILE     the file's bytes
 *   imgprobe ls DIR       one name per line, sorted by the test
 *   imgprobe stat PATH    "<type> <mode octal> <uid> <gid>" (lstat)
 *   imgprobe id           "<uid> <gid>"
 *   imgprobe env NAME     the variable's value
 *   imgprobe write PATH TEXT
 *   imgprobe rm PATH
 *   imgprobe sleep SECONDS
 *   sh -c "imgprobe ARGS..."   as /bin/sh: the words of the one command, split on spaces
 *                              (test images have no shell; `coopy build` runs sh -c STEP)
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "-c") == 0) {
        static char *words[64];
        int n = 0;
        for (char *w = strtok(argv[2], " "); w && n < 63; w = strtok(NULL, " "))
            words[n++] = w;
        words[n] = NULL;
        if (n == 0) return 0;
        return main(n, words);
    }
    if (argc >= 3 && strcmp(argv[1], "cat") == 0) {
        char buf[4096];
        ssize_t n;
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror(argv[2]); return 1; }
        while ((n = read(fd, buf, sizeof buf)) > 0)
            if (write(1, buf, (size_t)n) != n) return 1;
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "ls") == 0) {
        DIR *d = opendir(argv[2]);
        struct dirent *e;
        if (!d) { perror(argv[2]); return 1; }
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                printf("%s\n", e->d_name);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "stat") == 0) {
        struct stat st;
        if (lstat(argv[2], &st) < 0) { perror(argv[2]); return 1; }
        const char *t = S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "link"
                      : S_ISREG(st.st_mode) ? "file" : S_ISCHR(st.st_mode) ? "chr" : "other";
        printf("%s %o %u %u\n", t, st.st_mode & 07777, st.st_uid, st.st_gid);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "id") == 0) {
        printf("%u %u\n", getuid(), getgid());
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "env") == 0) {
        const char *v = getenv(argv[2]);
        printf("%s\n", v ? v : "");
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "write") == 0) {
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) { perror(argv[2]); return 1; }
        return write(fd, argv[3], strlen(argv[3])) < 0;
    }
    if (argc >= 3 && strcmp(argv[1], "rm") == 0) {
        if (unlink(argv[2]) < 0) { perror(argv[2]); return 1; }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "sleep") == 0) {
        sleep((unsigned)atoi(argv[2]));
        return 0;
    }
    fprintf(stderr, "usage: imgprobe cat|ls|stat|id|env|write|rm|sleep ...\n");
    return 2;
}
