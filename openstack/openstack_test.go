package openstack

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"example.com/cookbook/dryrun"
	"example.com/cookbook/lab/cloud"
)

var seed = cloud.Seed{
	Flavors:        []cloud.Flavor{{ID: "f1", Name: "g4.cores4.ram8", VCPUs: 4, RAM: 8192, Disk: 20}, {ID: "f2", Name: "g4.cores2.ram4", VCPUs: 2, RAM: 4096, Disk: 20}},
	Images:         []cloud.Image{{ID: "11111111-1111-1111-1111-111111111111", Name: "debian-12"}, {ID: "22222222-2222-2222-2222-222222222222", Name: "dup"}, {ID: "33333333-3333-3333-3333-333333333333", Name: "dup"}},
	Networks:       []cloud.Named{{ID: "44444444-4444-4444-4444-444444444444", Name: "lan"}},
	SecurityGroups: []cloud.Named{{ID: "55555555-5555-5555-5555-555555555555", Name: "k8s"}},
	KeyPairs:       []cloud.KeyPair{{Name: "ops", PublicKey: "ssh-ed25519 AAAA ops"}},
	Users:          []cloud.User{{Name: "admin", Password: "s3cret-pass"}},
	AppCredentials: []cloud.AppCredential{{ID: "app1", Secret: "app-s3cret", User: "admin"}},
}

type env struct {
	cloud *cloud.Cloud
	file  string
	logs  *bytes.Buffer
}

