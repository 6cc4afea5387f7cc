#ifndef SLUICE_FUZZ_H
#define SLUICE_FUZZ_H

/*
 * A fuzz target: libFuzzer's entry points. Linked with -fsanitize=fuzzer (clang) it is
 * driven by libFuzzer; linked with t/fuzz/replay.c it runs each given file once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Once, before the first input: build what every input shares. 0, or exit on failure. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
/*
 * One input: 0 when it was used, -1 when the target refuses it. Newer libFuzzers keep a
 * refused input out of the corpus; clang 14's still adds it, and replay lists it.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A target's bug: print where and what, then abort() so libFuzzer keeps the input. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                     \
    } while (0)

static inline void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));

static inline void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s:%d: invariant broken: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

#endif
