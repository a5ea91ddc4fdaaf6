package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/stack"
	"example.com/cookbook/lab/vm"
)

// kubeadmCertsTokenDescription is the description of the bootstrap token kubeadm
// upload-certs creates to own the kubeadm-certs Secret (two hours; it authenticates
// nothing a join uses, and kubeadm leaves it to expire).
const kubeadmCertsTokenDescription = "Proxy for managing TTL for the kubeadm-certs secret"

// bootstrapTokens returns the ids of the bootstrap token Secrets of the lab's cluster that
// can join a node (not kubeadm upload-certs' token owning kubeadm-certs).
func bootstrapTokens(t *testing.T, s *stack.Stack) []string {
	t.Helper()
	list, err := s.CP.Client.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{FieldSelector: "type=bootstrap.kubernetes.io/token"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sec := range list.Items {
		if string(sec.Data["description"]) == kubeadmCertsTokenDescription && string(sec.Data["usage-bootstrap-authentication"]) == "" {
			continue
		}
		ids = append(ids, string(sec.Data["token-id"]))
	}
	return ids
}

var wholeToken = regexp.MustCompile(`\b[a-z0-9]{6}\.[a-z0-9]{16}\b`)

// noWholeToken fails the test if a file under dir holds a whole bootstrap token.
func noWholeToken(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		if m := wholeToken.Find(b); m != nil {
			t.Errorf("%s holds a bootstrap token: %s", path, m)
		}
		return nil
	})
}

// TestAddNodeRealSteps adds nodes in the lab and checks the steps a real node needs.
func TestAddNodeRealSteps(t *testing.T) {
	w, s := stackWorld(t, 1, 1)
	t.Run("join-token", func(t *testing.T) { testJoinTokenDeleted(t, w, s) })
	t.Run("groups", func(t *testing.T) { testGroups(t, w, s) })
	t.Run("storage-of-another-type", func(t *testing.T) { testStorageOfAnotherType(t, w, s) })
	t.Run("storage-reformat", func(t *testing.T) { testStorageReformat(t, w, s) })
}

// serverOf returns the lab cloud's record of the server of a name.
func serverOf(t *testing.T, s *stack.Stack, name string) cloud.Server {
	t.Helper()
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			return srv
		}
	}
	t.Fatalf("no server %s", name)
	return cloud.Server{}
}

// testGroups: a new server is in the project's default security group besides the
// role's, unless the role says defaultSecurityGroup: false; a server group whose policy
// is not the configuration's is used as it is, with a warning.
func testGroups(t *testing.T, w *world, s *stack.Stack) {
	worker := serverOf(t, s, s.Prefix+"-worker-2")
	if diff := cmp.Diff([]string{"default", "toolsbeta-k8s-full-connectivity"}, worker.SecurityGroups); diff != "" {
		t.Errorf("security groups of %s (-want +got):\n%s", worker.Name, diff)
	}

	cfg, err := os.ReadFile(w.config)
	if err != nil {
		t.Fatal(err)
	}
	group := s.Prefix + "-worker-nfs"
	old := fmt.Sprintf("serverGroup: {name: %s, policy: soft-anti-affinity}\n", group)
	if !strings.Contains(string(cfg), old) {
		t.Fatalf("no %q in the lab config", old)
	}
	edited := strings.Replace(string(cfg), old, fmt.Sprintf("serverGroup: {name: %s, policy: anti-affinity}\n        defaultSecurityGroup: false\n", group), 1)
	if err := os.WriteFile(w.config, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	// cloud-init runs long enough on this one to be waited for.
	s.Fleet.SetCloudInitTime(4 * time.Second)
	defer s.Fleet.SetCloudInitTime(700 * time.Millisecond)
	r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker-nfs")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "the server group has another policy than the configuration's; using it as it is server_group="+group+" policy=soft-anti-affinity configured=anti-affinity") {
		t.Errorf("no warning about the server group's policy:\n%s", r.stderr)
	}
	wantCloudInitWaited(t, s, s.Prefix+"-worker-nfs-2", r.stderr)
	nfs := serverOf(t, s, s.Prefix+"-worker-nfs-2")
	if diff := cmp.Diff([]string{"toolsbeta-k8s-full-connectivity"}, nfs.SecurityGroups); diff != "" {
		t.Errorf("security groups of %s with defaultSecurityGroup: false (-want +got):\n%s", nfs.Name, diff)
	}
	var groups []string
	for _, g := range s.Cloud.Groups() {
		if slices.Contains(g.Members, nfs.ID) {
			groups = append(groups, g.Name+" "+g.Policy)
		}
	}
	if diff := cmp.Diff([]string{group + " soft-anti-affinity"}, groups); diff != "" {
		t.Errorf("server groups of %s (-want +got):\n%s", nfs.Name, diff)
	}
}