func newEnv(t *testing.T, opts cloud.Options) *env {
	t.Helper()
	if opts.BuildTime == 0 {
		opts.BuildTime = 100 * time.Millisecond
	}
	if opts.DeleteTime == 0 {
		opts.DeleteTime = 100 * time.Millisecond
	}
	c, err := cloud.New("127.0.0.1:0", seed, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	file := filepath.Join(t.TempDir(), "clouds.yaml")
	yaml := fmt.Sprintf(`clouds:
  lab:
    auth:
      auth_url: %s
      username: admin
      password: s3cret-pass
      project_name: lab
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
  lab-app:
    auth_type: v3applicationcredential
    auth:
      auth_url: %s
      application_credential_id: app1
      application_credential_secret: app-s3cret
    region_name: RegionOne
`, c.AuthURL(), c.AuthURL())
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{cloud: c, file: file, logs: &bytes.Buffer{}}
}

type lockedBuf struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (e *env) client(t *testing.T, cloudName string, dry bool) *Client {
	return e.clientWithRetries(t, cloudName, dry, 0)
}

func (e *env) clientWithRetries(t *testing.T, cloudName string, dry bool, retries int) *Client {
	t.Helper()
	log := slog.New(slog.NewTextHandler(&lockedBuf{b: e.logs}, nil))
	c, err := New(context.Background(), Options{Cloud: cloudName, CloudsFile: e.file, Gate: &dryrun.Gate{DryRun: dry, Log: log}, Log: log,
		BaseBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond, ReportEvery: 100 * time.Millisecond, Retries: retries})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func create(t *testing.T, c *Client, name string) Server {
	t.Helper()
	s, _, err := c.CreateServer(context.Background(), CreateOpts{Name: name, FlavorID: "f1", ImageID: seed.Images[0].ID, NetworkID: seed.Networks[0].ID, KeyName: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuthAndReauth(t *testing.T) {
	e := newEnv(t, cloud.Options{TokenTTL: 300 * time.Millisecond})
	for _, name := range []string{"lab", "lab-app"} {
		c := e.client(t, name, false)
		if _, err := c.RoleServers(context.Background(), "w"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	c := e.client(t, "lab", false)
	time.Sleep(400 * time.Millisecond) // the token expires
	if _, err := c.RoleServers(context.Background(), "w"); err != nil {
		t.Fatalf("after token expiry: %v", err)
	}
	_, err := New(context.Background(), Options{Cloud: "nope", CloudsFile: e.file})
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown cloud error = %v", err)
	}
	if strings.Contains(e.logs.String(), "s3cret") {
		t.Error("a secret reached the log")
	}
}

func TestLookups(t *testing.T) {
	e := newEnv(t, cloud.Options{})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	tests := []struct {
		name    string
		find    func(context.Context, string) (Ref, error)
		ref     string
		wantID  string
		wantErr string
	}{
		{"flavor by name", c.Flavor, "g4.cores4.ram8", "f1", ""},
		{"flavor by id", c.Flavor, "f2", "f2", ""},
		{"flavor missing", c.Flavor, "huge", "", `flavor "huge": not found`},
		{"image by name", c.Image, "debian-12", seed.Images[0].ID, ""},
		{"image duplicate", c.Image, "dup", "", "2 match, expected one: dup (2222"},
		{"network", c.Network, "lan", seed.Networks[0].ID, ""},
		{"security group", c.SecurityGroup, "k8s", seed.SecurityGroups[0].ID, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.find(ctx, tt.ref)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || r.ID != tt.wantID {
				t.Fatalf("got %+v, %v", r, err)
			}
		})
	}
}

func TestNamingCreateAdoptDuplicate(t *testing.T) {
	e := newEnv(t, cloud.Options{})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	for _, n := range []string{"tb-worker-2", "tb-worker-10", "tb-worker-nfs-3", "tb-worker-x"} {
		create(t, c, n)
	}
	list, err := c.RoleServers(ctx, "tb-worker")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "tb-worker-2" || list[1].Name != "tb-worker-10" {
		t.Fatalf("role servers = %v", names(list))
	}
	if got := NextName("tb-worker", list); got != "tb-worker-11" {
		t.Errorf("NextName = %s", got)
	}
	// Creating an existing name adopts it.
	s, adopted, err := c.CreateServer(ctx, CreateOpts{Name: "tb-worker-2", FlavorID: "f1", ImageID: seed.Images[0].ID})
	if err != nil || !adopted || s.ID != list[0].ID {
		t.Fatalf("adopt: %+v %v %v", s, adopted, err)
	}
	if _, err := c.WaitActive(ctx, s.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Duplicate names are an error.
	e.cloud.AddServer(ctx, cloud.Server{Name: "tb-worker-2", FlavorID: "f1"})
	if _, _, err := c.CreateServer(ctx, CreateOpts{Name: "tb-worker-2", FlavorID: "f1", ImageID: seed.Images[0].ID}); err == nil || !strings.Contains(err.Error(), "2 servers already have that name") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestErrorFaultAndQuota(t *testing.T) {
	e := newEnv(t, cloud.Options{Quota: cloud.Quota{Instances: 2, Cores: 100, RAM: 100000}, Hypervisors: 2})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	g, err := c.EnsureServerGroup(ctx, "tb-control", "anti-affinity")
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.EnsureServerGroup(ctx, "tb-control", "anti-affinity")
	if err != nil || again.ID != g.ID {
		t.Fatalf("ensure twice: %+v %v", again, err)
	}
	if other, err := c.EnsureServerGroup(ctx, "tb-control", "affinity"); err != nil || other.ID != g.ID || other.Policy != "anti-affinity" {
		t.Errorf("a group with another policy: %+v %v; want the existing group with its own policy", other, err)
	}
	for i := 1; i <= 2; i++ {
		s, _, err := c.CreateServer(ctx, CreateOpts{Name: fmt.Sprintf("c-%d", i), FlavorID: "f1", ImageID: seed.Images[0].ID, ServerGroupID: g.ID})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitActive(ctx, s.ID, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = c.CreateServer(ctx, CreateOpts{Name: "c-3", FlavorID: "f1", ImageID: seed.Images[0].ID, ServerGroupID: g.ID})
	if err == nil || !strings.Contains(err.Error(), "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances") {
		t.Fatalf("quota error = %v", err)
	}

	e2 := newEnv(t, cloud.Options{Hypervisors: 2})
	c2 := e2.client(t, "lab", false)
	g2, _ := c2.EnsureServerGroup(ctx, "tb-control", "anti-affinity")
	var last Server
	for i := 1; i <= 3; i++ {
		last, _, _ = c2.CreateServer(ctx, CreateOpts{Name: fmt.Sprintf("c-%d", i), FlavorID: "f1", ImageID: seed.Images[0].ID, ServerGroupID: g2.ID})
	}
	if _, err := c2.WaitActive(ctx, last.ID, 5*time.Second); err == nil || !strings.Contains(err.Error(), "No valid host was found") {
		t.Errorf("third server on 2 hypervisors with anti-affinity: %v", err)
	}
}

func TestRetriesNeverDuplicate(t *testing.T) {
	e := newEnv(t, cloud.Options{})
	// 12 retries at a 30% error rate: a request fails for good once in ~two million.
	c := e.clientWithRetries(t, "lab", false, 12)
	ctx := context.Background()
	e.cloud.SetFaults(cloud.Faults{Rules: []cloud.FaultRule{
		{Method: "POST", PathPrefix: "/compute/v2.1/servers", ErrorRate: 0.3, After: true},
		{PathPrefix: "/compute", ErrorRate: 0.3},
		{PathPrefix: "/image", ErrorRate: 0.3},
	}})
	for i := 1; i <= 10; i++ {
		name := fmt.Sprintf("r-%d", i)
		s, _, err := c.CreateServer(ctx, CreateOpts{Name: name, FlavorID: "f1", ImageID: seed.Images[0].ID})
		if err != nil {
			t.Fatalf("create %s under faults: %v", name, err)
		}
		if _, err := c.WaitActive(ctx, s.ID, 10*time.Second); err != nil {
			t.Fatalf("wait %s under faults: %v", name, err)
		}
		if _, err := c.Image(ctx, "debian-12"); err != nil {
			t.Fatalf("lookup under faults: %v", err)
		}
	}
	e.cloud.SetFaults(cloud.Faults{})
	count := map[string]int{}
	for _, s := range e.cloud.Servers() {
		count[s.Name]++
	}
	for name, n := range count {
		if n != 1 {
			t.Errorf("%d servers named %s", n, name)
		}
	}
	if len(count) != 10 {
		t.Errorf("%d servers, want 10", len(count))
	}
	if !strings.Contains(e.logs.String(), "transient failure, retrying") {
		t.Error("no retry was logged")
	}
}

func TestDeleteRebootConsole(t *testing.T) {
	e := newEnv(t, cloud.Options{RebootTime: 100 * time.Millisecond})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	s := create(t, c, "d-1")
	s, err := c.WaitActive(ctx, s.ID, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.Address, "127.") || s.FlavorName != "g4.cores4.ram8" {
		t.Errorf("server = %+v", s)
	}
	keys, err := c.ConsoleHostKeys(ctx, s.ID, 5*time.Second)
	if err != nil || len(keys) != 1 || keys[0].Type != "ED25519" || !strings.HasPrefix(keys[0].Fingerprint, "SHA256:") {
		t.Fatalf("host keys = %+v, %v", keys, err)
	}
	if err := c.Reboot(ctx, s.ID, s.Name, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Server(ctx, s.ID); got.Status != "HARD_REBOOT" {
		t.Errorf("status during hard reboot = %s", got.Status)
	}
	if _, err := c.WaitActive(ctx, s.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteServer(ctx, s.ID, s.Name); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitGone(ctx, s.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteServer(ctx, s.ID, s.Name); err != nil {
		t.Errorf("deleting a gone server: %v", err)
	}
}

func TestParseHostKeys(t *testing.T) {
	console := `[   12.3] cloud-init[512]: something
-----BEGIN SSH HOST KEY FINGERPRINTS-----
256 SHA256:abcDEF+/0123 root@tb-worker-7 (ECDSA)
256 SHA256:xyz987= root@tb-worker-7 (ED25519)
3072 SHA256:rsaRSA root@tb-worker-7 (RSA)
-----END SSH HOST KEY FINGERPRINTS-----
login:`
	keys := ParseHostKeys(console)
	if len(keys) != 3 || keys[1] != (HostKey{Type: "ED25519", Fingerprint: "SHA256:xyz987="}) {
		t.Errorf("keys = %+v", keys)
	}
	if len(ParseHostKeys("no block here")) != 0 {
		t.Error("keys found in a console without the block")
	}
}

func TestDryRunMakesNoWriteCall(t *testing.T) {
	e := newEnv(t, cloud.Options{})
	real := e.client(t, "lab", false)
	existing := create(t, real, "keep-1")
	before := e.cloud.TotalWrites()
	c := e.client(t, "lab", true)
	ctx := context.Background()
	g, err := c.EnsureServerGroup(ctx, "new-group", "anti-affinity")
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := c.CreateServer(ctx, CreateOpts{Name: "new-1", FlavorID: "f1", ImageID: seed.Images[0].ID, ServerGroupID: g.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitActive(ctx, s.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Reboot(ctx, existing.ID, "keep-1", false); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteServer(ctx, existing.ID, "keep-1"); err != nil {
		t.Fatal(err)
	}
	if got := e.cloud.TotalWrites(); got != before {
		t.Errorf("dry-run made %d write request(s): %v", got-before, e.cloud.Writes())
	}
	for _, want := range []string{"DRY-RUN: would create server group new-group", "DRY-RUN: would create server new-1", "DRY-RUN: would delete server keep-1"} {
		if !strings.Contains(e.logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func TestBodyMessage(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{name: "nova", body: `{"forbidden": {"code": 403, "message": "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"}}`, want: "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"},
		{name: "neutron", body: `{"NeutronError": {"type": "NotFound", "message": "Network n1 could not be found.", "detail": ""}}`, want: "Network n1 could not be found."},
		{name: "keystone", body: `{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}`, want: "The request you have made requires authentication."},
		{name: "top level", body: `{"message": "Image \"x\" not found", "code": "404 Not Found"}`, want: `Image "x" not found`},
		{name: "quote in the message", body: `{"badRequest": {"code": 400, "message": "Invalid key_name \"k\" provided."}}`, want: `Invalid key_name "k" provided.`},
		{name: "html", body: `<html><body>502 Bad Gateway</body></html>`, want: ""},
		{name: "no message", body: `{"itemNotFound": {"code": 404}}`, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bodyMessage([]byte(tt.body)); got != tt.want {
				t.Errorf("bodyMessage = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLongWaitSaysWhatItWaitsFor: a server that stays in BUILD is reported (what, status,
// since when) every ReportEvery while WaitActive waits, not on every poll.
func TestLongWaitSaysWhatItWaitsFor(t *testing.T) {
	e := newEnv(t, cloud.Options{BuildTime: 700 * time.Millisecond})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	s := create(t, c, "slow-1")
	if _, err := c.WaitActive(ctx, s.ID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	n := strings.Count(e.logs.String(), "waiting for server slow-1 to be ACTIVE")
	if n < 2 || n > 8 || !strings.Contains(e.logs.String(), "status=BUILD waited=") {
		t.Errorf("%d progress lines in 0.7s of BUILD at one per 100ms (polls every 20ms):\n%s", n, e.logs)
	}
}

// TestServersPaged lists more servers than one page: the lab cloud pages as Nova does
// (limit, marker, a servers_links next link) and the client reads every page, once.
func TestServersPaged(t *testing.T) {
	e := newEnv(t, cloud.Options{})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	defer func(n int) { serversPageSize = n }(serversPageSize)
	serversPageSize = 3
	const n = 8
	for i := 1; i <= n; i++ {
		if _, err := e.cloud.AddServer(ctx, cloud.Server{Name: fmt.Sprintf("tb-worker-%d", i), FlavorID: "f1"}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.RoleServers(ctx, "tb-worker")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range list {
		if seen[s.ID] {
			t.Errorf("server %s listed twice", s.Name)
		}
		seen[s.ID] = true
	}
	if len(list) != n || list[0].Name != "tb-worker-1" || list[n-1].Name != fmt.Sprintf("tb-worker-%d", n) {
		t.Fatalf("role servers = %v, want %d", names(list), n)
	}
	// The same list, page by page: full pages of 3 with a next link, then the rest.
	var sizes []int
	err = servers.List(c.compute, servers.ListOpts{Limit: 3}).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
		page, err := servers.ExtractServers(p)
		sizes = append(sizes, len(page))
		return true, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(sizes) != "[3 3 2]" {
		t.Errorf("page sizes = %v, want [3 3 2]", sizes)
	}
}
