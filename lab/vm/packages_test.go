package vm

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

// TestKubePackages: apt-cache madison, apt-mark, apt-get install pkg=ver and dpkg-query
// behave as on Debian for the lab's Kubernetes packages, refusing what apt refuses.
func TestKubePackages(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	f.KubeVersion = "1.37.2"
	v := boot(t, f, "tb-worker-1", nil)
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	steps := []struct {
		line     string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"apt-cache madison kubeadm", "   kubeadm | 1.37.3-1.1 | https://pkgs.k8s.io/core:/stable:/v1.37/deb  Packages\n   kubeadm | 1.37.2-1.1 |", "", 0},
		{"apt-cache madison nosuch", "", "Unable to locate package nosuch", 0},
		{"dpkg-query -W kubeadm kubelet", "kubeadm\t1.37.2-1.1\nkubelet\t1.37.2-1.1\n", "", 0},
		{"sudo apt-mark hold kubeadm kubelet kubectl", "kubeadm set on hold.", "", 0},
		{"apt-mark showhold", "kubeadm\nkubelet\nkubectl\n", "", 0},
		{"sudo apt-get install -y kubeadm=1.37.3-1.1", "held packages will be changed", "E: Held packages were changed and -y was used without --allow-change-held-packages.", 100},
		{"sudo apt-get install -y kubeadm=1.37.2-1.1", "already the newest version", "", 0},
		{"sudo apt-mark unhold kubeadm", "Canceled hold on kubeadm.", "", 0},
		{"sudo apt-mark unhold kubeadm", "kubeadm was already not on hold.", "", 0},
		{"sudo apt-get install -y kubeadm=1.39.0-1.1", "", "E: Version '1.39.0-1.1' for 'kubeadm' was not found", 100},
		{"sudo apt-get install -y kubeadm=1.37.3-1.1", "Setting up kubeadm (1.37.3-1.1)", "", 0},
		{"dpkg-query -W kubeadm", "kubeadm\t1.37.3-1.1\n", "", 0},
		{"sudo apt-get install -y kubelet=1.37.3-1.1 kubectl=1.37.3-1.1", "", "E: Held packages were changed", 100},
		{"sudo apt-get install -y --allow-change-held-packages kubelet=1.37.3-1.1 kubectl=1.37.3-1.1", "Setting up kubelet (1.37.3-1.1)", "", 0},
		{"kubeadm upgrade node", "", "cannot reach the API server", 1}, // no cluster in this fleet
		{"systemctl daemon-reload", "", "", 0},
	}
	for _, s := range steps {
		out, errs, code := run(t, cl, s.line)
		if code != s.wantCode || !strings.Contains(out, s.wantOut) || !strings.Contains(errs, s.wantErr) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", s.line, code, out, errs, s.wantCode, s.wantOut, s.wantErr)
		}
	}
	if v.PackageVersion("kubelet") != "1.37.3-1.1" || !v.Held("kubelet") || v.Held("kubeadm") {
		t.Errorf("kubelet %s held %v, kubeadm held %v", v.PackageVersion("kubelet"), v.Held("kubelet"), v.Held("kubeadm"))
	}
	// Without the Kubernetes repository in its sources, apt finds none of its packages.
	v.SetKubeRepo(false)
	if out, errs, code := run(t, cl, "apt-cache madison kubeadm"); code != 0 || out != "" || !strings.Contains(errs, "N: Unable to locate package kubeadm") {
		t.Errorf("madison without the repository: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, errs, code := run(t, cl, "sudo apt-get install -y kubeadm=1.37.2-1.1"); code != 100 || !strings.Contains(errs, "E: Unable to locate package kubeadm") {
		t.Errorf("install without the repository: exit %d, stderr %q", code, errs)
	}
}