// testJoinTokenDeleted adds a worker whose first join fails: the bootstrap token of each
// join is deleted on the control node it came from, and no token is in a log or state file.
func testJoinTokenDeleted(t *testing.T, w *world, s *stack.Stack) {
	name := s.Prefix + "-worker-2"
	control := s.Prefix + "-control-1"

	s.Fleet.FailJoins(name, true)
	r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "failed at step join") {
		t.Errorf("the run did not fail at the join:\n%s", r.stderr)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left after a failed join: %v\n%s", ids, r.stderr)
	}
	runs := w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs", len(runs))
	}

	s.Fleet.FailJoins(name, false)
	r2 := w.run("resume", runs[0].ID)
	wantCode(t, r2, 0)
	if n := nodeOf(t, s, name); n == nil || !lab.IsReady(n) {
		t.Fatalf("node %s not Ready after the resumed run:\n%s", name, r2.stderr)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left after add-k8s-node: %v", ids)
	}
	// The extra storage is in /etc/fstab by UUID, so the reboot after provisioning
	// mounted it again.
	v := s.Fleet.VM(serverOf(t, s, name).ID)
	if dev, ok := v.Mounted("/var/lib/containerd"); !ok || dev != "/dev/sdb" {
		t.Errorf("/var/lib/containerd on %s after the reboot: %q %v; fstab: %q", name, dev, ok, v.Fstab())
	}
	if fstab := strings.Join(v.Fstab(), "\n"); !regexp.MustCompile(`\nUUID=[0-9a-f-]+ /var/lib/containerd ext4 defaults,nofail 0 2(\n|$)`).MatchString(fstab) || strings.Count(fstab, "/var/lib/containerd") != 1 {
		t.Errorf("fstab of %s:\n%s", name, fstab)
	}

	// Each token was created and deleted on the control node; only its id was logged.
	var creates, deletes int
	for _, c := range commandsOn(s, control) {
		switch {
		case strings.Contains(c, "kubeadm token create"):
			creates++
		case strings.Contains(c, "kubeadm token delete"):
			deletes++
			id := c[strings.LastIndex(c, " ")+1:]
			if !strings.Contains(r.stderr+r2.stderr, "token_id="+id) {
				t.Errorf("token id %s is not logged", id)
			}
		}
	}
	if creates != 2 || deletes != 2 {
		t.Errorf("on %s: %d token creates, %d deletes; want 2 each: %v", control, creates, deletes, commandsOn(s, control))
	}
	if m := wholeToken.FindString(r.stderr + r2.stderr); m != "" {
		t.Errorf("a bootstrap token is in the output: %s", m)
	}
	noWholeToken(t, w.stateDir)
	noWholeToken(t, s.AuditPath)
}

// wantCloudInitWaited checks that add-k8s-node waited for cloud-init on a new node before
// provisioning it, and that no command failed there.
func wantCloudInitWaited(t *testing.T, s *stack.Stack, name, log string) {
	t.Helper()
	var checks, first int
	for i, r := range s.Fleet.History() {
		if r.VM != name {
			continue
		}
		c := strings.Join(r.Argv, " ")
		switch {
		case strings.Contains(c, "test -e /var/lib/cloud/instance/boot-finished"):
			checks++
		case strings.Contains(c, "apt-get") && first == 0:
			first = i
			if checks == 0 {
				t.Errorf("%s: %q ran before any check of boot-finished", name, c)
			}
		}
		if r.ExitCode != 0 && !strings.Contains(c, "boot-finished") && !strings.Contains(c, "blkid") {
			t.Errorf("%s: %q exited %d", name, c, r.ExitCode)
		}
	}
	if checks < 2 || !strings.Contains(log, "waiting for cloud-init to finish host=") {
		t.Errorf("%s: %d check(s) of boot-finished, no progress line: cloud-init was not waited for:\n%s", name, checks, log)
	}
	if first == 0 || !strings.Contains(log, "wait for cloud-init to finish on "+name) {
		t.Errorf("%s: no wait for cloud-init before provisioning (%d checks):\n%s", name, checks, log)
	}
}

