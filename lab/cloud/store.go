package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// Seed is what a new cloud has: the catalogue and accounts.
type Seed struct {
	Flavors        []Flavor
	Images         []Image
	Networks       []Named
	SecurityGroups []Named
	KeyPairs       []KeyPair
	// Users may log in with a password; AppCredentials with an application credential.
	Users          []User
	AppCredentials []AppCredential
	// Project is the one project; "lab" if empty.
	Project string
}

// Flavor is a Nova flavor.
type Flavor struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	VCPUs int    `json:"vcpus"`
	RAM   int    `json:"ram"`
	Disk  int    `json:"disk"`
}

// Image is a Glance image.
type Image struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created_at"`
}

// Named is a Neutron network or security group.
type Named struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// KeyPair is a Nova key pair.
type KeyPair struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// User is a Keystone user.
type User struct{ Name, Password string }

// AppCredential is a Keystone application credential.
type AppCredential struct{ ID, Name, Secret, User string }

// Server is a Nova server as the lab keeps it.
type Server struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Status         string            `json:"status"`
	FlavorID       string            `json:"flavorId"`
	ImageID        string            `json:"imageId"`
	Network        string            `json:"network"`
	Address        string            `json:"address,omitempty"`
	KeyName        string            `json:"keyName,omitempty"`
	SecurityGroups []string          `json:"securityGroups,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	Group          string            `json:"group,omitempty"`
	Host           string            `json:"host,omitempty"`
	UserData       []byte            `json:"userData,omitempty"`
	Fault          string            `json:"fault,omitempty"`
	HostKeyLines   []string          `json:"hostKeyLines,omitempty"`
	Created        time.Time         `json:"created"`
	Updated        time.Time         `json:"updated"`
	// Until is when the current transitional state (BUILD, REBOOT, HARD_REBOOT) ends;
	// DeleteAt when a server being deleted (Deleting) is gone.
	Until    time.Time `json:"until"`
	Deleting bool      `json:"deleting,omitempty"`
	DeleteAt time.Time `json:"deleteAt,omitzero"`
	Stuck    bool      `json:"stuck,omitempty"`
}

// ServerGroup is a Nova server group.
type ServerGroup struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Policy  string   `json:"policy"`
	Members []string `json:"members"`
}

// store is the cloud's state. Callers hold Cloud.mu.
type store struct {
	Project        string                  `json:"project"`
	Flavors        []Flavor                `json:"flavors"`
	Images         []Image                 `json:"images"`
	Networks       []Named                 `json:"networks"`
	SecurityGroups []Named                 `json:"securityGroups"`
	KeyPairs       []KeyPair               `json:"keyPairs"`
	Servers        map[string]*Server      `json:"servers"`
	Groups         map[string]*ServerGroup `json:"groups"`
	NextAddress    int                     `json:"nextAddress"`
	users          []User
	apps           []AppCredential
	tokens         map[string]time.Time
}

func newStore(seed Seed) *store {
	s := &store{
		Project: seed.Project, Flavors: seed.Flavors, Images: seed.Images, Networks: seed.Networks,
		SecurityGroups: seed.SecurityGroups, KeyPairs: seed.KeyPairs,
		Servers: map[string]*Server{}, Groups: map[string]*ServerGroup{}, NextAddress: 10,
		users: seed.Users, apps: seed.AppCredentials, tokens: map[string]time.Time{},
	}
	if s.Project == "" {
		s.Project = "lab"
	}
	// Neutron gives every project a security group named default.
	if !slices.ContainsFunc(s.SecurityGroups, func(g Named) bool { return g.Name == "default" }) {
		s.SecurityGroups = append(slices.Clone(s.SecurityGroups), Named{ID: newID(), Name: "default"})
	}
	return s
}

func (s *store) load(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var saved store
	if err := json.Unmarshal(data, &saved); err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	if saved.Servers != nil {
		s.Servers = saved.Servers
	}
	if saved.Groups != nil {
		s.Groups = saved.Groups
	}
	if saved.NextAddress > s.NextAddress {
		s.NextAddress = saved.NextAddress
	}
	if len(saved.KeyPairs) > 0 {
		s.KeyPairs = saved.KeyPairs
	}
	return nil
}

func (c *Cloud) persist() {
	if c.opts.StateFile == "" {
		return
	}
	data, err := json.MarshalIndent(c.st, "", "  ")
	if err != nil {
		return
	}
	tmp := c.opts.StateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		_ = os.Rename(tmp, c.opts.StateFile)
	}
}

// Servers returns a copy of the servers, sorted by name.
func (c *Cloud) Servers() []Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Server, 0, len(c.st.Servers))
	for _, s := range c.st.Servers {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Groups returns a copy of the server groups.
func (c *Cloud) Groups() []ServerGroup {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ServerGroup
	for _, g := range c.st.Groups {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// AddGroup creates a server group directly (for building a lab) and returns it.
func (c *Cloud) AddGroup(name, policy string) ServerGroup {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.st.Groups {
		if g.Name == name {
			return *g
		}
	}
	g := &ServerGroup{ID: newID(), Name: name, Policy: policy}
	c.st.Groups[g.ID] = g
	c.persist()
	return *g
}

// AddServer puts an ACTIVE server straight into the cloud (for building a lab), booting
// its VM. It returns the server.
func (c *Cloud) AddServer(ctx context.Context, s Server) (Server, error) {
	c.mu.Lock()
	if s.ID == "" {
		s.ID = newID()
	}
	now := time.Now()
	s.Created, s.Updated, s.Status = now, now, "ACTIVE"
	s.Address = c.nextAddress()
	s.Host = "lab-hv-1"
	srv := &s
	c.st.Servers[s.ID] = srv
	if s.Group != "" {
		if g, ok := c.st.Groups[s.Group]; ok {
			g.Members = append(g.Members, s.ID)
		}
	}
	m := c.machine(srv)
	c.mu.Unlock()
	if err := c.boot(ctx, srv, m); err != nil {
		return Server{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.persist()
	return *srv, nil
}

func (c *Cloud) nextAddress() string {
	c.st.NextAddress++
	n := c.st.NextAddress
	// 127.42.0.10 to 127.42.0.249, then 127.42.1.10 ... (the third byte grows every 240
	// addresses, the fourth stays a valid host byte).
	parts := strings.Split(c.opts.AddressPrefix, ".")
	if len(parts) == 3 {
		var third int
		fmt.Sscan(parts[2], &third)
		return fmt.Sprintf("%s.%s.%d.%d", parts[0], parts[1], third+n/240, 10+n%240)
	}
	return fmt.Sprintf("%s.%d", c.opts.AddressPrefix, n)
}

func (c *Cloud) machine(s *Server) Machine {
	m := Machine{ID: s.ID, Name: s.Name, Address: s.Address, UserData: s.UserData, Metadata: s.Metadata}
	for _, i := range c.st.Images {
		if i.ID == s.ImageID {
			m.Image = i.Name
		}
	}
	for _, k := range c.st.KeyPairs {
		if k.Name == s.KeyName {
			m.AuthorizedKeys = append(m.AuthorizedKeys, k.PublicKey)
		}
	}
	return m
}

// boot starts the server's VM (outside the lock) and records its host keys.
func (c *Cloud) boot(ctx context.Context, s *Server, m Machine) error {
	var lines []string
	if c.opts.Machines != nil {
		var err error
		if lines, err = c.opts.Machines.Boot(ctx, m); err != nil {
			return fmt.Errorf("boot %s: %w", s.Name, err)
		}
	} else {
		lines = []string{fmt.Sprintf("256 SHA256:%s root@%s (ED25519)", strings.ReplaceAll(newID(), "-", ""), s.Name)}
	}
	c.mu.Lock()
	s.HostKeyLines = lines
	c.mu.Unlock()
	return nil
}

// advance moves servers through BUILD, REBOOT and deletion as time passes.
func (c *Cloud) advance(now time.Time) {
	type job struct {
		s    *Server
		m    Machine
		kind string
	}
	var jobs []job
	c.mu.Lock()
	changed := false
	for id, s := range c.st.Servers {
		if s.Deleting {
			// A server being deleted changes no more until it is gone (a state file
			// written before DeleteAt existed kept the deadline in Until).
			at := s.DeleteAt
			if at.IsZero() {
				at = s.Until
			}
			if now.Before(at) {
				continue
			}
			delete(c.st.Servers, id)
			for _, g := range c.st.Groups {
				g.Members = remove(g.Members, id)
			}
			jobs = append(jobs, job{s: s, kind: "delete"})
			changed = true
			continue
		}
		if s.Until.IsZero() || now.Before(s.Until) || s.Stuck {
			continue
		}
		switch {
		case s.Status == "BUILD":
			s.Status, s.Until, s.Updated = "ACTIVE", time.Time{}, now
			jobs = append(jobs, job{s: s, m: c.machine(s), kind: "boot"})
		case s.Status == "REBOOT" || s.Status == "HARD_REBOOT":
			s.Status, s.Until, s.Updated = "ACTIVE", time.Time{}, now
		}
		changed = true
	}
	if changed {
		c.persist()
	}
	c.mu.Unlock()
	for _, j := range jobs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		switch j.kind {
		case "boot":
			if err := c.boot(ctx, j.s, j.m); err != nil {
				c.mu.Lock()
				j.s.Status, j.s.Fault = "ERROR", err.Error()
				c.mu.Unlock()
			}
		case "delete":
			if c.opts.Machines != nil {
				_ = c.opts.Machines.Delete(ctx, j.s.ID)
			}
		}
		cancel()
	}
}

func remove(list []string, x string) []string {
	out := list[:0]
	for _, v := range list {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}
