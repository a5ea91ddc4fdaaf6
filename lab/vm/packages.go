package vm

import (
	"context"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	utilversion "k8s.io/apimachinery/pkg/util/version"

	"example.com/cookbook/lab"
)

// kubePackages are the packages of the lab's Kubernetes apt repository.
var kubePackages = []string{"kubeadm", "kubelet", "kubectl"}

// KubeletVersioner is a Cluster whose Nodes can be told the version their kubelet runs
// (a restarted kubelet reports the version installed).
type KubeletVersioner interface {
	// SetKubeletVersion makes the Node report kubelet version v ("v1.37.3").
	SetKubeletVersion(ctx context.Context, node, v string) error
}

// kubeVersion is the Kubernetes version (X.Y.Z) the VMs are installed with.
func (f *Fleet) kubeVersion() string {
	v := f.KubeVersion
	if v == "" {
		v = lab.PinnedVersions().Kubernetes
	}
	return strings.TrimPrefix(v, "v")
}

// Available is what the lab's apt repository offers of each Kubernetes package, as
// package versions ("1.37.3-1.1"), newest first: the installed version X.Y.Z, its next
// patch X.Y.Z+1, and the next minor's first two patches X.Y+1.0 and X.Y+1.1.
func (f *Fleet) Available() []string {
	base := f.kubeVersion()
	out := []string{base + "-1.1"}
	parts := strings.Split(base, ".")
	if len(parts) == 3 {
		minor, err1 := strconv.Atoi(parts[1])
		p, err2 := strconv.Atoi(parts[2])
		if err1 == nil && err2 == nil {
			out = append([]string{
				fmt.Sprintf("%s.%d.1-1.1", parts[0], minor+1),
				fmt.Sprintf("%s.%d.0-1.1", parts[0], minor+1),
				fmt.Sprintf("%s.%d.%d-1.1", parts[0], minor, p+1),
			}, out...)
		}
	}
	return out
}

// candidate is what apt-get install installs without a version: the newest patch of the
// fleet's minor (the lab's apt preferences pin the cluster's minor's repository above
// the next minor's, as an operator's apt component setting does).
func (f *Fleet) candidate() string {
	base := f.kubeVersion()
	parts := strings.Split(base, ".")
	for _, av := range f.Available() {
		if len(parts) == 3 && strings.HasPrefix(av, parts[0]+"."+parts[1]+".") {
			return av
		}
	}
	return base + "-1.1"
}

// PackageVersion is the installed version of a package on the VM ("1.37.2-1.1"), "" for
// a package that is not installed.
func (v *VM) PackageVersion(pkg string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pkgVersionLocked(pkg)
}

func (v *VM) pkgVersionLocked(pkg string) string {
	if ver, ok := v.pkgs[pkg]; ok {
		return ver
	}
	if contains(kubePackages, pkg) {
		return v.fleet.kubeVersion() + "-1.1"
	}
	return ""
}

// InterruptInstall leaves pkg as a kill of `apt-get install pkg=version` in the middle
// of dpkg's work leaves it (the remote dpkg dies of SIGPIPE once the SSH session is
// gone): unpacked at version and not configured. dpkg-query -W shows the new version,
// with the status half-configured; apt-get install refuses, as dpkg was interrupted,
// until dpkg --configure -a.
func (v *VM) InterruptInstall(pkg, version string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pkgs == nil {
		v.pkgs = map[string]string{}
	}
	if v.unconfigured == nil {
		v.unconfigured = map[string]bool{}
	}
	v.pkgs[pkg] = version
	v.unconfigured[pkg] = true
}

// PackageStatus is the package's dpkg status ("installed", "half-configured"), ""
// for a package that is not installed.
func (v *VM) PackageStatus(pkg string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pkgStatusLocked(pkg)
}

func (v *VM) pkgStatusLocked(pkg string) string {
	switch {
	case v.pkgVersionLocked(pkg) == "":
		return ""
	case v.unconfigured[pkg]:
		return "half-configured"
	}
	return "installed"
}

