package openstack

import (
	"errors"
	"example.com/cookbook/filekind"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"go.yaml.in/yaml/v3"
)

// CheckCloud checks, reading local files only, that the clouds.yaml entry New would use
// exists: the clouds file is a regular file and names the cloud. It never opens a
// connection. Errors name the file and the configuration key (openstack.cloudsFile,
// openstack.cloud) and never quote the file's values (it holds passwords).
func CheckCloud(opts Options) error {
	path, key, err := cloudsFile(opts.CloudsFile)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s: %s", key, path, filekind.Reason(err))
	}
	defer f.Close()
	// The loader below is gophercloud's own; it reads the file again by the same rules.
	var parse []clouds.ParseOption
	if opts.Cloud != "" {
		parse = append(parse, clouds.WithCloudName(opts.Cloud))
	}
	parse = append(parse, clouds.WithLocations(path))
	if opts.Project != "" {
		parse = append(parse, clouds.WithProjectName(opts.Project))
	}
	if _, _, _, err := clouds.Parse(parse...); err != nil {
		var names cloudsYAML
		if derr := yaml.NewDecoder(f).Decode(&names); derr != nil {
			return fmt.Errorf("%s %s: not a clouds.yaml: %s", key, path, hideValues(derr.Error()))
		}
		if _, ok := names.Clouds[opts.Cloud]; !ok {
			return fmt.Errorf("openstack.cloud %q: not in clouds.yaml %s (clouds there: %s)", opts.Cloud, path, cloudNames(names))
		}
		return fmt.Errorf("openstack.cloud %q in clouds.yaml %s: %s", opts.Cloud, path, hideValues(err.Error()))
	}
	return nil
}

// cloudsYAML is the part of clouds.yaml CheckCloud reads to list the names there.
type cloudsYAML struct {
	Clouds map[string]yaml.Node `yaml:"clouds"`
}

func cloudNames(c cloudsYAML) string {
	if len(c.Clouds) == 0 {
		return "none"
	}
	var names []string
	for n := range c.Clouds {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// cloudsFile returns the clouds.yaml gophercloud's loader reads, the configuration key
// or variable that chose it, and an error if it is missing or not a regular file (a FIFO
// would block the loader).
func cloudsFile(explicit string) (path, key string, err error) {
	var locations []string
	switch {
	case explicit != "":
		key, locations = "openstack.cloudsFile", []string{explicit}
	case os.Getenv("OS_CLIENT_CONFIG_FILE") != "":
		key, locations = "$OS_CLIENT_CONFIG_FILE", []string{os.Getenv("OS_CLIENT_CONFIG_FILE")}
	default:
		key = "clouds.yaml"
		cwd, _ := os.Getwd()
		locations = append(locations, filepath.Join(cwd, "clouds.yaml"))
		if dir, err := os.UserConfigDir(); err == nil {
			locations = append(locations, filepath.Join(dir, "openstack", "clouds.yaml"))
		}
		locations = append(locations, "/etc/openstack/clouds.yaml")
	}
	for _, p := range locations {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && len(locations) > 1 {
			continue
		}
		if err != nil {
			return "", "", fmt.Errorf("%s %s: %s", key, p, filekind.Reason(err))
		}
		if !fi.Mode().IsRegular() {
			return "", "", fmt.Errorf("%s %s: is %s, expected a clouds.yaml file", key, p, filekind.Of(fi.Mode()))
		}
		return p, key, nil
	}
	return "", "", fmt.Errorf("no clouds.yaml in %s (set openstack.cloudsFile)", strings.Join(locations, ", "))
}

var quotedValue = regexp.MustCompile("`[^`]*`|\"[^\"]*\"")

// hideValues replaces the values a YAML error quotes (they may be passwords).
func hideValues(s string) string {
	s = strings.Join(strings.Fields(quotedValue.ReplaceAllString(s, "(value)")), " ") // one line
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
