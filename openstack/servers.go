package openstack

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/keypairs"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servergroups"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/security/groups"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Server is a server as the cookbooks see it.
type Server struct {
	ID, Name, Status string
	FlavorID         string
	FlavorName       string
	ImageID          string
	Network          string
	Address          string
	Created          time.Time
	Metadata         map[string]string
	// Fault is the server's fault message when it is in ERROR.
	Fault string
	// DryRun marks the placeholder a dry run's skipped create returns: the server does not
	// exist, and its ID is one the gate handed out (dryrun.Gate.IsFake).
	DryRun bool
}

// Number is the trailing number of the server's name (worker-7 -> 7), or -1.
func (s Server) Number() int { return nameNumber(s.Name) }

func nameNumber(name string) int {
	i := strings.LastIndex(name, "-")
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(name[i+1:])
	if err != nil {
		return -1
	}
	return n
}

func fromNova(s *servers.Server) Server {
	out := Server{ID: s.ID, Name: s.Name, Status: s.Status, Created: s.Created, Metadata: s.Metadata, Fault: s.Fault.Message, Address: s.AccessIPv4}
	if id, ok := s.Flavor["id"].(string); ok {
		out.FlavorID = id
	}
	if n, ok := s.Flavor["original_name"].(string); ok {
		out.FlavorName = n
	}
	if id, ok := s.Image["id"].(string); ok {
		out.ImageID = id
	}
	for net, addrs := range s.Addresses {
		out.Network = net
		if list, ok := addrs.([]any); ok && len(list) > 0 {
			if m, ok := list[0].(map[string]any); ok && out.Address == "" {
				out.Address, _ = m["addr"].(string)
			}
		}
	}
	return out
}

// serversPageSize is how many servers one list request asks for; the pager follows Nova's
// servers_links until the last page. Tests make it small.
var serversPageSize = 500

// ServersNamed lists the servers whose name matches the regular expression (Nova's name
// filter is a regular expression search: anchor it). It reads them in pages.
func (c *Client) ServersNamed(ctx context.Context, re string) ([]Server, error) {
	pages, err := servers.List(c.compute, servers.ListOpts{Name: re, Limit: serversPageSize}).AllPages(ctx)
	if err != nil {
		return nil, wrap("list servers", err)
	}
	list, err := servers.ExtractServers(pages)
	if err != nil {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	out := make([]Server, len(list))
	for i := range list {
		out[i] = fromNova(&list[i])
	}
	return out, nil
}

// RoleServers lists the servers named <prefix>-<number>, sorted by number.
func (c *Client) RoleServers(ctx context.Context, prefix string) ([]Server, error) {
	list, err := c.ServersNamed(ctx, "^"+regexp.QuoteMeta(prefix)+"-[0-9]+$")
	if err != nil {
		return nil, err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Number() < list[j].Number() })
	return list, nil
}

// NextName returns the name of a new server of the role: prefix-(highest number + 1),
// as the existing cookbooks name nodes.
func NextName(prefix string, existing []Server) string {
	high := 0
	for _, s := range existing {
		if n := s.Number(); n > high {
			high = n
		}
	}
	return fmt.Sprintf("%s-%d", prefix, high+1)
}

// Server returns the server with the given id.
func (c *Client) Server(ctx context.Context, id string) (Server, error) {
	s, err := servers.Get(ctx, c.compute, id).Extract()
	if err != nil {
		return Server{}, wrap("get server "+id, err)
	}
	return fromNova(s), nil
}

// ServerByName returns the one server with exactly that name; none or several is an error.
func (c *Client) ServerByName(ctx context.Context, name string) (Server, error) {
	list, err := c.ServersNamed(ctx, "^"+regexp.QuoteMeta(name)+"$")
	if err != nil {
		return Server{}, err
	}
	if err := exactlyOne("server", name, names(list)); err != nil {
		return Server{}, err
	}
	return list[0], nil
}

