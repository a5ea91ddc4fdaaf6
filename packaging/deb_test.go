// Package packaging holds the Debian packaging of cookbook (make deb: nfpm.yaml, the
// changelog, copyright and lintian overrides; tools/ is the nested module that pins nfpm)
// and its test.
package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// need returns the path of a program the test drives, skipping the test without it
// (failing under CI=true, where .ci/run installs it).
func need(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: CI installs Debian's %s", name, pkg)
		}
		t.Skipf("%s not found (Debian's %s): skipping", name, pkg)
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebianPackage builds the package with `make deb`, checks it with lintian, installs
// it with dpkg, and uses what it installed as an operator would: the binary's version,
// the man page, the bash completion. The package is removed at the end.
func TestDebianPackage(t *testing.T) {
	for _, tool := range [][2]string{{"make", "make"}, {"dpkg", "dpkg"}, {"lintian", "lintian"}, {"man", "man-db"}, {"bash", "bash"}} {
		need(t, tool[0], tool[1])
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("installing the package needs root; CI runs as root")
		}
		t.Skip("installing the package needs root: skipping")
	}
	if out, err := exec.Command("dpkg", "-S", "/usr/bin/cookbook").CombinedOutput(); err == nil && !strings.HasPrefix(string(out), "cookbook:") {
		t.Skipf("/usr/bin/cookbook belongs to another package: %s", out)
	} else if _, err := os.Stat("/usr/bin/cookbook"); err == nil && !strings.HasPrefix(string(out), "cookbook:") {
		t.Skip("/usr/bin/cookbook exists and is not from a package: not overwriting it")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, root, "make", "deb")
	debs, _ := filepath.Glob(filepath.Join(root, "build", "cookbook_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v:\n%s", debs, out)
	}
	deb := debs[0]

	cmd := exec.Command("lintian", "--fail-on", "error", deb)
	lint, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(lint), "\nE: ") || strings.HasPrefix(string(lint), "E: ") {
		t.Errorf("lintian %s: %v\n%s", filepath.Base(deb), err, lint)
	}

	run(t, root, "dpkg", "-i", deb)
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "cookbook").Run() })

	version := run(t, root, "/usr/bin/cookbook", "--version")
	want := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(deb), "cookbook_"), "_amd64.deb")
	if !strings.HasPrefix(version, "cookbook "+want+" (commit ") || !strings.Contains(version, "go1.") {
		t.Errorf("cookbook --version = %q, want version %s, a commit and the Go version", version, want)
	}
	if page := strings.TrimSpace(run(t, root, "man", "-w", "cookbook")); page != "/usr/share/man/man1/cookbook.1.gz" {
		t.Errorf("man -w cookbook = %q", page)
	}
	// The installed bash completion completes a cookbook's name.
	script := `source /usr/share/bash-completion/completions/cookbook
complete -p cookbook
COMP_WORDS=(cookbook add-k); COMP_CWORD=1; _cookbook; echo "words: ${COMPREPLY[*]}"
COMP_WORDS=(cookbook roll-reboot --max); COMP_CWORD=2; _cookbook; echo "flags: ${COMPREPLY[*]}"`
	got := run(t, root, "bash", "--norc", "--noprofile", "-c", script)
	for _, want := range []string{"complete -o bashdefault -o default -F _cookbook cookbook", "words: add-k8s-node", "flags: --max-unavailable"} {
		if !strings.Contains(got, want) {
			t.Errorf("bash completion: no %q in:\n%s", want, got)
		}
	}
	for _, f := range []string{"/usr/share/doc/cookbook/examples/config.yaml", "/usr/share/doc/cookbook/copyright", "/usr/share/doc/cookbook/changelog.gz", "/usr/share/zsh/vendor-completions/_cookbook", "/usr/share/fish/vendor_completions.d/cookbook.fish"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("the package did not install %s: %v", f, err)
		}
	}
}