// TestInterruptedInstall: a package an interrupted dpkg left half-configured shows its
// new version in dpkg-query -W, and its status in the --showformat fields as real
// dpkg-query prints them; apt-get install refuses with dpkg's message until
// dpkg --configure -a.
func TestInterruptedInstall(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	f.KubeVersion = "1.37.2"
	v := boot(t, f, "tb-worker-1", nil)
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const format = `'${Package}\t${Version}\t${db:Status-Abbrev}\n'`
	if out, _, code := run(t, cl, "dpkg-query -W -f "+format+" kubeadm kubelet"); code != 0 || out != "kubeadm\t1.37.2-1.1\tii \nkubelet\t1.37.2-1.1\tii \n" {
		t.Errorf("installed: exit %d, stdout %q", code, out)
	}
	run(t, cl, "sudo apt-mark hold kubelet")
	v.InterruptInstall("kubeadm", "1.37.3-1.1")
	steps := []struct {
		line     string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"dpkg-query -W kubeadm", "kubeadm\t1.37.3-1.1\n", "", 0},
		{"dpkg-query -W -f " + format + " kubeadm kubelet", "kubeadm\t1.37.3-1.1\tiF \nkubelet\t1.37.2-1.1\thi \n", "", 0},
		{"dpkg-query -W --showformat='${Package} ${Status}\n' kubeadm kubelet", "kubeadm install ok half-configured\nkubelet hold ok installed\n", "", 0},
		{"dpkg-query -W -f='${db:Status-Status}' nosuch", "", "dpkg-query: no packages found matching nosuch", 1},
		{"sudo apt-get install -y kubeadm=1.37.3-1.1", "", "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem.", 100},
		{"sudo apt-get install -y kubelet=1.37.3-1.1 --allow-change-held-packages", "", "E: dpkg was interrupted", 100},
		{"sudo dpkg --configure", "", "dpkg: error", 2},
		{"sudo dpkg --configure -a", "Setting up kubeadm (1.37.3-1.1) ...\n", "", 0},
		{"dpkg-query -W -f " + format + " kubeadm", "kubeadm\t1.37.3-1.1\tii \n", "", 0},
		{"sudo apt-get install -y kubeadm=1.37.3-1.1", "kubeadm is already the newest version (1.37.3-1.1).", "", 0},
	}
	for _, s := range steps {
		out, errs, code := run(t, cl, s.line)
		if code != s.wantCode || !strings.Contains(out, s.wantOut) || !strings.Contains(errs, s.wantErr) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", s.line, code, out, errs, s.wantCode, s.wantOut, s.wantErr)
		}
	}
	if v.PackageStatus("kubeadm") != "installed" {
		t.Errorf("kubeadm's status after dpkg --configure -a: %q", v.PackageStatus("kubeadm"))
	}
}

// TestRestartKubeletReportsVersion: after an upgrade of the kubelet package, the Node
// reports the new version once the kubelet is restarted, and not before.
func TestRestartKubeletReportsVersion(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	op := newOperator(t)
	f := newFleet(t, op)
	f.KubeVersion = "1.37.2"
	f.Cluster = &KubeCluster{CP: cp, KubeletVersion: "v1.37.2"}
	w := boot(t, f, "tb-vmtest-upgrade-1", nil)
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: w.Name, KubeletVersion: "v1.37.2", BootID: w.BootID()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), w.Name) })
	w.MarkJoined()
	cl, err := dial(t, f, w, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	kubelet := func() string {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Status.NodeInfo.KubeletVersion
	}
	if _, errs, code := run(t, cl, "sudo apt-get install -y kubelet=1.37.3-1.1"); code != 0 {
		t.Fatalf("install: %d %s", code, errs)
	}
	if got := kubelet(); got != "v1.37.2" {
		t.Errorf("before the restart the Node reports %s, want v1.37.2", got)
	}
	if _, errs, code := run(t, cl, "sudo systemctl restart kubelet"); code != 0 {
		t.Fatalf("restart: %d %s", code, errs)
	}
	if err := cp.WaitNodeReady(ctx, w.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // kwok acts on the Node again: the version must stay
	if got := kubelet(); got != "v1.37.3" {
		t.Errorf("after the restart the Node reports %s, want v1.37.3", got)
	}
}
