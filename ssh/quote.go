package ssh

import (
	"regexp"
	"strings"
)

var safeArg = regexp.MustCompile(`^[A-Za-z0-9_./=:@%+,-]+$`)

// Quote returns argv as one command line for a POSIX shell: every argument that is not
// plainly safe is single-quoted, so spaces, quotes and $(...) arrive literally.
func Quote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if safeArg.MatchString(a) {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
