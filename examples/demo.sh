#!/bin/sh
# make demo: run the demo.  In a checkout the checkout's modules come first;
# an installed rock finds its modules through the paths luarocks sets up
# (eval "$(luarocks --lua-version=5.4 path)"), which are kept, not replaced.
cd "$(dirname "$0")/.." || exit 1
path="./lua/?.lua;./lua/?/init.lua;${LUA_PATH_5_4:-${LUA_PATH:-;}}"
cpath="./?.so;${LUA_CPATH_5_4:-${LUA_CPATH:-;}}"
LUA_PATH_5_4="$path" LUA_CPATH_5_4="$cpath" exec lua5.4 examples/demo.lua "$@"
