/*
** qmp_limits.h: the limits of qmp.core, apart from qmp.h so that the files
** that know no Lua (scan.c) see them too.  Each can be overridden at build
** time (-DQMP_MAX_DEPTH=...).
*/
#if !defined(qmp_limits_h)
#define qmp_limits_h

#if !defined(QMP_MAX_MESSAGE)
#define QMP_MAX_MESSAGE (10 << 20)  /* default max_message, as libvirt and qemu.qmp */
#endif
#if !defined(QMP_MAX_DEPTH)
#define QMP_MAX_DEPTH 1000          /* JSON nesting, decode and encode (cJSON's own cap) */
#endif
#if !defined(QMP_PIECE_MIN)
#define QMP_PIECE_MIN (64 * 1024)   /* a longer message is decoded a member at a time
                                    ** (walk.c); the fuzzers build with a small one */
#endif

#endif
