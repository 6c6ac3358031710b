/* The C unit tests' checks: count passes and failures, report each failure with its place. */
#ifndef MOS_TEST_CHECK_H
#define MOS_TEST_CHECK_H

#include <stdio.h>

static int g_pass, g_fail;
static const char *g_test = ""; /* the test case running, set by the tests that name theirs */

#define CHECK(cond)                                                                                   \
    do {                                                                                              \
        if (cond) {                                                                                   \
            g_pass++;                                                                                 \
        } else {                                                                                      \
            g_fail++;                                                                                 \
            fprintf(stderr, "FAIL %s:%d [%s%s]: %s\n", __FILE__, __LINE__, g_test, __func__, #cond);  \
        }                                                                                             \
    } while (0)

#define CHECK_EQ(a, b)                                                                                \
    do {                                                                                              \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);                \
        if (a_ == b_) {                                                                               \
            g_pass++;                                                                                 \
        } else {                                                                                      \
            g_fail++;                                                                                 \
            fprintf(stderr, "FAIL %s:%d [%s%s]: %s == %s (%llu != %llu)\n", __FILE__, __LINE__,       \
                    g_test, __func__, #a, #b, a_, b_);                                                \
        }                                                                                             \
    } while (0)

#endif
