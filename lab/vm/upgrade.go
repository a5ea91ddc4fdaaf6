package vm

import (
	"context"
	"fmt"
	"io"
	"strings"

	utilversion "k8s.io/apimachinery/pkg/util/version"
)

// ControlPlaneVersions is a Cluster whose control plane has a version as kubeadm records
// it (the kubeadm-config ClusterConfiguration, the control nodes' static pods), which
// the lab's kubeadm and kubelet act on.
type ControlPlaneVersions interface {
	// ClusterVersion is the ClusterConfiguration's kubernetesVersion ("v1.37.2").
	ClusterVersion(ctx context.Context) (string, error)
	// SetClusterVersion records a new kubernetesVersion.
	SetClusterVersion(ctx context.Context, ver string) error
	// SetStaticPods makes the node's control-plane static pods run ver.
	SetStaticPods(ctx context.Context, node, ver string) error
}

// clusterVersion is the control plane's version, nil when the Cluster has none (a lab
// without versions).
func (v *VM) clusterVersion(ctx context.Context) (ControlPlaneVersions, *utilversion.Version, error) {
	cv, ok := v.fleet.Cluster.(ControlPlaneVersions)
	if !ok {
		return nil, nil, nil
	}
	s, err := cv.ClusterVersion(ctx)
	if err != nil || s == "" {
		return nil, nil, err
	}
	ver, err := utilversion.ParseSemantic(s)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeadm-config kubernetesVersion %q: %w", s, err)
	}
	return cv, ver, nil
}

// installedVersion is the Kubernetes version of an installed package (kubeadm, kubelet).
func (v *VM) installedVersion(pkg string) *utilversion.Version {
	ver, err := utilversion.ParseSemantic(strings.TrimPrefix(upstream(v.PackageVersion(pkg)), "v"))
	if err != nil {
		return nil
	}
	return ver
}

// minimumControlPlane is kubeadm's MinimumControlPlaneVersion for a kubeadm at version
// k: v<major>.<minor-1>.0 (constants.getSkewedKubernetesVersion(-1)).
func minimumControlPlane(k *utilversion.Version) *utilversion.Version {
	minor := k.Minor()
	if minor > 0 {
		minor--
	}
	return utilversion.MajorMinor(k.Major(), minor).WithPatch(0)
}

// kubeletSkew is kubeadm's KubeletVersion preflight check: a kubelet of a newer minor
// (or major) than the control plane is an error ("" when it is not); a newer patch is
// allowed, as the skew policy allows it.
func kubeletSkew(kubelet, cluster *utilversion.Version) string {
	if kubelet == nil || cluster == nil || (kubelet.Major() <= cluster.Major() && kubelet.Minor() <= cluster.Minor()) {
		return ""
	}
	return fmt.Sprintf("the kubelet version is higher than the control plane version. This is not a supported version skew and may lead to a malfunctional cluster. Kubelet version: %q Control plane version: %q", kubelet, cluster)
}

// kubeadmUpgrade runs kubeadm upgrade plan|apply|node as kubeadm does on the lab's
// versions, refusing what kubeadm refuses.
func (v *VM) kubeadmUpgrade(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "error: missing subcommand; \"kubeadm upgrade\" is not meant to be run on its own")
		return 1
	}
	sub, rest := args[0], args[1:]
	var target string
	yes := false
	for _, a := range rest {
		switch {
		case a == "-y" || a == "--yes":
			yes = true
		case strings.HasPrefix(a, "-"):
			fmt.Fprintf(stderr, "unknown flag: %s\n", a)
			return 1
		case target == "":
			target = a
		default:
			fmt.Fprintf(stderr, "unexpected argument %q\n", a)
			return 1
		}
	}
	switch sub {
	case "plan", "apply":
		if sub == "apply" && target == "" {
			fmt.Fprintln(stderr, "[upgrade/version] FATAL: missing one or more required arguments. Required arguments: [version]")
			return 1
		}
		if sub == "plan" && yes {
			fmt.Fprintln(stderr, "unknown shorthand flag: 'y' in -y")
			return 1
		}
		return v.upgradePlanApply(ctx, sub, target, yes, stdout, stderr)
	case "node":
		if target != "" || yes {
			fmt.Fprintln(stderr, "error: kubeadm upgrade node takes no version: it upgrades this node to the cluster's")
			return 1
		}
		return v.upgradeNode(ctx, stdout, stderr)
	}
	fmt.Fprintf(stderr, "error: unknown command %q for \"kubeadm upgrade\"\n", sub)
	return 1
}

