/*
 * jansson_stdin.c — libs2lora.so only. Debian's libjansson.a is built position-independent
 * for executables, not for shared objects: one instruction of json_loadf (a comparison of its
 * stream with stdin, to name it "<stdin>" in messages) reads glibc's stdin pc-relative, which
 * the linker cannot resolve in a shared object. The build links the library a copy of that
 * archive with the symbol renamed to s2_jansson_stdin (CMakeLists.txt, objcopy
 * --redefine-sym), defined here, hidden, and holding stdin from load time on: the same
 * comparison, and jansson stays inside the library as in the static binary.
 */
#include <stdio.h>

__attribute__((visibility("hidden"))) FILE *s2_jansson_stdin;

__attribute__((constructor)) static void s2_jansson_stdin_init(void) { s2_jansson_stdin = stdin; }
