package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks"
)

// version and commit are stamped by the build (make deb: -ldflags "-X main.version=...
// -X main.commit=..."); a plain `go build` reports "dev" and the commit Go recorded.
var (
	version = "dev"
	commit  = ""
)

// buildCommit returns the stamped commit, else the VCS revision Go recorded, else "unknown".
func buildCommit() string {
	if commit != "" {
		return commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return s.Value[:12]
			}
		}
	}
	return "unknown"
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "cookbook %s (commit %s, %s)\n", version, buildCommit(), runtime.Version())
}

// completion prints the shell completion script for bash, zsh or fish. The bash and zsh
// scripts ask cookbook itself for the words (urfave/cli's --generate-bash-completion).
func completion(c *cli.Context) error {
	w := c.App.Writer
	switch shell := c.Args().First(); shell {
	case "bash":
		fmt.Fprint(w, bashCompletion)
	case "zsh":
		fmt.Fprint(w, zshCompletion)
	case "fish":
		s, err := c.App.ToFishCompletion()
		if err != nil {
			return fmt.Errorf("fish completion: %w", err)
		}
		fmt.Fprint(w, s)
	default:
		return cookbooks.BadInputf("completion: %q is not a shell (expected bash, zsh or fish)", shell)
	}
	return nil
}

// manPage prints the cookbook(1) manual page, in roff, generated from the command line
// definition.
func manPage(c *cli.Context) error {
	s, err := c.App.ToManWithSection(1)
	if err != nil {
		return fmt.Errorf("man page: %w", err)
	}
	_, err = fmt.Fprint(c.App.Writer, s)
	return err
}

const bashCompletion = `# bash completion for cookbook
_cookbook() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	if [[ "$cur" == -* ]]; then
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
	return 0
}
complete -o bashdefault -o default -F _cookbook cookbook
`

const zshCompletion = `#compdef cookbook
# zsh completion for cookbook
_cookbook() {
	local -a opts
	local cur=${words[-1]}
	if [[ "$cur" == -* ]]; then
		opts=("${(@f)$(${words[@]:0:#words[@]-1} $cur --generate-bash-completion 2>/dev/null)}")
	else
		opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ "${opts[1]}" != "" ]]; then
		_describe 'values' opts
	else
		_files
	fi
}
compdef _cookbook cookbook
`