// Held reports whether apt-mark holds the package.
func (v *VM) Held(pkg string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.held[pkg]
}

// SetKubeRepo adds (true) or removes (false) the lab's Kubernetes apt repository from
// the VM's apt sources: without it apt-cache and apt-get find none of its packages.
func (v *VM) SetKubeRepo(on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.noKubeRepo = !on
}

func (v *VM) kubeRepo() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !v.noKubeRepo
}

// upstream is the Kubernetes version of a package version: "1.37.3-1.1" is "v1.37.3".
func upstream(pkgVersion string) string {
	u, _, _ := strings.Cut(pkgVersion, "-")
	return "v" + u
}

// aptCache runs apt-cache madison|policy as Debian's does for the lab's packages.
func (v *VM) aptCache(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[1] != "madison" {
		fmt.Fprintf(stderr, "E: Invalid operation %s\n", strings.Join(args[1:], " "))
		return 100
	}
	for _, pkg := range args[2:] {
		if !contains(kubePackages, pkg) || !v.kubeRepo() {
			fmt.Fprintf(stderr, "N: Unable to locate package %s\n", pkg)
			continue
		}
		for _, ver := range v.fleet.Available() {
			minor := strings.Join(strings.Split(strings.TrimPrefix(upstream(ver), "v"), ".")[:2], ".")
			fmt.Fprintf(stdout, "%10s | %s | https://pkgs.k8s.io/core:/stable:/v%s/deb  Packages\n", pkg, ver, minor)
		}
	}
	return 0
}

// aptMark runs apt-mark hold|unhold|showhold.
func (v *VM) aptMark(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprintln(stderr, "E: No operation given")
		return 100
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.held == nil {
		v.held = map[string]bool{}
	}
	switch args[1] {
	case "showhold":
		for _, p := range kubePackages {
			if v.held[p] {
				fmt.Fprintln(stdout, p)
			}
		}
		return 0
	case "hold", "unhold":
	default:
		fmt.Fprintf(stderr, "E: Invalid operation %s\n", args[1])
		return 100
	}
	for _, p := range args[2:] {
		if v.pkgVersionLocked(p) == "" {
			fmt.Fprintf(stderr, "E: Unable to locate package %s\n", p)
			return 100
		}
	}
	for _, p := range args[2:] {
		switch {
		case args[1] == "hold" && v.held[p]:
			fmt.Fprintf(stdout, "%s was already set on hold.\n", p)
		case args[1] == "hold":
			v.held[p] = true
			fmt.Fprintf(stdout, "%s set on hold.\n", p)
		case !v.held[p]:
			fmt.Fprintf(stdout, "%s was already not on hold.\n", p)
		default:
			delete(v.held, p)
			fmt.Fprintf(stdout, "Canceled hold on %s.\n", p)
		}
	}
	return 0
}

