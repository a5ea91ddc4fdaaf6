package cloud

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenStackCLI drives the simulator with the real openstack command-line client
// (Debian's python3-openstackclient).
func TestOpenStackCLI(t *testing.T) {
	if _, err := exec.LookPath("openstack"); err != nil {
		msg := "the openstack CLI is not installed (apt-get install python3-openstackclient): skipping"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	seed := Seed{
		Flavors:        []Flavor{{ID: "f1", Name: "g4.cores4.ram8", VCPUs: 4, RAM: 8192, Disk: 20}},
		Images:         []Image{{ID: "11111111-1111-4111-8111-111111111111", Name: "debian-12"}},
		Networks:       []Named{{ID: "44444444-4444-4444-8444-444444444444", Name: "lan"}},
		SecurityGroups: []Named{{ID: "55555555-5555-4555-8555-555555555555", Name: "k8s"}},
		KeyPairs:       []KeyPair{{Name: "ops", PublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops"}},
		Users:          []User{{Name: "admin", Password: "pw"}},
	}
	c, err := New("127.0.0.1:0", seed, Options{BuildTime: 200 * time.Millisecond, DeleteTime: 200 * time.Millisecond, RebootTime: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := c.AddGroup("tb-worker", "soft-anti-affinity")
	dir := t.TempDir()
	clouds := filepath.Join(dir, "clouds.yaml")
	os.WriteFile(clouds, []byte(fmt.Sprintf(`clouds:
  lab:
    auth: {auth_url: %s, username: admin, password: pw, project_name: lab, user_domain_name: Default, project_domain_name: Default}
    region_name: RegionOne
    identity_api_version: 3
`, c.AuthURL())), 0o600)
	// run runs the CLI; a want starting with "!" expects it to fail (Nova refuses).
	run := func(fails bool, args ...string) string {
		t.Helper()
		cmd := exec.Command("openstack", args...)
		cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+clouds, "OS_CLOUD=lab", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if (err != nil) != fails {
			t.Fatalf("openstack %s: %v (want failure: %v)\n%s", strings.Join(args, " "), err, fails, out)
		}
		return string(out)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"flavor", "list", "-f", "value", "-c", "Name"}, "g4.cores4.ram8"},
		{[]string{"image", "list", "-f", "value", "-c", "Name"}, "debian-12"},
		{[]string{"network", "list", "-f", "value", "-c", "Name"}, "lan"},
		{[]string{"security", "group", "list", "-f", "value", "-c", "Name"}, "k8s"},
		{[]string{"server", "group", "list", "-f", "value", "-c", "Name"}, "tb-worker"},
		{[]string{"server", "group", "show", g.ID, "-f", "value", "-c", "policies"}, "soft-anti-affinity"},
		{[]string{"server", "create", "--flavor", "g4.cores4.ram8", "--image", "debian-12", "--network", "lan", "--key-name", "ops", "--hint", "group=" + g.ID, "--wait", "tb-worker-1", "-f", "value", "-c", "status"}, "ACTIVE"},
		{[]string{"server", "list", "-f", "value", "-c", "Name", "-c", "Status"}, "tb-worker-1 ACTIVE"},
		{[]string{"server", "show", "tb-worker-1", "-f", "value", "-c", "addresses"}, "127.42.0."},
		{[]string{"console", "log", "show", "tb-worker-1"}, "-----BEGIN SSH HOST KEY FINGERPRINTS-----"},
		// Powered off (os-stop), a server is SHUTOFF; a hard reboot starts it again.
		{[]string{"server", "stop", "tb-worker-1"}, ""},
		{[]string{"server", "show", "tb-worker-1", "-f", "value", "-c", "status", "-c", "OS-EXT-STS:power_state", "-c", "OS-EXT-STS:vm_state"}, "4\nstopped\nSHUTOFF"},
		{[]string{"server", "stop", "tb-worker-1"}, "!Cannot 'stop' instance"},
		{[]string{"server", "reboot", "--soft", "tb-worker-1"}, "!Cannot 'reboot' instance"},
		{[]string{"server", "reboot", "--hard", "--wait", "tb-worker-1"}, "Complete"},
		{[]string{"server", "delete", "--wait", "tb-worker-1"}, ""},
	}
	for _, tt := range tests {
		fails := strings.HasPrefix(tt.want, "!")
		if out := run(fails, tt.args...); !strings.Contains(out, strings.TrimPrefix(tt.want, "!")) {
			t.Errorf("openstack %s:\n%s\nwant it to contain %q", strings.Join(tt.args, " "), out, tt.want)
		}
	}
	if n := len(c.Servers()); n != 0 {
		t.Errorf("%d servers after delete", n)
	}
}