// testStorageOfAnotherType: a new node whose extra storage device has a filesystem of
// another type than the role's is not formatted: the run fails naming the device and
// what is on it.
func testStorageOfAnotherType(t *testing.T, w *world, s *stack.Stack) {
	name := s.Prefix + "-worker-3"
	s.Fleet.PresetFilesystem(name, "/dev/sdb", vm.Filesystem{Type: "xfs", UUID: "5a1e0000-0000-4000-8000-000000000001", Label: "data"})
	r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "extra storage /dev/sdb on ") || !strings.Contains(r.stderr, "has a xfs filesystem, not ext4: set roles.worker.extraStorage.reformat: true") {
		t.Errorf("no error naming the device and its filesystem:\n%s", r.stderr)
	}
	for _, c := range commandsOn(s, name) {
		if strings.Contains(c, "mkfs") {
			t.Errorf("%s: %q ran", name, c)
		}
	}
}

// testStorageReformat: with extraStorage.reformat: true, a device with a filesystem of
// another type is formatted (forced, as mkfs needs on a device with a filesystem), listed
// in /etc/fstab by its new UUID and mounted; the node joins. Runs after
// testStorageOfAnotherType: its failed run is abandoned and its server removed first.
func testStorageReformat(t *testing.T, w *world, s *stack.Stack) {
	name := s.Prefix + "-worker-3"
	// The failed run's server stays: the abandon names it and the command that removes
	// it (the rehearsal of the abandon says so too); the operator runs that command, and
	// the next server gets the name.
	id := serverOf(t, s, name).ID
	remove := "cookbook remove-k8s-node --cluster-name toolsbeta --role worker --hostname-to-remove " + name
	want := `abandon leaves the server this run created, and its node if it joined server=` + name + " id=" + id + ` remove_with="` + remove + `"`
	abandoned := 0
	for _, run := range w.runs() {
		if run.Status != state.Done && run.Status != state.Abandoned {
			rehearsal := w.run("--dry-run", "abandon", run.ID)
			wantCode(t, rehearsal, 0)
			r := w.run("abandon", run.ID)
			wantCode(t, r, 0)
			for what, out := range map[string]string{"abandon": r.stderr, "--dry-run abandon": rehearsal.stderr} {
				if !strings.Contains(out, want) {
					t.Errorf("%s does not name the server it leaves and how to remove it (want %q):\n%s", what, want, out)
				}
			}
			abandoned++
		}
	}
	if abandoned != 1 || serverOf(t, s, name).ID != id {
		t.Fatalf("%d runs abandoned; server %s not left as it was", abandoned, name)
	}
	wantCode(t, w.run(append([]string{"--yes"}, strings.Fields(remove)[1:]...)...), 0)
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			t.Fatalf("server %s still there after %s", name, remove)
		}
	}
	cfg, err := os.ReadFile(s.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(cfg), "extraStorage: {device: /dev/sdb, mountPoint: /var/lib/containerd}", "extraStorage: {device: /dev/sdb, mountPoint: /var/lib/containerd, reformat: true}", 1)
	if edited == string(cfg) {
		t.Fatal("the lab config has no extraStorage line to edit")
	}
	if err := os.WriteFile(s.ConfigPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(s.ConfigPath, cfg, 0o600) })
	old := vm.Filesystem{Type: "xfs", UUID: "5a1e0000-0000-4000-8000-000000000001", Label: "data"}
	s.Fleet.PresetFilesystem(name, "/dev/sdb", old)
	r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "formatting the device, which has a filesystem of another type (extraStorage.reformat)") {
		t.Errorf("no warning about the reformat:\n%s", r.stderr)
	}
	forced := false
	for _, c := range commandsOn(s, name) {
		forced = forced || strings.Contains(c, "mkfs.ext4 -F -L extra /dev/sdb")
	}
	if !forced {
		t.Errorf("%s: no forced mkfs.ext4 of /dev/sdb: %v", name, commandsOn(s, name))
	}
	v := s.Fleet.VM(serverOf(t, s, name).ID)
	if dev, ok := v.Mounted("/var/lib/containerd"); !ok || dev == "" {
		t.Errorf("/var/lib/containerd not mounted on %s", name)
	}
	var entry string
	for _, l := range v.Fstab() {
		if strings.Contains(l, "/var/lib/containerd") {
			entry = l
		}
	}
	if !strings.HasPrefix(entry, "UUID=") || strings.Contains(entry, old.UUID) || !strings.Contains(entry, " ext4 ") {
		t.Errorf("fstab entry of the reformatted device = %q, want a new ext4 UUID", entry)
	}
	if n := nodeOf(t, s, name); n == nil || !lab.IsReady(n) {
		t.Errorf("node %s not Ready", name)
	}
}
