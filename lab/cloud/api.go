package cloud

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

func (c *Cloud) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /identity/v3/auth/tokens", c.issueToken)
	mux.HandleFunc("GET /identity/v3", c.identityVersion)
	mux.HandleFunc("GET /identity/v3/", c.identityVersion)

	n := "/compute/v2.1"
	mux.HandleFunc("GET "+n+"/servers", c.auth(c.listServers(false)))
	mux.HandleFunc("GET "+n+"/servers/detail", c.auth(c.listServers(true)))
	mux.HandleFunc("POST "+n+"/servers", c.auth(c.createServer))
	mux.HandleFunc("GET "+n+"/servers/{id}", c.auth(c.getServer))
	mux.HandleFunc("DELETE "+n+"/servers/{id}", c.auth(c.deleteServer))
	mux.HandleFunc("POST "+n+"/servers/{id}/action", c.auth(c.serverAction))
	mux.HandleFunc("GET "+n+"/flavors", c.auth(c.listFlavors))
	mux.HandleFunc("GET "+n+"/flavors/detail", c.auth(c.listFlavors))
	mux.HandleFunc("GET "+n+"/flavors/{id}", c.auth(c.getFlavor))
	mux.HandleFunc("GET "+n+"/flavors/{id}/os-extra_specs", c.auth(func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, map[string]any{"extra_specs": map[string]string{}})
	}))
	mux.HandleFunc("GET "+n+"/os-keypairs", c.auth(c.listKeyPairs))
	mux.HandleFunc("POST "+n+"/os-keypairs", c.auth(c.createKeyPair))
	mux.HandleFunc("GET "+n+"/os-server-groups", c.auth(c.listGroups))
	mux.HandleFunc("POST "+n+"/os-server-groups", c.auth(c.createGroup))
	mux.HandleFunc("GET "+n+"/os-server-groups/{id}", c.auth(c.getGroup))
	mux.HandleFunc("DELETE "+n+"/os-server-groups/{id}", c.auth(c.deleteGroup))
	mux.HandleFunc("GET "+n+"/limits", c.auth(c.limits))
	mux.HandleFunc("GET "+n+"/os-availability-zone", c.auth(func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, map[string]any{"availabilityZoneInfo": []any{map[string]any{"zoneName": "nova", "zoneState": map[string]bool{"available": true}}}})
	}))

	mux.HandleFunc("GET /image/{$}", c.versions("v2.9", "/image/v2/"))
	mux.HandleFunc("GET /image", c.versions("v2.9", "/image/v2/"))
	mux.HandleFunc("GET /network/{$}", c.versions("v2.0", "/network/v2.0/"))
	mux.HandleFunc("GET /network", c.versions("v2.0", "/network/v2.0/"))
	mux.HandleFunc("GET /compute/{$}", c.versions("v2.1", "/compute/v2.1/"))
	mux.HandleFunc("GET /image/v2/images", c.auth(c.listImages))
	mux.HandleFunc("GET /image/v2/images/{id}", c.auth(c.getImage))
	mux.HandleFunc("GET /network/v2.0/networks", c.auth(c.listNamed("networks", func() []Named { return c.st.Networks })))
	mux.HandleFunc("GET /network/v2.0/networks/{id}", c.auth(c.getNamed("network", func() []Named { return c.st.Networks })))
	mux.HandleFunc("GET /network/v2.0/security-groups", c.auth(c.listNamed("security_groups", func() []Named { return c.st.SecurityGroups })))
	mux.HandleFunc("GET /network/v2.0/security-groups/{id}", c.auth(c.getNamed("security_group", func() []Named { return c.st.SecurityGroups })))

	mux.HandleFunc("GET /_lab/faults", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, c.Faults()) })
	mux.HandleFunc("POST /_lab/faults", c.postFaults)
	mux.HandleFunc("GET /_lab/servers", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, c.Summary()) })
	for path, h := range c.opts.Admin {
		mux.HandleFunc("GET /_lab/"+strings.TrimPrefix(path, "/"), h)
	}
	return c.middleware(mux)
}

// readOnlyAction reports whether a server action body is one that only reads
// (os-getConsoleOutput).
func readOnlyAction(body []byte) bool {
	var action map[string]json.RawMessage
	if err := json.Unmarshal(body, &action); err != nil || len(action) != 1 {
		return false
	}
	_, ok := action["os-getConsoleOutput"]
	return ok
}

