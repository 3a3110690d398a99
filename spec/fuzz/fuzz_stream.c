/*
** fuzz_stream.c: libFuzzer harness.
** (a) The streaming framer + decoder: the input (after an optional header
** of chunk sizes and a max_message, see checks.lua) is fed to a qmp.decoder
** whole and in chunks; next() must give the same messages and errors either
** way.
*/
#define QMP_FUZZ_CHECK "stream"
#include "harness.h"
