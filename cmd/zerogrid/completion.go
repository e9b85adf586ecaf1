package main

import (
	"fmt"
	"io"
	"strings"
)

// commandNames are the CLI's commands, and subcommands the words some of
// them take first, for shell completion (a test checks each is dispatched
// by Run).
func commandNames() []string {
	return []string{"demo", "cert", "node", "nodes", "map", "put", "get", "del", "scan", "watch", "status", "audit",
		"check", "recover", "job", "apply", "lock", "backup", "restore", "version", "completion", "help"}
}

func subcommands() map[string][]string {
	return map[string][]string{
		"cert":       {"ca", "node", "client", "revoke"},
		"node":       {"drain", "undrain", "remove"},
		"map":        {"create", "list"},
		"job":        {"run", "explain"},
		"completion": {"bash", "zsh"},
	}
}

// bashCompletion completes commands, their first words and — by asking
// the binary itself for a command's --help — its flags, so it never goes
// stale; anything else completes as a file name.
const bashCompletion = `# zerogrid shell completion for bash (and zsh, through bashcompinit).
# Load it with:  source <(zerogrid completion bash)
_zerogrid() {
  local cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]} sub="" subs=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "%s" -- "$cur"))
    return
  fi
  case "$cmd" in
%s  esac
  if [ "$COMP_CWORD" -eq 2 ] && [ -n "$subs" ] && [[ "$cur" != -* ]]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    return
  fi
  if [ -n "$subs" ] && [[ " $subs " == *" ${COMP_WORDS[2]} "* ]]; then
    sub=${COMP_WORDS[2]}
  fi
  if [[ "$cur" == -* ]]; then
    local flags
    flags=$("${COMP_WORDS[0]}" $cmd $sub --help 2>&1 | sed -n 's/^  -\([a-zA-Z0-9-]*\).*/--\1/p')
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    return
  fi
  COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o default -F _zerogrid zerogrid
`

const zshPrelude = `# zerogrid shell completion for zsh. Load it with:  source <(zerogrid completion zsh)
autoload -U +X bashcompinit && bashcompinit
`

func runCompletion(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		fmt.Fprintln(stderr, "Usage: zerogrid completion bash|zsh   (e.g. source <(zerogrid completion bash))")
		return errUsage
	}
	var cases strings.Builder
	subs := subcommands()
	for _, c := range commandNames() {
		if s, ok := subs[c]; ok {
			fmt.Fprintf(&cases, "    %s) subs=%q ;;\n", c, strings.Join(s, " "))
		}
	}
	fmt.Fprintf(&cases, "    *) subs=\"\" ;;\n")
	if args[0] == "zsh" {
		fmt.Fprint(stdout, zshPrelude)
	}
	fmt.Fprintf(stdout, bashCompletion, strings.Join(commandNames(), " "), cases.String())
	return nil
}