// middleware counts writes and applies injected faults.
func (c *Cloud) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := r.Method + " " + routeOf(r.URL.Path)
		c.opts.Log.Debug("request", "route", route)
		isWrite := r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.HasPrefix(r.URL.Path, "/identity/") && !strings.HasPrefix(r.URL.Path, "/_lab/")
		if isWrite && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/action") {
			// Nova reads a console log through a POST action; it changes nothing.
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err == nil {
				r.Body = io.NopCloser(bytes.NewReader(body))
				isWrite = !readOnlyAction(body)
			}
		}
		c.mu.Lock()
		c.requests++
		if isWrite {
			c.writes[route]++
		}
		rule, fail := c.faultFor(r.Method, r.URL.Path)
		c.mu.Unlock()
		if rule.LatencyMillis > 0 {
			select {
			case <-time.After(time.Duration(rule.LatencyMillis) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		if fail && !rule.After {
			status := rule.Status
			if status == 0 {
				status = http.StatusServiceUnavailable
			}
			novaError(w, status, "injected fault: the service is unavailable")
			return
		}
		if fail && rule.After {
			// The request is handled, then its response is lost.
			next.ServeHTTP(discard{header: http.Header{}}, r)
			novaError(w, http.StatusBadGateway, "injected fault: response lost after the request was handled")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type discard struct{ header http.Header }

func (d discard) Header() http.Header         { return d.header }
func (d discard) Write(p []byte) (int, error) { return len(p), nil }
func (d discard) WriteHeader(int)             {}

var idSegment = regexp.MustCompile(`/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// routeOf replaces ids in a path with {id}.
func routeOf(path string) string { return idSegment.ReplaceAllString(path, "/{id}") }

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("OpenStack-API-Version", "compute 2.79")
	w.Header().Set("X-OpenStack-Nova-API-Version", "2.79")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// novaError writes an error in Nova's shape: {"itemNotFound": {"code": 404, "message": ...}}.
func novaError(w http.ResponseWriter, status int, msg string) {
	kind := map[int]string{400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 409: "conflictingRequest", 500: "computeFault", 502: "badGateway", 503: "serviceUnavailable"}[status]
	if kind == "" {
		kind = "computeFault"
	}
	reply(w, status, map[string]any{kind: map[string]any{"code": status, "message": msg}})
}

func decode(r *http.Request, v any) error {
	defer r.Body.Close()
	return json.NewDecoder(r.Body).Decode(v)
}

// versions answers a service's version discovery request.
func (c *Cloud) versions(id, path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v := map[string]any{"id": id, "status": "CURRENT", "links": []any{map[string]string{"rel": "self", "href": c.URL + path}}}
		if id == "v2.1" {
			v["version"], v["min_version"] = "2.79", "2.1"
		}
		reply(w, 300, map[string]any{"versions": []any{v}})
	}
}

// --- Keystone ---

func (c *Cloud) identityVersion(w http.ResponseWriter, r *http.Request) {
	reply(w, 200, map[string]any{"version": map[string]any{"id": "v3.14", "status": "stable", "links": []any{map[string]string{"rel": "self", "href": c.AuthURL() + "/"}}}})
}

func (c *Cloud) issueToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string `json:"name"`
						Password string `json:"password"`
					} `json:"user"`
				} `json:"password"`
				AppCred struct {
					ID     string `json:"id"`
					Name   string `json:"name"`
					Secret string `json:"secret"`
				} `json:"application_credential"`
			} `json:"identity"`
		} `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		novaError(w, 400, "malformed auth request")
		return
	}
	id := req.Auth.Identity
	user := ""
	c.mu.Lock()
	for _, m := range id.Methods {
		switch m {
		case "password":
			for _, u := range c.st.users {
				if u.Name == id.Password.User.Name && u.Password == id.Password.User.Password {
					user = u.Name
				}
			}
		case "application_credential":
			for _, a := range c.st.apps {
				if (a.ID == id.AppCred.ID || a.Name == id.AppCred.Name && a.Name != "") && a.Secret == id.AppCred.Secret {
					user = a.User
				}
			}
		}
	}
	if user == "" {
		c.mu.Unlock()
		reply(w, 401, map[string]any{"error": map[string]any{"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}})
		return
	}
	token := strings.ReplaceAll(newID(), "-", "")
	expires := time.Now().Add(c.opts.TokenTTL)
	c.st.tokens[token] = expires
	project := c.st.Project
	c.mu.Unlock()
	ep := func(typ, name, url string) map[string]any {
		return map[string]any{"type": typ, "name": name, "id": typ, "endpoints": []any{
			map[string]any{"id": typ + "-public", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": url},
		}}
	}
	w.Header().Set("X-Subject-Token", token)
	reply(w, 201, map[string]any{"token": map[string]any{
		"methods":    id.Methods,
		"expires_at": expires.UTC().Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
		"user":       map[string]any{"id": user, "name": user, "domain": map[string]string{"id": "default", "name": "Default"}},
		"project":    map[string]any{"id": project, "name": project, "domain": map[string]string{"id": "default", "name": "Default"}},
		"catalog": []any{
			ep("identity", "keystone", c.AuthURL()),
			ep("compute", "nova", c.URL+"/compute/v2.1"),
			ep("image", "glance", c.URL+"/image"),
			ep("network", "neutron", c.URL+"/network"),
		},
	}})
}

// auth rejects requests without a valid token.
func (c *Cloud) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := r.Header.Get("X-Auth-Token")
		c.mu.Lock()
		exp, ok := c.st.tokens[tok]
		c.mu.Unlock()
		if !ok || time.Now().After(exp) {
			reply(w, 401, map[string]any{"error": map[string]any{"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}})
			return
		}
		h(w, r)
	}
}

// --- Nova servers ---

func (c *Cloud) serverJSON(s *Server, detail bool) map[string]any {
	out := map[string]any{"id": s.ID, "name": s.Name, "links": []any{map[string]string{"rel": "self", "href": c.URL + "/compute/v2.1/servers/" + s.ID}}}
	if !detail {
		return out
	}
	flavor := map[string]any{"id": s.FlavorID}
	for _, f := range c.st.Flavors {
		if f.ID == s.FlavorID {
			flavor = map[string]any{"id": f.ID, "original_name": f.Name, "vcpus": f.VCPUs, "ram": f.RAM, "disk": f.Disk, "ephemeral": 0, "swap": 0, "extra_specs": map[string]string{}}
		}
	}
	addresses := map[string]any{}
	if s.Address != "" {
		addresses[s.Network] = []any{map[string]any{"version": 4, "addr": s.Address, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}}
	}
	var sgs []any
	for _, g := range s.SecurityGroups {
		sgs = append(sgs, map[string]string{"name": g})
	}
	md := s.Metadata
	if md == nil {
		md = map[string]string{}
	}
	vm, t := novaState(s)
	task := any(nil)
	if t != "" {
		task = t
	}
	out["status"] = s.Status
	out["tenant_id"] = c.st.Project
	out["user_id"] = "lab"
	out["metadata"] = md
	out["hostId"] = s.Host
	out["image"] = map[string]any{"id": s.ImageID}
	out["flavor"] = flavor
	out["created"] = s.Created.UTC().Format(time.RFC3339)
	out["updated"] = s.Updated.UTC().Format(time.RFC3339)
	out["addresses"] = addresses
	out["accessIPv4"] = s.Address
	out["accessIPv6"] = ""
	out["key_name"] = s.KeyName
	out["security_groups"] = sgs
	out["OS-EXT-STS:vm_state"] = vm
	out["OS-EXT-STS:task_state"] = task
	power := 1 // running
	if s.Status == "SHUTOFF" {
		power = 4 // shutdown
	}
	out["OS-EXT-STS:power_state"] = power
	out["OS-EXT-AZ:availability_zone"] = "nova"
	out["progress"] = 0
	out["config_drive"] = ""
	if s.Fault != "" {
		out["fault"] = map[string]any{"code": 500, "message": s.Fault, "created": s.Updated.UTC().Format(time.RFC3339)}
	}
	return out
}

func (c *Cloud) listServers(detail bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var nameRE *regexp.Regexp
		if n := q.Get("name"); n != "" {
			var err error
			// Nova applies the name filter as a regular expression search.
			if nameRE, err = regexp.Compile(n); err != nil {
				novaError(w, 400, fmt.Sprintf("Invalid regular expression for name filter: %s", n))
				return
			}
		}
		c.mu.Lock()
		var list []*Server
		for _, s := range c.st.Servers {
			if nameRE != nil && !nameRE.MatchString(s.Name) {
				continue
			}
			if st := q.Get("status"); st != "" && !strings.EqualFold(st, s.Status) {
				continue
			}
			list = append(list, s)
		}
		// Newest first, as Nova lists; the ID breaks ties so that pages are stable.
		sort.Slice(list, func(i, j int) bool {
			if !list[i].Created.Equal(list[j].Created) {
				return list[i].Created.After(list[j].Created)
			}
			return list[i].ID < list[j].ID
		})
		// Paging as Nova's: limit, marker (the last server of the previous page), and a
		// servers_links "next" link when a page is full.
		if m := q.Get("marker"); m != "" {
			at := -1
			for i, s := range list {
				if s.ID == m {
					at = i
					break
				}
			}
			if at < 0 {
				c.mu.Unlock()
				novaError(w, 400, fmt.Sprintf("marker [%s] not found", m))
				return
			}
			list = list[at+1:]
		}
		var links []any
		if l := q.Get("limit"); l != "" {
			limit, err := strconv.Atoi(l)
			if err != nil || limit < 0 {
				c.mu.Unlock()
				novaError(w, 400, fmt.Sprintf("Invalid input for query parameters limit. Value: %s.", l))
				return
			}
			if limit < len(list) {
				list = list[:limit]
			}
			if limit > 0 && len(list) == limit {
				next := *r.URL
				next.Scheme, next.Host = "http", r.Host
				nq := next.Query()
				nq.Set("marker", list[limit-1].ID)
				next.RawQuery = nq.Encode()
				links = append(links, map[string]string{"rel": "next", "href": next.String()})
			}
		}
		out := []any{}
		for _, s := range list {
			out = append(out, c.serverJSON(s, detail))
		}
		c.mu.Unlock()
		body := map[string]any{"servers": out}
		if links != nil {
			body["servers_links"] = links
		}
		reply(w, 200, body)
	}
}

func (c *Cloud) getServer(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.st.Servers[r.PathValue("id")]
	if !ok {
		novaError(w, 404, fmt.Sprintf("Instance %s could not be found.", r.PathValue("id")))
		return
	}
	reply(w, 200, map[string]any{"server": c.serverJSON(s, true)})
}

func (c *Cloud) createServer(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Server struct {
			Name           string            `json:"name"`
			FlavorRef      string            `json:"flavorRef"`
			ImageRef       string            `json:"imageRef"`
			KeyName        string            `json:"key_name"`
			UserData       string            `json:"user_data"`
			Metadata       map[string]string `json:"metadata"`
			SecurityGroups []struct {
				Name string `json:"name"`
			} `json:"security_groups"`
			Networks json.RawMessage `json:"networks"`
		} `json:"server"`
		Hints struct {
			Group string `json:"group"`
		} `json:"os:scheduler_hints"`
	}
	if err := decode(r, &req); err != nil {
		novaError(w, 400, "Malformed request body")
		return
	}
	in := req.Server
	if in.Name == "" {
		novaError(w, 400, "Invalid input for field/attribute name. Value: None. None is not of type 'string'")
		return
	}
	var nets []struct {
		UUID string `json:"uuid"`
	}
	_ = json.Unmarshal(in.Networks, &nets)
	c.mu.Lock()
	defer c.mu.Unlock()
	var flavor *Flavor
	for i := range c.st.Flavors {
		if c.st.Flavors[i].ID == in.FlavorRef {
			flavor = &c.st.Flavors[i]
		}
	}
	if flavor == nil {
		novaError(w, 400, fmt.Sprintf("Flavor %s could not be found.", in.FlavorRef))
		return
	}
	if !hasID(imageIDs(c.st.Images), in.ImageRef) {
		novaError(w, 400, fmt.Sprintf("Image %s could not be found.", in.ImageRef))
		return
	}
	network := ""
	for _, n := range nets {
		for _, known := range c.st.Networks {
			if known.ID == n.UUID {
				network = known.Name
			}
		}
		if network == "" {
			novaError(w, 400, fmt.Sprintf("Network %s could not be found.", n.UUID))
			return
		}
	}
	if network == "" && len(c.st.Networks) > 0 {
		network = c.st.Networks[0].Name
	}
	if in.KeyName != "" && !c.hasKeyPair(in.KeyName) {
		novaError(w, 400, fmt.Sprintf("Invalid key_name provided."))
		return
	}
	used := c.usage()
	q := c.opts.Quota
	for _, chk := range []struct {
		name             string
		used, want, have int
	}{{"instances", used.Instances, 1, q.Instances}, {"cores", used.Cores, flavor.VCPUs, q.Cores}, {"ram", used.RAM, flavor.RAM, q.RAM}} {
		if chk.used+chk.want > chk.have {
			novaError(w, 403, fmt.Sprintf("Quota exceeded for %s: Requested %d, but already used %d of %d %s", chk.name, chk.want, chk.used, chk.have, chk.name))
			return
		}
	}
	var group *ServerGroup
	if req.Hints.Group != "" {
		g, ok := c.st.Groups[req.Hints.Group]
		if !ok {
			novaError(w, 400, fmt.Sprintf("Invalid server group %s", req.Hints.Group))
			return
		}
		group = g
	}
	now := time.Now()
	s := &Server{
		ID: newID(), Name: in.Name, Status: "BUILD", FlavorID: flavor.ID, ImageID: in.ImageRef, Network: network,
		KeyName: in.KeyName, Metadata: in.Metadata, Created: now, Updated: now, Until: now.Add(c.opts.BuildTime),
	}
	if in.UserData != "" {
		s.UserData, _ = base64.StdEncoding.DecodeString(in.UserData)
	}
	for _, g := range in.SecurityGroups {
		i := slices.IndexFunc(c.st.SecurityGroups, func(n Named) bool { return n.Name == g.Name || n.ID == g.Name })
		if i < 0 {
			novaError(w, 400, fmt.Sprintf("Security group %s not found for project %s.", g.Name, c.st.Project))
			return
		}
		s.SecurityGroups = append(s.SecurityGroups, c.st.SecurityGroups[i].Name)
	}
	if len(s.SecurityGroups) == 0 {
		s.SecurityGroups = []string{"default"}
	}
	host, ok := c.place(group)
	if !ok {
		s.Status, s.Until, s.Fault = "ERROR", time.Time{}, "No valid host was found. There are not enough hosts available."
	} else {
		s.Host = host
		s.Address = c.nextAddress()
		if group != nil {
			s.Group = group.ID
			group.Members = append(group.Members, s.ID)
		}
	}
	c.applyServerFaults(s)
	c.st.Servers[s.ID] = s
	c.persist()
	reply(w, 202, map[string]any{"server": map[string]any{"id": s.ID, "links": []any{}, "OS-DCF:diskConfig": "MANUAL", "security_groups": []any{}, "adminPass": "not-a-real-password"}})
}

func (c *Cloud) hasKeyPair(name string) bool {
	for _, k := range c.st.KeyPairs {
		if k.Name == name {
			return true
		}
	}
	return false
}

// place picks a hypervisor for a new server of group, honouring its policy.
func (c *Cloud) place(g *ServerGroup) (string, bool) {
	hosts := make([]string, c.opts.Hypervisors)
	load := map[string]int{}
	for i := range hosts {
		hosts[i] = fmt.Sprintf("lab-hv-%d", i+1)
	}
	for _, s := range c.st.Servers {
		load[s.Host]++
	}
	used := map[string]bool{}
	if g != nil {
		for _, id := range g.Members {
			if s, ok := c.st.Servers[id]; ok {
				used[s.Host] = true
			}
		}
	}
	sort.SliceStable(hosts, func(i, j int) bool { return load[hosts[i]] < load[hosts[j]] })
	policy := ""
	if g != nil {
		policy = g.Policy
	}
	switch policy {
	case "anti-affinity":
		for _, h := range hosts {
			if !used[h] {
				return h, true
			}
		}
		return "", false
	case "soft-anti-affinity":
		for _, h := range hosts {
			if !used[h] {
				return h, true
			}
		}
	case "affinity", "soft-affinity":
		for h := range used {
			return h, true
		}
	}
	return hosts[0], true
}

func (c *Cloud) deleteServer(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.st.Servers[r.PathValue("id")]
	if !ok {
		novaError(w, 404, fmt.Sprintf("Instance %s could not be found.", r.PathValue("id")))
		return
	}
	if !s.Deleting {
		// The deletion has its own deadline: a reboot in progress keeps its own in Until.
		s.Deleting, s.DeleteAt, s.Stuck = true, time.Now().Add(c.opts.DeleteTime), false
		c.persist()
	}
	w.WriteHeader(204)
}

// vmState is Nova's vm_state of a server status: SHUTOFF is "stopped".
func vmState(status string) string {
	if status == "SHUTOFF" {
		return "stopped"
	}
	return strings.ToLower(status)
}

// novaState is the server's Nova vm_state and task_state ("" for none).
func novaState(s *Server) (vm, task string) {
	vm = vmState(s.Status)
	switch s.Status {
	case "BUILD":
		vm, task = "building", "spawning"
	case "REBOOT":
		vm, task = "active", "rebooting"
	case "HARD_REBOOT":
		vm, task = "active", "rebooting_hard"
	}
	if s.Deleting {
		task = "deleting"
	}
	return vm, task
}

// checkState is Nova's check_instance_state (nova/compute/api.py): the action is
// refused (409, the message Nova's API gives) unless the vm_state is one of vms and the
// task_state one of tasks ("" is no task).
func checkState(s *Server, action string, vms, tasks []string) error {
	vm, task := novaState(s)
	if !slices.Contains(vms, vm) {
		return fmt.Errorf("Cannot '%s' instance %s while it is in vm_state %s", action, s.ID, vm)
	}
	if !slices.Contains(tasks, task) {
		return fmt.Errorf("Cannot '%s' instance %s while it is in task_state %s", action, s.ID, task)
	}
	return nil
}

func (c *Cloud) serverAction(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reboot *struct {
			Type string `json:"type"`
		} `json:"reboot"`
		Console *struct {
			Length any `json:"length"`
		} `json:"os-getConsoleOutput"`
	}
	var raw map[string]json.RawMessage
	if err := decode(r, &raw); err != nil || len(raw) != 1 {
		novaError(w, 400, "Malformed request body")
		return
	}
	body, _ := json.Marshal(raw)
	if err := json.Unmarshal(body, &req); err != nil {
		novaError(w, 400, "Malformed request body")
		return
	}
	// {"os-stop": null} has a null value: its key is what counts.
	_, stop := raw["os-stop"]
	c.mu.Lock()
	s, ok := c.st.Servers[r.PathValue("id")]
	if !ok {
		c.mu.Unlock()
		novaError(w, 404, fmt.Sprintf("Instance %s could not be found.", r.PathValue("id")))
		return
	}
	switch {
	case req.Reboot != nil:
		hard := strings.EqualFold(req.Reboot.Type, "HARD")
		// Nova's _soft_reboot: vm_state ALLOW_SOFT_REBOOT (active), no task;
		// _hard_reboot: ALLOW_HARD_REBOOT (also stopped, paused, suspended, error) and
		// task_state in ALLOW_REBOOT (a reboot, soft or hard, may be under way; a
		// deletion may not).
		err := checkState(s, "reboot", []string{"active"}, []string{""})
		if hard {
			err = checkState(s, "reboot", []string{"active", "stopped", "paused", "suspended", "error"},
				[]string{"", "rebooting", "reboot_pending", "reboot_started", "resuming", "rebooting_hard", "unpausing", "pausing", "suspending"})
		}
		if err != nil {
			c.mu.Unlock()
			novaError(w, 409, err.Error())
			return
		}
		s.Status = "REBOOT"
		if hard {
			s.Status = "HARD_REBOOT"
		}
		s.Until, s.Updated = time.Now().Add(c.opts.RebootTime), time.Now()
		id := s.ID
		c.persist()
		c.mu.Unlock()
		if c.opts.Machines != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
			defer cancel()
			if err := c.opts.Machines.Reboot(ctx, id, hard); err != nil {
				novaError(w, 500, "reboot: "+err.Error())
				return
			}
		}
		w.WriteHeader(202)
	case stop:
		// Nova's stop: vm_state active or error, no task.
		if err := checkState(s, "stop", []string{"active", "error"}, []string{""}); err != nil {
			c.mu.Unlock()
			novaError(w, 409, err.Error())
			return
		}
		s.Status, s.Until, s.Updated = "SHUTOFF", time.Time{}, time.Now()
		id := s.ID
		c.persist()
		c.mu.Unlock()
		if c.opts.Machines != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
			defer cancel()
			if err := c.opts.Machines.Stop(ctx, id); err != nil {
				novaError(w, 500, "stop: "+err.Error())
				return
			}
		}
		w.WriteHeader(202)
	case req.Console != nil:
		out := c.consoleLog(s)
		c.mu.Unlock()
		if n, err := strconv.Atoi(fmt.Sprint(req.Console.Length)); err == nil && n > 0 {
			lines := strings.Split(out, "\n")
			if len(lines) > n {
				out = strings.Join(lines[len(lines)-n:], "\n")
			}
		}
		reply(w, 200, map[string]any{"output": out})
	default:
		c.mu.Unlock()
		novaError(w, 400, "Unsupported server action")
	}
}

// consoleLog is what a booted Debian cloud image prints, with cloud-init's host key block.
func (c *Cloud) consoleLog(s *Server) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)\n")
	if s.Status == "BUILD" || len(s.HostKeyLines) == 0 {
		return b.String()
	}
	fmt.Fprintf(&b, "[   10.101010] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'\n")
	b.WriteString("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n")
	for _, l := range s.HostKeyLines {
		b.WriteString(l + "\n")
	}
	b.WriteString("-----END SSH HOST KEY FINGERPRINTS-----\n")
	fmt.Fprintf(&b, "[   12.121212] cloud-init[512]: Cloud-init v. 22.4.2 finished. Datasource DataSourceOpenStackLocal.\n\n")
	fmt.Fprintf(&b, "Debian GNU/Linux 12 %s ttyS0\n\n%s login: \n", s.Name, s.Name)
	return b.String()
}

// --- flavors, key pairs, groups, limits ---

func (c *Cloud) listFlavors(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []any{}
	for _, f := range c.st.Flavors {
		out = append(out, map[string]any{"id": f.ID, "name": f.Name, "vcpus": f.VCPUs, "ram": f.RAM, "disk": f.Disk, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "rxtx_factor": 1.0, "os-flavor-access:is_public": true, "extra_specs": map[string]string{}, "description": nil, "links": []any{}})
	}
	reply(w, 200, map[string]any{"flavors": out})
}

func (c *Cloud) getFlavor(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.st.Flavors {
		if f.ID == r.PathValue("id") {
			reply(w, 200, map[string]any{"flavor": map[string]any{"id": f.ID, "name": f.Name, "vcpus": f.VCPUs, "ram": f.RAM, "disk": f.Disk, "links": []any{}}})
			return
		}
	}
	novaError(w, 404, fmt.Sprintf("Flavor %s could not be found.", r.PathValue("id")))
}

func (c *Cloud) listKeyPairs(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []any{}
	for _, k := range c.st.KeyPairs {
		out = append(out, map[string]any{"keypair": map[string]any{"name": k.Name, "public_key": k.PublicKey, "fingerprint": "", "type": "ssh"}})
	}
	reply(w, 200, map[string]any{"keypairs": out})
}

func (c *Cloud) createKeyPair(w http.ResponseWriter, r *http.Request) {
	var req struct {
		KeyPair KeyPair `json:"keypair"`
	}
	if err := decode(r, &req); err != nil || req.KeyPair.Name == "" || req.KeyPair.PublicKey == "" {
		novaError(w, 400, "Keypair data is invalid: name and public_key are required (the lab does not generate keys)")
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hasKeyPair(req.KeyPair.Name) {
		novaError(w, 409, fmt.Sprintf("Key pair '%s' already exists.", req.KeyPair.Name))
		return
	}
	c.st.KeyPairs = append(c.st.KeyPairs, req.KeyPair)
	c.persist()
	reply(w, 200, map[string]any{"keypair": map[string]any{"name": req.KeyPair.Name, "public_key": req.KeyPair.PublicKey, "fingerprint": "", "type": "ssh", "user_id": "lab"}})
}

func (c *Cloud) groupJSON(g *ServerGroup) map[string]any {
	members := g.Members
	if members == nil {
		members = []string{}
	}
	return map[string]any{"id": g.ID, "name": g.Name, "policies": []string{g.Policy}, "policy": g.Policy, "members": members, "metadata": map[string]string{}, "rules": map[string]any{}, "project_id": c.st.Project, "user_id": "lab"}
}

func (c *Cloud) listGroups(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []any{}
	var groups []*ServerGroup
	for _, g := range c.st.Groups {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].Name < groups[j].Name })
	for _, g := range groups {
		out = append(out, c.groupJSON(g))
	}
	reply(w, 200, map[string]any{"server_groups": out})
}

