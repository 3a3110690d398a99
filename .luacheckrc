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