// aptGetInstall runs apt-get install for the lab's Kubernetes packages (pkg=version,
// version globs allowed); other packages install as before, with nothing to show.
// It refuses as apt does: an unknown package or version (exit 100), a held package
// changed without --allow-change-held-packages.
func (v *VM) aptGetInstall(args []string, stdout, stderr io.Writer) int {
	v.mu.Lock()
	interrupted := len(v.unconfigured) > 0
	v.mu.Unlock()
	if interrupted {
		// apt takes dpkg's lock first, and finds dpkg's journal not empty.
		fmt.Fprintln(stderr, "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem. ")
		return 100
	}
	fmt.Fprint(stdout, "Reading package lists... Done\n")
	allowHeld, allowDown := false, false
	want := map[string]string{}
	var order []string
	for _, a := range args[2:] {
		if a == "--allow-change-held-packages" {
			allowHeld = true
			continue
		}
		if a == "--allow-downgrades" {
			allowDown = true
			continue
		}
		if strings.HasPrefix(a, "-") {
			continue
		}
		pkg, ver, pinned := strings.Cut(a, "=")
		if !contains(kubePackages, pkg) {
			continue
		}
		if !v.kubeRepo() {
			fmt.Fprintf(stderr, "E: Unable to locate package %s\n", pkg)
			return 100
		}
		if !pinned {
			ver = v.fleet.candidate()
		} else {
			found := ""
			for _, av := range v.fleet.Available() {
				if ok, _ := path.Match(ver, av); ok {
					found = av
					break
				}
			}
			if found == "" {
				fmt.Fprintf(stderr, "E: Version '%s' for '%s' was not found\n", ver, pkg)
				return 100
			}
			ver = found
		}
		want[pkg] = ver
		order = append(order, pkg)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var changeHeld []string
	for _, p := range order {
		if v.pkgVersionLocked(p) != want[p] && v.held[p] {
			changeHeld = append(changeHeld, p)
		}
	}
	if len(changeHeld) > 0 && !allowHeld {
		fmt.Fprintf(stdout, "The following held packages will be changed:\n  %s\n", strings.Join(changeHeld, " "))
		fmt.Fprintln(stderr, "E: Held packages were changed and -y was used without --allow-change-held-packages.")
		return 100
	}
	var down []string
	for _, p := range order {
		if older(want[p], v.pkgVersionLocked(p)) {
			down = append(down, p)
		}
	}
	if len(down) > 0 && !allowDown {
		fmt.Fprintf(stdout, "The following packages will be DOWNGRADED:\n  %s\n", strings.Join(down, " "))
		fmt.Fprintln(stderr, "E: Packages were downgraded and -y was used without --allow-downgrades.")
		return 100
	}
	if v.pkgs == nil {
		v.pkgs = map[string]string{}
	}
	for _, p := range order {
		old := v.pkgVersionLocked(p)
		if old == want[p] {
			fmt.Fprintf(stdout, "%s is already the newest version (%s).\n", p, old)
			continue
		}
		v.pkgs[p] = want[p]
		fmt.Fprintf(stdout, "Unpacking %s (%s) over (%s) ...\nSetting up %s (%s) ...\n", p, want[p], old, p, want[p])
	}
	return 0
}

// older reports whether package version a is older than b (both "X.Y.Z-R").
func older(a, b string) bool {
	va, err1 := utilversion.ParseSemantic(strings.TrimPrefix(upstream(a), "v"))
	vb, err2 := utilversion.ParseSemantic(strings.TrimPrefix(upstream(b), "v"))
	return err1 == nil && err2 == nil && va.LessThan(vb)
}

// dpkgQuery runs dpkg-query -W [-f FORMAT|--showformat=FORMAT] PKG...: a line per package
// in FORMAT (default "${binary:Package}\t${Version}\n"), with the fields ${Package},
// ${binary:Package}, ${Version}, ${Status} ("hold ok installed"), ${db:Status-Abbrev}
// ("hi "), ${db:Status-Want}, ${db:Status-Status} and ${db:Status-Eflag}, and dpkg's
// backslash escapes. A package that is not installed is an error (exit 1).
func (v *VM) dpkgQuery(args []string, stdout, stderr io.Writer) int {
	format, show := "${binary:Package}\t${Version}\n", false
	var pkgs []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-W" || a == "--show":
			show = true
		case a == "-f" || a == "--showformat":
			if i+1 == len(args) {
				fmt.Fprintf(stderr, "dpkg-query: error: --showformat needs a value\n")
				return 2
			}
			i++
			format = args[i]
		case strings.HasPrefix(a, "--showformat="):
			format = strings.TrimPrefix(a, "--showformat=")
		case strings.HasPrefix(a, "-f"):
			format = strings.TrimPrefix(a, "-f")
		case strings.HasPrefix(a, "-"):
			fmt.Fprintf(stderr, "dpkg-query: error: unknown option %s\n", a)
			return 2
		default:
			pkgs = append(pkgs, a)
		}
	}
	if !show {
		fmt.Fprintln(stderr, "dpkg-query: error: need an action option")
		return 2
	}
	code := 0
	for _, p := range pkgs {
		v.mu.Lock()
		ver, status, held := v.pkgVersionLocked(p), v.pkgStatusLocked(p), v.held[p]
		v.mu.Unlock()
		if ver == "" {
			fmt.Fprintf(stderr, "dpkg-query: no packages found matching %s\n", p)
			code = 1
			continue
		}
		want, abbrev := "install", map[string]string{"installed": "i", "half-configured": "F"}[status]
		if held {
			want = "hold"
		}
		fields := map[string]string{
			"Package": p, "binary:Package": p, "Version": ver,
			"Status":           want + " ok " + status,
			"db:Status-Abbrev": want[:1] + abbrev + " ",
			"db:Status-Want":   want, "db:Status-Status": status, "db:Status-Eflag": "ok",
		}
		fmt.Fprint(stdout, expandFormat(format, fields))
	}
	return code
}