func names(list []Server) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.Name + " (" + s.ID + ")"
	}
	return out
}

// ErrNotFound is wrapped by lookups that found nothing.
var ErrNotFound = errors.New("not found")

// LookupError is a lookup by name or id that found nothing, or more than one thing.
type LookupError struct {
	Kind, Ref string
	// Found are the matches (name and id), when there are several.
	Found []string
	// Known are the names there are, when nothing matched (at most 20).
	Known []string
}

func (e *LookupError) Error() string {
	if len(e.Found) > 1 {
		return fmt.Sprintf("%s %q: %d match, expected one: %s", e.Kind, e.Ref, len(e.Found), strings.Join(e.Found, ", "))
	}
	msg := fmt.Sprintf("%s %q: %v", e.Kind, e.Ref, ErrNotFound)
	if len(e.Known) > 0 {
		msg += fmt.Sprintf(" (there are: %s)", strings.Join(e.Known, ", "))
	}
	return msg
}

// Unwrap makes a lookup that found nothing match ErrNotFound.
func (e *LookupError) Unwrap() error {
	if len(e.Found) == 0 {
		return ErrNotFound
	}
	return nil
}

func exactlyOne(kind, ref string, found []string) error {
	switch len(found) {
	case 1:
		return nil
	default:
		return &LookupError{Kind: kind, Ref: ref, Found: found}
	}
}

// Ref is something found by name or id.
type Ref struct{ ID, Name string }

func pick(kind, ref string, all []Ref) (Ref, error) {
	var byID, byName []Ref
	for _, r := range all {
		if r.ID == ref {
			byID = append(byID, r)
		}
		if r.Name == ref {
			byName = append(byName, r)
		}
	}
	match := byName
	if len(byID) == 1 {
		match = byID
	}
	var found []string
	for _, r := range match {
		found = append(found, r.Name+" ("+r.ID+")")
	}
	if err := exactlyOne(kind, ref, found); err != nil {
		var le *LookupError
		if errors.As(err, &le) && len(found) == 0 {
			for _, r := range all {
				if len(le.Known) == 20 {
					le.Known = append(le.Known, "...")
					break
				}
				le.Known = append(le.Known, r.Name)
			}
		}
		return Ref{}, err
	}
	return match[0], nil
}

// Flavor finds the one flavor with that name or id.
func (c *Client) Flavor(ctx context.Context, ref string) (Ref, error) {
	pages, err := flavors.ListDetail(c.compute, nil).AllPages(ctx)
	if err != nil {
		return Ref{}, wrap("list flavors", err)
	}
	list, err := flavors.ExtractFlavors(pages)
	if err != nil {
		return Ref{}, err
	}
	var all []Ref
	for _, f := range list {
		all = append(all, Ref{f.ID, f.Name})
	}
	return pick("flavor", ref, all)
}

// Image finds the one image with that name or id.
func (c *Client) Image(ctx context.Context, ref string) (Ref, error) {
	pages, err := images.List(c.image, images.ListOpts{}).AllPages(ctx)
	if err != nil {
		return Ref{}, wrap("list images", err)
	}
	list, err := images.ExtractImages(pages)
	if err != nil {
		return Ref{}, err
	}
	var all []Ref
	for _, i := range list {
		all = append(all, Ref{i.ID, i.Name})
	}
	return pick("image", ref, all)
}

// Network finds the one network with that name or id.
func (c *Client) Network(ctx context.Context, ref string) (Ref, error) {
	pages, err := networks.List(c.network, networks.ListOpts{}).AllPages(ctx)
	if err != nil {
		return Ref{}, wrap("list networks", err)
	}
	list, err := networks.ExtractNetworks(pages)
	if err != nil {
		return Ref{}, err
	}
	var all []Ref
	for _, n := range list {
		all = append(all, Ref{n.ID, n.Name})
	}
	return pick("network", ref, all)
}

