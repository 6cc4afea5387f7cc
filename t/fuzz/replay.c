/*
 * The replay driver: runs a fuzz target once over each file of the directories (or the
 * files) given, in name order, the way libFuzzer would run them, so that `make check`
 * replays the committed corpora with any compiler and no libFuzzer. A crash, a sanitizer
 * report or a broken invariant (abort) ends the program like it would end the fuzzer.
 *
 *   replay-TARGET PATH...   prints "replay: N inputs from PATH (R refused)" per PATH,
 *                           after "replay: FILE refused" for each input the target refused
 *
 * Exit status 0, or 1 when a path cannot be read or a directory holds no input: an
 * empty corpus replayed is no regression test.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t/fuzz/fuzz.h"

#define REPLAY_INPUT_MAX (1024 * 1024) /* the committed corpora hold kilobytes */

struct tally {
    unsigned long inputs, refused;
};

/* The whole of a regular file, in *data (malloc'ed, possibly 0 bytes). -1 when unreadable. */
static int replay_read(const char *path, uint8_t **data, size_t *size)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > REPLAY_INPUT_MAX) {
        fprintf(stderr, "replay: %s: not a regular file of at most %d bytes\n", path,
                REPLAY_INPUT_MAX);
        close(fd);
        return -1;
    }
    /* One byte more than the size, so malloc never sees 0 and growth is noticed. */
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    size_t len = 0;
    ssize_t n = 0;
    while (buf != NULL && len <= (size_t)st.st_size &&
           (n = read(fd, buf + len, (size_t)st.st_size + 1 - len)) > 0)
        len += (size_t)n;
    int saved = errno;
    close(fd);
    if (buf == NULL || n < 0 || len != (size_t)st.st_size) {
        fprintf(stderr, "replay: %s: %s\n", path,
                buf == NULL ? "out of memory"
                : n < 0     ? strerror(saved)
                            : "changed while read");
        free(buf);
        return -1;
    }
    *data = buf;
    *size = len;
    return 0;
}

static int replay_file(const char *path, struct tally *tally)
{
    uint8_t *data;
    size_t size;

    if (replay_read(path, &data, &size) < 0)
        return -1;
    /* A copy of exactly size bytes: ASan then sees a read past the input's end. */
    uint8_t *input = malloc(size > 0 ? size : 1);
    if (input == NULL) {
        fprintf(stderr, "replay: %s: out of memory\n", path);
        free(data);
        return -1;
    }
    memcpy(input, data, size);
    free(data);
    if (LLVMFuzzerTestOneInput(input, size) != 0) {
        printf("replay: %s refused\n", path);
        tally->refused++;
    }
    tally->inputs++;
    free(input);
    return 0;
}

static int replay_hidden(const struct dirent *entry)
{
    return entry->d_name[0] != '.';
}

static int replay_dir(const char *dir, struct tally *tally)
{
    struct dirent **names;
    int n = scandir(dir, &names, replay_hidden, alphasort), rc = 0;

    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];
        int len = snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (len < 0 || (size_t)len >= sizeof(path)) {
            fprintf(stderr, "replay: %s/%s: path too long\n", dir, names[i]->d_name);
            rc = -1;
        } else if (replay_file(path, tally) < 0) {
            rc = -1;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS-DIR-OR-FILE...\n", argv[0]);
        return 1;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct tally tally = {0, 0};
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = 1;
            continue;
        }
        int got = S_ISDIR(st.st_mode) ? replay_dir(argv[i], &tally) : replay_file(argv[i], &tally);
        printf("replay: %lu inputs from %s (%lu refused)\n", tally.inputs, argv[i], tally.refused);
        if (got < 0 || tally.inputs == 0)
            rc = 1;
    }
    return rc;
}
