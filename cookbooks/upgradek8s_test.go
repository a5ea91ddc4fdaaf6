package cookbooks

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/k8sops"
)

// TestUpgradeSkip: a node at the target is skipped, one older is upgraded, one newer or
// not at --src-version is bad input.
func TestUpgradeSkip(t *testing.T) {
	node := func(v string) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-1"}, Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{KubeletVersion: v}}}
	}
	dst, _ := parseVersion("1.37.3")
	src, _ := parseVersion("v1.37.2")
	tests := []struct {
		have       string
		src        *version
		wantReason string
		wantBad    bool
	}{
		{"v1.37.3", nil, "already at v1.37.3", false},
		{"v1.37.2", nil, "", false},
		{"v1.36.9", nil, "", false},
		{"v1.37.2", &src, "", false},
		{"v1.36.9", &src, "", true},
		{"v1.38.0", nil, "", true},
		{"garbage", nil, "", true},
	}
	for _, tt := range tests {
		u := &upgrader{dst: dst, src: tt.src}
		reason, err := u.skip(node(tt.have))
		var in *InputError
		if (err != nil) != tt.wantBad || (err != nil && !errors.As(err, &in)) || !strings.Contains(reason, tt.wantReason) || (tt.wantReason == "") != (reason == "") {
			t.Errorf("kubelet %s (src %v): reason %q, err %v; want reason ~%q, bad input %v", tt.have, tt.src, reason, err, tt.wantReason, tt.wantBad)
		}
	}
	if _, err := parseVersion("1.37"); err == nil {
		t.Error("1.37 parsed as a version")
	}
}

// TestChunkOf: --batches K --batch-number I picks the I-th of K nearly equal chunks of
// the nodes in natural order, the first len%K chunks one node longer; every node is in
// exactly one chunk.
func TestChunkOf(t *testing.T) {
	nodes := []string{"w-10", "w-2", "w-1", "w-3", "w-4", "w-5", "w-6", "w-7", "w-8", "w-9"}
	tests := []struct {
		name string
		k, i int
		want []string
	}{
		{"first of 4", 4, 1, []string{"w-1", "w-2", "w-3"}},
		{"second of 4", 4, 2, []string{"w-4", "w-5", "w-6"}},
		{"third of 4", 4, 3, []string{"w-7", "w-8"}},
		{"last of 4", 4, 4, []string{"w-9", "w-10"}},
		{"one chunk", 1, 1, []string{"w-1", "w-2", "w-3", "w-4", "w-5", "w-6", "w-7", "w-8", "w-9", "w-10"}},
		{"more chunks than nodes", 12, 11, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, chunkOf(nodes, tt.k, tt.i), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("chunk %d of %d (-want +got):\n%s", tt.i, tt.k, diff)
			}
		})
	}
	seen := map[string]int{}
	for i := 1; i <= 3; i++ {
		for _, n := range chunkOf(nodes, 3, i) {
			seen[n]++
		}
	}
	if len(seen) != len(nodes) {
		t.Errorf("3 chunks cover %d nodes, want %d: %v", len(seen), len(nodes), seen)
	}
}