// SecurityGroup finds the one security group with that name or id.
func (c *Client) SecurityGroup(ctx context.Context, ref string) (Ref, error) {
	pages, err := groups.List(c.network, groups.ListOpts{}).AllPages(ctx)
	if err != nil {
		return Ref{}, wrap("list security groups", err)
	}
	list, err := groups.ExtractGroups(pages)
	if err != nil {
		return Ref{}, err
	}
	var all []Ref
	for _, g := range list {
		all = append(all, Ref{g.ID, g.Name})
	}
	return pick("security group", ref, all)
}

// ServerGroup is a Nova server group.
type ServerGroup struct {
	ID, Name, Policy string
	Members          []string
	// DryRun marks the placeholder of a group a dry run would have created.
	DryRun bool
}

// ServerGroups lists the server groups named name ("" for all).
func (c *Client) ServerGroups(ctx context.Context, name string) ([]ServerGroup, error) {
	pages, err := servergroups.List(c.compute, nil).AllPages(ctx)
	if err != nil {
		return nil, wrap("list server groups", err)
	}
	list, err := servergroups.ExtractServerGroups(pages)
	if err != nil {
		return nil, err
	}
	var out []ServerGroup
	for _, g := range list {
		if name != "" && g.Name != name {
			continue
		}
		sg := ServerGroup{ID: g.ID, Name: g.Name, Members: g.Members}
		if g.Policy != nil {
			sg.Policy = *g.Policy
		} else if len(g.Policies) > 0 {
			sg.Policy = g.Policies[0]
		}
		out = append(out, sg)
	}
	return out, nil
}

// EnsureServerGroup returns the server group of that name, created with the policy if
// missing. An existing group is returned whatever its policy (see its Policy field);
// several groups of that name are an error.
func (c *Client) EnsureServerGroup(ctx context.Context, name, policy string) (ServerGroup, error) {
	for attempt := 0; ; attempt++ {
		list, err := c.ServerGroups(ctx, name)
		if err != nil {
			return ServerGroup{}, err
		}
		switch {
		case len(list) > 1:
			var found []string
			for _, g := range list {
				found = append(found, g.Name+" ("+g.ID+")")
			}
			return ServerGroup{}, fmt.Errorf("server group %q: %d match, expected one: %s", name, len(list), strings.Join(found, ", "))
		case len(list) == 1:
			// Its policy is the caller's to compare: Nova cannot change it, and the
			// servers in the group were placed by it.
			return list[0], nil
		}
		var sg ServerGroup
		err = c.gate.Write(ctx, fmt.Sprintf("create server group %s policy=%s", name, policy), func(ctx context.Context) error {
			created, err := servergroups.Create(ctx, c.compute, servergroups.CreateOpts{Name: name, Policies: []string{policy}}).Extract()
			if err == nil {
				sg = ServerGroup{ID: created.ID, Name: created.Name, Policy: policy}
			}
			return err
		}, func(context.Context) error {
			sg = ServerGroup{ID: c.gate.FakeID("server-group", name), Name: name, Policy: policy, DryRun: true}
			return nil
		})
		if err == nil {
			return sg, nil
		}
		if !transient(err) || attempt >= c.opts.Retries {
			return ServerGroup{}, wrap("create server group "+name, err)
		}
		if err := c.backoff(ctx, "create server group "+name, attempt, err, 0); err != nil {
			return ServerGroup{}, err
		}
	}
}

// CreateOpts describe a new server.
type CreateOpts struct {
	Name           string
	FlavorID       string
	ImageID        string
	NetworkID      string
	SecurityGroups []string
	KeyName        string
	ServerGroupID  string
	Metadata       map[string]string
	UserData       []byte
}