func (c *Cloud) createGroup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Group struct {
			Name     string   `json:"name"`
			Policies []string `json:"policies"`
			Policy   string   `json:"policy"`
		} `json:"server_group"`
	}
	if err := decode(r, &req); err != nil || req.Group.Name == "" {
		novaError(w, 400, "Invalid input: server_group name is required")
		return
	}
	policy := req.Group.Policy
	if policy == "" && len(req.Group.Policies) == 1 {
		policy = req.Group.Policies[0]
	}
	switch policy {
	case "affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity":
	default:
		novaError(w, 400, fmt.Sprintf("Invalid input for field/attribute policy. Value: %s. '%s' is not one of ['anti-affinity', 'affinity', 'soft-anti-affinity', 'soft-affinity']", policy, policy))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	g := &ServerGroup{ID: newID(), Name: req.Group.Name, Policy: policy}
	c.st.Groups[g.ID] = g
	c.persist()
	reply(w, 200, map[string]any{"server_group": c.groupJSON(g)})
}

func (c *Cloud) getGroup(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.st.Groups[r.PathValue("id")]
	if !ok {
		novaError(w, 404, fmt.Sprintf("Server group %s could not be found.", r.PathValue("id")))
		return
	}
	reply(w, 200, map[string]any{"server_group": c.groupJSON(g)})
}