// TestSkewProblems: the preflight's version skew policy, on its own.
func TestSkewProblems(t *testing.T) {
	v := func(s string) version {
		x, err := parseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	ctl := func(name, kubelet string, selected bool) skewNode {
		return skewNode{Name: name, Kubelet: kubelet, Control: true, Selected: selected, ToDo: selected}
	}
	wrk := func(name, kubelet string, selected bool) skewNode {
		return skewNode{Name: name, Kubelet: kubelet, Selected: selected, ToDo: selected}
	}
	tests := []struct {
		name  string
		cv    string
		dst   string
		nodes []skewNode
		want  []string // substrings, one per problem, in order
	}{
		{"a minor, everything selected", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", true), wrk("w1", "v1.36.5", true)}, nil},
		{"a patch", "v1.37.2", "1.37.3", []skewNode{ctl("c1", "v1.37.2", true), wrk("w1", "v1.37.2", true)}, nil},
		{"skips a minor", "v1.36.5", "1.38.0", []skewNode{ctl("c1", "v1.36.5", true)}, []string{"--dst-version 1.38.0 skips a minor: the control plane is at v1.36.5"}},
		{"downgrade", "v1.37.2", "1.37.1", nil, []string{"--dst-version 1.37.1 is older than the control plane"}},
		{"workers before the control plane", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", false), wrk("w1", "v1.36.5", true)},
			[]string{"upgrade the control nodes before any other kubelet"}},
		{"workers after the control plane", "v1.37.1", "1.37.1", []skewNode{ctl("c1", "v1.37.1", false), wrk("w1", "v1.36.5", true)}, nil},
		{"workers while a control node is behind", "v1.37.1", "1.37.1", []skewNode{ctl("c1", "v1.37.1", false), ctl("c2", "v1.36.5", false), wrk("w1", "v1.36.5", true)},
			[]string{"upgrade the control nodes before any other kubelet"}},
		{"control only", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", true), wrk("w1", "v1.36.5", false)}, nil},
		{"a kubelet of a newer minor", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", true), wrk("w1", "v1.37.0", false)},
			[]string{"node w1: kubelet v1.37.0 is of a newer minor than the control plane (v1.36.5)"}},
		{"a kubelet of a newer patch", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", true), wrk("w1", "v1.36.6", true)}, nil},
		{"a node left four minors behind", "v1.36.5", "1.37.1", []skewNode{ctl("c1", "v1.36.5", true), wrk("w1", "v1.33.9", false), wrk("w2", "v1.34.0", false)},
			[]string{"node w1: kubelet v1.33.9 is not upgraded by this run and would be more than three minors older than the API server at v1.37.1"}},
		{"a bad kubelet version", "v1.36.5", "1.37.1", []skewNode{wrk("w1", "v1.36", true)}, []string{"node w1: kubelet version"}},
		{"every problem at once", "v1.36.5", "1.38.0", []skewNode{ctl("c1", "v1.36.5", false), wrk("w1", "v1.37.0", true)},
			[]string{"skips a minor", "node w1: kubelet v1.37.0 is of a newer minor", "upgrade the control nodes before any other kubelet"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := skewProblems(tt.cv, v(tt.dst), tt.nodes)
			if len(got) != len(tt.want) {
				t.Fatalf("problems %q, want %d like %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want ~%q", i, got[i], w)
				}
			}
		})
	}
}

// TestPDBPreflight: a budget at 0 allowed disruptions blocks the upgrade's preflight,
// but while another chunk of the upgrade runs only if the 0 is not a disruption in
// progress: a budget that can never allow one (a singleton with minAvailable 1) is still
// refused, named, rather than left to hold the drain until its timeout.
func TestPDBPreflight(t *testing.T) {
	pdb := func(allowed, expected, desired, current int32) k8sops.PDBState {
		return k8sops.PDBState{Namespace: "tools", Name: "web", DisruptionsAllowed: allowed,
			ExpectedPods: expected, DesiredHealthy: desired, CurrentHealthy: current, Pods: []string{"web-1"}}
	}
	const (
		blocks  = "node w-1: PodDisruptionBudget tools/web (allows 0 disruption(s), selects web-1) would block its drain"
		never   = "node w-1: PodDisruptionBudget tools/web (allows 0 disruption(s), selects web-1) can never allow a disruption: it expects 1 pod(s) and wants 1 healthy; its drain would wait until --timeout"
		waiting = "node w-1: PodDisruptionBudget tools/web (allows 0 disruption(s), selects web-1) allows no disruption now, while another chunk of this upgrade runs; its drain will wait for it"
	)
	for _, tc := range []struct {
		name                  string
		pdb                   k8sops.PDBState
		othersRun             bool
		wantProblem, wantWarn string
	}{
		{"room", pdb(1, 3, 2, 3), false, "", ""},
		{"room, another chunk runs", pdb(1, 3, 2, 3), true, "", ""},
		{"maxUnavailable 0 alone", pdb(0, 3, 3, 3), false, strings.Replace(never, "expects 1 pod(s) and wants 1", "expects 3 pod(s) and wants 3", 1), ""},
		{"disruption in progress, alone", pdb(0, 3, 2, 2), false, blocks, ""},
		{"disruption in progress, another chunk runs", pdb(0, 3, 2, 2), true, "", waiting},
		{"singleton minAvailable 1, another chunk runs", pdb(0, 1, 1, 1), true, never, ""},
		{"singleton minAvailable 1 with its pod down, another chunk runs", pdb(0, 1, 1, 0), true, never, ""},
		{"singleton minAvailable 1 alone", pdb(0, 1, 1, 1), false, never, ""},
		{"at 0 with every pod healthy and room in its spec (stale), another chunk runs", pdb(0, 3, 2, 3), true, blocks, ""},
		{"status not computed yet, another chunk runs", pdb(0, 0, 0, 0), true, blocks, ""},
		{"at 0 with every pod healthy, another chunk runs", pdb(0, 3, 3, 3), true, strings.Replace(never, "expects 1 pod(s) and wants 1", "expects 3 pod(s) and wants 3", 1), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			problem, warn := pdbPreflight("w-1", tc.pdb, tc.othersRun)
			if problem != tc.wantProblem || warn != tc.wantWarn {
				t.Errorf("pdbPreflight = (%q, %q), want (%q, %q)", problem, warn, tc.wantProblem, tc.wantWarn)
			}
		})
	}
}

// TestParseDpkgStatus: only a package dpkg has configured counts as installed at its
// version (held or not); one an interrupted install left unpacked or half-configured,
// though dpkg-query prints its new version, is not.
func TestParseDpkgStatus(t *testing.T) {
	for _, tc := range []struct {
		name       string
		out        string
		wantOK     map[string]string
		wantBroken []string
		wantErr    string
	}{
		{"installed and held", "kubeadm\t1.37.3-1.1\tii \nkubelet\t1.37.2-1.1\thi \n", map[string]string{"kubeadm": "1.37.3-1.1", "kubelet": "1.37.2-1.1"}, nil, ""},
		{"half-configured", "kubeadm\t1.37.3-1.1\tiF \n", map[string]string{}, []string{"kubeadm 1.37.3-1.1 (iF)"}, ""},
		{"unpacked, half-installed, reinstall required", "kubelet\t1.37.3-1.1\tiU \nkubectl\t1.37.3-1.1\thH \nkubeadm\t1.37.3-1.1\tiiR\n", map[string]string{},
			[]string{"kubelet 1.37.3-1.1 (iU)", "kubectl 1.37.3-1.1 (hH)", "kubeadm 1.37.3-1.1 (iiR)"}, ""},
		{"the old -W format", "kubeadm\t1.37.3-1.1\n", nil, nil, `dpkg-query: unexpected line "kubeadm\t1.37.3-1.1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, broken, err := parseDpkgStatus(tc.out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantOK, ok); diff != "" {
				t.Errorf("installed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantBroken, broken); diff != "" {
				t.Errorf("not configured (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConfirmApply: the error of an unconfirmed kubeadm upgrade apply says why: the
// operator's no, the terminal's error, or no one to ask.
func TestConfirmApply(t *testing.T) {
	const rest = ": the node stays drained; `cookbook resume` asks again, or resume with --yes"
	for _, tc := range []struct {
		name string
		ask  func(string) (bool, error)
		want string
	}{
		{"yes", func(string) (bool, error) { return true, nil }, ""},
		{"no", func(string) (bool, error) { return false, nil }, "kubeadm upgrade apply v1.37.3 on c-1 not confirmed (answered no)" + rest},
		{"terminal gone", func(string) (bool, error) { return false, errors.New("EOF") }, "kubeadm upgrade apply v1.37.3 on c-1 not confirmed (EOF)" + rest},
		{"no one to ask", nil, "kubeadm upgrade apply v1.37.3 on c-1 not confirmed (no one to ask)" + rest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []string
			env := &Env{}
			if tc.ask != nil {
				env.Ask = func(q string) (bool, error) {
					asked = append(asked, q)
					return tc.ask(q)
				}
			}
			got := ""
			if err := confirmApply(env, "Upgrade?", "v1.37.3", "c-1"); err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("confirmApply = %q, want %q", got, tc.want)
			}
			if tc.ask != nil && (len(asked) != 1 || asked[0] != "Upgrade?") {
				t.Errorf("asked %q, want the question once", asked)
			}
		})
	}
}

// TestMadisonVersion: the package version of the target that kubeadm, kubelet and
// kubectl all offer; none is an error naming what is missing, or what revisions each has.
func TestMadisonVersion(t *testing.T) {
	line := func(p, v string) string {
		return fmt.Sprintf("%10s | %s | https://pkgs.k8s.io/core:/stable:/v1.37/deb  Packages\n", p, v)
	}
	offer := func(vs map[string][]string) string {
		var b strings.Builder
		for _, p := range []string{"kubeadm", "kubelet", "kubectl"} {
			for _, v := range vs[p] {
				b.WriteString(line(p, v))
			}
		}
		return b.String()
	}
	for _, tc := range []struct {
		name    string
		out     string
		want    string
		wantErr string
	}{
		{"all three", offer(map[string][]string{"kubeadm": {"1.37.4-1.1", "1.37.3-1.1"}, "kubelet": {"1.37.3-1.1"}, "kubectl": {"1.37.3-1.1"}}), "1.37.3-1.1", ""},
		{"a newer revision of kubeadm only", offer(map[string][]string{"kubeadm": {"1.37.3-1.2", "1.37.3-1.1"}, "kubelet": {"1.37.3-1.1"}, "kubectl": {"1.37.3-1.1"}}), "1.37.3-1.1", ""},
		{"no kubelet", offer(map[string][]string{"kubeadm": {"1.37.3-1.1"}, "kubectl": {"1.37.3-1.1"}}), "", "no package kubelet=1.37.3-* in its apt sources (kubeadm offered: 1.37.3-1.1)"},
		{"different revisions", offer(map[string][]string{"kubeadm": {"1.37.3-1.2"}, "kubelet": {"1.37.3-1.1"}, "kubectl": {"1.37.3-1.2", "1.37.3-1.1"}}), "",
			"kubeadm, kubelet and kubectl have no package version of 1.37.3 in common in its apt sources: kubeadm 1.37.3-1.2; kubelet 1.37.3-1.1; kubectl 1.37.3-1.2, 1.37.3-1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := madisonVersion(tc.out, version{1, 37, 3})
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("madisonVersion = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
