# qmp: build the C core, run the specs, the demo and the benchmarks.
# `make` builds qmp/core.so; `make test` also installs missing packages.

LUA        ?= lua5.4
BUSTED     ?= busted --lua=$(LUA)
BUSTED_ARGS ?=
LUACHECK   ?= luacheck
PKG_CONFIG ?= pkg-config

CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes
QMP_CFLAGS = -std=c99 -fPIC -fvisibility=hidden -D_GNU_SOURCE $(WARN) \
             $(LUA_CFLAGS) $(CJSON_CFLAGS)

# Recursive (=) on purpose: evaluated when the recipe runs, i.e. after
# `deps` may have installed pkg-config and the -dev packages.
# Only Lua's include flags: a module must not link liblua, it gets the
# Lua API from the interpreter that loads it (lua5.4 has it built in).
LUA_CFLAGS   = $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
CJSON_CFLAGS = $(shell $(PKG_CONFIG) --cflags libcjson 2>/dev/null)
CJSON_LIBS   = $(shell $(PKG_CONFIG) --libs libcjson 2>/dev/null || echo -lcjson)

SRCS := $(wildcard csrc/*.c)
HDRS := $(wildcard csrc/*.h)
CORE := qmp/core.so
# The shell's line-editing helper: links GNU readline, as lua-readline does.
RL   := qmp/cli/rl.so

# Debian packages needed to build, test, run the demo and the benchmarks.
DEBS := lua5.4 liblua5.4-dev libcjson-dev lua-busted lua-socket lua-cqueues locales \
        lua-luv luarocks qemu-system-x86 qemu-utils pkg-config gcc make \
        lua-readline libreadline-dev tmux lua-cjson valgrind clang libclang-rt-14-dev \
        dpkg-dev xz-utils binutils

# Lets lua5.4 (and only lua5.4) find the in-tree modules.
RUN_ENV := LUA_PATH_5_4='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH_5_4='./?.so;;' LUA=$(LUA)

.PHONY: build deps test demo bench bench-ir lint clean fuzz fuzz-smoke fuzz-campaign
.PHONY: test-asan test-valgrind test-long
# deps must finish before build starts, even under -j.
.NOTPARALLEL:

build: $(CORE) $(RL)

# Few small sources: one compiler run rebuilds them all when any changes.
$(CORE): $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(QMP_CFLAGS) $(CFLAGS) -shared -o $@ $(SRCS) $(LDFLAGS) $(CJSON_LIBS)

$(RL): csrc/cli/rl.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(QMP_CFLAGS) $(CFLAGS) -shared -o $@ $< $(LDFLAGS) -lreadline

# Installs only what is missing, so it is a quick no-op (no root) when all is there.
deps:
	@missing=; \
	for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "root needed to install:$$missing" >&2; exit 1; fi; \
	  $$sudo apt-get update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# A decimal-comma locale of our own, so the specs can prove numbers ignore the locale.
LOCALE_DIR := .build/locale
$(LOCALE_DIR)/de_DE.UTF-8:
	@mkdir -p $(LOCALE_DIR)
	@localedef -i de_DE -f UTF-8 $@ 2>/dev/null || echo "no de_DE locale source: the locale specs will be skipped"

# busted's configuration is in .busted; its last line is "N passed, M failed".
test: deps build $(LOCALE_DIR)/de_DE.UTF-8
	LOCPATH=$(CURDIR)/$(LOCALE_DIR) $(BUSTED) $(BUSTED_ARGS)

# Floods and churn (spec/long/, docs/testing.md "Long runs"; about 5 minutes, CPU-heavy):
# files named *_long.lua, which `make test` (pattern _spec) never loads.
test-long: deps build
	nice -n 5 $(BUSTED) --pattern=_long $(BUSTED_ARGS) spec/long

demo: deps build
	sh examples/demo.sh

# The benchmarks (spec/bench/, not part of `make test`; they need lua-cjson,
# valgrind and QEMU): all of them, or those named, e.g. `make bench BENCH="e2e decoder"`.
FLEET_PEER := .build/bench/fleet_peer
BENCH ?=
bench: deps build $(FLEET_PEER)
	$(RUN_ENV) $(LUA) spec/bench/run.lua $(BENCH)

# The fleet benchmark's QMP peer: in C, so that serving 10,000 monitors takes
# little of the CPU the client under test is measured on.
$(FLEET_PEER): spec/bench/fleet_peer.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c99 -D_GNU_SOURCE $(WARN) $(CFLAGS) -o $@ $< $(LDFLAGS)

# Instructions per event, with callgrind.
bench-ir: deps build
	$(RUN_ENV) $(LUA) spec/bench/run.lua ir

lint:
	@if command -v $(LUACHECK) >/dev/null; then $(LUACHECK) lua spec examples bin/qmp-lua; \
	else echo "$(LUACHECK) not installed; skipping lint"; fi

# Fuzzing (spec/fuzz/): libFuzzer harnesses, built with clang into .build/fuzz/
# with the C core and Lua 5.4 linked in.  `make fuzz` runs each for FUZZ_TIME
# seconds on a copy of the seed corpus; `make fuzz-smoke` for 10 seconds.
FUZZ_CC    ?= clang
# Debian's cJSON source goes here, for the fuzzers and test-asan.
SAN_DIR    := .build/asan
FUZZ_TIME  ?= 60
FUZZ_DIR   := .build/fuzz
FUZZERS    := stream oneshot roundtrip fastpath protocol
FUZZ_BINS  := $(FUZZERS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_BASE  := -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=all -std=c99 -D_GNU_SOURCE $(WARN) \
              -DQMP_PIECE_MIN=8  # big messages are taken apart: make most inputs big
FUZZ_FLAGS := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined

$(FUZZ_DIR)/checks_lua.h $(FUZZ_DIR)/protocol_lua.h: $(FUZZ_DIR)/%_lua.h: spec/fuzz/%.lua spec/fuzz/embed.lua
	@mkdir -p $(@D)
	$(LUA) spec/fuzz/embed.lua $< > $@

# The protocol harness has its own chunk, and loads the client from ./lua.
$(FUZZ_DIR)/fuzz_protocol: $(FUZZ_DIR)/protocol_lua.h

# cJSON parses in place in the read buffer, so an over-read inside it would
# be invisible with the system's uninstrumented library: the harnesses link
# Debian's cJSON source (as make test-asan fetches it) compiled with their own
# sanitizers and coverage.
FUZZ_CJSON_INC := -I$(SAN_DIR)/include
$(SAN_DIR)/include/cjson/cJSON.h: $(SAN_DIR)/cjson/cJSON.c
	@mkdir -p $(@D)
	cp $(SAN_DIR)/cjson/cJSON.h $@

$(FUZZ_DIR)/cJSON.o: $(SAN_DIR)/cjson/cJSON.c
	@mkdir -p $(@D)
	$(FUZZ_CC) -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: spec/fuzz/fuzz_%.c spec/fuzz/harness.h $(FUZZ_DIR)/checks_lua.h $(SRCS) $(HDRS) \
                    $(FUZZ_DIR)/cJSON.o $(SAN_DIR)/include/cjson/cJSON.h
	$(FUZZ_CC) $(FUZZ_FLAGS) -I$(FUZZ_DIR) $(LUA_CFLAGS) $(FUZZ_CJSON_INC) -o $@ $< $(SRCS) \
	  $(FUZZ_DIR)/cJSON.o -llua5.4 -lm

fuzz: deps $(FUZZ_BINS)
	sh spec/fuzz/run.sh $(FUZZ_TIME) $(FUZZERS)

fuzz-smoke: deps $(FUZZ_BINS)
	sh spec/fuzz/run.sh 10 $(FUZZERS)

# A campaign (see spec/fuzz/run.sh): one harness, FUZZER, on a corpus kept in
# .build/fuzz/campaign-NAME/ from run to run, with FUZZ_JOBS processes.  It
# runs a build without ASan (UBSan stays), about twice as fast under the
# protocol harness's Lua, then replays the whole corpus once under
# ASan+UBSan.  `make fuzz-campaign FUZZER=protocol FUZZ_TIME=3600 FUZZ_JOBS=2`
FUZZER     ?= protocol
FUZZ_JOBS  ?= 1
FUZZ_UB_DIR := .build/fuzz-ub

$(FUZZ_UB_DIR)/cJSON.o: $(SAN_DIR)/cjson/cJSON.c
	@mkdir -p $(@D)
	$(FUZZ_CC) -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,undefined -c -o $@ $<

$(FUZZ_UB_DIR)/fuzz_%: spec/fuzz/fuzz_%.c spec/fuzz/harness.h $(FUZZ_DIR)/checks_lua.h $(FUZZ_DIR)/protocol_lua.h $(SRCS) $(HDRS) \
                       $(FUZZ_UB_DIR)/cJSON.o $(SAN_DIR)/include/cjson/cJSON.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_BASE) -fsanitize=fuzzer,undefined -I$(FUZZ_DIR) $(LUA_CFLAGS) $(FUZZ_CJSON_INC) -o $@ $< $(SRCS) \
	  $(FUZZ_UB_DIR)/cJSON.o -llua5.4 -lm

fuzz-campaign: deps $(FUZZ_DIR)/fuzz_$(FUZZER) $(FUZZ_UB_DIR)/fuzz_$(FUZZER)
	FUZZ_CAMPAIGN=1 FUZZ_JOBS=$(FUZZ_JOBS) FUZZ_BIN=$(FUZZ_UB_DIR) FUZZ_REPLAY=$(FUZZ_DIR) \
	  sh spec/fuzz/run.sh $(FUZZ_TIME) $(FUZZER)

# Sanitizer runs of the whole suite (spec/sanitize/, docs/testing.md "Sanitizers"),
# both without the #timing specs.  `make test-asan`: the C core and the shell
# helper built with ASan+UBSan into .build/asan/qmp/ (./qmp/ is left alone),
# with Debian's cJSON source (the installed libcjson1's version, fetched with
# apt-get source) compiled in with the same flags.  `make test-valgrind`: the
# normal build, busted's lua5.4 under memcheck.
SAN_CC    ?= gcc
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

$(SAN_DIR)/cjson/cJSON.c:
	sh spec/sanitize/cjson_source.sh $(SAN_DIR)

$(SAN_DIR)/cJSON.o: $(SAN_DIR)/cjson/cJSON.c $(SAN_DIR)/include/cjson/cJSON.h
	$(SAN_CC) -std=c99 -fPIC -fvisibility=hidden -DENABLE_LOCALES $(SAN_FLAGS) -c -o $@ $<

$(SAN_DIR)/qmp/core.so: $(SRCS) $(HDRS) $(SAN_DIR)/cJSON.o
	@mkdir -p $(@D)
	$(SAN_CC) $(CPPFLAGS) -std=c99 -fPIC -fvisibility=hidden -D_GNU_SOURCE $(WARN) $(LUA_CFLAGS) \
	  -I$(SAN_DIR)/include $(SAN_FLAGS) -shared -o $@ $(SRCS) $(SAN_DIR)/cJSON.o

$(SAN_DIR)/qmp/cli/rl.so: csrc/cli/rl.c
	@mkdir -p $(@D)
	$(SAN_CC) $(CPPFLAGS) $(QMP_CFLAGS) $(SAN_FLAGS) -shared -o $@ $< -lreadline

test-asan: deps build $(LOCALE_DIR)/de_DE.UTF-8 $(SAN_DIR)/qmp/core.so $(SAN_DIR)/qmp/cli/rl.so
	nice -n 10 sh spec/sanitize/run.sh asan $(BUSTED_ARGS)

test-valgrind: deps build $(LOCALE_DIR)/de_DE.UTF-8
	nice -n 10 sh spec/sanitize/run.sh valgrind $(BUSTED_ARGS)

# csrc/*.o are left behind by `luarocks make`.
clean:
	rm -rf qmp csrc/*.o .build

# Tab completion (docs/cli.md "qmp-lua completion"): the three scripts, made by
# the checkout's qmp-lua, under $(DESTDIR)$(DATADIR), where bash-completion,
# zsh and fish look for them.  `make install-completion PREFIX=/usr DESTDIR=pkg`
PREFIX  ?= /usr/local
DATADIR ?= $(PREFIX)/share
DESTDIR ?=

.PHONY: install-completion
install-completion: build
	install -d $(DESTDIR)$(DATADIR)/bash-completion/completions $(DESTDIR)$(DATADIR)/zsh/site-functions \
	  $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	$(LUA) bin/qmp-lua completion bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/qmp-lua
	$(LUA) bin/qmp-lua completion zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_qmp-lua
	$(LUA) bin/qmp-lua completion fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/qmp-lua.fish