// CreateServer creates the server unless one with exactly that name exists, which is
// adopted (adopted=true). Several servers of that name is an error. A transient failure
// is followed by a new look for the name before any new attempt, so a lost response
// never makes a second server.
func (c *Client) CreateServer(ctx context.Context, o CreateOpts) (srv Server, adopted bool, err error) {
	for attempt := 0; ; attempt++ {
		list, err := c.ServersNamed(ctx, "^"+regexp.QuoteMeta(o.Name)+"$")
		if err != nil {
			return Server{}, false, err
		}
		if len(list) > 1 {
			return Server{}, false, fmt.Errorf("create server %s: %d servers already have that name: %s", o.Name, len(list), strings.Join(names(list), ", "))
		}
		if len(list) == 1 {
			if attempt == 0 {
				c.log.Info("server exists already: adopting it", "server", o.Name, "id", list[0].ID)
			}
			return list[0], attempt == 0, nil
		}
		action := fmt.Sprintf("create server %s flavor=%s image=%s network=%s", o.Name, o.FlavorID, o.ImageID, o.NetworkID)
		opts := servers.CreateOpts{
			Name: o.Name, FlavorRef: o.FlavorID, ImageRef: o.ImageID, SecurityGroups: o.SecurityGroups,
			Metadata: o.Metadata, UserData: o.UserData,
		}
		if o.NetworkID != "" {
			opts.Networks = []servers.Network{{UUID: o.NetworkID}}
		}
		create := keypairs.CreateOptsExt{CreateOptsBuilder: opts, KeyName: o.KeyName}
		var hints servers.SchedulerHintOptsBuilder
		if o.ServerGroupID != "" {
			hints = servers.SchedulerHintOpts{Group: o.ServerGroupID}
		}
		var srv Server
		err = c.gate.Write(ctx, action, func(ctx context.Context) error {
			created, err := servers.Create(ctx, c.compute, create, hints).Extract()
			if err == nil {
				srv = Server{ID: created.ID, Name: o.Name, Status: "BUILD"}
			}
			return err
		}, func(context.Context) error {
			srv = Server{ID: c.gate.FakeID("server", o.Name), Name: o.Name, Status: "ACTIVE", FlavorID: o.FlavorID, ImageID: o.ImageID, DryRun: true}
			return nil
		}, "server", o.Name)
		if err == nil {
			return srv, false, nil
		}
		if !transient(err) || attempt >= c.opts.Retries {
			return Server{}, false, wrap("create server "+o.Name, err)
		}
		if err := c.backoff(ctx, "create server "+o.Name, attempt, err, 0); err != nil {
			return Server{}, false, err
		}
	}
}

// WaitActive waits until the server is ACTIVE. ERROR fails with the server's fault
// message; a timeout fails with the last status.
func (c *Client) WaitActive(ctx context.Context, id string, timeout time.Duration) (Server, error) {
	if c.gate.IsFake(id) {
		return Server{ID: id, Status: "ACTIVE", DryRun: true}, nil
	}
	var last Server
	start, reported := time.Now(), time.Now()
	err := c.poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		s, err := c.Server(ctx, id)
		if err != nil {
			return false, err
		}
		last = s
		switch s.Status {
		case "ACTIVE":
			return true, nil
		case "ERROR":
			return false, fmt.Errorf("server %s (%s) is in ERROR: %s", s.Name, id, s.Fault)
		}
		if time.Since(reported) >= c.opts.ReportEvery {
			reported = time.Now()
			c.log.Info("waiting for server "+s.Name+" to be ACTIVE", "status", s.Status, "waited", time.Since(start).Round(time.Second))
		}
		return false, nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return last, fmt.Errorf("wait for server %s to be ACTIVE: timed out after %s, status %s", id, timeout, last.Status)
	}
	return last, err
}

// DeleteServer deletes the server (a no-op if it is gone).
func (c *Client) DeleteServer(ctx context.Context, id, name string) error {
	return c.gate.Write(ctx, fmt.Sprintf("delete server %s (%s)", name, id), func(ctx context.Context) error {
		err := servers.Delete(ctx, c.compute, id).ExtractErr()
		if gophercloud.ResponseCodeIs(err, 404) {
			return nil
		}
		return wrap("delete server "+name, err)
	}, nil, "server", name)
}

