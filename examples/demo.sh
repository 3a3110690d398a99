#!/bin/sh
# make demo: run the demo against the in-tree build.
cd "$(dirname "$0")/.." || exit 1
LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./?.so;;" exec lua5.4 examples/demo.lua "$@"