func (c *Cloud) deleteGroup(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.st.Groups[r.PathValue("id")]; !ok {
		novaError(w, 404, fmt.Sprintf("Server group %s could not be found.", r.PathValue("id")))
		return
	}
	delete(c.st.Groups, r.PathValue("id"))
	c.persist()
	w.WriteHeader(204)
}

func (c *Cloud) limits(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	used := c.usage()
	q := c.opts.Quota
	reply(w, 200, map[string]any{"limits": map[string]any{"rate": []any{}, "absolute": map[string]int{
		"maxTotalInstances": q.Instances, "totalInstancesUsed": used.Instances,
		"maxTotalCores": q.Cores, "totalCoresUsed": used.Cores,
		"maxTotalRAMSize": q.RAM, "totalRAMUsed": used.RAM,
		"maxServerGroups": 10, "totalServerGroupsUsed": len(c.st.Groups), "maxServerGroupMembers": 10,
	}}})
}

// usage is what the project's servers use of its quota. Callers hold mu.
func (c *Cloud) usage() Quota {
	var used Quota
	for _, s := range c.st.Servers {
		used.Instances++
		for _, f := range c.st.Flavors {
			if f.ID == s.FlavorID {
				used.Cores += f.VCPUs
				used.RAM += f.RAM
			}
		}
	}
	return used
}

