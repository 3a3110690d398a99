-- The libFuzzer harnesses (spec/fuzz/): they build with clang and each runs
-- for 30 seconds on the seed corpus without a finding (a crash, a sanitizer
-- report or a failed check): the smoke CI runs.  `make fuzz` runs them for
-- longer.
local tmp = require "support.tmp"

local HARNESSES = { "stream", "oneshot", "roundtrip", "fastpath", "protocol" }
local SECONDS = 30

-- Run a shell command; returns its exit status and its output (with stderr).
local function run(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"exit status: $?\""))
  local out = p:read("a")
  p:close()
  return tonumber(out:match("exit status: (%d+)\n$")), out
end

-- clang with its libFuzzer runtime: a trivial harness links.
local function have_libfuzzer()
  local dir = tmp.dir("fuzzcheck")
  local src = dir .. "/probe.c"
  tmp.write(src, "#include <stddef.h>\n#include <stdint.h>\n"
    .. "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\n"
    .. "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
  local status = run("clang -fsanitize=fuzzer,address,undefined -o " .. tmp.quote(dir .. "/probe")
                     .. " " .. tmp.quote(src))
  tmp.remove(dir)
  return status == 0
end

describe("the fuzz harnesses #slow #fuzz", function()
  local built, build_error

  local function build()
    if built == nil then
      local targets = {}
      for i, name in ipairs(HARNESSES) do targets[i] = ".build/fuzz/fuzz_" .. name end
      local status, out = run("make -s " .. table.concat(targets, " "))
      built, build_error = status == 0, out
    end
    return built
  end

  for _, name in ipairs(HARNESSES) do
    it(("fuzz_%s runs %d s on the seed corpus with no finding"):format(name, SECONDS), function()
      if not have_libfuzzer() then
        pending("clang's libFuzzer runtime is missing")
        return
      end
      assert(build(), build_error)
      local status, out = run(("sh spec/fuzz/run.sh %d %s"):format(SECONDS, name))
      assert.are.equal(0, status, out)
      assert.truthy(out:find("fuzz_" .. name .. ": %d+ execs .* 0 findings, exit 0"), out)
      local execs = tonumber(out:match("(%d+) execs"))
      assert.truthy(execs > 1000, out)  -- it really ran, past the seeds
      local _, files = run("ls .build/fuzz/run-" .. name)
      assert.falsy(files:find("crash%-") or files:find("leak%-") or files:find("timeout%-") or files:find("oom%-"), files)
    end)
  end
end)