func (v *VM) upgradePlanApply(ctx context.Context, sub, target string, yes bool, stdout, stderr io.Writer) int {
	if !v.canAdmin(stderr) {
		return 1
	}
	fmt.Fprintln(stdout, "[preflight] Running pre-flight checks.\n[upgrade/config] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...")
	cv, cluster, err := v.clusterVersion(ctx)
	if err != nil || cv == nil {
		fmt.Fprintf(stderr, "[upgrade/config] FATAL: unable to read the kubeadm-config ConfigMap: %v\n", err)
		return 1
	}
	kubeadm := v.installedVersion("kubeadm")
	if kubeadm == nil {
		fmt.Fprintln(stderr, "bash: kubeadm: command not found")
		return 127
	}
	// kubeadm's cluster health checks (phases/upgrade/health.go), before the version
	// checks: every control-plane Node Ready (the test Job it also runs is not modelled).
	fmt.Fprintln(stdout, "[upgrade] Running cluster health checks")
	notReady, err := v.fleet.Cluster.NotReadyControlPlanes(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "[preflight] Some fatal errors occurred:\n\t[ERROR ControlPlaneNodesReady]: %v\n", err)
	} else if len(notReady) > 0 {
		fmt.Fprintf(stderr, "[preflight] Some fatal errors occurred:\n\t[ERROR ControlPlaneNodesReady]: there are NotReady control-planes in the cluster: %v\n", notReady)
	}
	if err != nil || len(notReady) > 0 {
		fmt.Fprintln(stderr, "[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`\n[upgrade/health] FATAL: preflight checks failed\nTo see the stack trace of this error execute with --v=5 or higher")
		return 1
	}
	if target == "" { // plan without a version: the newest the installed kubeadm can do
		target = "v" + kubeadm.String()
	}
	tv, err := utilversion.ParseSemantic(strings.TrimPrefix(target, "v"))
	if err != nil {
		fmt.Fprintf(stderr, "[upgrade/version] FATAL: unable to parse version %q: %v\n", target, err)
		return 1
	}
	fmt.Fprintf(stdout, "[upgrade/versions] Cluster version: v%s\n[upgrade/versions] kubeadm version: v%s\n[upgrade/versions] Target version: v%s\n", cluster, kubeadm, tv)
	var fatal []string
	if tv.LessThan(cluster) {
		fatal = append(fatal, fmt.Sprintf("Specified version to upgrade to %q is lower than the cluster version %q. Downgrades are not supported yet", "v"+tv.String(), "v"+cluster.String()))
	}
	if minimum := utilversion.MajorMinor(kubeadm.Major(), kubeadm.Minor()-1); kubeadm.Minor() > 0 && tv.LessThan(minimum) {
		fatal = append(fatal, fmt.Sprintf("Specified version to upgrade to %q is equal to or lower than the minimum supported version %q. Please specify a higher version to upgrade to", "v"+tv.String(), "v"+minimum.String()))
	}
	if tv.Major() != cluster.Major() || tv.Minor() > cluster.Minor()+1 {
		fatal = append(fatal, fmt.Sprintf("Specified version to upgrade to %q is too high; kubeadm can upgrade only 1 minor version at a time", "v"+tv.String()))
	}
	if kubeadm.LessThan(tv) {
		fatal = append(fatal, fmt.Sprintf("Specified version to upgrade to %q is higher than the kubeadm version %q. Upgrade kubeadm first using the tool you used to install kubeadm", "v"+tv.String(), "v"+kubeadm.String()))
	} else if kubeadm.Minor() > tv.Minor() {
		fatal = append(fatal, fmt.Sprintf("Kubeadm version v%s can only be used to upgrade to Kubernetes version %d.%d", kubeadm, kubeadm.Major(), kubeadm.Minor()))
	}
	if len(fatal) > 0 {
		fmt.Fprintf(stderr, "[upgrade/version] FATAL: the --version argument is invalid due to these fatal errors:\n\n\t- %s\n\nPlease fix the misalignments highlighted above and try upgrading again\n", strings.Join(fatal, "\n\t- "))
		return 1
	}
	if sub == "plan" {
		fmt.Fprintf(stdout, "\nUpgrade to the latest version in the v%d.%d series:\n\nCOMPONENT                 NODE   CURRENT   TARGET\n", tv.Major(), tv.Minor())
		for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
			fmt.Fprintf(stdout, "%-25s %s   v%s   v%s\n", c, v.Name, cluster, tv)
		}
		fmt.Fprintf(stdout, "\nYou can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply v%s\n", tv)
		return 0
	}
	if !yes {
		fmt.Fprint(stdout, "[upgrade/confirm] Are you sure you want to proceed with the upgrade? [y/N]: ")
		fmt.Fprintln(stderr, "won't proceed; the user didn't answer (Y|y) in order to continue")
		return 1
	}
	if err := cv.SetStaticPods(ctx, v.Name, "v"+tv.String()); err != nil {
		fmt.Fprintf(stderr, "[upgrade/apply] FATAL: couldn't complete the static pod upgrade: %v\n", err)
		return 1
	}
	if err := cv.SetClusterVersion(ctx, "v"+tv.String()); err != nil {
		fmt.Fprintf(stderr, "[upgrade/apply] FATAL: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "[upgrade/staticpods] Upgrading your Static Pod-hosted control plane to version \"v%s\"...\n[upgrade/successful] SUCCESS! Your cluster was upgraded to \"v%s\". Enjoy!\n\n[upgrade/kubelet] Now that your control plane is upgraded, please proceed with upgrading your kubelets if you haven't already done so.\n", tv, tv)
	return 0
}