// --- Glance and Neutron ---

func imageIDs(images []Image) []string {
	var ids []string
	for _, i := range images {
		ids = append(ids, i.ID)
	}
	return ids
}

func hasID(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func imageJSON(i Image) map[string]any {
	return map[string]any{"id": i.ID, "name": i.Name, "status": "active", "visibility": "public", "created_at": i.Created.UTC().Format(time.RFC3339), "updated_at": i.Created.UTC().Format(time.RFC3339), "disk_format": "qcow2", "container_format": "bare", "min_disk": 0, "min_ram": 0, "protected": false, "tags": []string{}, "self": "/v2/images/" + i.ID}
}

func (c *Cloud) listImages(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []any{}
	for _, i := range c.st.Images {
		if name == "" || i.Name == name {
			out = append(out, imageJSON(i))
		}
	}
	reply(w, 200, map[string]any{"images": out, "first": "/v2/images", "schema": "/v2/schemas/images"})
}

func (c *Cloud) getImage(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range c.st.Images {
		if i.ID == r.PathValue("id") {
			reply(w, 200, imageJSON(i))
			return
		}
	}
	http.Error(w, "404 Not Found\n\nNo image found with ID "+r.PathValue("id"), 404)
}

func namedJSON(n Named) map[string]any {
	return map[string]any{"id": n.ID, "name": n.Name, "status": "ACTIVE", "admin_state_up": true, "tenant_id": "lab", "project_id": "lab", "subnets": []string{}, "shared": true, "description": "", "security_group_rules": []any{}}
}

func (c *Cloud) listNamed(key string, all func() []Named) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		id := r.URL.Query().Get("id")
		c.mu.Lock()
		defer c.mu.Unlock()
		out := []any{}
		for _, n := range all() {
			if (name == "" || n.Name == name) && (id == "" || n.ID == id) {
				out = append(out, namedJSON(n))
			}
		}
		reply(w, 200, map[string]any{key: out})
	}
}

func (c *Cloud) getNamed(key string, all func() []Named) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range all() {
			if n.ID == r.PathValue("id") {
				reply(w, 200, map[string]any{key: namedJSON(n)})
				return
			}
		}
		reply(w, 404, map[string]any{"NeutronError": map[string]any{"type": "NotFound", "message": fmt.Sprintf("%s %s could not be found.", key, r.PathValue("id")), "detail": ""}})
	}
}
