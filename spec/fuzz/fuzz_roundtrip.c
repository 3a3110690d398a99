/*
** fuzz_roundtrip.c: libFuzzer harness.
** (c) decode -> encode -> decode: whatever decodes encodes (sorted, compact
** and pretty) to text that decodes to the same value and the same sorted
** text; only strings that are not UTF-8 and infinities may be refused.
*/
#define QMP_FUZZ_CHECK "roundtrip"
#include "harness.h"
