package cookbooks

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
			roleFilter := c.String("role")
			if roleFilter != "" {
				if _, err := cl.Role(roleFilter); err != nil {
					return nil, BadInput(err)
				}
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
					return listNodes(ctx, out, cs, roleFilter)
				}}}, nil
			}}, nil
		},
	}
}

func listNodes(ctx context.Context, out io.Writer, cs *clients, roleFilter string) error {
	if out == nil {
		out = os.Stdout
	}
	nodes := map[string]*corev1.Node{}
	list, err := cs.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for i := range list.Items {
		nodes[list.Items[i].Name] = &list.Items[i]
	}
	imageNames := map[string]string{}
	var roles []string
	for name := range cs.cl.Roles {
		if roleFilter == "" || name == roleFilter {
			roles = append(roles, name)
		}
	}
	sort.Strings(roles)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tROLE\tSERVER\tFLAVOR\tIMAGE\tADDRESS\tNODE\tSCHEDULING\tKUBELET")
	seen := map[string]bool{}
	for _, role := range roles {
		servers, err := cs.cloud.RoleServers(ctx, cs.cl.Roles[role].Prefix)
		if err != nil {
			return err
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
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, role, s.Status, orDash(s.FlavorName, s.FlavorID), img, orDash(s.Address, ""), nodeColumns(nodes[s.Name]))
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
			fmt.Fprintf(w, "%s\t-\tno server\t-\t-\t-\t%s\n", name, nodeColumns(nodes[name]))
		}
	}
	return w.Flush()
}

func nodeColumns(n *corev1.Node) string {
	if n == nil {
		return "missing\t-\t-"
	}
	ready := "NotReady"
	if k8sops.IsReady(n) {
		ready = "Ready"
	}
	sched := "schedulable"
	if n.Spec.Unschedulable {
		sched = "cordoned"
	}
	return strings.Join([]string{ready, sched, n.Status.NodeInfo.KubeletVersion}, "\t")
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
