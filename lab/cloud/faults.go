package cloud

import (
	"encoding/json"
	"math/rand"
	"net/http"
	"strings"
)

// Faults are injected failures, for tests and rehearsals. Set them with SetFaults or
// POST /_lab/faults (the same JSON); GET /_lab/faults shows them.
type Faults struct {
	// Rules apply to requests whose method and path match.
	Rules []FaultRule `json:"rules,omitempty"`
	// ErrorServers go to ERROR when created ("by name").
	ErrorServers []string `json:"errorServers,omitempty"`
	// StuckServers stay in BUILD forever.
	StuckServers []string `json:"stuckServers,omitempty"`
}

// FaultRule is a failure or delay on matching requests.
type FaultRule struct {
	// Method ("" for any) and PathPrefix ("/compute/v2.1/servers"; "" for any). Path,
	// if set, matches that path exactly instead ("/compute/v2.1/servers" without the
	// servers' actions under it).
	Method     string `json:"method,omitempty"`
	PathPrefix string `json:"pathPrefix,omitempty"`
	Path       string `json:"path,omitempty"`
	// ErrorRate is the fraction of matching requests that fail (0..1).
	ErrorRate float64 `json:"errorRate,omitempty"`
	// Status of a failure; 503 if zero.
	Status int `json:"status,omitempty"`
	// After fails a request after handling it (its response is lost), as a network
	// failure can.
	After bool `json:"after,omitempty"`
	// LatencyMillis delays every matching request.
	LatencyMillis int `json:"latencyMillis,omitempty"`
	// Count, if above zero, is how many failures the rule injects; then it fails no
	// more and later rules apply to the requests it matched (ErrorRate 1 and Count 1:
	// exactly the next matching request fails).
	Count int `json:"count,omitempty"`

	spent bool // Count failures injected
}

// InjectedFault is a failure the cloud injected: the request it failed and how.
type InjectedFault struct {
	Method, Path string
	// After: the request was handled and its response lost.
	After bool
}

// SetFaults replaces the injected faults.
func (c *Cloud) SetFaults(f Faults) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = f
	c.faults.Rules = append([]FaultRule(nil), f.Rules...) // Count is spent on the copy
}

// Injected returns the failures injected so far, in order.
func (c *Cloud) Injected() []InjectedFault {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]InjectedFault(nil), c.injected...)
}

// Faults returns the injected faults.
func (c *Cloud) Faults() Faults {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.faults
}

func (c *Cloud) postFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	if err := json.NewDecoder(r.Body).Decode(&f); err != nil {
		http.Error(w, "bad faults JSON: "+err.Error(), 400)
		return
	}
	c.SetFaults(f)
	reply(w, 200, f)
}

// faultFor returns the rule matching the request and whether it fails now. Callers hold mu.
func (c *Cloud) faultFor(method, path string) (FaultRule, bool) {
	for i := range c.faults.Rules {
		r := &c.faults.Rules[i]
		if r.spent || (r.Method != "" && !strings.EqualFold(r.Method, method)) || !strings.HasPrefix(path, r.PathPrefix) || (r.Path != "" && path != r.Path) {
			continue
		}
		fail := r.ErrorRate > 0 && rand.Float64() < r.ErrorRate
		if fail && r.Count > 0 {
			r.Count--
			r.spent = r.Count == 0
		}
		if fail {
			c.injected = append(c.injected, InjectedFault{Method: method, Path: path, After: r.After})
		}
		return *r, fail
	}
	return FaultRule{}, false
}

// applyServerFaults marks a new server to fail or hang. Callers hold mu.
func (c *Cloud) applyServerFaults(s *Server) {
	for _, n := range c.faults.ErrorServers {
		if n == s.Name {
			s.Status, s.Fault = "ERROR", "Injected fault: instance failed to spawn"
		}
	}
	for _, n := range c.faults.StuckServers {
		if n == s.Name {
			s.Stuck = true
		}
	}
}

// SetQuota changes the project's quota (as an administrator raising or lowering it);
// servers beyond it are kept, new ones refused.
func (c *Cloud) SetQuota(q Quota) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opts.Quota = q
}

// Usage is what the project's servers use of its quota.
func (c *Cloud) Usage() Quota {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.usage()
}

// ServerSummary is a server as `cookbook-lab status` shows it (GET /_lab/servers).
type ServerSummary struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Image   string `json:"image"`
	Address string `json:"address,omitempty"`
}

// Summary returns every server's name, status and image name (its id if the image is
// unknown), sorted by name.
func (c *Cloud) Summary() []ServerSummary {
	images := map[string]string{}
	c.mu.Lock()
	for _, i := range c.st.Images {
		images[i.ID] = i.Name
	}
	c.mu.Unlock()
	var out []ServerSummary
	for _, s := range c.Servers() {
		im := images[s.ImageID]
		if im == "" {
			im = s.ImageID
		}
		out = append(out, ServerSummary{Name: s.Name, Status: s.Status, Image: im, Address: s.Address})
	}
	return out
}
