std = "lua54"
max_line_length = 120

files["spec"] = {
  std = "+busted",
  max_line_length = false,  -- protocol transcripts read better on one line
  read_globals = { "TEST_TIMEOUT" },
}
files["spec/helper.lua"] = {
  globals = { "TEST_TIMEOUT" },
}
-- Run inside faults_harness.c, which defines these globals and reads KEEP.
files["spec/support/faults_harness.lua"] = {
  globals = { "KEEP" },
  read_globals = { "fail_cjson", "cjson_live" },
}