// WaitGone waits until the server is gone (404).
func (c *Client) WaitGone(ctx context.Context, id string, timeout time.Duration) error {
	if c.gate.Enabled() {
		return nil
	}
	err := c.poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		_, err := servers.Get(ctx, c.compute, id).Extract()
		if gophercloud.ResponseCodeIs(err, 404) {
			return true, nil
		}
		return false, wrap("get server "+id, err)
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("wait for server %s to be gone: timed out after %s", id, timeout)
	}
	return err
}

// Reboot reboots the server, soft or hard.
func (c *Client) Reboot(ctx context.Context, id, name string, hard bool) error {
	how := servers.SoftReboot
	if hard {
		how = servers.HardReboot
	}
	return c.gate.Write(ctx, fmt.Sprintf("%s reboot server %s", strings.ToLower(string(how)), name), func(ctx context.Context) error {
		return wrap("reboot server "+name, servers.Reboot(ctx, c.compute, id, servers.RebootOpts{Type: how}).ExtractErr())
	}, nil, "server", name)
}

// ConsoleOutput returns the last lines of the server's console log.
func (c *Client) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	out, err := servers.ShowConsoleOutput(ctx, c.compute, id, servers.ShowConsoleOutputOpts{Length: lines}).Extract()
	if err != nil {
		return "", wrap("console output of "+id, err)
	}
	return out, nil
}

// HostKey is an SSH host key fingerprint printed by cloud-init.
type HostKey struct {
	// Type is the key type as cloud-init prints it (ED25519, ECDSA, RSA).
	Type string
	// Fingerprint is "SHA256:base64".
	Fingerprint string
}

// ConsoleHostKeys waits until the server's console shows cloud-init's host key
// fingerprints and returns them.
func (c *Client) ConsoleHostKeys(ctx context.Context, id string, timeout time.Duration) ([]HostKey, error) {
	var keys []HostKey
	err := c.poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		out, err := c.ConsoleOutput(ctx, id, 200)
		if err != nil {
			return false, err
		}
		keys = ParseHostKeys(out)
		return len(keys) > 0, nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("server %s printed no SSH host key fingerprints on its console within %s", id, timeout)
	}
	return keys, err
}

var fingerprintLine = regexp.MustCompile(`^\d+ (SHA256:[A-Za-z0-9+/=]+) \S+ \(([A-Z0-9-]+)\)$`)

// ParseHostKeys extracts the fingerprints between cloud-init's
// -----BEGIN SSH HOST KEY FINGERPRINTS----- and -----END ...----- lines.
func ParseHostKeys(console string) []HostKey {
	var keys []HostKey
	in := false
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimSpace(line)
		// cloud-init may prefix lines with "ci-info: " or a timestamp.
		if i := strings.Index(line, "-----"); i > 0 {
			line = line[i:]
		}
		switch {
		case strings.Contains(line, "BEGIN SSH HOST KEY FINGERPRINTS"):
			in, keys = true, nil
		case strings.Contains(line, "END SSH HOST KEY FINGERPRINTS"):
			in = false
		case in:
			if m := fingerprintLine.FindStringSubmatch(strings.TrimPrefix(line, "ci-info: ")); m != nil {
				keys = append(keys, HostKey{Type: m[2], Fingerprint: m[1]})
			}
		}
	}
	return keys
}

// poll calls check at once and then every PollInterval until it returns true or an
// error, or the timeout: then it returns context.DeadlineExceeded, also when the timeout
// cut a request of check short.
func (c *Client) poll(ctx context.Context, timeout time.Duration, check func(context.Context) (bool, error)) error {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(pctx, c.opts.PollInterval, true, check)
	if err != nil && pctx.Err() != nil && ctx.Err() == nil {
		return context.DeadlineExceeded
	}
	return err
}
