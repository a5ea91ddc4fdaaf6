package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
)

// TestReplaceNodes: replace-k8s-nodes upgrades the workers' OS by replacing them, end to
// end through the binary in the lab: bad input is exit 2 with one line; --dry-run writes
// nothing; --canary replaces one node and pauses (exit 0, the resume command); resume
// replaces the rest, two at a time: afterwards as many workers as before, every one on the
// new image and Ready with the role's labels, no old server or Node left.
func TestReplaceNodes(t *testing.T) {
	w, s := stackWorld(t, 3, 0)
	prefix := s.Prefix
	const trixie = "debian-13.0-trixie"
	base := []string{"replace-k8s-nodes", "--cluster-name", "toolsbeta"}
	oldNames := []string{prefix + "-worker-1", prefix + "-worker-2", prefix + "-worker-3"}
	roleLabels := map[string]string{}
	for k, v := range nodeOf(t, s, oldNames[0]).Labels {
		if !strings.Contains(k, "hostname") {
			roleLabels[k] = v
		}
	}

	mark := markWrites(s)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"control role", []string{"--role", "control", "--image", trixie}, "issue 14"},
		{"unknown role", []string{"--role", "gpu", "--image", trixie}, "gpu"},
		{"unknown image", []string{"--role", "worker", "--image", "debian-99"}, `--image: image "debian-99": not found`},
		{"max surge 0", []string{"--role", "worker", "--image", trixie, "--max-surge", "0"}, "--max-surge: 0 is not a positive number"},
		{"listed twice", []string{"--role", "worker", "--image", trixie, "--hostname-list", oldNames[0] + "," + oldNames[0]}, "--hostname-list: " + oldNames[0] + " is listed twice"},
	} {
		r := w.run(append(base, tt.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%s: exit %d, want 2 and one line with %q:\n%s", tt.name, r.code, tt.want, r.stderr)
		}
	}
	if len(w.runs()) != 0 {
		t.Errorf("bad input recorded %d run(s)", len(w.runs()))
	}

	// The project has room for one more server: enough for the canary, not for two at once.
	used := s.Cloud.Usage()
	s.Cloud.SetQuota(cloud.Quota{Instances: used.Instances + 1, Cores: 400, RAM: 800000})
	quotaShort := fmt.Sprintf("quota: need 2 instances, 1 left of %d", used.Instances+1)

	args := append(base, "--role", "worker", "--image", trixie, "--max-surge", "2", "--force", "--delete-emptydir-data")
	r := w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	for _, want := range []string{
		"DRY-RUN: would create server " + prefix + "-worker-4", "DRY-RUN: would delete server " + oldNames[0],
		"plan: batch 1/2: " + oldNames[0] + " (debian-12.0-bookworm) -> " + prefix + "-worker-4, " + oldNames[1] + " (debian-12.0-bookworm) -> " + prefix + "-worker-5 on " + trixie + ", flavor ",
		"plan: batch 2/2: " + oldNames[2] + " (debian-12.0-bookworm) -> " + prefix + "-worker-6",
		"plan: " + oldNames[0] + ": ", " pod(s) to evict",
		"plan: quota needed at once: 2 instance(s), ", "plan: " + quotaShort,
		"DRY-RUN: the run would stop here: new server(s) " + prefix + "-worker-4, " + prefix + "-worker-5 of flavor ",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run does not show %q:\n%s", want, r.stderr)
		}
	}
	mark.none(t, "dry-run replace-k8s-nodes")

	r = w.run(append(args, "--canary")...)
	wantCode(t, r, 0)
	m := regexp.MustCompile(`continue the same plan with: cookbook resume (\S+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("canary: no resume command:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "progress: 1/3 done, 0 in progress, 2 left, ETA ") {
		t.Errorf("canary: no progress line 1/3 done with an ETA:\n%s", r.stderr)
	}
	if nodeOf(t, s, oldNames[0]) != nil || nodeOf(t, s, oldNames[1]) == nil || nodeOf(t, s, prefix+"-worker-4") == nil {
		t.Fatalf("after the canary: want worker-1 replaced by worker-4, the others left:\n%s", r.stderr)
	}

	// Two new servers at once do not fit: the batch stops before creating any, naming
	// what is missing; with the quota raised, resume goes on.
	before := len(s.Cloud.Servers())
	r = w.run("resume", m[1])
	if r.code == 0 || !strings.Contains(r.stderr, quotaShort) {
		t.Fatalf("resume short of quota: exit %d, want a failure naming %q:\n%s", r.code, quotaShort, r.stderr)
	}
	if n := len(s.Cloud.Servers()); n != before {
		t.Errorf("short of quota: %d servers, want %d (none created)", n, before)
	}
	if n := nodeOf(t, s, oldNames[1]); n == nil || n.Spec.Unschedulable {
		t.Errorf("short of quota: %s cordoned or gone", oldNames[1])
	}
	s.Cloud.SetQuota(cloud.Quota{Instances: used.Instances + 2, Cores: 400, RAM: 800000})
	r = w.run("resume", m[1])
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "progress: 3/3 done, 0 in progress, 0 left") {
		t.Errorf("resume: no final progress line 3/3 done:\n%s", r.stderr)
	}

	images := map[string]string{"7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0001": "debian-12.0-bookworm", "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0002": trixie}
	var workers []string
	for _, srv := range s.Cloud.Servers() {
		if !regexp.MustCompile("^" + prefix + `-worker-[0-9]+$`).MatchString(srv.Name) {
			continue
		}
		workers = append(workers, srv.Name)
		if images[srv.ImageID] != trixie || s.Fleet.VM(srv.ID).Image != trixie {
			t.Errorf("server %s: image %s, VM %s; want %s", srv.Name, images[srv.ImageID], s.Fleet.VM(srv.ID).Image, trixie)
		}
		n := nodeOf(t, s, srv.Name)
		if n == nil || !lab.IsReady(n) {
			t.Errorf("node %s not Ready", srv.Name)
			continue
		}
		for k, v := range roleLabels {
			if n.Labels[k] != v {
				t.Errorf("node %s: label %s=%q, want %q", srv.Name, k, n.Labels[k], v)
			}
		}
	}
	if len(workers) != 3 {
		t.Errorf("workers after the replacement: %v, want 3", workers)
	}
	for _, old := range oldNames {
		if nodeOf(t, s, old) != nil {
			t.Errorf("old node %s is still there", old)
		}
		for _, srv := range s.Cloud.Servers() {
			if srv.Name == old {
				t.Errorf("old server %s is still there", old)
			}
		}
	}
	b, _ := os.ReadFile(s.AuditPath)
	audit := string(b)
	for _, want := range []string{"replace-k8s-nodes of toolsbeta started by ", "replace-k8s-nodes of toolsbeta finished: 3 worker node(s) replaced"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log has no %q:\n%s", want, audit)
		}
	}
	if !strings.Contains(audit, "Replaced "+oldNames[0]) || !strings.Contains(audit, "(debian-12.0-bookworm) with "+prefix+"-worker-4") || strings.Count(audit, "Replaced ") != 3 {
		t.Errorf("audit log:\n%s", audit)
	}
}
