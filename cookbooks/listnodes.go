package cookbooks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
)

// ListNodes shows the cluster's servers and their Kubernetes nodes side by side.
func ListNodes() Cookbook {
	return Cookbook{
		Name:     "list-nodes",
		Usage:    "show each server of the cluster next to its Kubernetes node (read-only)",
		Example:  "cookbook list-nodes --cluster-name toolsbeta --role worker",
		ReadOnly: true,
		Flags: []cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "role", Usage: "only this role"},
		},
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			roleFilter, _, err := roleFlag(c, cl)
			if err != nil {
				return nil, err
			}
			if err := env.CheckAccess(cl); err != nil {
				return nil, err
			}
			out := c.App.Writer
			return &Job{Cluster: cl.Name, Plan: func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
				return []pipeline.Step{{Name: "list", Desc: pipeline.Textf("list the nodes of %s", cl.Name), Do: func(ctx context.Context, v *pipeline.Values) error {
					cs, err := newClients(ctx, env, cl)
					if err != nil {
						return err
					}
					return listNodes(ctx, out, cs, roleFilter, env.Output)
				}}}, nil
			}}, nil
		},
	}
}

// NodesSchema names the shape of `list-nodes --output json`.
const NodesSchema = "cookbook.nodes/v1"

// NodeRow is one line of list-nodes: a server of the cluster and its Kubernetes node.
// It is also the JSON shape of --output json (documented in the README).
type NodeRow struct {
	Name    string `json:"name"`
	Role    string `json:"role,omitempty"`   // "" for a node no server of the roles accounts for
	Server  string `json:"server,omitempty"` // the server's status (ACTIVE, BUILD, ...); "" if none
	Flavor  string `json:"flavor,omitempty"`
	Image   string `json:"image,omitempty"`
	Address string `json:"address,omitempty"`
	// Node is the Kubernetes node; nil when the server has no node.
	Node *NodeState `json:"node"`
}

// NodeState is what list-nodes shows of a Kubernetes node.
type NodeState struct {
	Ready          bool   `json:"ready"`
	Cordoned       bool   `json:"cordoned"`
	KubeletVersion string `json:"kubeletVersion"`
}

func listNodes(ctx context.Context, out io.Writer, cs *clients, roleFilter, format string) error {
	if out == nil {
		out = os.Stdout
	}
	rows, err := nodeRows(ctx, cs, roleFilter)
	if err != nil {
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Schema string    `json:"schema"`
			Nodes  []NodeRow `json:"nodes"`
		}{NodesSchema, rows})
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tROLE\tSERVER\tFLAVOR\tIMAGE\tADDRESS\tNODE\tSCHEDULING\tKUBELET")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, orDash(r.Role, ""), orDash(r.Server, "no server"), orDash(r.Flavor, ""), orDash(r.Image, ""), orDash(r.Address, ""), nodeColumns(r.Node))
	}
	return w.Flush()
}

// nodeRows reads the servers of the selected roles and the cluster's nodes.
func nodeRows(ctx context.Context, cs *clients, roleFilter string) ([]NodeRow, error) {
	nodes := map[string]*corev1.Node{}
	list, err := cs.kube.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	for i := range list {
		nodes[list[i].Name] = &list[i]
	}
	imageNames := map[string]string{}
	var roles []string
	for name := range cs.cl.Roles {
		if roleFilter == "" || name == roleFilter {
			roles = append(roles, name)
		}
	}
	sort.Strings(roles)
	var rows []NodeRow
	seen := map[string]bool{}
	for _, role := range roles {
		servers, err := cs.cloud.RoleServers(ctx, cs.cl.Roles[role].Prefix)
		if err != nil {
			return nil, err
		}
		for _, s := range servers {
			seen[s.Name] = true
			img, ok := imageNames[s.ImageID]
			if !ok {
				if ref, err := cs.cloud.Image(ctx, s.ImageID); err == nil {
					img = ref.Name
				} else {
					img = s.ImageID
				}
				imageNames[s.ImageID] = img
			}
			rows = append(rows, NodeRow{Name: s.Name, Role: role, Server: s.Status, Flavor: orDash(s.FlavorName, s.FlavorID), Image: img, Address: s.Address, Node: nodeState(nodes[s.Name])})
		}
	}
	// Nodes no server of the selected roles accounts for.
	if roleFilter == "" {
		var extra []string
		for name := range nodes {
			if !seen[name] {
				extra = append(extra, name)
			}
		}
		sort.Strings(extra)
		for _, name := range extra {
			rows = append(rows, NodeRow{Name: name, Node: nodeState(nodes[name])})
		}
	}
	return rows, nil
}

func nodeState(n *corev1.Node) *NodeState {
	if n == nil {
		return nil
	}
	return &NodeState{Ready: k8sops.IsReady(n), Cordoned: n.Spec.Unschedulable, KubeletVersion: n.Status.NodeInfo.KubeletVersion}
}

func nodeColumns(n *NodeState) string {
	if n == nil {
		return "missing\t-\t-"
	}
	ready := "NotReady"
	if n.Ready {
		ready = "Ready"
	}
	sched := "schedulable"
	if n.Cordoned {
		sched = "cordoned"
	}
	return strings.Join([]string{ready, sched, n.KubeletVersion}, "\t")
}

func orDash(s, alt string) string {
	if s != "" {
		return s
	}
	if alt != "" {
		return alt
	}
	return "-"
}
