/*
** fuzz_fastpath.c: libFuzzer harness.
** (d) The fast receive path against the full path: the same chunks through
** d:drain(limit, interest) and through d:next() give the same values and
** errors; with an interest set (from the input) drain leaves out only
** events outside it, and counts each.
*/
#define QMP_FUZZ_CHECK "fastpath"
#include "harness.h"