// expandFormat is dpkg-query's --showformat: ${Field} replaced by the field (unknown
// fields are empty), and the escapes \n, \t, \r and \\.
func expandFormat(format string, fields map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		switch c := format[i]; {
		case c == '\\' && i+1 < len(format):
			i++
			switch format[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			default:
				b.WriteByte(format[i])
			}
		case c == '$' && i+1 < len(format) && format[i+1] == '{':
			end := strings.IndexByte(format[i:], '}')
			if end < 0 {
				b.WriteString(format[i:])
				return b.String()
			}
			name, _, _ := strings.Cut(format[i+2:i+end], ";") // ${Field;width}: no padding here
			b.WriteString(fields[name])
			i += end
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// dpkg runs dpkg --configure -a (or --pending): the packages an interrupted dpkg left
// unconfigured are set up. Other dpkg actions are not simulated.
func (v *VM) dpkg(args []string, stdout, stderr io.Writer) int {
	if len(args) != 3 || args[1] != "--configure" || (args[2] != "-a" && args[2] != "--pending") {
		fmt.Fprintf(stderr, "dpkg: error: the lab's dpkg knows only --configure -a, not %s\n", strings.Join(args[1:], " "))
		return 2
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range kubePackages {
		if v.unconfigured[p] {
			fmt.Fprintf(stdout, "Setting up %s (%s) ...\n", p, v.pkgVersionLocked(p))
		}
	}
	v.unconfigured = nil
	return 0
}

// restartKubelet restarts the kubelet: its Node goes NotReady for a moment and comes
// back reporting the installed kubelet's version.
func (v *VM) restartKubelet(ctx context.Context, stderr io.Writer) int {
	f := v.fleet
	v.kubelet.Lock()
	defer v.kubelet.Unlock()
	v.mu.Lock()
	joined := v.joined
	v.mu.Unlock()
	if !joined || f.Cluster == nil {
		return 0
	}
	if err := f.Cluster.KubeletDown(ctx, v.Name); err != nil {
		fmt.Fprintf(stderr, "Job for kubelet.service failed: %v\n", err)
		return 1
	}
	// A kubelet newer than the control plane does not register: the node stays NotReady.
	_, cluster, err := v.clusterVersion(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "Job for kubelet.service failed: %v\n", err)
		return 1
	}
	if skew := kubeletSkew(v.installedVersion("kubelet"), cluster); skew != "" {
		fmt.Fprintf(stderr, "Job for kubelet.service failed because the control process exited with error code.\nSee \"systemctl status kubelet.service\" and \"journalctl -xeu kubelet.service\" for details.\nkubelet: %s\n", skew)
		return 1
	}
	if kv, ok := f.Cluster.(KubeletVersioner); ok {
		if err := kv.SetKubeletVersion(ctx, v.Name, upstream(v.PackageVersion("kubelet"))); err != nil {
			fmt.Fprintf(stderr, "Job for kubelet.service failed: %v\n", err)
			return 1
		}
	}
	if err := f.Cluster.KubeletUp(ctx, v.Name, v.BootID()); err != nil {
		fmt.Fprintf(stderr, "Job for kubelet.service failed: %v\n", err)
		return 1
	}
	return 0
}
