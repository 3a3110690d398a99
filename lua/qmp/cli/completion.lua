--- qmp-lua completion: print a Tab-completion script for bash, zsh or fish.
--
-- The script is made from the subcommands' own descriptions (main.COMMANDS,
-- each one's options as cli.options_of gives them, and args), so a new
-- subcommand or option completes without a change here.  What each position of args offers:
--   ADDRESS          unix sockets (and directories, to reach them)
--   FILE, NAME.lua   files
--   a|b|c            those words
--   anything else    nothing (a QMP command, a job ID, KEY=VALUE)
-- A word ending in "..." repeats; the rest of args is then its alternatives.
-- An option's value completes only where VALUES says what it can be.
-- The scripts read the words before the cursor as cli.parse does: a value
-- follows its option, "--" and the options_end-th argument end the options.
local cli = require "qmp.cli.common"
local events = require "qmp.events"

local cmd = {
  name = "completion",
  args = "bash|zsh|fish",
  min = 1,
  max = 1,
  summary = "print a Tab-completion script for bash, zsh or fish",
  details = [[
Completes the subcommands, their options, --event names from the event
catalogue and unix sockets where an ADDRESS goes. Install it once:
  qmp-lua completion bash > ~/.local/share/bash-completion/completions/qmp-lua
  qmp-lua completion zsh > ~/.zfunc/_qmp-lua    (a directory on $fpath)
  qmp-lua completion fish > ~/.config/fish/completions/qmp-lua.fish
or load it in the running shell: source <(qmp-lua completion bash).]],
  options = {},
}

local SHELLS = { "bash", "zsh", "fish" }

-- Words offered for an option's value, by option name.  Other options
-- taking a value get nothing: a number, a KEY=VALUE, a glob of one's own.
local VALUES = {
  ["--event"] = events.known_names,
}

