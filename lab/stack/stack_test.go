package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/lab"
	"example.com/cookbook/ssh"
)

func TestUpDown(t *testing.T) {
	if _, ok := lab.BinDir(); !ok {
		lab.Need(t, nil)
	}
	ctx := context.Background()
	s, err := Up(ctx, Options{Dir: t.TempDir(), Controls: 1, Workers: 2, NFSWorkers: 1, RebootDownTime: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Down()
	nodes, err := s.CP.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 4 {
		t.Fatalf("%d nodes, want 4", len(nodes.Items))
	}
	for _, n := range nodes.Items {
		if !lab.IsReady(&n) {
			t.Errorf("node %s not Ready", n.Name)
		}
	}
	cfg, err := config.Load(s.ConfigPath)
	if err != nil {
		t.Fatalf("the lab's config does not load: %v", err)
	}
	cl, _ := cfg.Cluster("toolsbeta")
	if len(cl.ControlNodes) != 0 {
		t.Errorf("control nodes = %v; the lab's configuration leaves them to the node-role label", cl.ControlNodes)
	}
	if ms := s.Fleet.EtcdMembers(); len(ms) != 1 || !strings.Contains(ms[0].Name, "control-1") {
		t.Errorf("etcd members %+v, want the control node's", ms)
	}
	// The lab's key and known_hosts reach a VM over real SSH, with the real ssh command too.
	srv := s.Cloud.Servers()[0]
	c, err := ssh.New(ssh.Options{User: cl.SSH.User, Port: cl.SSH.Port, KnownHosts: cl.SSH.KnownHosts, IdentityFiles: cl.SSH.IdentityFiles})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	res, err := c.Run(ctx, srv.Address, ssh.Command{Argv: []string{"hostname"}, ReadOnly: true})
	if err != nil || strings.TrimSpace(res.Stdout) != srv.Name {
		t.Fatalf("hostname over ssh = %q, %v", res.Stdout, err)
	}
	if _, err := exec.LookPath("ssh"); err == nil {
		openssh := func(args ...string) (string, error) {
			out, err := exec.Command("ssh", append([]string{"-i", s.KeyPath, "-o", "UserKnownHostsFile=" + s.KnownHostsPath, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
				"-o", "ConnectTimeout=2", "-p", fmt.Sprint(cl.SSH.Port), "root@" + srv.Address}, args...)...).CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		before, err := openssh("cat", "/proc/sys/kernel/random/boot_id")
		if err != nil || before != s.Fleet.VM(srv.ID).BootID() {
			t.Fatalf("OpenSSH ssh: %q, %v", before, err)
		}
		// The VM reboots: the session drops, SSH is down a while, then answers with a new boot id.
		openssh("sudo", "systemctl", "reboot")
		deadline := time.Now().Add(30 * time.Second)
		for {
			after, err := openssh("cat", "/proc/sys/kernel/random/boot_id")
			if err == nil && after != before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new boot id over OpenSSH after a reboot: %q, %v", after, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	} else {
		t.Log("OpenSSH client not installed: the real ssh command is not tried (.ci/run installs it)")
	}
	if env := s.Env(); !strings.Contains(env, "COOKBOOK_CONFIG="+s.ConfigPath) {
		t.Errorf("Env() = %s", env)
	}
	_ = os.Getenv
}
