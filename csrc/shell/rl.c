/*
** rl.c: the module qmp.shell.rl, what Debian's lua-readline leaves out for
** an interactive monitor shell: printing lines (events that arrive while
** the operator types) above the line being edited, without garbling it.
** It links the same GNU readline as lua-readline, so it sees the state of
** the line that lua-readline's callback interface is editing.
*/
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <readline/readline.h>

/* rl.print_above(text): write text (whole lines) where the prompt is, then
** draw the prompt and the half-typed line again below it, cursor kept. */
static int print_above(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  FILE *out;
  char *line;
  int point;
  /* No line being edited: plain stdout (lua-readline closes the terminal
  ** stream it gave readline when its handler is removed). */
  if (!RL_ISSTATE(RL_STATE_CALLBACK)) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
  }
  out = rl_outstream != NULL ? rl_outstream : stdout;
  /* From here to free() nothing calls Lua: the copy cannot leak. */
  line = rl_copy_text(0, rl_end);
  if (line == NULL) return luaL_error(L, "not enough memory to save the line being edited");
  point = rl_point;
  rl_save_prompt();
  rl_replace_line("", 0);
  rl_redisplay();
  fputs("\r\033[K", out);  /* the prompt's row, now empty, gets the text */
  fwrite(text, 1, len, out);
  rl_restore_prompt();
  rl_replace_line(line, 0);
  rl_point = point;
  rl_forced_update_display();
  fflush(out);
  free(line);
  return 0;
}

__attribute__((visibility("default"))) int luaopen_qmp_shell_rl(lua_State *L);

int luaopen_qmp_shell_rl(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"print_above", print_above},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