-- {==================== the subcommands, as the scripts need them

-- A word the scripts carry unquoted in lists: a name, an option, an event.
local function plain(word)
  assert(word:match("^[%w%-%._]+$"), "not a plain word: " .. word)
  return word
end

-- What a position of args offers: "socket", "file", "words:a b c" or "none".
local function kind_of(word)
  if word == "ADDRESS" then return "socket" end
  if word == "FILE" or word:match("%.lua$") then return "file" end
  if word:find("|", 1, true) then
    local list = {}
    for w in word:gmatch("[^|]+") do list[#list + 1] = plain(w) end
    return "words:" .. table.concat(list, " ")
  end
  return "none"
end

-- The positions of an args string: slots (a kind each) and more (the kind
-- of every position after them).
local function positions(args)
  local slots = {}
  for word in (args or ""):gmatch("%S+") do
    local bare = word:gsub("[%[%]]", "")
    local repeated = bare:match("^(.-)%.%.%.$")
    if repeated then return slots, kind_of(repeated) end
    if bare ~= "|" and bare ~= "" then slots[#slots + 1] = kind_of(bare) end
  end
  return slots, "none"
end

-- Every subcommand: { name, summary, options = { { name, help } }, valued
-- (the names of the options that take a value), slots, more, options_end
-- (0: none) }.
local function subcommands()
  local list = {}
  for _, name in ipairs(require("qmp.cli.main").COMMANDS) do
    local c = require("qmp.cli." .. name)
    local sub = { name = plain(c.name), summary = c.summary, options = {}, valued = {},
                  options_end = c.options_end or 0 }
    local all = cli.options_of(c)   -- the shared ones (--connect-timeout ...) included
    all[#all + 1] = { "--help", nil, "show the subcommand's help and exit" }
    for _, o in ipairs(all) do
      sub.options[#sub.options + 1] = { name = plain(o[1]), help = o[3] }
      if o[2] then sub.valued[#sub.valued + 1] = o[1] end
    end
    sub.slots, sub.more = positions(c.args)
    list[#list + 1] = sub
  end
  return list
end

-- The option names of VALUES with their words, sorted by name.
local function option_values()
  local list = {}
  for name, words in pairs(VALUES) do
    local ws = {}
    for i, w in ipairs(words()) do ws[i] = plain(w) end
    list[#list + 1] = { name = plain(name), words = ws }
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

local function names(list, field)
  local out = {}
  for i, v in ipairs(list) do out[i] = field and v[field] or v end
  return table.concat(out, " ")
end

-- }====================

-- {==================== shared shell text

-- A single-quoted word for bash and zsh.
local function sh_quote(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

-- A single-quoted word for fish.
local function fish_quote(s)
  return "'" .. s:gsub("[\\']", "\\%0") .. "'"
end

-- Fill each {{key}} of a template.
local function fill(template, values)
  return (template:gsub("{{(%w+)}}", function(key) return assert(values[key], key) end))
end

-- }====================

-- {==================== bash

local BASH = [==[
# bash completion for qmp-lua, made by `qmp-lua completion bash`: save it as
# ~/.local/share/bash-completion/completions/qmp-lua, or `source` it.

# Unix sockets starting with $1, and directories on the way to them.
_qmp_lua_sockets() {
    local path
    while IFS= read -r path; do
        if [[ -S $path || -d $path ]]; then COMPREPLY+=("$path"); fi
    done < <(compgen -f -- "$1")
    compopt -o filenames 2>/dev/null
}

# The values of option $1 that start with $2, each after $3.
_qmp_lua_values() {
    local values= value
    case $1 in
{{values}}
    esac
    for value in $(compgen -W "$values" -- "$2"); do COMPREPLY+=("$3$value"); done
}

_qmp_lua() {
    # The words up to the cursor, split at blanks only (COMP_WORDS also
    # splits at = and :, which qmp-lua does not).
    local line=${COMP_LINE:0:COMP_POINT} cur
    local -a words
    read -ra words <<< "$line"
    if [[ ${#words[@]} -eq 0 || $line == *[[:space:]] ]]; then words+=(""); fi
    cur=${words[-1]}
    COMPREPLY=()
    if (( ${#words[@]} == 2 )); then
        if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "--help" -- "$cur"))
        else COMPREPLY=($(compgen -W "{{commands}}" -- "$cur")); fi
        return 0
    fi
    local options valued more optend
    local -a slots
    case ${words[1]} in
{{subcommands}}
        *) return 0 ;;
    esac
    # Read the words before the cursor as qmp-lua does.
    local i n=0 rest= expect= word
    for (( i = 2; i < ${#words[@]} - 1; i++ )); do
        word=${words[i]}
        if [[ -n $expect ]]; then expect=
        elif [[ -n $rest || $word == - || $word != -* ]]; then
            n=$((n + 1))
            if (( optend > 0 && n >= optend )); then rest=1; fi
        elif [[ $word == -- ]]; then rest=1
        elif [[ " $valued " == *" $word "* ]]; then expect=$word
        fi
    done
    if [[ -n $expect ]]; then _qmp_lua_values "$expect" "$cur" ""; return 0; fi
    if [[ -z $rest && $cur == --*=* ]]; then
        local prefix=
        if [[ $COMP_WORDBREAKS != *=* ]]; then prefix=${cur%%=*}=; fi
        _qmp_lua_values "${cur%%=*}" "${cur#*=}" "$prefix"
        return 0
    fi
    if [[ -z $rest && $cur == -* ]]; then COMPREPLY=($(compgen -W "$options" -- "$cur")); return 0; fi
    local kind=${slots[n]:-$more}
    case $kind in
        socket) _qmp_lua_sockets "$cur" ;;
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        words:*) COMPREPLY=($(compgen -W "${kind#words:}" -- "$cur")) ;;
    esac
    return 0
}

complete -F _qmp_lua qmp-lua
]==]

local function bash()
  local values, subs, all = {}, {}, subcommands()
  for _, v in ipairs(option_values()) do
    values[#values + 1] = ("        %s) values=%s ;;"):format(v.name, sh_quote(table.concat(v.words, " ")))
  end
  for _, sub in ipairs(all) do
    local slots = {}
    for i, kind in ipairs(sub.slots) do slots[i] = sh_quote(kind) end
    subs[#subs + 1] = ("        %s)\n            options=%s\n            valued=%s\n"
                       .. "            slots=(%s) more=%s optend=%d ;;")
      :format(sub.name, sh_quote(names(sub.options, "name")), sh_quote(names(sub.valued)),
              table.concat(slots, " "), sh_quote(sub.more), sub.options_end)
  end
  return fill(BASH, { values = table.concat(values, "\n"), subcommands = table.concat(subs, "\n"),
                      commands = names(all, "name") })
end

-- }====================

-- {==================== zsh

local ZSH = [==[
#compdef qmp-lua
# zsh completion for qmp-lua, made by `qmp-lua completion zsh`: save it as
# _qmp-lua in a directory of $fpath (before compinit runs), or `source` it
# after compinit.

# Offer the values of option $1.
_qmp-lua_values() {
  local -a values
  case $1 in
{{values}}
  esac
  compadd -a values
}

_qmp-lua() {
  local cur=${words[CURRENT]}
  if (( CURRENT == 2 )); then
    if [[ $cur == -* ]]; then
      compadd -- --help
    else
      local -a commands=(
{{commands}}
      )
      _describe -t commands 'qmp-lua command' commands
    fi
    return
  fi
  local -a options valued slots
  local more optend
  case ${words[2]} in
{{subcommands}}
    *) return 1 ;;
  esac
  # Read the words before the cursor as qmp-lua does.
  local i n=0 rest= expect= word
  for (( i = 3; i < CURRENT; i++ )); do
    word=${words[i]}
    if [[ -n $expect ]]; then expect=
    elif [[ -n $rest || $word == - || $word != -* ]]; then
      (( n++ ))
      if (( optend > 0 && n >= optend )); then rest=1; fi
    elif [[ $word == -- ]]; then rest=1
    elif (( ${valued[(Ie)$word]} )); then expect=$word
    fi
  done
  if [[ -n $expect ]]; then _qmp-lua_values $expect; return; fi
  if [[ -z $rest && $cur == --*=* ]]; then
    compset -P '*='
    _qmp-lua_values ${cur%%=*}
    return
  fi
  if [[ -z $rest && $cur == -* ]]; then _describe -t options 'option' options; return; fi
  local kind=${slots[n+1]:-$more}
  case $kind in
    socket) _files -g '*(=)' ;;
    file) _files ;;
    words:*) local -a list=(${=kind#words:}); compadd -a list ;;
  esac
}

# Autoloaded from $fpath: complete now; sourced: register.
if [[ $funcstack[1] == _qmp-lua ]]; then
  _qmp-lua "$@"
else
  compdef _qmp-lua qmp-lua
fi
]==]

-- "name:help" for _describe (a colon in the name would need a backslash).
local function described(name, help)
  return sh_quote(name .. ":" .. (help or ""):gsub("\n", " "))
end

local function zsh()
  local values, subs, commands = {}, {}, {}
  for _, v in ipairs(option_values()) do
    values[#values + 1] = ("    %s) values=(%s) ;;"):format(v.name, table.concat(v.words, " "))
  end
  for _, sub in ipairs(subcommands()) do
    commands[#commands + 1] = "        " .. described(sub.name, sub.summary)
    local options, slots = {}, {}
    for i, o in ipairs(sub.options) do options[i] = "        " .. described(o.name, o.help) end
    for i, kind in ipairs(sub.slots) do slots[i] = sh_quote(kind) end
    subs[#subs + 1] = ("    %s)\n      options=(\n%s\n      )\n      valued=(%s)\n"
                       .. "      slots=(%s) more=%s optend=%d ;;")
      :format(sub.name, table.concat(options, "\n"), names(sub.valued), table.concat(slots, " "),
              sh_quote(sub.more), sub.options_end)
  end
  return fill(ZSH, { values = table.concat(values, "\n"), subcommands = table.concat(subs, "\n"),
                     commands = table.concat(commands, "\n") })
end

-- }====================

-- {==================== fish

local FISH = [==[
# fish completion for qmp-lua, made by `qmp-lua completion fish`: save it as
# ~/.config/fish/completions/qmp-lua.fish, or `source` it.

# The values of option $argv[1].
function __qmp_lua_values
    switch $argv[1]
{{values}}
    end
end

# The candidates for the word at the cursor, one a line (TAB, description).
function __qmp_lua_complete
    set -l words (commandline -opc)
    set -l cur (commandline -ct)
    if test (count $words) -eq 1
        if string match -q -- '-*' $cur
            echo --help
        else
            printf '%s\t%s\n' \
{{commands}}
        end
        return
    end
    set -l options
    set -l valued
    set -l slots
    set -l more none
    set -l optend 0
    switch $words[2]
{{subcommands}}
        case '*'
            return
    end
    # Read the words before the cursor as qmp-lua does.
    set -l n 0
    set -l rest
    set -l expect
    for i in (seq 3 (count $words))
        set -l word $words[$i]
        if test -n "$expect"
            set expect
        else if test -n "$rest"; or test "$word" = -; or not string match -q -- '-*' $word
            set n (math $n + 1)
            if test $optend -gt 0 -a $n -ge $optend
                set rest 1
            end
        else if test "$word" = --
            set rest 1
        else if contains -- $word $valued
            set expect $word
        end
    end
    if test -n "$expect"
        __qmp_lua_values $expect
        return
    end
    if test -z "$rest"; and string match -q -- '--*=*' $cur
        set -l option (string split -m1 = -- $cur)[1]
        for value in (__qmp_lua_values $option)
            echo "$option=$value"
        end
        return
    end
    if test -z "$rest"; and string match -q -- '-*' $cur
        printf '%s\t%s\n' $options
        return
    end
    set -l kind $more
    if test $n -lt (count $slots)
        set kind $slots[(math $n + 1)]
    end
    switch $kind
        case socket
            for candidate in (__fish_complete_path $cur)
                set -l path (string split -m1 \t -- $candidate)[1]
                if test -S $path; or test -d $path
                    echo $candidate
                end
            end
        case file
            __fish_complete_path $cur
        case 'words:*'
            string split ' ' -- (string replace 'words:' '' -- $kind)
    end
end

complete -c qmp-lua -f -a '(__qmp_lua_complete)'
]==]

local function fish()
  local values, subs, commands = {}, {}, {}
  for _, v in ipairs(option_values()) do
    values[#values + 1] = ("        case %s\n            printf '%%s\\n' %s"):format(v.name, table.concat(v.words, " "))
  end
  for _, sub in ipairs(subcommands()) do
    commands[#commands + 1] = ("                %s %s"):format(sub.name, fish_quote(sub.summary))
    local options, slots = {}, {}
    for _, o in ipairs(sub.options) do
      options[#options + 1] = ("                %s %s"):format(o.name, fish_quote((o.help or ""):gsub("\n", " ")))
    end
    for i, kind in ipairs(sub.slots) do slots[i] = " " .. fish_quote(kind) end
    subs[#subs + 1] = ("        case %s\n            set options \\\n%s\n            set valued%s\n"
                       .. "            set slots%s\n            set more %s\n            set optend %d")
      :format(sub.name, table.concat(options, " \\\n"), #sub.valued > 0 and " " .. names(sub.valued) or "",
              table.concat(slots), fish_quote(sub.more), sub.options_end)
  end
  return fill(FISH, { values = table.concat(values, "\n"), subcommands = table.concat(subs, "\n"),
                      commands = table.concat(commands, " \\\n") })
end

-- }====================

local SCRIPTS = { bash = bash, zsh = zsh, fish = fish }

--- The completion script for shell ("bash", "zsh" or "fish").
function cmd.script(shell)
  return assert(SCRIPTS[shell], "no completion for this shell")()
end

function cmd.run(_, args)
  local shell = args[1]
  if not SCRIPTS[shell] then
    cli.usage_error(("completion: no completion for %q (shells: %s)"):format(shell, table.concat(SHELLS, ", ")))
  end
  io.stdout:write(cmd.script(shell))
  return cli.OK
end

return cmd