// upgradeNode is kubeadm upgrade node: this node (its static pods on a control node,
// its kubelet configuration) to the cluster's version, whatever that is. As kubeadm
// v1.37's (cmd/kubeadm/app/cmd/upgrade/node.go: the kubeadm-config ClusterConfiguration
// fetched and defaulted, util/config NormalizeKubernetesVersion), it refuses only a
// cluster older than the minor before kubeadm's own (MinimumControlPlaneVersion,
// v<minor-1>.0): a kubeadm a patch or a minor newer than the control plane, or older, is
// accepted, and before `upgrade apply` has run the node is "upgraded" to the version it
// has. Its preflight (RunUpgradeChecks) has no KubeletVersion check: a kubelet newer
// than the control plane is refused when it starts, not here.
func (v *VM) upgradeNode(ctx context.Context, stdout, stderr io.Writer) int {
	if v.fleet.Cluster == nil {
		fmt.Fprintln(stderr, "[upgrade] FATAL: cannot reach the API server")
		return 1
	}
	kubeadm := v.installedVersion("kubeadm")
	if kubeadm == nil {
		fmt.Fprintln(stderr, "bash: kubeadm: command not found")
		return 127
	}
	cv, cluster, err := v.clusterVersion(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "unable to fetch the kubeadm-config ConfigMap: %v\n", err)
		return 1
	}
	if cv == nil { // a lab cluster without versions
		fmt.Fprintln(stdout, "[upgrade] The upgrade for this node was successfully completed!")
		return 0
	}
	if minimum := minimumControlPlane(kubeadm); cluster.LessThan(minimum) {
		fmt.Fprintf(stderr, "unable to fetch the kubeadm-config ConfigMap: this version of kubeadm only supports deploying clusters with the control plane version >= %s. Current version: v%s\n", minimum, cluster)
		return 1
	}
	fmt.Fprintln(stdout, "[upgrade/preflight] Running pre-flight checks")
	v.mu.Lock()
	control := v.control
	v.mu.Unlock()
	if control {
		if err := cv.SetStaticPods(ctx, v.Name, "v"+cluster.String()); err != nil {
			fmt.Fprintf(stderr, "[upgrade] FATAL: couldn't complete the static pod upgrade: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "[upgrade] Upgrading your Static Pod-hosted control plane instance to version \"v%s\"...\n[upgrade] The control plane instance for this node was successfully updated!\n", cluster)
	} else {
		fmt.Fprintln(stdout, "[upgrade] Skipping phase. Not a control plane node.")
	}
	fmt.Fprintln(stdout, "[upgrade] The upgrade for this node was successfully completed!")
	return 0
}
