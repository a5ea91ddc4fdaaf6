package k8sops

import (
	"errors"
	"example.com/cookbook/filekind"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
)

// CheckConfig checks, reading local files only, that the kubeconfig Config would load
// exists, is a kubeconfig, and has the context (kubeContext, else its current-context).
// It never opens a connection. Errors name the file and the configuration key
// (kubernetes.kubeconfig, kubernetes.context, or $KUBECONFIG) and never quote the file's
// values (it holds tokens).
func CheckConfig(kubeconfig, kubeContext string) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	var key string
	var files []string
	switch {
	case kubeconfig != "":
		rules.ExplicitPath = kubeconfig
		key, files = "kubernetes.kubeconfig", []string{kubeconfig}
	case os.Getenv("KUBECONFIG") != "":
		key, files = "$KUBECONFIG", rules.GetLoadingPrecedence()
	default:
		key, files = "kubeconfig", rules.GetLoadingPrecedence()
	}
	where := strings.Join(files, ":")
	found := false
	for _, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && kubeconfig == "" {
				continue // client-go skips missing files of $KUBECONFIG
			}
			return fmt.Errorf("%s %s: %s", key, p, filekind.Reason(err))
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s %s: is not a regular file, expected a kubeconfig", key, p)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("%s %s: no such file", key, where)
	}
	cfg, err := rules.Load()
	if err != nil {
		return fmt.Errorf("%s %s: not a kubeconfig: %s", key, where, hideValues(err.Error()))
	}
	var contexts []string
	for name := range cfg.Contexts {
		contexts = append(contexts, name)
	}
	sort.Strings(contexts)
	if len(contexts) == 0 {
		return fmt.Errorf("%s %s: no contexts (empty, or not a kubeconfig)", key, where)
	}
	there := strings.Join(contexts, ", ")
	use := kubeContext
	if use == "" {
		if cfg.CurrentContext == "" {
			return fmt.Errorf("%s %s: no current-context; set kubernetes.context (contexts there: %s)", key, where, there)
		}
		use = cfg.CurrentContext
		if _, ok := cfg.Contexts[use]; !ok {
			return fmt.Errorf("%s %s: current-context %q is not one of its contexts (contexts there: %s)", key, where, use, there)
		}
	} else if _, ok := cfg.Contexts[use]; !ok {
		return fmt.Errorf("kubernetes.context %q: not in kubeconfig %s (contexts there: %s)", use, where, there)
	}
	cc := clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{CurrentContext: use})
	if _, err := cc.ClientConfig(); err != nil {
		return fmt.Errorf("kubeconfig %s: context %q: %s", where, use, hideValues(err.Error()))
	}
	return nil
}

var quotedValue = regexp.MustCompile("`[^`]*`")

// hideValues replaces the values a YAML or JSON error quotes (they may be tokens).
func hideValues(s string) string {
	s = strings.Join(strings.Fields(quotedValue.ReplaceAllString(s, "(value)")), " ") // one line
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
