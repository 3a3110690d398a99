/*
** fuzz_oneshot.c: libFuzzer harness.
** (b) One-shot decode: qmp.decode of the input must give a value or nil
** plus a protocol error, and encoding a value must not crash (it may raise).
*/
#define QMP_FUZZ_CHECK "oneshot"
#include "harness.h"
