/*
** cjson_parse FILE [N]: the baseline of the big-reply benchmark.  Parses
** FILE with the system cJSON N times (default 1) and prints the CPU time of
** each parse alone, in seconds, one per line (freeing the tree is not
** counted).  The first parse is cold (a fresh heap whose pages are not
** mapped yet); the benchmark compares qmp with the warm ones after it.
** Compiled by the benchmark into its temporary directory.
*/
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cjson/cJSON.h>

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  FILE *f;
  char *text;
  long size;
  int i, n;
  if (argc < 2) {
    fprintf(stderr, "usage: cjson_parse FILE [N]\n");
    return 64;
  }
  n = argc > 2 ? atoi(argv[2]) : 1;
  f = fopen(argv[1], "rb");
  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    perror(argv[1]);
    return 1;
  }
  text = malloc((size_t)size + 1);
  if (text == NULL || fread(text, 1, (size_t)size, f) != (size_t)size) {
    perror(argv[1]);
    return 1;
  }
  text[size] = '\0';
  fclose(f);
  for (i = 0; i < n; i++) {
    double t0 = cpu_now(), t;
    cJSON *tree = cJSON_ParseWithLength(text, (size_t)size);
    t = cpu_now() - t0;
    if (tree == NULL) {
      fprintf(stderr, "cJSON could not parse %s\n", argv[1]);
      return 1;
    }
    printf("%.9f\n", t);
    cJSON_Delete(tree);
  }
  free(text);
  return 0;
}
